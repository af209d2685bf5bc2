"""OffsetUnsignedActivations on the host: structure, bit-exactness, audit (no board needed)."""

import numpy as np
import pytest
import torch
from conftest import lower_program, make_small_net, relax_main, run_relax

from f8tvm.api import import_model
from f8tvm.calibrate import calibrate
from f8tvm.core import _tvm
from f8tvm.core._tvm import relax
from f8tvm.core.bindings import bindings
from f8tvm.core.graph import extract_graph
from f8tvm.passes.offset_activations import (
    OffsetUnsignedActivations,
    has_unsigned_dot,
    offset_for_target,
)
from f8tvm.passes.quantize_to_integer import QuantizeToInteger
from f8tvm.reference import quantize_input, run_reference
from f8tvm.targets import TARGETS, get_target

R = relax.op


def _run(mod, *args):
    return run_relax(mod, *args)


def _dots(mod):
    return [b.value for b in bindings(mod["main"]) if isinstance(b.value, relax.Call)
            and b.value.op.name in ("relax.nn.conv2d", "relax.matmul")]


@pytest.fixture(scope="module", params=["signed_input", "unsigned_input"])
def program(request):
    """The small test net's integer program; an unsigned input feeds the first conv directly."""

    torch.manual_seed(0)
    net = make_small_net()
    mod, sources = import_model(net, torch.randn(1, 3, 16, 16))
    graph = extract_graph(mod, sources)
    rng = np.random.default_rng(0)
    calib = rng.standard_normal((4, 3, 16, 16)).astype("float32")
    if request.param == "unsigned_input":
        calib = np.abs(calib)  # non-negative calibration data -> uint8 input
    plan = calibrate(graph, [calib])
    assert plan.input_signed == (request.param == "signed_input")
    qmod = QuantizeToInteger(graph, plan)(mod)
    return graph, plan, qmod, OffsetUnsignedActivations(qmod)


def test_no_unsigned_dot_remains(program):
    _, _, qmod, omod = program
    assert has_unsigned_dot(qmod)  # F8Net's ReLU outputs are uint8 before the pass
    assert not has_unsigned_dot(omod)
    assert len(_dots(omod)) == len(_dots(qmod))
    for old, new in zip(_dots(qmod), _dots(omod)):
        assert {_tvm.tensor_dtype(a) for a in new.args} == {"int8"}
        if new.op.name == "relax.nn.conv2d" and _tvm.tensor_dtype(old.args[0]) == "uint8":
            assert [int(p) for p in new.attrs.padding] == [0, 0, 0, 0]  # explicit -128 pad
    # the interface is unchanged
    assert _tvm.tensor_dtype(omod["main"].params[0]) == _tvm.tensor_dtype(qmod["main"].params[0])


@pytest.mark.host
def test_offset_program_is_bit_exact_with_numpy_reference(program):
    graph, plan, qmod, omod = program
    rng = np.random.default_rng(11)
    for _ in range(3):
        x = rng.standard_normal((1, 3, 16, 16)).astype("float32")
        if not plan.input_signed:
            x = np.abs(x) * 2  # also exercises saturation at 255
        q = quantize_input(x, plan)
        arg = q.astype("int8" if plan.input_signed else "uint8")
        got = _run(omod, arg)[0]
        assert np.array_equal(got, run_reference(graph, plan, q))
        assert np.array_equal(got, _run(qmod, arg)[0])


def test_offset_program_audit_only_8bit_macs(program):
    _, _, qmod, omod = program
    _, before = lower_program(qmod, "x86")
    _, after = lower_program(omod, "arm")
    assert after.wide_multiplies == 0
    assert after.macs_8bit == before.macs_8bit > 0


