"""The ``x86-amx`` target: convs on AMX-INT8 tiles (``tdpbusd``), the rest on AVX-512 VNNI.

Without an AMX CPU the schedule is tested through the tile operation's description
(``intrin_amx.described()``: the same schedule, each tile step as plain TIR loops) -- single
convs under every tiling on any x86 CPU, whole models where the VNNI half can run -- and the
kernels' own instruction sequence (tile registers, pointers, strides, configuration) on a
software tile unit (``soft_amx``: each AMX intrinsic call rerouted to a C function that follows
the instruction's definition).  With an AMX CPU (``amx_int8`` in /proc/cpuinfo), the
instructions themselves: the same kernels and models, bit-exact.  Code generation and the
audit need no AMX CPU."""

import contextlib
import re

import numpy as np
import pytest
import torch
from conftest import kernel_source, module_asm
from kernel_ref import block, conv, unblock
from macs import blocked_macs

import f8tvm
from f8tvm import runtime
from f8tvm.core._tvm import te, tir, tvm
from f8tvm.core.errors import UnsupportedCPUError
from f8tvm.models import get_model
from f8tvm.passes.audit_multiplies import audit_module
from f8tvm.passes.pack_channel_blocks import pack_conv_weight
from f8tvm.passes.packed_kernels import conv2d_nchwc
from f8tvm.reference import run_reference
from f8tvm.schedules import cpu, default_schedule, find_dot, intrin_amx, kernel_block
from f8tvm.targets import TARGETS, get_target, host_target_name
from f8tvm.targets.cpu import read_cpuinfo
from tools import soft_amx

_CPU = read_cpuinfo()
_FLAGS = _CPU.flags if _CPU is not None else frozenset()
HAS_AMX = {"amx_tile", "amx_int8"} <= _FLAGS
HAS_VNNI = "avx512_vnni" in _FLAGS
needs_amx = pytest.mark.skipif(not HAS_AMX, reason="this CPU has no AMX-INT8 (amx_int8): the "
                               "instructions are tested through their description instead")
AMX = find_dot(TARGETS["x86-amx"].dot)

# (C_in, C_out, H, W, K, stride, pad, dilation): the window folded into tile rows (3x3, stride
# 1 and 2), one column per step (5 columns: more than a tile row's 64 bytes; dilation 2:
# columns apart), 1x1 convs (input blocks folded into tile rows from a pixel-major copy, 4 or
# 3 of them, or one per step), odd sizes, a row wider than a tile, the RGB stem (one quad per
# pixel: a 7x7 window row is a tile row of 28 bytes), a 7x7 map (no 2 to 4 rows to share weight
# tiles: 4 output blocks share each activation tile), the classifier (a one-row tile of input
# blocks)
CASES = [
    (3, 32, 20, 20, 7, 2, 3, 1),
    (32, 32, 14, 14, 3, 1, 1, 1),
    (16, 32, 15, 15, 3, 2, 1, 1),
    (64, 48, 9, 9, 1, 1, 0, 1),
    (48, 16, 12, 12, 1, 2, 0, 1),
    (16, 16, 9, 11, 5, 1, 2, 1),
    (16, 16, 10, 10, 3, 1, 2, 2),
    (16, 16, 6, 40, 3, 1, 1, 1),
    (32, 64, 7, 7, 3, 1, 1, 1),
    (512, 48, 1, 1, 1, 1, 0, 1),  # the classifier: one pixel, 4 input blocks a tile row
    (96, 32, 1, 1, 1, 1, 0, 1),  # 6 input blocks: 2 a tile row
    (96, 32, 4, 4, 1, 1, 0, 1),  # 6 input blocks: 3 a tile row, under 2 rows x 2 blocks too
]


