"""The requantize's rounding form and FoldConstantAdds (bias + rounding offset: one add)."""

import numpy as np
import pytest
import torch
from conftest import make_small_net, relax_main, run_relax

from f8tvm import api, pipeline
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import bindings, is_call
from f8tvm.core.fixedpoint import rq_reference
from f8tvm.core.graph import extract_graph
from f8tvm.passes.fold_constant_adds import fold_constant_adds
from f8tvm.passes.quantize_to_integer import emit_rounding_shift, match_rounding_right_shift
from f8tvm.reference import quantize_input, run_reference
from f8tvm.targets import get_target

R = relax.op


def _ops(func):
    return [b.value.op.name for b in bindings(func) if isinstance(b.value, relax.Call)]


@pytest.mark.host
def test_rounding_shift_is_ties_to_even_everywhere():
    # every value in a window of 4 periods around 0 and around both int32 ends (ties, the
    # values next to them, negatives), for right shifts 0..12, one per channel; plus left shifts
    shifts = np.array([0, 1, 2, 3, 4, 5, 7, 12, -1, -3])
    c = len(shifts)
    window = np.arange(-4 << 12, 4 << 12)
    top = np.arange(2**31 - 2**12, 2**31 - 2**11)  # u = T + 2**(r-1) - 1 stays in int32
    bottom = np.arange(-(2**31), -(2**31) + 2**12)
    values = np.concatenate([window, top, bottom])
    t = np.broadcast_to(values, (c, values.size)).copy()
    t[shifts < 0] %= 1 << 20  # the left-shifted channels: no overflow
    t = t.T.reshape(1, values.size, c).transpose(0, 2, 1).reshape(1, c, values.size, 1)
    mod = relax_main(t.shape, "int32", lambda bb, x: emit_rounding_shift(
        bb, x, shifts.reshape(1, c, 1, 1), "rq"))
    got = run_relax(mod, t.astype("int32"))[0]
    want = rq_reference(t, shifts.reshape(1, c, 1, 1), clamp=False)
    assert np.array_equal(got, want)


def test_matcher_finds_the_rounding_shift():
    shape = (1, 3, 2, 2)
    mod = relax_main(shape, "int32", lambda bb, x: emit_rounding_shift(
        bb, x, np.array([1, 4, 0]).reshape(1, 3, 1, 1), "rq"))
    producers = {b.var: b.value for b in bindings(mod["main"])}
    found = [match_rounding_right_shift(v, producers) for v in producers.values()]
    found = [m for m in found if m is not None]
    assert len(found) == 1
    t, r = found[0]
    assert t.same_as(mod["main"].params[0]) and r.ravel().tolist() == [1, 4, 0]


def _bias_then_round(bias, shift, extra=None):
    def body(bb, x):
        if extra is not None:  # the offset-activation correction comes first on VNNI
            x = bb.emit(R.add(x, relax.const(extra)), "corr")
        x = bb.emit(R.add(x, relax.const(bias)), "biased")
        return emit_rounding_shift(bb, x, shift, "rq")
    return body


@pytest.mark.host
@pytest.mark.parametrize("chain", [False, True])
def test_bias_folds_into_the_rounding_offset(chain):
    c = 4
    shape = (1, c, 3, 5)
    rng = np.random.default_rng(0)
    bias = rng.integers(-1000, 1000, (1, c, 1, 1)).astype("int32")
    extra = rng.integers(-5000, 5000, (1, c, 1, 1)).astype("int32") if chain else None
    shift = np.array([0, 2, 5, 9]).reshape(1, c, 1, 1)
    mod = relax_main(shape, "int32", _bias_then_round(bias, shift, extra))
    stats = {}
    folded = fold_constant_adds(mod["main"], stats)
    assert stats["folded"] == (2 if chain else 1)
    before, after = _ops(mod["main"]), _ops(folded)
    assert before.count("relax.add") - after.count("relax.add") == (2 if chain else 1)
    # the one offset add reads the function's input: the conv's accumulator in a real program
    first = bindings(folded)[0].value
    assert is_call(first, "relax.add") and first.args[0].same_as(folded.params[0])
    x = rng.integers(-(1 << 20), 1 << 20, shape).astype("int32")
    x[0, :, 0, :4] = ((2 * np.arange(4) + 1) << 4) - bias[0, :, 0] - (  # ties for r = 5
        0 if extra is None else extra[0, :, 0])
    want = rq_reference(x.astype(np.int64) + bias + (0 if extra is None else extra), shift,
                        clamp=False)
    for m in (mod, tvm.IRModule({"main": folded.with_attr("global_symbol", "main")})):
        assert np.array_equal(run_relax(m, x)[0], want)


def test_left_alone_when_used_twice_or_when_the_sum_overflows():
    shape = (1, 2, 2, 2)

    def used_twice(bb, x):
        b = bb.emit(R.add(x, relax.const(np.array([[[[5]], [[7]]]], "int32"))), "biased")
        y = bb.emit(R.add(b, relax.const(np.array(3, "int32"))), "y")
        return bb.emit(R.subtract(y, b), "z")  # b still needed

    def overflow(bb, x):
        b = bb.emit(R.add(x, relax.const(np.array(2**31 - 10, "int32"))), "biased")
        return bb.emit(R.add(b, relax.const(np.array(20, "int32"))), "y")

    for body in (used_twice, overflow):
        mod = relax_main(shape, "int32", body)
        stats = {}
        out = fold_constant_adds(mod["main"], stats)
        assert stats["folded"] == 0 and out.same_as(mod["main"])


@pytest.mark.host
def test_every_conv_takes_one_offset_add_and_stays_exact():
    # the small net, packed for x86: a requantize right after a conv adds one constant (bias and
    # rounding offset) to the accumulator, and the module stays bit-exact
    net = make_small_net()
    calib = [np.random.default_rng(0).standard_normal((4, 3, 16, 16)).astype("float32")]
    x = torch.randn(1, 3, 16, 16)
    float_mod, sources = api.import_model(net, x)
    graph = extract_graph(float_mod, sources)
    from f8tvm.calibrate import calibrate

    plan = calibrate(graph, calib)
    preset = get_target("x86")
    int_mod = pipeline.integer(float_mod, graph, plan, preset)
    packed = pipeline.pack(int_mod, preset)
    func = packed["main"]
    readers = {}
    for b in bindings(func):
        for a in getattr(b.value, "args", []):
            if isinstance(a, relax.Var):
                readers.setdefault(a, []).append(b.value)
    direct = 0
    for b in bindings(func):
        if not (is_call(b.value, "relax.call_tir")
                and b.value.args[0].name_hint.startswith(("conv2d_nchwc", "depthwise_nchwc"))):
            continue
        if len(readers[b.var]) != 1:  # the accumulator also feeds a residual: nothing folds
            continue
        (offset,) = readers[b.var]  # its one reader adds the folded constant
        if not is_call(offset, "relax.add"):
            continue
        ub = next(x for x in bindings(func) if x.value.same_as(offset)).var
        # ... and its result is the rounding's u: the parity shift reads it directly
        direct += any(is_call(r, "relax.right_shift") for r in readers[ub])
    assert direct >= 1  # the depthwise conv's (the first conv's also feeds the residual)
    rng = np.random.default_rng(3)
    for _ in range(2):
        q = quantize_input(rng.standard_normal((1, 3, 16, 16)).astype("float32"), plan)
        dtype = str(func.params[0].ty.dtype)
        got = run_relax(packed, q.astype(dtype))[0]
        assert np.array_equal(got, run_reference(graph, plan, q))
