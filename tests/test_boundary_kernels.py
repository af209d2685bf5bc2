"""The float boundary's kernels (``schedules/boundary.py``): the library quantizes a float input
exactly as the NumPy path does and multiplies nothing doing it; it dequantizes the output to the
same bits as NumPy, a float multiply the audit counts apart from the integer program's; ``run``
uses them only where it may."""

import json

import numpy as np
import pytest
import torch
from conftest import make_small_net

import f8tvm
from f8tvm import runtime
from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.errors import InputError
from f8tvm.passes.audit_multiplies import audit_module
from f8tvm.schedules import boundary
from f8tvm.targets import get_target

SIZE = 16


def reference(x, fl, signed):
    """rint(x * 2**fl), ties to even, clamped: in float64, where the product is exact."""
    lo, hi = (-127, 127) if signed else (0, 255)
    return np.clip(np.rint(x.astype(np.float64) * 2.0**fl), lo, hi)


def hard_values(shape, fl, rng):
    """Every tie of the 8-bit range and its neighbours, zeros, subnormals, huge values, and
    random magnitudes from 2**-40 to 2**12; in an array 4 bytes off any alignment."""
    n = int(np.prod(shape))
    ties = np.ldexp(np.arange(-520, 521, dtype=np.float32) / 2, -fl).astype(np.float32)
    special = np.array(
        [
            0.0,
            -0.0,
            1e-45,
            -1e-45,
            1e-40,
            -1e-39,
            3e38,
            -3e38,
            1e20,
            -1e20,
            np.ldexp(0.5, -fl),
            -np.ldexp(0.5, -fl),
        ],
        np.float32,
    )
    values = np.concatenate(
        [
            ties,
            np.nextafter(ties, np.float32(np.inf)),
            np.nextafter(ties, np.float32(-np.inf)),
            special,
        ]
    )
    rand = (rng.standard_normal(n) * np.exp2(rng.integers(-40, 12, n))).astype(np.float32)
    rand[: values.size] = values
    buf = np.empty(n + 1, np.float32)
    x = buf[1:].reshape(shape)
    x[...] = rand[rng.permutation(n)].reshape(shape)
    return x


def compiled_kernel(shape, fl, signed):
    """The kernel alone, compiled for this CPU; returns ``run(x) -> (q, flag)``."""
    import tvm_ffi

    func = boundary.quantize_input(shape, fl, signed)
    lib = tvm.compile(tvm.IRModule({boundary.QUANTIZE_INPUT: func}), target=get_target("x86").tvm())
    kernel = lib.mod.get_function(boundary.QUANTIZE_INPUT)

    def run(x):
        q = tvm.runtime.empty(shape, "int8" if signed else "uint8")
        flag = np.full(1, -1, np.int32)
        kernel(tvm_ffi.from_dlpack(x, require_alignment=0), q, tvm_ffi.from_dlpack(flag))
        return q.numpy(), int(flag[0])

    return run


def exponent_field(x):
    """The reference of the kernel's flag: the largest exponent field of ``x``'s values."""
    return int((np.ascontiguousarray(x).view(np.int32) & boundary.EXPONENT).max())


@pytest.mark.host
@pytest.mark.parametrize("fl", [-3, 0, 5, 12])
@pytest.mark.parametrize("signed", [True, False])
def test_the_kernel_quantizes_as_numpy_does(fl, signed):
    shape = (1, 3, 40, 36)
    x = hard_values(shape, fl, np.random.default_rng(fl + 10 + 100 * signed))
    assert x.ctypes.data % 64 != 0  # the kernel must not assume an aligned input
    got, flag = compiled_kernel(shape, fl, signed)(x)
    want = reference(x, fl, signed)
    bad = np.flatnonzero(got.ravel() != want.ravel())
    assert bad.size == 0, (
        f"{bad.size} values differ, e.g. x={x.ravel()[bad[:4]]}: "
        f"{got.ravel()[bad[:4]]} != {want.ravel()[bad[:4]]}"
    )
    # every value is finite (3e38 the largest): the flag is their largest exponent field
    assert flag == exponent_field(x) == 0x7F000000


