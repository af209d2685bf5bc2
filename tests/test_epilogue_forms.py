"""The requantize epilogue's shorter forms: the bias in the accumulators' init
(``schedules/bias.py``) and the rounding's parity bit read by a bit test
(``relay_passes/parity_by_test.py``)."""

import numpy as np
import pytest
import torch
from conftest import make_small_net, relax_main, run_relax

from f8tvm import api, pipeline
from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import bindings, is_call, with_main
from f8tvm.core.fixedpoint import rq_reference
from f8tvm.passes.parity_by_test import parity_by_test
from f8tvm.passes.quantize_to_integer import emit_rounding_shift
from f8tvm.schedules import cpu, find_dot, kernel_block
from f8tvm.targets import get_target

R = relax.op
SIZE = 16


def _ops(func):
    return [b.value.op.name for b in bindings(func) if isinstance(b.value, relax.Call)]


def _module(func):
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def _parity_program(shift, parity):
    def body(bb, x):
        s = bb.emit(R.right_shift(x, relax.const(shift)), "s")
        return bb.emit(R.bitwise_and(s, relax.const(parity)), "lsb")
    return body


def _int32_values(rng, n):
    """Every bit pattern class: random over all of int32, both ends, zero, single bits."""
    singles = np.array([1 << k for k in range(31)] + [-(1 << k) for k in range(32)], np.int64)
    ends = np.array([0, -1, 1, 2**31 - 1, -(2**31), -(2**31) + 1], np.int64)
    return np.concatenate([rng.integers(-(2**31), 2**31, n), singles, ends]).astype("int32")


@pytest.mark.host
def test_parity_bit_by_test_equals_the_shifted_bit_for_every_shift():
    # one channel per shift 0..31, parity 1 except on two channels (0: the bit is never added)
    c = 32
    shift = np.arange(c, dtype="int32").reshape(1, c, 1, 1)
    parity = np.ones((1, c, 1, 1), "int32")
    parity[0, [0, 7], 0, 0] = 0
    values = _int32_values(np.random.default_rng(0), 2000)
    x = np.broadcast_to(values.reshape(1, 1, -1, 1), (1, c, values.size, 1)).copy()
    mod = relax_main(x.shape, "int32", _parity_program(shift, parity))
    stats = {}
    out = parity_by_test(mod["main"], stats)
    assert stats["rewritten"] == 1
    ops = _ops(out)
    assert "relax.right_shift" not in ops and "relax.not_equal" in ops
    want = (x.astype(np.int64) >> shift) & parity
    for m in (mod, _module(out)):
        assert np.array_equal(run_relax(m, x)[0], want)


@pytest.mark.host
def test_rounding_shift_with_the_test_stays_ties_to_even():
    shifts = np.array([0, 1, 2, 5, 9, 12, 20]).reshape(1, 7, 1, 1)
    window = np.arange(-4 << 12, 4 << 12)  # ties and their neighbours for every shift <= 12
    top = np.arange(2**31 - 2**20, 2**31 - 2**19)  # u = T + 2**(r-1) - 1 stays in int32
    values = np.concatenate([window, top, -(2**31) + np.arange(2**12)])
    t = np.broadcast_to(values.reshape(1, 1, -1, 1), (1, 7, values.size, 1)).astype("int32")
    mod = relax_main(t.shape, "int32", lambda bb, x: emit_rounding_shift(bb, x, shifts, "rq"))
    stats = {}
    out = parity_by_test(mod["main"], stats)
    assert stats["rewritten"] == 1
    assert np.array_equal(run_relax(_module(out), t)[0], rq_reference(t, shifts, clamp=False))


def test_parity_left_alone_unless_the_mask_is_a_bit():
    for parity, shift in ((2, 3), (3, 1), (1, 32), (1, -1)):
        mod = relax_main((1, 2, 2, 2), "int32", _parity_program(
            np.array(shift, "int32"), np.array(parity, "int32")))
        stats = {}
        out = parity_by_test(mod["main"], stats)
        assert stats["rewritten"] == 0 and out.same_as(mod["main"]), (parity, shift)


@pytest.fixture(scope="module")
def net_and_calib():
    torch.manual_seed(0)
    calib = [np.random.default_rng(0).standard_normal((4, 3, SIZE, SIZE)).astype("float32")]
    return make_small_net(), calib


def _parity_shifts(func):
    """Bindings of ``func`` that take a parity bit by shift and mask (``(u >> r) & p``)."""
    producers = {b.var: b.value for b in bindings(func)}
    return [b for b in bindings(func) if is_call(b.value, "relax.bitwise_and")
            and is_call(producers.get(b.value.args[0]), "relax.right_shift")]


@pytest.mark.host
@pytest.mark.parametrize("target,tested", [("arm-dotprod", True), ("arm", True),
                                           ("x86-avx512", False), ("x86", False)])
