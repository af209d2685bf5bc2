"""Microcontroller targets (rv32i, rv32im, cortex-m0plus): C builds over a static arena, run on
emulators bit-exact with the NumPy reference; no library multiply in the default images."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
import torch
from conftest import make_small_net

from f8tvm import pipeline
from f8tvm.api import plan_source
from f8tvm.core import _tvm
from f8tvm.core.errors import AuditError, InputError, ToolchainError, UnsupportedOpError
from f8tvm.mcu import emit, emulate, toolchain
from f8tvm.reference import run_reference
from f8tvm.targets import TARGETS

RV = TARGETS["rv32i"]
M0 = TARGETS["cortex-m0plus"]
HAVE_RV = shutil.which(RV.cross_compiler) is not None and (
    shutil.which("qemu-riscv32-static") or shutil.which("qemu-riscv32"))
HAVE_M0 = shutil.which(M0.cross_compiler) is not None
try:
    import unicorn  # noqa: F401
    HAVE_UNICORN = True
except ImportError:
    HAVE_UNICORN = False
needs_rv = pytest.mark.skipif(not HAVE_RV, reason="needs riscv64-unknown-elf-gcc "
                              "(gcc-riscv64-unknown-elf) and qemu-riscv32 (qemu-user-static)")
needs_m0 = pytest.mark.skipif(not (HAVE_M0 and HAVE_UNICORN), reason="needs arm-none-eabi-gcc "
                              "(gcc-arm-none-eabi) and unicorn (the [test] extra)")
SHAPE = (1, 3, 12, 12)


# ----------------------------------------------------------------------------- unit
@pytest.mark.unit
def test_arena_shares_bytes_only_between_tensors_not_live_together():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 12))
        sizes = [int(s) for s in rng.integers(1, 500, n)]
        first = sorted(int(f) for f in rng.integers(0, 20, n))
        last = [f + int(rng.integers(0, 6)) for f in first]
        offsets, total = emit.plan_arena(sizes, first, last)
        for i in range(n):
            assert offsets[i] % emit.ALIGN == 0 and offsets[i] + sizes[i] <= total
            for j in range(i):
                live_together = not (last[i] < first[j] or last[j] < first[i])
                apart = offsets[i] + sizes[i] <= offsets[j] or offsets[j] + sizes[j] <= offsets[i]
                assert apart or not live_together, (i, j)
    # a chain a -> b -> c: a and c share bytes
    offsets, total = emit.plan_arena([64, 64, 64], [0, 1, 2], [1, 2, 3])
    assert offsets[0] == offsets[2] and total == 128


def _host_cc():
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        pytest.skip("needs a host C compiler")
    return cc


@pytest.mark.unit
@pytest.mark.parametrize("products", [0, 1])
@pytest.mark.parametrize("requantize", [0, 1, 2])
def test_c_products_and_requantize_are_exact(tmp_path, products, requantize):
    """The generated C's f8_mul8 (table or multiply) over every pair of 8-bit values, and its
    f8_round_shift (shift, int64 multiplier, int32 multiply) against NumPy's ties-to-even
    rounding, compiled with the host's C compiler."""
    src = tmp_path / "t.c"
    src.write_text(emit.kernels_c("", "table") + r"""
#include <stdio.h>
int main(void) {
  long bad = 0;
  for (int a = -128; a <= 255; ++a)
    for (int b = -128; b <= 255; ++b)
      if (f8_mul8(a, b) != a * b) ++bad;
  printf("%ld\n", bad);
  int32_t t; int r;
  while (scanf("%d %d", &t, &r) == 2) printf("%d\n", f8_round_shift(t + (1 << (r - 1)) - 1, r));
  return 0;
}
""")
    exe = tmp_path / "t"
    subprocess.run([_host_cc(), "-O2", f"-DF8_PRODUCTS={products}",
                    f"-DF8_REQUANTIZE={requantize}", str(src), "-o", str(exe)], check=True)
    rng = np.random.default_rng(requantize)
    r = rng.integers(1, 20, 3000)
    t = rng.integers(-(2**24), 2**24, 3000)
    t[:20] = (np.arange(20) - 10) * (1 << 4) + (1 << 3)  # ties
    r[:20] = 4
    stdin = "".join(f"{a} {b}\n" for a, b in zip(t, r, strict=True))
    out = subprocess.run([str(exe)], input=stdin, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out[0] == "0"  # no pair's product differs
    want = np.round(t / 2.0 ** r).astype(np.int64)  # numpy rounds half to even
    assert [int(v) for v in out[1:]] == want.tolist()


@pytest.mark.unit
@pytest.mark.skipif(not HAVE_M0, reason="needs arm-none-eabi-gcc (gcc-arm-none-eabi)")
def test_isa_check_finds_a_long_multiply(tmp_path):
    """The static ARMv6-M check: silent on M0+ code, names smull in Cortex-M3 code."""
    src = tmp_path / "m.c"
    src.write_text("long long f(int a, int b) { return (long long)a * b; }\n")
    gcc = toolchain.tool(M0, "gcc")
    for cpu, expect in (("cortex-m0plus", False), ("cortex-m3", True)):
        obj = tmp_path / f"{cpu}.o"
        subprocess.run([gcc, f"-mcpu={cpu}", "-mthumb", "-O2", "-c", str(src), "-o", str(obj)],
                       check=True)
        bad = toolchain.thumb_v6m_violations(M0, str(obj))
        assert bool(bad) == expect, bad
        if expect:
            assert any(text.startswith("smull") for _, text in bad)


# ----------------------------------------------------------------------------- builds
def _build(target, net=None):
    torch.manual_seed(0)
    net = net or make_small_net()
    src = plan_source(net, torch.randn(*SHAPE))
    b = pipeline.Build(target, src.model, src.example_input, src.plan_for)
    return pipeline.run(b)


@pytest.fixture(scope="module")
def small_rv():
    if not HAVE_RV:
        pytest.skip("needs the RISC-V cross compiler and qemu-riscv32")
    return _build(RV)


def _inputs(b, n=3, seed=0):
    lo, hi = (-127, 127) if b.plan.input_signed else (0, 255)
    return np.random.default_rng(seed).integers(lo, hi + 1, size=(n, *SHAPE)).astype(
        "int8" if b.plan.input_signed else "uint8")


def _reference(b, qs):
    return np.stack([run_reference(b.graph, b.plan, q) for q in qs]).reshape(len(qs), -1)


def _write(b, folder):
    os.makedirs(folder, exist_ok=True)
    for name, text in b.executable.files.items():
        (folder / name).write_text(text)
    return str(folder)


def test_kernels_allocate_nothing_and_products_are_calls(small_rv):
    """Structure of the scheduled kernels: no intermediate bigger than one element; every
    8-bit product of the audit is an f8_mul8 call in the C, every rounding an f8_round_shift."""
    from f8tvm.schedules import mcu

    scheduled = small_rv.ir["schedule"]
    for name, func in _tvm.primfuncs(scheduled):
        assert all(size <= 1 for _, size in _tvm.compacted_allocations(func)), name
    c = small_rv.executable.files["kernels.c"]
    body = c[c.index("TVM_DLL void"):]  # the kernels, after our preamble
    calls = re.findall(r"f8_mul8\((?!int32_t, int32_t\))", body)  # not the prototypes
    # (each product site of the audit, unrolled over a small window's taps)
    assert len(calls) >= small_rv.report.mac_sites > 0
    # what multiplies remain is index arithmetic: by a constant (shift-and-add on RV32I)
    products = re.findall(r"([\w\]\)]+) \* ([\w\(\[]+)", body)
    assert products and all(a.isdigit() or b.isdigit() for a, b in products), products
    assert "f8_round_shift(" in body and "TVM" not in body.replace("TVM_DLL", "")
    # a rounding shift is rewritten only in its exact ties-to-even form
    from f8tvm.core._tvm import tir
    u, r = tir.Var("u", "int32"), tir.Var("r", "int32")
    x = tir.Var("x", "int32")
    good = (u + ((u >> r) & 1)) >> r
    bad = (u + ((x >> r) & 1)) >> r
    for expr, rewritten in ((good, True), (bad, False)):
        f = tir.PrimFunc([u, r, x], tir.Evaluate(expr))
        out = str(mcu.requantize_as_calls(f).body)
        assert (mcu.ROUND_SHIFT in out) == rewritten


@needs_rv
def test_rv32i_bit_exact_under_qemu_without_multiplier(small_rv, tmp_path):
    """RV32I with the M extension off (a mul would trap): bit-exact with the reference; the
    default image has no library multiply, the multiply variant needs __mulsi3 (the check
    can fail) and is bit-exact too."""
    folder = _write(small_rv, tmp_path / "src")
    qs = _inputs(small_rv, 4)
    want = _reference(small_rv, qs)
    elf = emulate.build_image(RV, folder, str(tmp_path / "m.elf"))
    assert toolchain.library_multiplies(RV, elf) == []
    toolchain.check_image(RV, elf)
    assert (emulate.run_image(RV, elf, qs, want.shape[1]) == want).all()
    lib = emulate.build_image(RV, folder, str(tmp_path / "lib.elf"), {"F8_PRODUCTS": 0})
    assert "__mulsi3" in toolchain.library_multiplies(RV, lib)
    with pytest.raises(AuditError, match="__mulsi3"):
        toolchain.check_image(RV, lib)
    assert (emulate.run_image(RV, lib, qs, want.shape[1]) == want).all()


@needs_rv
@pytest.mark.skipif(not HAVE_UNICORN, reason="needs unicorn (the [test] extra)")
def test_requantize_variants_bit_exact_and_counted(small_rv, tmp_path):
    """The comparison requantizes (int64 multiplier, int32 multiply) give the same logits; the
    counter attributes every instruction to a kernel and repeats exactly."""
    from f8tvm.mcu import cycles

    folder = _write(small_rv, tmp_path / "src")
    q = _inputs(small_rv, 1)
    want = _reference(small_rv, q)[0]
    totals = {}
    for rq in (0, 1, 2):
        elf = cycles.build_image(RV, folder, str(tmp_path / f"c{rq}.elf"), {"F8_REQUANTIZE": rq})
        runner = cycles.Runner(RV, elf, q[0].nbytes, want.size)
        out, counts = runner.run(q[0])
        assert (out == want).all()
        again = runner.run(q[0])[1]
        assert again.instructions == counts.instructions
        assert sum(n for n, _ in counts.by_function.values()) == counts.instructions
        kernels = {c.symbol for c in small_rv.executable.calls}
        assert kernels <= set(counts.by_function)
        totals[rq] = counts.instructions
        if rq == 1:
            assert "__muldi3" in toolchain.library_multiplies(RV, elf)
    assert totals[1] > totals[0] and totals[2] > totals[0]


@needs_m0
def test_cortex_m0plus_bit_exact_on_unicorn_with_cycles(tmp_path):
    from f8tvm.mcu import cycles

    b = _build(M0)
    folder = _write(b, tmp_path / "src")
    qs = _inputs(b, 2, seed=1)
    want = _reference(b, qs)
    elf = cycles.build_image(M0, folder, str(tmp_path / "m0.elf"))
    assert toolchain.thumb_v6m_violations(M0, elf) == []
    assert toolchain.library_multiplies(M0, elf) == []
    runner = cycles.Runner(M0, elf, qs[0].nbytes, want.shape[1])
    for q, w in zip(qs, want, strict=True):
        out, counts = runner.run(q)
        assert (out == w).all()
    # loads/stores and branches take 2+ cycles: more cycles than instructions
    assert counts.instructions < counts.cycles < 3 * counts.instructions
    mul64 = cycles.build_image(M0, folder, str(tmp_path / "mul64.elf"), {"F8_REQUANTIZE": 1})
    assert "__aeabi_lmul" in toolchain.library_multiplies(M0, mul64)


@needs_rv
def test_export_folder_ram_limit_and_makefile(tmp_path, capsys):
    """export writes the folder (its Makefile builds the library with nothing from TVM); a RAM
    limit below the arena refuses and writes nothing."""
    from f8tvm.api import compile as f8compile

    torch.manual_seed(0)
    cm = f8compile(make_small_net(), torch.randn(*SHAPE), target="rv32i", name="small")
    fp = cm.footprint()
    assert fp.arena == cm.program.arena_bytes > 0 and fp.sram >= fp.arena + fp.stack
    assert 0 < fp.stack < 1024  # scalar kernels: a few registers spilled
    assert fp.flash > fp.weights > 0
    out = tmp_path / "small-rv32i"
    with pytest.raises(InputError, match="SRAM"):
        cm.export(str(out), ram_limit=fp.sram - 1)
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".f8tvm")]
    files = cm.export(str(out), ram_limit=fp.sram)
    assert {os.path.basename(f) for f in files} == {"kernels.c", "model.c", "model.h",
                                                    "Makefile", "f8tvm.ld", "model.json"}
    assert "small for rv32i" in (out / "model.h").read_text()
    subprocess.run(["make", "-s", "-C", str(out)], check=True, capture_output=True)
    lib = out / "libf8model.a"
    assert lib.exists()
    syms = subprocess.run([toolchain.tool(RV, "nm"), str(lib)], capture_output=True,
                          text=True, check=True).stdout
    assert " T f8_model_run" in syms and "TVM" not in syms
    # and the exported build runs: f8tvm.run's path
    from f8tvm.mcu.runner import run_folder

    lo = -127 if cm.plan.input_signed else 0
    q = np.random.default_rng(5).integers(lo, 128, size=SHAPE)
    logits, _ = run_folder(str(out), q)
    assert (logits == run_reference(cm.graph, cm.plan, q).reshape(-1)).all()
    from f8tvm.mcu import run as mcu_run  # the CLI on the folder, with counts

    assert mcu_run.main([str(out), "--count", "--top", "3"]) == 0
    printed = capsys.readouterr().out
    assert "top-3 (" in printed and re.search(r"one inference: [\d,]+ instructions", printed)
    from f8tvm import run as so_run  # the .so runner points a folder to it

    assert so_run.main([str(out)]) == 2
    assert "python -m f8tvm.mcu.run" in capsys.readouterr().err
    out, fl = cm.run_int(q.astype(cm.program.input.dtype))
    assert (out.reshape(-1) == logits).all()
    assert np.array_equal(fl, cm.plan.output_format(cm.graph)[0])
    many = cm.run_int_many(np.stack([q, q]).astype(cm.program.input.dtype))
    assert many.shape == (2, 1, 10) and (many == out).all()


