"""Relax passes one by one: FoldBatchNorm, QuantizeToInteger, AuditMultiplies."""

import numpy as np
import pytest
import torch
from conftest import lower_program, lower_unscheduled, make_small_net, relax_main, run_relax

from f8tvm.api import import_model
from f8tvm.calibrate import calibrate
from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import bindings
from f8tvm.core.errors import AuditError, UnsupportedOpError
from f8tvm.core.graph import extract_graph
from f8tvm.frontend.torch_import import import_torch
from f8tvm.passes.audit_multiplies import audit_module, check_module
from f8tvm.passes.fold_batchnorm import FoldBatchNorm
from f8tvm.passes.quantize_to_integer import QuantizeToInteger
from f8tvm.reference import quantize_input, run_reference


def _ops(mod):
    out = []
    for b in bindings(mod["main"]):
        if isinstance(b.value, relax.Call):
            out.append((_tvm.var_name(b.var), b.value.op.name))
    return out


def _run(mod, *args):
    return run_relax(mod, *args)[0]


@pytest.mark.host
def test_fold_batchnorm_keeps_names_and_numerics(small_net):
    x = torch.randn(1, 3, 16, 16)
    mod, _ = import_torch(small_net, x)
    assert any(op == "relax.nn.batch_norm" for _, op in _ops(mod))
    folded = FoldBatchNorm(mod)
    ops = _ops(folded)
    assert not any(op == "relax.nn.batch_norm" for _, op in ops)
    assert ("conv1", "relax.nn.conv2d") in ops  # the conv keeps its module's name
    want = small_net(x).detach().numpy()
    np.testing.assert_allclose(_run(folded, x.numpy()), want, rtol=1e-4, atol=1e-5)


@pytest.fixture(scope="module")
def quantized():
    torch.manual_seed(0)
    net = make_small_net()
    x = torch.randn(1, 3, 16, 16)
    mod, sources = import_model(net, x)
    graph = extract_graph(mod, sources)
    plan = calibrate(graph, [np.random.default_rng(0).standard_normal((4, 3, 16, 16))
                             .astype("float32")])
    return net, x, mod, graph, plan, QuantizeToInteger(graph, plan)(mod)


def test_quantize_to_integer_structure(quantized):
    _, _, _, graph, plan, qmod = quantized
    func = qmod["main"]
    assert _tvm.tensor_dtype(func.params[0]) in ("int8", "uint8")
    convs = 0
    for b in bindings(func):
        v = b.value
        if not isinstance(v, relax.Call):
            continue
        dt = _tvm.tensor_dtype(b.var)
        assert not dt.startswith("float"), f"float op {v.op.name} in the integer program"
        assert v.op.name not in ("relax.multiply", "relax.divide"), v.op.name
        if v.op.name in ("relax.nn.conv2d", "relax.matmul"):
            convs += 1
            assert dt == "int32"
            assert {_tvm.tensor_dtype(a) for a in v.args} <= {"int8", "uint8"}
    assert convs == len(graph.layers()) == 4


@pytest.mark.host
def test_quantize_to_integer_is_bit_exact_with_numpy_reference(quantized):
    _, _, _, graph, plan, qmod = quantized
    rng = np.random.default_rng(3)
    for _ in range(3):
        x = rng.standard_normal((1, 3, 16, 16)).astype("float32")
        q = quantize_input(x, plan)
        got = _run(qmod, q.astype("int8" if plan.input_signed else "uint8"))
        assert np.array_equal(got, run_reference(graph, plan, q))


@pytest.mark.host
def test_integer_program_tracks_float_model(quantized):
    net, _, _, graph, plan, qmod = quantized
    x = np.random.default_rng(5).standard_normal((1, 3, 16, 16)).astype("float32")
    q = quantize_input(x, plan)
    got = _run(qmod, q.astype("int8" if plan.input_signed else "uint8"))
    fl, eta = plan.output_format(graph)
    y = got * eta * 2.0**-fl
    want = net(torch.from_numpy(x)).detach().numpy()
    assert np.corrcoef(y.ravel(), want.ravel())[0, 1] > 0.99


def test_audit_counts_8bit_macs(quantized):
    _, _, _, graph, _, qmod = quantized
    _, report = lower_program(qmod, "x86")
    macs = sum(int(np.prod(n.shape)) * int(np.prod(n.weight.shape[1:])) for n in graph.layers())
    assert report.macs_8bit == macs
    assert report.wide_multiplies == 0 and report.shifts > 0


def test_audit_fails_on_a_wide_multiply():
    mod = relax_main((1, 8), "int32", lambda bb, x: bb.emit(relax.op.multiply(x, x), "wide"),
                     name="x")
    lowered = lower_unscheduled(mod)
    report = audit_module(lowered)
    assert report.wide_multiplies == 1 and report.macs_8bit == 0
    assert report.violations[0]["operand_bits"] == [32, 32]
    with pytest.raises(AuditError, match="wide multiply"):
        check_module(lowered)