@pytest.mark.host
def test_other_consumers_and_extreme_values_stay_exact():
    """u feeds a padded conv, a dense-like matmul *and* the output; the conv result feeds its
    bias add *and* the output: all outputs unchanged, for u over the full [0, 255] range."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 3, 3, 3)).astype("int8")
    wm = rng.integers(-127, 128, (6, 5)).astype("int8")
    b = rng.integers(-1000, 1000, (1, 4, 1, 1)).astype("int32")
    bb = relax.BlockBuilder()
    t = relax.Var("t", _tvm.TensorType((1, 3, 5, 6), "int32"))
    with bb.function("main", [t]):
        with bb.dataflow():
            c = bb.emit(R.clip(t, 0, 255), "c")
            u = bb.emit(R.astype(c, "uint8"), "u")
            acc = bb.emit(R.nn.conv2d(u, relax.const(w), padding=[1, 2, 0, 1],
                                      out_dtype="int32"), "acc")
            y = bb.emit(R.add(relax.const(b), acc), "y")  # bias first: add is not commutative
            mm = bb.emit(R.matmul(u, relax.const(wm), out_dtype="int32"), "mm")
            out = bb.emit_output(relax.Tuple([y, acc, R.astype(u, "int32"), mm]))
        bb.emit_func_output(out)
    mod = bb.get()
    omod = OffsetUnsignedActivations(mod)
    assert not has_unsigned_dot(omod)
    x = rng.integers(-300, 600, (1, 3, 5, 6)).astype("int32")
    x.flat[:4] = [0, 255, -1, 256]
    for got, want in zip(_run(omod, x), _run(mod, x)):
        assert np.array_equal(got, want)


def test_only_int8_targets_are_offset(program):
    _, _, qmod, _ = program
    assert offset_for_target(qmod, get_target("x86")) is qmod
    for name in ("arm", "arm-dotprod", "armv7"):
        assert TARGETS[name].activations == "int8"
        assert not has_unsigned_dot(offset_for_target(qmod, TARGETS[name]))


def _requantize_into_conv(bb, s, shift, seed, high=None):
    """``s`` (int32) -> ties-to-even shift by ``shift`` (per channel) -> [a ReLU6's bound
    ``high`` per channel] -> clip to [0, 255] -> uint8 -> a 1x1 conv to 4 channels: the offset
    of that conv's input meets the rounding."""
    from f8tvm.passes.quantize_to_integer import emit_rounding_shift

    c = len(shift)
    w = np.random.default_rng(seed).integers(-127, 128, (4, c, 1, 1)).astype("int8")
    t = emit_rounding_shift(bb, s, np.asarray(shift).reshape(1, c, 1, 1), "rq")
    if high is not None:
        t = bb.emit(R.minimum(t, _bias(high)), "hi")
    u = bb.emit(R.astype(R.clip(t, 0, 255), "uint8"), "u")
    return bb.emit(R.nn.conv2d(u, relax.const(w), out_dtype="int32"), "z")


def _bias(values):
    return relax.const(np.asarray(values, "int32").reshape(1, -1, 1, 1))


def _requantized_pair(shift, bias, w1_scale=1, high=None):
    """x (int8) -> conv -> + bias -> requantized into a second conv
    (:func:`_requantize_into_conv`)."""
    rng = np.random.default_rng(len(shift))
    w1 = (rng.integers(-127, 128, (len(shift), 3, 3, 3)) * w1_scale).clip(-127, 127)

    def body(bb, x):
        acc = bb.emit(R.nn.conv2d(x, relax.const(w1.astype("int8")), padding=[1, 1, 1, 1],
                                  out_dtype="int32"), "acc")
        return _requantize_into_conv(bb, bb.emit(R.add(acc, _bias(bias)), "y"), shift, 1,
                                     high)

    return relax_main((1, 3, 6, 6), "int8", body, name="x")


def _assert_same_results(mod, omod, seed):
    """``omod`` gives ``mod``'s result on an int8 input at both ends and on a random one."""
    rng = np.random.default_rng(seed)
    for x in (np.full((1, 3, 6, 6), -128, "int8"), np.full((1, 3, 6, 6), 127, "int8"),
              rng.integers(-128, 128, (1, 3, 6, 6)).astype("int8")):
        (got,), (want,) = _run(omod, x), _run(mod, x)
        assert np.array_equal(got, want)


def _subtracts(mod):
    return [b for b in bindings(mod["main"]) if isinstance(b.value, relax.Call)
            and b.value.op.name == "relax.subtract"]


@pytest.mark.host
@pytest.mark.parametrize("shift, bias, foldable", [
    ([0, 1, 3, 9], [5, -7, 1000, -100000], True),  # r = 0 too: the offset is a plain add
    ([2, 24, 4, 6], [0, 0, 0, 0], True),  # c - 2**31 still fits, with |x| < 2**19 here
    ([2, 25, 4, 6], [0, 0, 0, 0], False),  # 128 << 25 = 2**32: the constant leaves int32
    ([2, 24, 4, 6], [0, -9_000_000, 0, 0], False),  # x + c - 2**31 could pass -2**31
])
def test_offset_goes_into_the_rounding_constant_where_int32_holds(shift, bias, foldable):
    """s = u - 128 for u = uint8(clip(RQ(x), 0, 255)): the -128 is folded into RQ's rounding
    constant (no subtract left) where x + c - (128 << r) provably fits int32, else it stays a
    subtract; bit-exact either way, over inputs at both ends of int8 and random ones."""
    mod = _requantized_pair(shift, bias)
    omod = OffsetUnsignedActivations(mod)
    assert not has_unsigned_dot(omod)
    assert (not _subtracts(omod)) == foldable
    _assert_same_results(mod, omod, seed=1)