@pytest.mark.unit
def test_mcu_targets_refuse_the_multiplier_build():
    from f8tvm.api import compile as f8compile

    with pytest.raises(InputError, match="F8_REQUANTIZE"):
        f8compile(make_small_net(), torch.randn(*SHAPE), target="rv32i",
                  requantize="multiplier")


@pytest.mark.host
def test_unfoldable_intermediate_is_named():
    """A kernel that would need scratch memory is refused with its name."""
    from tvm.script import tirx as T

    from f8tvm.schedules import mcu

    @T.prim_func(s_tir=True)
    def two_reductions(a: T.Buffer((64, 8), "int32"), out: T.Buffer((1,), "int32")):
        s = T.sblock_alloc_buffer((64,), "int32")
        for i, j in T.grid(64, 8):
            with T.sblock("rowsum"):
                vi, vj = T.axis.remap("SR", [i, j])
                with T.init():
                    s[vi] = 0
                s[vi] = s[vi] + a[vi, vj]
        for i in range(64):
            with T.sblock("total"):
                vi = T.axis.remap("R", [i])
                with T.init():
                    out[0] = 0
                out[0] = out[0] + s[vi]

    with pytest.raises(UnsupportedOpError, match="kernel sums.*intermediate s"):
        mcu.scalar_schedule(two_reductions, "sums")
    assert mcu.MAX_LOCAL < 64