@pytest.mark.host
@pytest.mark.parametrize("shape", [(1, 3, 40, 36), (2, 5, 7), (3, 10)])
def test_the_kernel_flags_infinity_and_nan_wherever_they_are(shape):
    """36 (9 lanes of 4), 7 and 10 pixels a row (no lanes: one value at a time); each
    non-finite kind at the first value, the last, and inside a row; NaN of both signs and with
    a payload; the largest finite floats are not flagged."""
    run = compiled_kernel(shape, 4, False)
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    n = x.size
    payload = np.array([0x7FC00001, 0xFFC00000, 0x7F800001], np.uint32).view(np.float32)
    big = np.finfo(np.float32).max
    for value in (np.inf, -np.inf, np.nan, *payload, big, -big):
        for at in (0, n - 1, n // 2 + 1):
            y = x.copy()
            y.reshape(-1)[at] = value
            q, flag = run(y)
            assert flag == exponent_field(y), (value, at)
            assert (flag == boundary.EXPONENT) == (not np.isfinite(value)), (value, at)
            finite = np.ones(n, bool)
            finite[at] = False
            with np.errstate(invalid="ignore"):  # NaN's cast, not compared
                want = reference(y, 4, False).reshape(-1)
            assert np.array_equal(q.reshape(-1)[finite], want[finite])


@pytest.mark.unit
def test_the_kernel_multiplies_nothing():
    func = boundary.quantize_input((1, 3, 8, 8), 5, True)
    report = audit_module(tvm.IRModule({boundary.QUANTIZE_INPUT: func}))
    assert report.functions == 1
    assert report.wide_multiplies == 0 and report.macs_8bit == 0
    # scaling by 2**fl is an addition to the exponent field, not a multiply
    muls = []
    _tvm.post_order_visit(
        func.body,
        lambda n: (
            muls.append(n)
            if _tvm.node_kind(n) == "Mul" and _tvm.expr_dtype(n).startswith("float")
            else None
        ),
    )
    assert not muls
    assert boundary.quantize_input((1, 3, 8, 8), boundary.MAX_FL + 1, True) is None
    assert boundary.quantize_input((8,), 5, True) is None  # one axis: no rows to split


def compiled_output_kernel(shape):
    """The output's kernel alone, compiled for this CPU; returns ``run(acc, scale) -> y``."""
    func = boundary.dequantize_output(shape)
    lib = tvm.compile(tvm.IRModule({boundary.DEQUANTIZE_OUTPUT: func}),
                      target=get_target("x86").tvm())
    kernel = lib.mod.get_function(boundary.DEQUANTIZE_OUTPUT)

    def run(acc, scale):
        # TVM's tensors: the kernel's vector stores assume TVM's alignment (the runtime's are)
        y = tvm.runtime.tensor(np.full(shape, np.nan, np.float32))
        kernel(tvm.runtime.tensor(acc), tvm.runtime.tensor(scale), y)
        return y.numpy()

    return run


def hard_accumulators(shape, rng):
    """int32 outputs: both extremes, 0, +-1, powers of two and their neighbours, and random
    values of every magnitude."""
    n = int(np.prod(shape))
    powers = np.concatenate([[0, 1, -1, 2**31 - 1, -2**31]]
                            + [[2**k, 2**k + 1, 2**k - 1, -2**k, -2**k - 1] for k in range(31)])
    acc = (rng.integers(-2**31, 2**31, n, dtype=np.int64) >> rng.integers(0, 31, n)).astype(
        np.int32)
    acc[:powers.size] = powers[:n].astype(np.int64).clip(-2**31, 2**31 - 1)
    return acc[rng.permutation(n)].reshape(shape)


@pytest.mark.host
@pytest.mark.parametrize("shape", [(1, 1000), (2, 5, 3, 7), (1, 4, 128, 128)])
def test_the_output_kernel_dequantizes_as_numpy_does(shape):
    """Per channel, ``float32(float64(acc) * scale[c])``: bit for bit what NumPy computes, with
    factors ``eta * 2**-fl`` of every size (and a tie-heavy eta of 1.0); the largest shape takes
    the parallel loop."""
    rng = np.random.default_rng(7)
    run = compiled_output_kernel(shape)
    acc = hard_accumulators(shape, rng)
    channels = shape[1]
    broadcast = (1, -1) + (1,) * (len(shape) - 2)
    for eta, fl in ((1.0, rng.integers(-30, 40, channels)), (0.7310585786, np.full(channels, 9)),
                    (1.37e-3, rng.integers(-5, 5, channels))):
        scale = (eta * np.exp2(-fl.astype(np.float64))).astype(np.float64)
        want = (acc.astype(np.float64) * scale.reshape(broadcast)).astype(np.float32)
        got = run(acc, scale)
        assert np.array_equal(got.view(np.int32), want.view(np.int32))
    assert boundary.dequantize_output((1000,)) is None  # one axis: no channel axis


@pytest.mark.unit
def test_the_output_kernels_multiply_is_counted_apart_only_outside_the_program():
    shape = (1, 10, 4, 4)
    func = boundary.dequantize_output(shape)
    name = boundary.DEQUANTIZE_OUTPUT
    alone = tvm.IRModule({name: func})
    report = audit_module(alone, boundary=(name,))
    assert report.wide_multiplies == 0 and report.macs_8bit == 0
    assert report.boundary_multiplies == 160 and report.boundary_kernels == {name: 160}
    # not named as the boundary, or called by a program, it is a wide multiply like any other
    assert audit_module(alone).wide_multiplies == 1
    bb = relax.BlockBuilder()
    acc = relax.Var("acc", relax.TensorType(shape, "int32"))
    scale = relax.Var("scale", relax.TensorType((10,), "float64"))
    with bb.function("main", [acc, scale]):
        gv = bb.add_func(func, name)
        out = bb.emit(relax.call_tir(gv, [acc, scale], relax.TensorType(shape, "float32")))
        bb.emit_func_output(out)
    called = audit_module(bb.get(), boundary=(name,))
    assert called.wide_multiplies == 1 and called.boundary_multiplies == 0
    assert called.violations[0]["function"] == name


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    cm = f8tvm.compile(
        make_small_net(),
        torch.zeros(1, 3, SIZE, SIZE),
        target="x86",
        calib=[torch.randn(2, 3, SIZE, SIZE)],
    )
    so, meta = cm.export(str(tmp_path_factory.mktemp("small") / "small.so"))
    return cm, so, meta


def numpy_path(m, x):
    acc, _ = m.run_int(m.quantize(x))
    return m.dequantize(acc)


@pytest.mark.host
def test_run_uses_the_librarys_kernel_with_the_same_result(small, monkeypatch):
    cm, so, meta_path = small
    meta = json.load(open(meta_path))
    assert meta["input"]["kernel"] == boundary.QUANTIZE_INPUT
    m = runtime.load(so)
    rng = np.random.default_rng(1)
    calls = []
    real = m._quantize_on_device
    monkeypatch.setattr(m, "_quantize_on_device", lambda x: calls.append(r := real(x)) or r)
    shape = (1, 3, SIZE, SIZE)
    x = (rng.standard_normal(shape) * 2).astype(np.float32)
    fortran = np.asfortranarray(x)
    huge = x.copy()
    huge[0, 0, :, :] = 3e38  # finite (scaled, they overflow to inf and clamp): the kernel
    huge[0, 1, :, :] = -3e38
    nan = x.copy()
    nan[0, 2, 0, 0] = np.nan  # not finite: the kernel says so, and the NumPy path refuses it
    inf = x.copy()
    inf[0, 0, SIZE - 1, SIZE - 1] = -np.inf
    for inp, kernel in ((x, True), (fortran, True), (huge, True)):
        calls.clear()
        assert np.array_equal(m.run(inp), numpy_path(m, inp))
        assert calls == [kernel]
    for inp, message in ((nan, "1 NaN and 0 infinite"), (inf, "0 NaN and 1 infinite")):
        calls.clear()
        with pytest.raises(InputError, match=message):
            m.run(inp)
        assert calls == [False]
        # asked to, the NumPy path clamps it; and the next finite input takes the kernel again
        assert np.array_equal(m.run(inp, allow_nonfinite=True),
                              m.dequantize(m.run_int(m.quantize(inp, allow_nonfinite=True))[0]))
        calls.clear()
        assert np.array_equal(m.run(x), numpy_path(m, x)) and calls == [True]
    assert np.array_equal(cm.run(x), m.run(x))
    # .jsons written before the kernel existed, and before it had the finite flag (its kernel
    # then took two arguments): the NumPy path, the same result
    for drop in (("kernel", "finite_flag"), ("finite_flag",)):
        old = dict(meta, input={k: v for k, v in meta["input"].items() if k not in drop})
        legacy = runtime.Module(tvm.runtime.load_module(so), old)
        assert legacy._quantize_kernel is None
        assert np.array_equal(legacy.run(x), m.run(x))


@pytest.mark.host
def test_dequantize_is_acc_times_eta_times_two_to_minus_fl(small):
    """The float output: ``acc * eta * 2**-fl`` in float64, then float32, with one fl for the
    output or one per channel (the runtime folds ``eta * 2**-fl`` into one factor)."""
    _, so, meta_path = small
    meta = json.load(open(meta_path))
    shape = meta["output"]["shape"]
    rng = np.random.default_rng(5)
    acc = rng.integers(-2**31, 2**31, shape, dtype=np.int64).astype(np.int32)
    acc.reshape(-1)[:2] = (2**31 - 1, -2**31)
    channels = shape[1]
    for fl, eta in ((7, 1.0), (-3, 0.7310585786), (list(range(-4, channels - 4)), 1.37)):
        m = runtime.Module(tvm.runtime.load_module(so),
                           dict(meta, output=dict(meta["output"], fl=fl, eta=eta)))
        f = np.asarray(fl, np.float64).reshape((1, -1) + (1,) * (len(shape) - 2))
        want = (acc.astype(np.float64) * eta * np.exp2(-f)).astype(np.float32)
        got = m.dequantize(acc)
        assert got.dtype == np.float32 and np.array_equal(got, want)
        # the library's kernel, with the factors the Module made from that .json
        m._dequantize_kernel(tvm.runtime.tensor(acc), m._scale_arg, m._y_arg)
        assert np.array_equal(m._y.view(np.int32), want.view(np.int32))


@pytest.mark.host
def test_run_dequantizes_with_the_librarys_kernel(small):
    """The build names its output kernel and its audit counts the kernel's multiplies apart
    (one per output value); ``run`` takes the kernel, with NumPy's result, and hands out a new
    array each run; a .json from before the kernel takes NumPy's path."""
    _, so, meta_path = small
    meta = json.load(open(meta_path))
    name = boundary.DEQUANTIZE_OUTPUT
    assert meta["output"]["kernel"] == name
    n = int(np.prod(meta["output"]["shape"]))
    audit = meta["audit"]
    assert audit["wide_multiplies"] == 0 and audit["macs_8bit"] > 0
    assert audit["boundary_multiplies"] == n and audit["boundary_kernels"] == {name: n}
    m = runtime.load(so)
    # the kernel's vector stores assume TVM's alignment: the buffers it gets are TVM's
    assert m._y.ctypes.data % 64 == 0 and m._scale_arg.numpy().dtype == np.float64
    calls = []
    real = m._dequantize_kernel
    m._dequantize_kernel = lambda *a: calls.append(a) or real(*a)
    rng = np.random.default_rng(3)
    x1, x2 = (rng.standard_normal((1, 3, SIZE, SIZE)).astype(np.float32) for _ in range(2))
    y1 = m.run(x1)
    kept = y1.copy()
    y2 = m.run(x2)
    assert len(calls) == 2 and y1.dtype == np.float32
    assert np.array_equal(y1, kept) and not np.array_equal(y1, y2)
    assert np.array_equal(y1, numpy_path(m, x1)) and np.array_equal(y2, numpy_path(m, x2))
    old = dict(meta, output={k: v for k, v in meta["output"].items() if k != "kernel"})
    legacy = runtime.Module(tvm.runtime.load_module(so), old)
    assert legacy._dequantize_kernel is None
    assert np.array_equal(legacy.run(x1), y1)