def test_pack_reads_the_parity_by_test_only_where_the_target_says(net_and_calib, target,
                                                                   tested):
    from f8tvm.api import plan_source

    net, calib = net_and_calib
    source = plan_source(net, torch.zeros(1, 3, SIZE, SIZE), calib)
    preset = get_target(target)
    assert preset.parity_test == tested
    b = pipeline.Build(preset, source.model, source.example_input, source.plan_for)
    pipeline.run(b, until="fuse")
    shifted = _parity_shifts(b.ir["pack"]["main"])
    tests = [n for n in _ops(b.ir["pack"]["main"]) if n == "relax.not_equal"]
    requantizing = [n for n, _ in _tvm.primfuncs(b.ir["fuse"]) if "right_shift" in n]
    assert requantizing
    if tested:  # every requantize reads its parity bit by a test, in every fused kernel
        assert not shifted and tests
        assert all("not_equal" in n for n in requantizing), requantizing
    else:
        assert shifted and not tests


def _init_value(func):
    kind, block = kernel_block(func)
    if block is None or block.init is None:
        return kind, None, None
    return kind, block, block.init.value


@pytest.mark.host
@pytest.mark.parametrize("target", ["x86-avx512", "x86", "arm-dotprod", "arm", "x86-amx"])
def test_bias_moves_into_the_accumulator_init(net_and_calib, target):
    net, calib = net_and_calib
    fused, preset = api.fuse(net, torch.zeros(1, 3, SIZE, SIZE), target, calib)
    dot = find_dot(preset.dot)
    folded = kept = 0
    for name, func in _tvm.primfuncs(fused):
        kind, block, init = _init_value(func)
        if block is None:
            continue
        zero = _tvm.node_kind(init) == "IntImm" and int(init.value) == 0
        must_keep = not dot.bias_init or (
            kind == "conv" and (cpu.amx_conv(block, dot) or cpu.split_form(block, dot)))
        if zero:
            kept += 1
            continue
        assert not must_keep, name  # rfactor / a zeroed AMX tile need an init of zero
        folded += 1
        # the init reads a per-channel parameter of the kernel; the add after it is a copy
        assert _tvm.load_source(init) is not None, name
        sch = _tvm.schedule_of(func)
        (after,) = sch.get_consumers(sch.get_sblock(block.name_hint))
        assert _tvm.load_source(sch.get(after).body.value) is not None, name
    if target == "arm":  # smull's kernels keep the add (they measured longer without it)
        assert folded == 0 and kept >= 1
    else:
        assert folded >= 1, target


@pytest.mark.host
@pytest.mark.parametrize("target", ["x86-avx512", "x86"])
def test_folded_kernels_run_bit_exact(net_and_calib, target):
    from f8tvm.reference import quantize_input, run_reference

    if target == "x86-avx512" and "avx512_vnni" not in open("/proc/cpuinfo").read():
        pytest.skip("this CPU has no AVX-512 VNNI (the emulated tests cover it)")
    net, calib = net_and_calib
    cm = api.compile(net, torch.zeros(1, 3, SIZE, SIZE), target=target, calib=calib)
    rng = np.random.default_rng(5)
    for _ in range(3):
        q = quantize_input(rng.standard_normal((1, 3, SIZE, SIZE)).astype("float32"), cm.plan)
        assert np.array_equal(cm.run_int(q)[0], run_reference(cm.graph, cm.plan, q))


def _kernel_with_side_add(side_is_param: bool):
    """A conv block and an add after it of either a kernel input (``R``) or a value the kernel
    computes after the conv (``R << 1``)."""
    from tvm.script import tirx as T

    @T.prim_func(s_tir=True)
    def kernel(A: T.Buffer((1, 1, 3, 3, 8), "int8"), W: T.Buffer((1, 1, 1, 1, 2, 8, 4), "int8"),
               R: T.Buffer((1, 1, 3, 3, 8), "int32"), Out: T.Buffer((1, 1, 3, 3, 8), "int32")):
        acc = T.sblock_alloc_buffer((1, 1, 3, 3, 8), "int32")
        side = T.sblock_alloc_buffer((1, 1, 3, 3, 8), "int32")
        for b, o, y, x, ol, rc, ry, rx, rq, rk in T.grid(1, 1, 3, 3, 8, 1, 1, 1, 2, 4):
            with T.sblock("conv_nchwc"):
                v_b, v_o, v_y, v_x, v_ol, v_rc, v_ry, v_rx, v_rq, v_rk = T.axis.remap(
                    "SSSSSRRRRR", [b, o, y, x, ol, rc, ry, rx, rq, rk])
                with T.init():
                    acc[v_b, v_o, v_y, v_x, v_ol] = 0
                acc[v_b, v_o, v_y, v_x, v_ol] = acc[v_b, v_o, v_y, v_x, v_ol] + T.Cast(
                    "int32", A[v_b, v_rc, v_y + v_ry, v_x + v_rx, v_rq * 4 + v_rk]) * T.Cast(
                    "int32", W[v_o, v_rc, v_ry, v_rx, v_rq, v_ol, v_rk])
        for i0, i1, i2, i3, i4 in T.grid(1, 1, 3, 3, 8):
            with T.sblock("side"):
                v0, v1, v2, v3, v4 = T.axis.remap("SSSSS", [i0, i1, i2, i3, i4])
                side[v0, v1, v2, v3, v4] = R[v0, v1, v2, v3, v4] << 1
        for i0, i1, i2, i3, i4 in T.grid(1, 1, 3, 3, 8):
            with T.sblock("T_add"):
                v0, v1, v2, v3, v4 = T.axis.remap("SSSSS", [i0, i1, i2, i3, i4])
                Out[v0, v1, v2, v3, v4] = acc[v0, v1, v2, v3, v4] + (
                    R[v0, v1, v2, v3, v4] if side_is_param else side[v0, v1, v2, v3, v4])

    return kernel