@needs_rv
def test_fashion_mnist_cnn_on_rv32i_same_logits_as_the_x86_build():
    """The Fashion-MNIST CNN of tools/mcu_fashion (untrained here: bit-exactness does not
    need training) on real test images: the RV32I build's logits equal the x86 build's and the
    reference's; the accuracy run with training is the tool's (README)."""
    from f8tvm import data
    from tools import mcu_fashion

    try:
        data.fashion_mnist("test")
    except data.DataNotFoundError as err:
        pytest.skip(str(err))
    row = mcu_fashion.run("rv32i", epochs=0, images=64, log=lambda m: None)
    assert row["bit_exact_with_host"] and row["bit_exact_with_reference_first_200"]
    assert row["same_predictions"] == 64
    assert row["footprint"]["sram_bytes"] < 16 * 1024  # fits a small MCU


@needs_rv
def test_build_cli_refuses_a_build_over_its_ram(tmp_path, capsys):
    """python -m f8tvm.build --ram: a limit below the build's SRAM names both and writes
    nothing; --ram on a non-microcontroller target is a usage error."""
    from f8tvm import build

    args = ["--model", "ds_cnn", "--target", "rv32i", "--output-dir", str(tmp_path),
            "--calib", "random", "--calib-count", "1"]
    assert build.main([*args, "--ram", "8"]) == 2
    err = capsys.readouterr().err
    assert "SRAM" in err and "--ram 8 KiB = 8,192 bytes" in err
    assert os.listdir(tmp_path) == []
    with pytest.raises(SystemExit):
        build.main(["--model", "resnet18", "--target", "x86", "--ram", "64"])
    assert "--ram applies to microcontroller targets" in capsys.readouterr().err