def _conv_func(cin, cout, h, w, k, stride, pad, dilation, seed=0):
    """A conv with F8Net's epilogue (bias, rounding shift, clamp, uint8), its inputs and the
    NumPy result."""
    rng = np.random.default_rng(seed + cin + cout + h + k)
    cb = 16 if cin % 16 == 0 else 4  # the RGB image: one quad (a padded fourth channel)
    x = np.zeros((1, -(-cin // cb) * cb, h, w), "uint8")
    x[:, :cin] = rng.integers(0, 256, (1, cin, h, w))
    x[0, :cin, 0, :] = 255  # the largest products
    wt = np.zeros((cout, x.shape[1], k, k), "int8")
    wt[:, :cin] = rng.integers(-128, 128, (cout, cin, k, k))
    wt[0, :cin] = -128
    bias = rng.integers(-2**14, 2**14, (1, cout // 16, 1, 1, 16)).astype("int32")
    packed = pack_conv_weight(wt, cb, 16, 4)
    x = block(x, cb)
    data = te.placeholder(x.shape, "uint8", name="data")
    kernel = te.placeholder(packed.shape, "int8", name="kernel")
    b = te.placeholder(bias.shape, "int32", name="bias")
    acc = conv2d_nchwc(data, kernel, (stride, stride), (pad,) * 4, (dilation, dilation), 0)
    shifted = te.compute(acc.shape, lambda n, o, y, x_, lane: (
        acc[n, o, y, x_, lane] + b[0, o, 0, 0, lane] + 64) >> 7, name="requantize")
    out = te.compute(acc.shape, lambda *i: tir.max(tir.min(shifted(*i), 255), 0).astype("uint8"),
                     name="clip_cast")
    ref = conv(unblock(x), wt, stride, (pad,) * 4, dilation=dilation)
    want = np.clip((ref + unblock(np.broadcast_to(bias, (1, cout // 16) + ref.shape[2:] + (16,)))
                    + 64) >> 7, 0, 255)
    args = [x, packed, bias, np.zeros([int(v) for v in out.shape], "uint8")]
    func = te.create_prim_func([data, kernel, b, out])
    assert cpu.amx_conv(kernel_block(func)[1], AMX)
    return func, args, want, ref


def _padded(cin):
    """Input channels with the block's padding (the MACs executed and counted)."""
    return cin if cin % 16 == 0 else -(-cin // 4) * 4


def _build(func, tile=None, described=False, target=None):
    """``tile``: (output rows, pixels[, output blocks[, input blocks a tile row]]) of the
    register tile, default ours."""
    with intrin_amx.described() if described else contextlib.nullcontext():
        sched = default_schedule(func, AMX, tile)
    mod = tvm.IRModule({"main": sched.with_attr("global_symbol", "main")})
    return mod, tvm.compile(mod, target=target or get_target("x86-amx").tvm())


def _run(lib, args):
    dev = tvm.cpu()
    tensors = [tvm.runtime.tensor(a, dev) for a in args]
    lib["main"](*tensors)
    return unblock(tensors[-1].numpy())


def _channels(case):
    """Input blocks per tile row of the 1x1 conv ``case`` (1: one, or not a 1x1 conv)."""
    cb = 16 if case[0] % 16 == 0 else 4
    return cpu.amx_channels(case[4], case[4], cb, -(-case[0] // cb))


def _tilings(case, oh, ow):
    """Every register tile of the conv ``case`` with an ``oh`` x ``ow`` output: (output rows,
    pixels, output blocks, input blocks a tile row: a 1x1 conv's both choices); None for the
    classifier's one form."""
    ob, cf = case[1] // 16, _channels(case)
    return [(t, rows, blocks, f) for t in cpu.amx_tiles(oh) for rows in cpu.amx_rows(ow)
            for blocks in cpu.amx_blocks(ob, t) for f in sorted({cf, 1})] or [None]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_amx_schedule_is_exact_under_every_tiling_through_the_description(case):
    # any x86 CPU: the description path has no AMX instruction, built for this CPU's preset
    func, args, want, ref = _conv_func(*case)
    host = get_target(host_target_name()).tvm()
    for tile in _tilings(case, *ref.shape[2:]):
        mod, lib = _build(func, tile, described=True, target=host)
        assert np.array_equal(_run(lib, args), want), tile
        asm = kernel_source(lib)
        assert "tdpbusd" not in asm and "tile" not in asm
        report = audit_module(mod)
        assert report.wide_multiplies == 0
        assert report.macs_8bit == ref.size * _padded(case[0]) * case[4] ** 2


needs_cc = pytest.mark.skipif(not soft_amx.available(), reason="needs a C compiler (gcc) to "
                              "build the software tile unit")


@needs_cc
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_amx_instructions_are_exact_under_every_tiling_on_a_software_tile_unit(case):
    # the kernels' real tile instructions (not the description), each call rerouted to the
    # software tile unit: registers, pointers, strides and the configuration are the kernel's
    soft_amx.load()
    func, args, want, ref = _conv_func(*case)
    host = get_target(host_target_name()).tvm()
    for tile in _tilings(case, *ref.shape[2:]):
        sched, calls = soft_amx.reroute(default_schedule(func, AMX, tile))
        # configuration read and load, zero, the two operands' loads, the dot, the store
        assert calls >= 7, tile
        lib = tvm.compile(tvm.IRModule({"main": sched.with_attr("global_symbol", "main")}),
                          target=host)
        assert "\ttdpbusd\t" not in kernel_source(lib)  # (calls f8tvm_soft_tdpbusd)
        soft_amx.reset()
        assert np.array_equal(_run(lib, args), want), tile
        # the register tile's accumulators take the dots in turn: with n of them each dot
        # adds into the accumulator of the dot n before (none of 4 or more before is counted),
        # but the first into each (one per accumulator stored)
        done, accs = soft_amx.counts(), tile[0] * tile[2] if tile else 1
        assert done["macs"] == ref.size * _padded(case[0]) * case[4] ** 2
        if tile and case[4] == 1:  # a 1x1 conv's K: 16 bytes an input block, tile[3] a row
            assert done["macs"] == done["dots"] * tile[1] * 16 * 16 * tile[3], tile
        gaps = [done[f"gap{g}"] for g in (1, 2, 3)]
        assert gaps == [done["dots"] - done["stores"] if g == accs else 0 for g in (1, 2, 3)]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_amx_kernels_emit_tile_instructions_and_the_audit_counts_them(case):
    # code generation and the audit need no AMX CPU; running needs one
    func, args, want, ref = _conv_func(*case)
    mod, lib = _build(func)
    asm = kernel_source(lib)
    for insn in ("ldtilecfg", "tilezero", "tileloadd", "tdpbusd", "tilestored"):
        assert f"\t{insn}\t" in asm, insn
    kernel = asm.split("main_compute_:")[1]
    for wide in ("vpmulld", "vpmullw", "vpdpbusd"):  # the conv is on tiles only
        assert f"\t{wide}\t" not in kernel, wide
    # the window's columns are one tile row where they are adjacent (16 or 4 bytes a column);
    # the classifier's input blocks are, 4 (or 2) of them
    k, dilation, cb = case[4], case[7], 16 if case[0] % 16 == 0 else 4
    fold = cpu.amx_fold(k, dilation, cb)
    assert fold == (k if k * cb <= 64 and dilation == 1 else 1)
    dense = cpu.amx_dense(kernel_block(func)[1])
    assert dense == (0 if case[2] > 1 else 4 if case[0] % 64 == 0 else 2)
    if dense:  # a one-row tile: the configuration's rows of the accumulator and activations
        cfg = intrin_amx.config_bytes(intrin_amx.Tile(1, 1, dense, 1))
        assert cfg[48] == cfg[52] == 1 and cfg[54] == 4 * dense and cfg[24] == 16 * dense
    if not dense and k == 1:  # input blocks a tile row: the most of 4, 3, 2 dividing theirs
        assert _channels(case) == (4 if case[0] == 64 else 3 if case[0] in (48, 96) else 1)
    report = audit_module(mod)
    assert report.wide_multiplies == 0
    assert report.macs_8bit == ref.size * _padded(case[0]) * k * k
    if HAS_AMX:
        runtime.enable_amx()
        assert np.array_equal(_run(lib, args), want)


@needs_amx
def test_kernels_of_different_tile_shapes_alternate_exactly():
    # each tile loads its configuration only where the one in force differs: kernels of other
    # shapes (rows, window columns) in turn
    runtime.enable_amx()
    built = []
    stem, conv3x3, strided, conv1x1 = CASES[:4]
    for case, tile in ((conv3x3, (2, 7)), (conv1x1, (1, 9)), (conv3x3, (1, 14)),
                       (strided, (4, 4)), (stem, (2, 5)), (strided, (2, 8))):
        func, args, want, _ = _conv_func(*case)
        built.append((_build(func, tile)[1], args, want))
    for _ in range(3):
        for lib, args, want in built:
            assert np.array_equal(_run(lib, args), want)


def test_the_audit_rejects_a_tile_dot_of_wide_operands():
    from tvm.script import tirx as T

    iid = T.llvm_lookup_intrinsic_id

    @T.prim_func(s_tir=True)
    def wide(A: T.Buffer((16, 16), "int32"), B: T.Buffer((16, 16), "int8")):
        with T.sblock("root"):
            for _i in T.serial(1):
                with T.sblock("tile"):
                    T.reads(A[0:16, 0:16], B[0:16, 0:16])
                    T.writes()
                    T.evaluate(T.call_llvm_intrin(iid("llvm.x86.tileloadd64"), T.int8(1),
                                                  A.access_ptr("r"), T.int64(64), dtype="int32"))
                    T.evaluate(T.call_llvm_intrin(iid("llvm.x86.tileloadd64"), T.int8(2),
                                                  B.access_ptr("r"), T.int64(64), dtype="int32"))
                    T.evaluate(T.call_llvm_intrin(iid("llvm.x86.tdpbusd"), T.int8(0),
                                                  T.int8(1), T.int8(2), dtype="int32"))

    report = audit_module(tvm.IRModule({"main": wide}))
    assert report.wide_multiplies == 1 and report.macs_8bit == 0
    assert report.violations[0]["operand_bits"][0] == "int32"
    assert "tdpbusd" in report.violations[0]["expr"]


def test_which_convs_take_tiles():
    def block_of(cin, ow, k=3, a_dtype="uint8"):
        data = te.placeholder((1, max(cin // 16, 1), k, ow + k - 1, min(cin, 16)), a_dtype)
        kernel = te.placeholder((1, max(cin // 16, 1), k, k, min(cin, 16) // 4, 16, 4), "int8")
        out = conv2d_nchwc(data, kernel, (1, 1), (0, 0, 0, 0), (1, 1))
        return kernel_block(te.create_prim_func([data, kernel, out]))[1]

    assert cpu.amx_conv(block_of(32, 14), AMX)
    assert not cpu.amx_conv(block_of(32, 14), find_dot(TARGETS["x86-avx512"].dot))
    assert not cpu.amx_conv(block_of(32, 14, a_dtype="int8"), AMX)  # tdpbusd is u8 x s8
    assert cpu.amx_conv(block_of(4, 14), AMX)  # the RGB image's: 4 bytes x 3 columns a row
    assert not cpu.amx_conv(block_of(4, 14, k=1), AMX)  # one 4-byte step per tile
    assert not cpu.amx_conv(block_of(32, 1), AMX)  # one pixel per row
    assert cpu.amx_conv(block_of(64, 1, k=1), AMX)  # the classifier: 4 blocks a tile row
    assert cpu.amx_conv(block_of(32, 1, k=1), AMX)  # 2 blocks
    assert not cpu.amx_conv(block_of(16, 1, k=1), AMX)  # one block: K = 16 for one row

    # a stride-2 1x1 conv down to one pixel (ResNet-18's last downsample at 32x32): its input
    # blocks are 2 x 2 x 16 bytes apart, not one tile row
    data = te.placeholder((1, 4, 2, 2, 16), "uint8")
    kernel = te.placeholder((1, 4, 1, 1, 4, 16, 4), "int8")
    strided = kernel_block(te.create_prim_func(
        [data, kernel, conv2d_nchwc(data, kernel, (2, 2), (0, 0, 0, 0), (1, 1))]))[1]
    assert cpu.amx_dense(strided) == 0 and not cpu.amx_conv(strided, AMX)
    assert not cpu.amx_conv(block_of(32, 17), AMX)  # no tile height divides a prime row
    assert cpu.amx_conv(block_of(16, 14, k=1), AMX)  # a thin 1x1 conv: one tdpbusd a tile
    assert cpu.amx_rows(56) == [2, 4, 7, 8, 14] and cpu.amx_rows(7) == [7]
    # 4 accumulators where they fit: output rows first (sharing weight tiles), then output
    # blocks (sharing activation tiles): ResNet-18's maps 56x56, 14x14, 7x7 (and a 3-block conv)
    assert cpu.default_amx_tile(56, 56, 4) == (4, 14, 1)
    assert cpu.default_amx_tile(14, 14, 16) == (2, 14, 2)
    assert cpu.default_amx_tile(7, 7, 32) == (1, 7, 4)
    assert cpu.default_amx_tile(7, 7, 3) == (1, 7, 3) and cpu.amx_blocks(3, 2) == [1]
    # 1x1 convs: the most input blocks per tile row (up to 64 bytes) that divide theirs
    assert [cpu.amx_channels(1, 1, 16, ib) for ib in (1, 2, 3, 4, 5, 6, 7, 9, 60)] == [
        1, 2, 3, 4, 1, 3, 1, 3, 4]
    assert cpu.amx_channels(3, 3, 16, 8) == cpu.amx_channels(1, 1, 4, 8) == 1
    # by default only where the copy costs less than the dots it saves: MobileNet-V2's 56x56
    # project and expand convs (2 and 9 output blocks, 14-pixel tiles), ResNet-18's strided
    # downsample (8 blocks); not its 112x112 one (1 block, 16 pixels) nor a strided 1-block one
    assert cpu.default_amx_channels(3, 2, 14, 1) == 3 and cpu.default_amx_channels(2, 9, 14, 1) == 2
    assert cpu.default_amx_channels(4, 8, 14, 2) == 4
    assert cpu.default_amx_channels(2, 1, 16, 1) == cpu.default_amx_channels(3, 1, 6, 2) == 1
    assert cpu.default_amx_channels(1, 64, 7, 1) == 1


@pytest.fixture(scope="module")
def models():
    out = {}
    for name in ("resnet18", "mobilenet_v2"):
        torch.manual_seed(0)
        model, _ = get_model(name, randomize_bn=True)
        out[name] = model.eval()
    return out


SIZE = 32


def _calib():
    return [torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))]


def _compile(model, described, target="x86-amx"):
    with intrin_amx.described() if described else contextlib.nullcontext():
        return f8tvm.compile(model, torch.zeros(1, 3, SIZE, SIZE), target=target,
                             calib=_calib())


def _check_model(cm, m=None):
    rng = np.random.default_rng(7)
    m = m or cm._runtime()
    for _ in range(2):
        x = rng.standard_normal((1, 3, SIZE, SIZE)).astype("float32")
        q = m.quantize(x)
        assert np.array_equal(m.run_int(q)[0], run_reference(cm.graph, cm.plan,
                                                             q.astype(np.int64)))


def _for_this_cpu(monkeypatch):
    """x86-amx's LLVM CPU model without AVX-VNNI where this CPU lacks it (Zen 4)."""
    monkeypatch.setitem(TARGETS, "x86-amx", soft_amx.preset_for_this_cpu(_FLAGS))


needs_vnni = pytest.mark.skipif(not HAS_VNNI, reason="x86-amx's depthwise and RGB convs are "
                                "AVX-512 VNNI kernels: this CPU cannot run them "
                                "(test_vnni_emulated runs VNNI builds)")


@needs_vnni
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_models_are_exact_through_the_description(models, name, monkeypatch):
    _for_this_cpu(monkeypatch)
    cm = _compile(models[name], described=True)
    asm = module_asm(cm)
    assert "tdpbusd" not in asm and ("avx_vnni" in _FLAGS or "{vex}" not in asm)
    assert cm.audit.wide_multiplies == 0
    # no tile instruction left: it runs on a VNNI CPU without AMX too (cm.run_int would refuse
    # the x86-amx target there, rightly for a real AMX build)
    meta = cm.metadata()
    meta["target"]["cpu_flags"] = [f for f in meta["target"]["cpu_flags"]
                                   if not f.startswith("amx") and f in _FLAGS]
    _check_model(cm, runtime.Module(cm.executable, meta))


@needs_cc
@needs_vnni
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_models_are_exact_on_a_software_tile_unit(models, name):
    # the whole x86-amx program with its own tile instructions, each rerouted to the software
    # tile unit: kernels of different tile shapes in turn (each loads its configuration where
    # the one in force differs), on both threads
    from f8tvm.reference import quantize_input

    b, rerouted = soft_amx.build(models[name], torch.zeros(1, 3, SIZE, SIZE), _calib(),
                                 soft_amx.preset_for_this_cpu(_FLAGS))
    assert rerouted >= 7 * 10  # every conv but the depthwise ones: 7 or more call sites each
    # 1x1 convs among them read pixel-major copies (several input blocks a tile row)
    copies, copied = soft_amx.copied_bytes(b.ir["schedule"])
    assert copies >= 1 and copied >= copies * 16 * 16
    if name == "mobilenet_v2":  # the tool times them (vector code): each builds and runs alone
        assert soft_amx.copy_time(b.ir["schedule"], b.target.tvm()) > 0
    rng = np.random.default_rng(7)
    for _ in range(2):
        q = quantize_input(rng.standard_normal((1, 3, SIZE, SIZE)).astype("float32"), b.plan)
        soft_amx.reset()
        out = soft_amx.run(b, q)
        assert np.array_equal(out, run_reference(b.graph, b.plan, q))
        # the tile convs' MACs went through the unit (the audit of the rerouted program sees
        # only the VNNI kernels' now): together, every MAC of the packed model
        done = soft_amx.counts()
        assert done["dots"] > 0 and done["macs"] + b.report.macs_8bit == blocked_macs(b)


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_models_build_on_tiles_and_run_exact_where_the_cpu_has_amx(models, name):
    cm = _compile(models[name], described=False)
    asm = module_asm(cm)
    assert asm.count("\ttdpbusd\t") >= 2 and "\tvpdpbusd\t" in asm  # tiles and VNNI beside
    # every MAC 8-bit, as many as the graph's convs on the blocked layout make (x86-avx512's
    # program but for the stem: the image padded to 4 channels on tiles, read as a byte
    # stream on VNNI)
    vnni = _compile(models[name], described=False, target="x86-avx512")
    assert cm.audit.wide_multiplies == 0 and cm.audit.macs_8bit == blocked_macs(cm)
    assert vnni.audit.macs_8bit == blocked_macs(vnni) <= cm.audit.macs_8bit
    if not HAS_AMX:
        with pytest.raises(UnsupportedCPUError, match="amx_int8"):
            cm.run_int(np.zeros((1, 3, SIZE, SIZE), "int8"))  # refused before it runs
        return
    _check_model(cm)


def test_run_refuses_an_amx_build_on_a_cpu_without_amx(tmp_path, models, monkeypatch, capsys):
    from f8tvm import run
    from f8tvm.targets import cpu as cpuinfo

    cm = _compile(models["resnet18"], described=False)
    so, _ = cm.export(str(tmp_path / "m.so"))
    fake = cpuinfo.CPUInfo("Example CPU", frozenset(TARGETS["x86-avx512"].cpu_flags), 2)
    monkeypatch.setattr(runtime, "read_cpuinfo", lambda *a, **k: fake)
    assert run.main([so]) == 2
    err = capsys.readouterr().err
    assert "amx_tile, amx_int8" in err and "x86-amx" in err


def test_a_refused_amx_permission_is_a_clear_error(monkeypatch):
    from f8tvm.targets import cpu as cpuinfo

    monkeypatch.setattr(cpuinfo, "_amx_enabled", False)
    monkeypatch.setattr(cpuinfo, "_SYS_ARCH_PRCTL", 1 << 20)  # no such system call: ENOSYS
    with pytest.raises(UnsupportedCPUError, match=r"Linux refused .*ARCH_REQ_XCOMP_PERM.*errno"):
        cpuinfo.enable_amx()
    assert not cpuinfo._amx_enabled


def test_the_tile_configuration_names_every_register_it_uses():
    cfg = intrin_amx.config_bytes(intrin_amx.Tile(2, 14, 3, 1))
    assert cfg[0] == 1  # palette 1
    rows = {r: (cfg[48 + r], cfg[16 + 2 * r]) for r in range(8) if cfg[48 + r]}
    # accumulators 0-1: 14 rows of 64 bytes; activations 4, 5: 14 rows of 48 bytes (3 columns
    # of 16 channels); weights 6, 7: 12 rows of 64 bytes
    assert rows == {0: (14, 64), 1: (14, 64), 4: (14, 48), 5: (14, 48), 6: (12, 64),
                    7: (12, 64)}
    # 2 output rows x 2 output blocks: accumulators 0-3
    both = intrin_amx.config_bytes(intrin_amx.Tile(2, 14, 3, 1, blocks=2))
    assert [r for r in range(8) if both[48 + r]] == list(range(8))
    for c in (cfg, both):
        words = [int.from_bytes(c[4 * i:4 * i + 4], "little") for i in range(16)]
        assert [i for i, w in enumerate(words) if w] == [i for i in intrin_amx.CONFIG_WORDS
                                                          if words[i]]
    stem = intrin_amx.config_bytes(intrin_amx.Tile(1, 16, 7, 2, block=4))
    assert (stem[48 + 4], stem[16 + 8], stem[48 + 6]) == (16, 28, 7)  # K = 7 columns x 4
    # one row only for the classifier's form: one accumulator, several input blocks a row
    for bad in (dict(rows=1, fold=1), dict(rows=1, tiles=2), dict(tiles=5), dict(fold=5),
                dict(block=8), dict(tiles=2, blocks=4), dict(rows=1, blocks=2), dict(blocks=0)):
        with pytest.raises(ValueError, match="no AMX tile"):
            intrin_amx.Tile(**{**dict(tiles=1, rows=14, fold=3, stride=1), **bad})
    assert intrin_amx.Tile(1, 1, 4, 1).shapes() == ((4, 1, 1, 16), (4, 1, 1, 4, 16, 4), (16,))
    assert re.fullmatch(r"f8tvm_amx_dot_t2_m7_x3_s2_y2",
                        intrin_amx.intrinsics(intrin_amx.Tile(2, 7, 3, 2, ystride=2))[1])
    # over output blocks: the weights and outputs keep the axes between the blocks' and the
    # tile's (input block, window row; output row), of extent 1 in the step's regions
    four = intrin_amx.Tile(1, 7, 3, 1, blocks=4)
    assert four.accumulators == 4 and four.shapes() == ((9, 16), (4, 1, 1, 3, 4, 16, 4),
                                                        (4, 1, 7, 16))
    assert intrin_amx.intrinsics(four)[1].endswith("_o4")


def test_tuning_samples_the_register_tile_and_a_record_rebuilds_it():
    # the design space: three categorical decisions (output rows, pixels, output blocks) that
    # the build replays
    from f8tvm.core._tvm import s_tir
    from f8tvm.schedules.tuning import _split_decisions

    func, args, want, _ = _conv_func(*CASES[1])  # 14x14 3x3: rows 1/2, pixels 2/7/14
    seen = set()
    for seed in range(1, 13):
        sch = s_tir.Schedule(func, seed=seed)
        cpu.schedule_conv(sch, AMX, tune=True)
        decisions = _split_decisions(sch.trace)
        assert len(decisions) == 3
        t, rows, blocks = decisions
        assert t in cpu.amx_tiles(14) and rows in cpu.amx_rows(14)
        assert blocks in cpu.amx_blocks(2, t)  # 2 output blocks, at most 4 accumulators
        seen.add((t, rows, blocks))
    assert len(seen) > 1  # the space is explored
    # a record's decisions rebuild the same tile (one of before the output blocks: one block);
    # another form's (a VNNI record's 3 factors, or tiles that do not fit) fall back to ours
    host = get_target(host_target_name()).tvm()
    for tile in (*sorted(seen)[:2], (2, 7), (8, 8), (1, 3, 4), (2, 14, 4)):
        _, lib = _build(func, tile, described=True, target=host)
        assert np.array_equal(_run(lib, args), want)
    # a 1x1 conv: a fourth decision, the input blocks per tile row (3 of its 6, or 1); a record
    # of before it (three decisions) takes ours
    func, args, want, _ = _conv_func(*CASES[-1])
    seen = set()
    for seed in range(1, 9):
        sch = s_tir.Schedule(func, seed=seed)
        cpu.schedule_conv(sch, AMX, tune=True)
        decisions = _split_decisions(sch.trace)
        assert len(decisions) == 4 and decisions[3] in (1, 3)
        seen.add(decisions[3])
    assert seen == {1, 3}
    for tile in ((2, 4, 2, 1), (2, 4, 2, 3), (2, 4, 2), (2, 4, 2, 2)):
        mod, lib = _build(func, tile, described=True, target=host)
        assert np.array_equal(_run(lib, args), want)
        folded = cpu.PIXEL_MAJOR in mod.script()  # the pixel-major copy's annotation
        assert folded == (tile[3:] != (1,)), tile


@needs_amx
@pytest.mark.tuning
def test_tuned_amx_records_are_applied_and_exact(models, tmp_path):
    from f8tvm import api
    from f8tvm.schedules import dot_intrin
    from f8tvm.schedules.tuning import extract_tasks, tune

    calib = _calib()
    fused, preset = api.fuse(models["resnet18"], torch.zeros(1, 3, SIZE, SIZE), "x86-amx", calib)
    dot = dot_intrin(preset.dot)
    tasks = [t for t in extract_tasks(fused)
             if t.kind == "conv" and cpu.amx_conv(kernel_block(t.mod["main"])[1], dot)][:2]
    assert tasks
    db = str(tmp_path / "db")
    tune(tasks, preset.tvm(), dot, db, trials=2)  # the runner's workers ask for AMX first
    cm = f8tvm.compile(models["resnet18"], torch.zeros(1, 3, SIZE, SIZE), target="x86-amx",
                       calib=calib, tuning_db=db)
    assert cm.extra_meta["tuning"]["exact"] == len(tasks)
    _check_model(cm)