@pytest.mark.host
def test_bias_init_takes_only_kernel_inputs_and_keeps_the_sum():
    from f8tvm.schedules.bias import fold_bias

    dot = find_dot(get_target("x86-avx512").dot)
    inner = _kernel_with_side_add(side_is_param=False)
    assert fold_bias(inner, dot).same_as(inner)  # computed after the conv: no init can read it
    func = _kernel_with_side_add(side_is_param=True)
    folded = fold_bias(func, dot)
    assert not folded.same_as(func)
    _, block, init = _init_value(folded)
    assert _tvm.load_source(init).same_as(func.params[2])
    rng = np.random.default_rng(1)
    args = [rng.integers(-128, 128, (1, 1, 3, 3, 8)).astype("int8"),
            rng.integers(-127, 128, (1, 1, 1, 1, 2, 8, 4)).astype("int8"),
            rng.integers(-(2**20), 2**20, (1, 1, 3, 3, 8)).astype("int32")]
    outs = []
    for f in (func, folded):
        lib = tvm.compile(f.with_attr("global_symbol", "main"), target="llvm")
        out = tvm.runtime.tensor(np.zeros((1, 1, 3, 3, 8), "int32"))
        lib["main"](*[tvm.runtime.tensor(a) for a in args], out)
        outs.append(out.numpy())
    a, w, r = (x.astype(np.int64) for x in args)
    taps = w[0, 0, 0, 0].transpose(1, 0, 2)  # [out lane, quad, byte]
    want = np.stack([np.einsum("qk,oqk->o", a.reshape(9, 2, 4)[p], taps) for p in range(9)])
    want = want.reshape(1, 1, 3, 3, 8) + r
    assert np.array_equal(outs[0], want) and np.array_equal(outs[1], want)


@pytest.mark.host
@pytest.mark.parametrize("target", ["arm-dotprod", "arm", "x86-avx512"])
def test_bias_rows_repeat_the_conv_bias_along_the_row_only_where_asked(net_and_calib, target):
    from f8tvm.api import plan_source
    from f8tvm.passes.bias_rows import _packed_conv, bias_rows

    net, calib = net_and_calib
    source = plan_source(net, torch.zeros(1, 3, SIZE, SIZE), calib)
    preset = get_target(target)
    b = pipeline.Build(preset, source.model, source.example_input, source.plan_for)
    pipeline.run(b, until="pack")
    func = b.ir["pack"]["main"]
    producers = {x.var: x.value for x in bindings(func)}
    conv_adds = [x for x in bindings(func) if is_call(x.value, "relax.add")
                 and _packed_conv(producers.get(x.value.args[0]))
                 and _tvm.is_const(x.value.args[1])]
    assert conv_adds
    for x in conv_adds:
        _, cb, _, w, lanes = _tvm.tensor_shape(x.var)
        bias = _tvm.const_value(x.value.args[1])
        if preset.dot.bias_rows:  # every column holds the channel's one value
            assert bias.shape == (1, cb, 1, w, lanes), x.var
            assert (bias == bias[:, :, :, :1, :]).all()
        else:
            assert bias.shape == (1, cb, 1, 1, lanes), x.var
    assert preset.dot.bias_rows == (target == "arm-dotprod")
    if not preset.dot.bias_rows:  # the same program on host: the pass changes no value
        stats = {}
        rows = bias_rows(func, stats)
        assert stats["widened"] == len(conv_adds)
        q = np.random.default_rng(2).integers(-128, 128, _tvm.tensor_shape(func.params[0]))
        q = q.astype(_tvm.tensor_dtype(func.params[0]))
        want = run_relax(b.ir["pack"], q)
        got = run_relax(with_main(b.ir["pack"], rows), q)
        assert len(want) == len(got) and all(np.array_equal(u, v) for u, v in zip(want, got))
        again = {}
        assert bias_rows(rows, again).same_as(rows) and again["widened"] == 0