@pytest.mark.unit
def test_m0plus_cycle_table():
    """The Cortex-M0+ timings the cycle model uses (TRM, single-cycle multiplier)."""
    from f8tvm.mcu.cycles import m0plus_cycles

    cases = {("adds", "r0, r1, r2"): (1, False), ("muls", "r1, r0"): (1, False),
             ("ldrb", "r0, [r3, #0]"): (2, False), ("str", "r1, [sp, #12]"): (2, False),
             ("push", "{r4, r5, r6, r7, lr}"): (6, False),
             ("pop", "{r4, r5, r6, r7, pc}"): (8, False),
             ("pop", "{r4-r7}"): (5, False), ("stmia", "r6!, {r2}"): (2, False),
             ("b.n", "54 <f>"): (2, False), ("bne.n", "54 <f>"): (1, True),
             ("bl", "0 <__aeabi_lmul>"): (3, False), ("bx", "lr"): (2, False)}
    for (mnemonic, operands), want in cases.items():
        assert m0plus_cycles(mnemonic, operands) == want, mnemonic


@pytest.mark.skipif(not (HAVE_M0 and shutil.which("qemu-system-arm")),
                    reason="needs arm-none-eabi-gcc and qemu-system-arm (the micro:bit machine)")
def test_small_model_on_the_microbit_machine(tmp_path):
    """A Cortex-M0+ build boots on QEMU's micro:bit (a Cortex-M0 that refuses ARMv7-M
    instructions, 16 KiB of SRAM) and prints the reference's logits; the same image with one
    kernel compiled for Cortex-M3 (its products may use wider instructions) would be refused
    by the static check first, and the machine itself faults on an ARMv7-M instruction."""
    from f8tvm.mcu import microbit

    torch.manual_seed(0)  # at 8x8: the micro:bit's 16 KiB hold arena and stack
    net = make_small_net()
    src = plan_source(net, torch.randn(1, 3, 8, 8))
    b = pipeline.run(pipeline.Build(M0, src.model, src.example_input, src.plan_for))
    folder = tmp_path / "src"
    os.makedirs(folder)
    for name, text in b.executable.files.items():
        (folder / name).write_text(text)
    lo = -127 if b.plan.input_signed else 0
    q = np.random.default_rng(3).integers(lo, 128, size=(1, 3, 8, 8)).astype(
        b.executable.input.dtype)
    elf = microbit.build_image(M0, str(folder), q, str(tmp_path / "mb.elf"))
    assert toolchain.thumb_v6m_violations(M0, elf) == []
    got = microbit.run(M0, elf, 10)
    assert (got == run_reference(b.graph, b.plan, q).reshape(-1)).all()
    # an ARMv7-M instruction (sdiv) in the reset path: the Cortex-M0 faults, no result
    startup = tmp_path / "f8_startup.c"
    startup.write_text(startup.read_text().replace(
        "  f8_model_run(f8_input, f8_out);",
        "  volatile int32_t n = 7; f8_out[0] = n / (int32_t)f8_data_end;\n"
        "  f8_model_run(f8_input, f8_out);"))
    bad = tmp_path / "bad.elf"
    objs = [str(tmp_path / "model.o"), str(tmp_path / "kernels.o"),
            str(tmp_path / "f8_freestanding.o")]
    objs.append(toolchain.compile_c(M0, str(startup), str(tmp_path / "bad.o"),
                                    include=str(folder),
                                    extra=(f"-I{tmp_path}", "-mcpu=cortex-m3")))
    toolchain.link(M0, objs, str(bad), (f"-T{tmp_path / 'f8_microbit.ld'}",))
    assert any(t.startswith("sdiv") for _, t in toolchain.thumb_v6m_violations(M0, str(bad)))
    with pytest.raises(ToolchainError, match="printed no result"):
        microbit.run(M0, str(bad), 10, timeout=20)


