"""ClipAfterRequantize: activation clips applied after the requantize, bit for bit."""

import numpy as np
import pytest

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import bindings
from f8tvm.core.fixedpoint import rq_reference
from f8tvm.passes.clip_after_requantize import clip_after_requantize, value_bounds
from f8tvm.passes.quantize_to_integer import emit_requantize

R = relax.op
C_IN, C_OUT, HW = 6, 5, 4


def _program(w, bias, low, high, shift, signed):
    """q (uint8) -> 1x1 conv + bias -> maximum(low) [-> minimum(high)] -> requantize."""
    bb = relax.BlockBuilder()
    q = relax.Var("q", _tvm.TensorType((1, C_IN, HW, HW), "uint8"))
    with bb.function("main", [q]):
        with bb.dataflow():
            acc = bb.emit(R.nn.conv2d(q, relax.const(w.astype("int8")), out_dtype="int32"),
                          "acc")
            x = bb.emit(R.add(acc, relax.const(bias.astype("int32").reshape(1, -1, 1, 1))), "x")
            t = bb.emit(R.maximum(x, relax.const(np.int32(low))), "relu")
            if high is not None:
                t = bb.emit(R.minimum(t, relax.const(high.astype("int32").reshape(1, -1, 1, 1))),
                            "act")
            out = emit_requantize(bb, t, shift, signed, "next")
            gv = bb.emit_output(relax.Tuple([out]))
        bb.emit_func_output(gv)
    return tvm.IRModule({"main": bb.get()["main"]})


def _oracle(q, w, bias, low, high, shift, signed):
    acc = np.einsum("oi,nihw->nohw", w[:, :, 0, 0].astype(np.int64), q.astype(np.int64))
    x = acc + bias.reshape(1, -1, 1, 1)
    t = np.maximum(x, low)
    if high is not None:
        t = np.minimum(t, high.reshape(1, -1, 1, 1))
    return rq_reference(t, np.asarray(shift).reshape(1, -1, 1, 1), signed)


def _run(mod, q):
    from conftest import run_relax

    return run_relax(mod, q)[0]


def _ops(mod):
    return [b.value.op.name for b in bindings(mod["main"]) if isinstance(b.value, relax.Call)]


def _inputs(rng):
    yield np.zeros((1, C_IN, HW, HW), np.uint8)
    yield np.full((1, C_IN, HW, HW), 255, np.uint8)
    for _ in range(3):
        yield rng.integers(0, 256, (1, C_IN, HW, HW)).astype(np.uint8)


# shifts per channel: right shifts (with ties), no shift, left shifts
SHIFTS = np.array([9, 4, 0, -2, 11])


@pytest.mark.host
@pytest.mark.parametrize("signed", [False, True])
@pytest.mark.parametrize("upper", ["relu", "relu6_past_range", "relu6_inside_range"])
def test_moved_clip_is_bit_exact(signed, upper):
    rng = np.random.default_rng(0)
    w = rng.integers(-128, 128, (C_OUT, C_IN, 1, 1))
    bias = rng.integers(-20000, 20000, C_OUT)
    high = {"relu": None,
            # RQ(high) beyond the 8-bit range in every channel: the clip disappears entirely
            "relu6_past_range": np.array([300 << 9, 300 << 4, 300, 300 >> 2, 300 << 11]),
            # inside it in some channels (ties at the bound included): a per-channel minimum
            "relu6_inside_range": np.array([(100 << 9) + 256, 70 << 4, 50, 20, 255 << 11])}[upper]
    mod = _program(w, bias, 0, high, SHIFTS, signed)
    stats = {}
    new = clip_after_requantize(mod, stats)
    assert stats == dict(moved=1, unbounded=0, empty=0)
    ops = _ops(new)
    # the ReLU's maximum is gone (it stays for a signed output, whose range starts below 0); a
    # minimum is left only when some channel's bound is inside the 8-bit range, and then it
    # reads the requantized value, after the shifts
    assert ops.count("relax.maximum") == signed
    assert ops.count("relax.minimum") == (upper == "relu6_inside_range")
    if upper == "relu6_inside_range":
        assert ops.index("relax.minimum") > max(i for i, o in enumerate(ops)
                                                if o == "relax.right_shift")
    for q in _inputs(rng):
        want = _oracle(q, w, bias, 0, high, SHIFTS, signed)
        assert np.array_equal(_run(mod, q), want)
        assert np.array_equal(_run(new, q), want)


def test_possible_overflow_is_left_alone():
    # a bias near the int32 limit: RQ of the unclipped sum could wrap, the clip must stay first
    rng = np.random.default_rng(1)
    w = rng.integers(-128, 128, (C_OUT, C_IN, 1, 1))
    bias = np.full(C_OUT, 2**31 - 1000)
    mod = _program(w, bias, 0, None, SHIFTS, False)
    stats = {}
    new = clip_after_requantize(mod, stats)
    assert stats == dict(moved=0, unbounded=1, empty=0)
    assert _ops(new) == _ops(mod)


def test_empty_interval_is_left_alone():
    # maximum(x, low) with RQ(low) above 255: every output is 255, which one merged clip
    # [max(0, RQ(low)), min(255, RQ(high))] could not express
    rng = np.random.default_rng(2)
    w = rng.integers(-128, 128, (C_OUT, C_IN, 1, 1))
    mod = _program(w, np.zeros(C_OUT), 300 << 11, None, np.full(C_OUT, 11), False)
    stats = {}
    clip_after_requantize(mod, stats)
    assert stats == dict(moved=0, unbounded=0, empty=1)


def test_value_bounds_follow_the_program():
    w = np.zeros((C_OUT, C_IN, 1, 1), np.int64)
    w[:, 0, 0, 0] = np.arange(C_OUT) - 2  # |w| sums 2, 1, 0, 1, 2
    w[1, 1, 0, 0] = -128
    bias = np.arange(C_OUT) * 10
    mod = _program(w, bias, 0, None, np.full(C_OUT, 3), False)
    bounds = {_tvm.var_name(v): b for v, b in value_bounds(mod["main"]).items()}
    np.testing.assert_array_equal(bounds["acc"].ravel(), 255 * np.array([2, 129, 0, 1, 2]))
    np.testing.assert_array_equal(bounds["x"].ravel(),
                                  255 * np.array([2, 129, 0, 1, 2]) + bias)
    assert int(bounds["next_q"]) == 255  # a cast to 8 bits