def _residual_pair(shift, bias, pool):
    """Two convs of x (int8) summed as a residual stream is (``y1 + (y2 << 1)``), max-pooled
    with ``pool``, then requantized into a third conv: the bound that lets the offset into the
    rounding constant comes through the sum, the shift and the pool.  ``bias`` None: the last
    channel's bias puts the sum's least value 100000 above int32's minimum (the program cannot
    wrap; the offset, ``128 << shift``, would)."""
    rng = np.random.default_rng(3)
    w1, w2 = (rng.integers(-127, 128, (len(shift), 3, 3, 3)).astype("int8") for _ in range(2))
    if bias is None:
        least = [np.minimum(w.astype(np.int64) * -128, w.astype(np.int64) * 127).sum(
            axis=(1, 2, 3)) for w in (w1, w2)]
        bias = [0] * len(shift)
        bias[-1] = int(-(2**31) + 100_000 - least[0][-1] - 2 * least[1][-1])

    def body(bb, x):
        y1, y2 = (bb.emit(R.nn.conv2d(x, relax.const(w), padding=[1, 1, 1, 1],
                                      out_dtype="int32")) for w in (w1, w2))
        s = bb.emit(R.add(R.add(y1, _bias(bias)), R.left_shift(y2, relax.const(1, "int32"))),
                    "s")
        if pool:
            s = bb.emit(R.nn.max_pool2d(s, (3, 3), padding=(1, 1, 1, 1)), "pool")
        return _requantize_into_conv(bb, s, shift, 5)

    return relax_main((1, 3, 6, 6), "int8", body, name="x")


@pytest.mark.host
@pytest.mark.parametrize("bias, foldable", [([5, -7, 1000], True), (None, False)])
@pytest.mark.parametrize("pool", [False, True])
def test_offset_into_the_rounding_through_a_residual_sum(bias, foldable, pool):
    """The lower bound of a residual sum is the sum of its terms' bounds (a max pool keeps its
    input's): the -128 goes into the rounding constant there too, unless the sum's bound
    leaves no room below int32's minimum; bit-exact either way."""
    mod = _residual_pair([3, 7, 12], bias, pool)
    omod = OffsetUnsignedActivations(mod)
    assert (not _subtracts(omod)) == foldable
    _assert_same_results(mod, omod, seed=4)


def _shifted_minimums(mod):
    """The ``minimum`` bindings of ``mod`` whose result a ``right_shift`` reads."""
    values = {b.var: b.value for b in bindings(mod["main"])}
    return [values[v.args[0]] for v in values.values()
            if isinstance(v, relax.Call) and v.op.name == "relax.right_shift"
            and isinstance(values.get(v.args[0]), relax.Call)
            and values[v.args[0]].op.name == "relax.minimum"]


@pytest.mark.host
@pytest.mark.parametrize("shift, high, moved", [
    ([0, 1, 3, 9], [40, 100, 200, 255], True),
    ([2, 24, 4, 6], [6, 255, 0, 128], True),  # (255 - 127) << 24 = 2**31: the bound is 2**31 - 1
    ([2, 25, 4, 6], [6, 255, 0, 128], False),  # the rounding constant leaves int32
])
def test_relu6_bound_goes_before_the_shift(shift, high, moved):
    """s = uint8(clip(minimum(RQ(x), H), 0, 255)) - 128: the -128 goes into the rounding
    constant and the bound before the shift, ``minimum(w, ((H - 127) << r) - 1) >> r`` (no
    subtract, and a minimum the shift reads), where the constant fits int32 (then the bound
    does too, for H <= 255); else a subtract stays.  Bit-exact either way, over inputs at
    both ends of int8 (past every bound) and random ones."""
    mod = _requantized_pair(shift, [5, -7, 1000, -100], w1_scale=3, high=high)
    omod = OffsetUnsignedActivations(mod)
    assert (not _subtracts(omod)) == moved
    assert len(_shifted_minimums(omod)) == int(moved)
    if moved:
        r = np.asarray(shift)
        want = ((np.asarray(high) - 127) << r) - 1
        got = _tvm.const_value(_shifted_minimums(omod)[0].args[1]).reshape(-1)
        assert np.array_equal(got, want)
    _assert_same_results(mod, omod, seed=2)