@needs_rv
@pytest.mark.parametrize("name", ["resnet8", "ds_cnn", "mobilenet_v1_025"])
def test_zoo_microcontroller_models_bit_exact_on_rv32i(name, tmp_path):
    """The MLPerf Tiny architectures (random weights) built for RV32I run under QEMU with the M
    extension off, bit-exact with the NumPy reference; no library multiply in the image."""
    from f8tvm.api import compile as f8compile
    from f8tvm.models import get_model

    model, spec = get_model(name, seed=0)
    shape = spec.example_shape()
    rng = np.random.default_rng(0)
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(2)]
    cm = f8compile(model, torch.zeros(shape), target="rv32i", calib=calib, name=name)
    assert cm.audit.wide_multiplies == 0 and cm.audit.macs_8bit > 10**6
    lo, hi = (-127, 127) if cm.plan.input_signed else (0, 255)
    qs = rng.integers(lo, hi + 1, size=(2, *shape)).astype(cm.program.input.dtype)
    got = cm.run_int_many(qs).reshape(2, -1)
    want = np.stack([run_reference(cm.graph, cm.plan, q).reshape(-1) for q in qs])
    assert (got == want).all()
    cm.export(str(tmp_path / name))  # links the image and refuses a library multiply in it
    meta = json.loads((tmp_path / name / "model.json").read_text())
    assert meta["footprint"]["arena_bytes"] == cm.program.arena_bytes