def test_audit_counts_loops_inside_a_block():
    """A block whose body loops (as a tensor intrinsic's may) executes its products once per
    loop iteration: the MAC count multiplies by the loop extents inside the block too."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def dot(a: T.Buffer((8, 4), "int8"), b: T.Buffer((8, 4), "uint8"),
            c: T.Buffer((8,), "int32")):
        for i in range(8):
            with T.sblock("dot"):
                vi = T.axis.spatial(8, i)
                T.reads(a[vi, 0:4], b[vi, 0:4])
                T.writes(c[vi])
                c[vi] = 0
                for k in range(4):
                    c[vi] = c[vi] + T.Cast("int32", a[vi, k]) * T.Cast("int32", b[vi, k])

    report = audit_module(tvm.IRModule({"dot": dot}))
    assert report.macs_8bit == 8 * 4 and report.wide_multiplies == 0


@pytest.mark.parametrize("big", [False, True])
def test_audit_reads_the_values_of_widened_weights(big):
    """int16 weights (AVX2 keeps some widened) count as 8-bit only if the constants bound at
    every call hold 8-bit values."""
    from f8tvm.passes.packed_kernels import conv2d_nchwc

    w = np.random.default_rng(0).integers(-128, 128, (2, 1, 1, 1, 4, 8, 2)).astype("int16")
    if big:
        w[1, 0, 0, 0, 3, 5, 1] = 300  # a 9-bit weight: the multiply is not 8-bit any more
    mod = relax_main((1, 1, 4, 4, 8), "uint8", lambda bb, x: bb.emit(bb.call_te(
        conv2d_nchwc, x, relax.const(w), [1, 1], [0, 0, 0, 0], [1, 1], 0,
        primfunc_name_hint="conv2d_nchwc")), name="x")
    lowered = lower_unscheduled(mod)
    report = audit_module(lowered)
    if big:
        assert report.wide_multiplies == 1 and report.macs_8bit == 0
        assert report.violations[0]["operand_bits"] == [8, 16]
    else:
        assert report.wide_multiplies == 0 and report.macs_8bit == 16 * 16 * 8


@pytest.mark.parametrize("pad_value", [0, 300])
def test_audit_reads_the_stores_of_widened_activations(pad_value):
    """An int16 copy of 8-bit activations (AVX2 widens a conv's padded input once) counts as
    8-bit because every store into it writes an 8-bit value; padding it with 300 makes the
    copy 9-bit, and the conv's multiply wide."""
    from f8tvm.passes.packed_kernels import conv2d_nchwc

    w = np.random.default_rng(0).integers(-128, 128, (2, 1, 3, 3, 4, 8, 2)).astype("int8")
    mod = relax_main((1, 1, 4, 4, 8), "uint8", lambda bb, x: bb.emit(bb.call_te(
        conv2d_nchwc, x, relax.const(w), [1, 1], [1, 1, 1, 1], [1, 1], pad_value, True,
        primfunc_name_hint="conv2d_nchwc")), name="x")
    lowered = lower_unscheduled(mod)
    report = audit_module(lowered)
    if pad_value > 255:
        assert report.wide_multiplies == 1 and report.macs_8bit == 0
        assert report.violations[0]["operand_bits"] == [16, 8]  # the int16 copy
    else:
        assert report.wide_multiplies == 0 and report.macs_8bit == 16 * 16 * 8 * 9


def test_unsupported_op_names_op_and_module():
    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 4, 3)

        def forward(self, x):
            return torch.sigmoid(self.conv(x))

    with pytest.raises(UnsupportedOpError, match=r"sigmoid.*test_passes.py"):
        mod, sources = import_model(Net().eval(), torch.randn(1, 3, 8, 8))
        extract_graph(mod, sources)


class _PoolNet(torch.nn.Module):
    """A stem pool feeding only convs (8-bit pool) and one feeding a residual add (int32)."""

    def __init__(self):
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.pool = torch.nn.MaxPool2d(3, 2, 1)
        self.a = torch.nn.Conv2d(8, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 8, 1)
        self.pool2 = torch.nn.MaxPool2d(2, 2)
        self.c = torch.nn.Conv2d(8, 8, 3, padding=1)

    def forward(self, x):
        y = self.pool(torch.relu(self.stem(x)))
        y = torch.relu(self.a(y)) + self.b(y)  # both pool consumers are convs
        z = self.pool2(y)
        return self.c(z) + z  # pool2 feeds the residual stream


def _pool_dtypes(func):
    # keyed by module name (a binding may carry a suffix such as ``pool_pre``)
    return {_tvm.var_name(b.var).split("_pre")[0]: _tvm.tensor_dtype(b.var) for b in bindings(func)
            if isinstance(b.value, relax.Call) and b.value.op.name == "relax.nn.max_pool2d"}


@pytest.mark.host
@pytest.mark.parametrize("scheme", ["f8net", "mse"])
def test_max_pool_runs_on_8bit_when_all_consumers_quantize(scheme):
    net = _PoolNet().eval()
    x = torch.randn(1, 3, 16, 16)
    mod, sources = import_model(net, x)
    graph = extract_graph(mod, sources)
    rng = np.random.default_rng(1)
    plan = calibrate(graph, [rng.standard_normal((4, 3, 16, 16)).astype("float32")], scheme)
    qmod = QuantizeToInteger(graph, plan)(mod)
    dtypes = _pool_dtypes(qmod["main"])
    # a and b read the pool at one format (same source, same F8Net rule) -> 8-bit pool
    assert dtypes["pool"] in ("int8", "uint8")
    assert dtypes["pool2"] == "int32"
    for _ in range(3):
        q = quantize_input(rng.standard_normal((1, 3, 16, 16)).astype("float32"), plan)
        got = _run(qmod, q.astype("int8" if plan.input_signed else "uint8"))
        assert np.array_equal(got, run_reference(graph, plan, q))