@needs_rv
def test_rv32im_uses_its_multiplier(tmp_path):
    """rv32im, the comparison target: the products are mul instructions (no table, no library
    multiply), bit-exact under QEMU with the M extension."""
    rvm = TARGETS["rv32im"]
    b = _build(rvm)
    assert "#define F8_PRODUCTS 0" in b.executable.files["kernels.c"]
    folder = _write(b, tmp_path / "src")
    qs = _inputs(b, 2, seed=4)
    want = _reference(b, qs)
    elf = emulate.build_image(rvm, folder, str(tmp_path / "im.elf"))
    assert toolchain.library_multiplies(rvm, elf) == []
    dis = toolchain.run_tool([toolchain.tool(rvm, "objdump"), "-d", elf], "objdump")
    assert any(m == "mul" for _, _, m, _ in toolchain.instructions(dis))
    assert (emulate.run_image(rvm, elf, qs, want.shape[1]) == want).all()


@needs_m0
def test_cortex_m0plus_export_holds_only_the_build(tmp_path):
    """The emulator image is linked and checked in a scratch folder: none of its harness
    files (buffers, the emulator's linker script, objects) end up in the exported folder."""
    from f8tvm.api import compile as f8compile

    torch.manual_seed(0)
    cm = f8compile(make_small_net(), torch.randn(1, 3, 8, 8), target="cortex-m0plus")
    cm.export(str(tmp_path / "m0"))
    assert sorted(os.listdir(tmp_path / "m0")) == ["Makefile", "f8tvm.ld", "kernels.c",
                                                    "model.c", "model.h", "model.json"]
