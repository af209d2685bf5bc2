"""ARM targets: cross-compiled modules run on the emulated aarch64 board, bit-exact with x86.

The emulated tests need ``qemu-aarch64-static`` (Debian ``qemu-user-static``) and
``aarch64-linux-gnu-g++`` (``g++-aarch64-linux-gnu``); the first run builds the board's sysroot in
``$F8TVM_BOARD_DIR`` (default ``~/.cache/f8tvm/aarch64-board``, about a minute of downloads),
later runs reuse it.  Emulated timings are meaningless; only results are compared.
"""

import dataclasses
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ROOT, module_asm
from macs import blocked_macs

import f8tvm
from f8tvm import runtime
from f8tvm.core.errors import ToolchainError
from f8tvm.models import get_model
from f8tvm.passes.offset_activations import has_unsigned_dot
from f8tvm.reference import run_reference
from f8tvm.targets import TARGETS

SIZE = 32
ARM_TARGETS = ["arm", "arm-dotprod"]
HAVE_QEMU = shutil.which("qemu-aarch64-static") is not None
HAVE_A64_CXX = shutil.which(TARGETS["arm"].cross_compiler) is not None
HAVE_A32_CXX = shutil.which(TARGETS["armv7"].cross_compiler) is not None

needs_a64_cxx = pytest.mark.skipif(not HAVE_A64_CXX, reason="aarch64-linux-gnu-g++ is not "
                                   "installed (apt-get install g++-aarch64-linux-gnu)")


def on_board(test):
    """Mark a test that runs on the emulated aarch64 board."""
    test = pytest.mark.skipif(not HAVE_QEMU, reason="qemu-aarch64-static is not installed "
                              "(apt-get install qemu-user-static)")(test)
    return pytest.mark.arm_emulated(needs_a64_cxx(test))


def _file(path):
    return subprocess.run(["file", "-b", path], capture_output=True, text=True,
                          check=True).stdout


@pytest.fixture(scope="module", params=["resnet18", "mobilenet_v2"])
def builds(request, tmp_path_factory):
    """One model compiled for x86 and for both aarch64 presets, from one plan."""
    torch.manual_seed(0)
    model, _ = get_model(request.param, randomize_bn=True)
    calib = [torch.randn(2, 3, SIZE, SIZE) for _ in range(2)]
    example = torch.zeros(1, 3, SIZE, SIZE)
    out = tmp_path_factory.mktemp(f"arm-{request.param}")
    x86 = f8tvm.compile(model, example, target="x86", calib=calib)
    built = {"x86": (x86, x86.export(str(out / "x86.so"))[0])}
    for t in ARM_TARGETS:
        cm = f8tvm.compile(model, example, target=t, plan=x86.plan)  # same decisions
        built[t] = (cm, cm.export(str(out / f"{t}.so"))[0])
    return request.param, built


def _inputs(cm, n=2):
    rng = np.random.default_rng(7)
    lo, hi = (-127, 127) if cm.plan.input_signed else (0, 255)
    dtype = "int8" if cm.plan.input_signed else "uint8"
    return [rng.integers(lo, hi + 1, (1, 3, SIZE, SIZE)).astype(dtype) for _ in range(n)]


@needs_a64_cxx
def test_arm_builds_are_aarch64_int8_only(builds):
    _, built = builds
    for t in ARM_TARGETS:
        cm, so = built[t]
        assert "ARM aarch64" in _file(so)
        assert not has_unsigned_dot(cm.int_mod)  # sdot/smull take s8 x s8
        meta = json.loads(Path(runtime.metadata_path(so)).read_text())
        audit = meta["audit"]
        assert audit["wide_multiplies"] == 0 and not audit["violations"]
        # the packed kernels execute the model's MACs plus those of the zero-padded channels
        assert audit["macs_8bit"] == blocked_macs(cm) >= sum(r["macs"]
                                                             for r in meta["plan"]["layers"])
        assert meta["target"]["name"] == t
        print(f"\n{t}: 8-bit MACs {audit['macs_8bit']:,}, wide multiplies "
              f"{audit['wide_multiplies']}, shifts {audit['shifts']:,}")


@on_board
@pytest.mark.parametrize("target", ARM_TARGETS)
def test_bit_exact_on_emulated_board(builds, board, target):
    name, built = builds
    x86, x86_so = built["x86"]
    _, arm_so = built[target]
    local = runtime.load(x86_so)
    # the board serves one session at a time: close it (with) so the next test can connect
    with runtime.load(arm_so, remote=runtime.connect(board.address, session_timeout=600)) as m:
        assert m.board.emulated and m.board.info["machine"] == "aarch64"
        for q in _inputs(x86):
            got, fl = m.run_int(q)
            want, want_fl = local.run_int(q)
            assert got.dtype == np.int32 and fl == want_fl
            assert np.array_equal(got, want), f"{name}/{target}: aarch64 differs from x86"
            assert np.array_equal(got, run_reference(x86.graph, x86.plan, q.astype(np.int64)))


@on_board
def test_efficientnet_is_exact_on_the_board(board, tmp_path):
    """EfficientNet-Lite0 at 112x112 on `arm-dotprod`: its 5x5 depthwise convs run on planes
    rewritten as tap quads (rows of 14 and 7 pixels, and at stride 2), its 3x3 ones in the
    parity and per-pixel forms; the whole model bit-exact with the NumPy reference."""
    torch.manual_seed(0)
    model, _ = get_model("efficientnet_lite0", randomize_bn=True)
    size = 112
    cm = f8tvm.compile(model, torch.zeros(1, 3, size, size), target="arm-dotprod",
                       calib=[torch.randn(2, 3, size, size)])
    so = cm.export(str(tmp_path / "effnet.so"))[0]
    rng = np.random.default_rng(3)
    q = rng.integers(-127, 128, (1, 3, size, size)).astype("int8")
    assert cm.plan.input_signed
    np.save(tmp_path / "q.npy", q)
    script = ("import sys, numpy as np\n"
              "import f8tvm.runtime as rt\n"
              "acc, fl = rt.load(sys.argv[1]).run_int(np.load(sys.argv[2]))\n"
              "np.save(sys.argv[3], acc)\n")
    r = board.run_python("-c", script, so, str(tmp_path / "q.npy"), str(tmp_path / "out.npy"))
    assert r.returncode == 0, r.stderr[-3000:]
    want = run_reference(cm.graph, cm.plan, q.astype(np.int64))
    assert np.array_equal(np.load(tmp_path / "out.npy"), want)


def _one_build(builds, target="arm"):
    return builds[1][target][1]


@on_board
def test_deployment_on_board_without_torch(builds, board, tmp_path):
    """The README's deployment: copy the .so + .json, run with f8tvm.runtime on the board."""
    so = _one_build(builds)
    dst = tmp_path / "board"
    dst.mkdir()
    for f in (so, runtime.metadata_path(so)):
        shutil.copy(f, dst)
    x86 = builds[1]["x86"][0]
    q = _inputs(x86, 1)[0]
    np.save(dst / "q.npy", q)
    script = (
        "import sys, numpy as np\n"
        "import f8tvm.runtime as rt\n"
        "m = rt.load(sys.argv[1])\n"
        "acc, fl = m.run_int(np.load(sys.argv[2]))\n"
        "np.save(sys.argv[3], acc)\n"
        "x = np.random.default_rng(0).standard_normal(m.input_shape).astype(np.float32)\n"
        "y = m.run(x)\n"
        "ref = m.dequantize(m.run_int(m.quantize(x))[0])\n"
        "kernels = m._quantize_kernel is not None and m._dequantize_kernel is not None\n"
        "import importlib.util as u\n"
        "print('torch' in sys.modules, u.find_spec('torch') is not None, y.dtype, kernels,\n"
        "      np.array_equal(y, ref))\n")
    r = board.run_python("-c", script, str(dst / os.path.basename(so)), str(dst / "q.npy"),
                         str(dst / "out.npy"))
    assert r.returncode == 0, r.stderr[-3000:]
    # no torch on the board at all; run's float boundary by the library's two aarch64 kernels,
    # with the NumPy path's result
    assert r.stdout.split() == ["False", "False", "float32", "True", "True"]
    want = run_reference(x86.graph, x86.plan, q.astype(np.int64))
    assert np.array_equal(np.load(dst / "out.npy"), want)
    # and the CLI runs on the board itself
    r = board.run_python("-m", "f8tvm.run", str(dst / os.path.basename(so)), "--top", "3")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "top-3" in r.stdout


@on_board
def test_board_setup_is_cached_and_cli_reports_status(board):
    from tools.emulated_board import EmulatedBoard

    again = EmulatedBoard()
    assert again.is_set_up
    again.setup()  # idempotent: nothing is downloaded again
    r = subprocess.run([sys.executable, "-m", "tools.emulated_board", "status"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 0, r.stderr
    assert "set up:  yes" in r.stdout and f"{board.host}:{board.port}" in r.stdout


@on_board
def test_run_cli_over_rpc_says_emulated(builds, board, tmp_path):
    from PIL import Image

    img = tmp_path / "img.png"
    Image.new("RGB", (40, 36), (20, 180, 90)).save(img)
    so = _one_build(builds, "arm-dotprod")
    r = subprocess.run([sys.executable, "-m", "f8tvm.run", so, "--rpc", board.address,
                        "--input", str(img), "--benchmark"], capture_output=True, text=True,
                       timeout=600, check=False)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "EMULATED" in r.stdout and "top-5" in r.stdout
    assert "latency on the board" in r.stdout and "say nothing about a real board" in r.stdout


def test_run_cli_rpc_unreachable_is_a_clear_error(tmp_path):
    so = tmp_path / "m.so"
    so.write_bytes(b"\x7fELF\x02\x01\x01" + bytes(57))  # an ELF header: the files pass their checks
    (tmp_path / "m.json").write_text(json.dumps({"format": "f8tvm"}))
    r = subprocess.run([sys.executable, "-m", "f8tvm.run", str(so), "--rpc", "127.0.0.1:1"],
                       capture_output=True, text=True, timeout=120, check=False)
    assert r.returncode == 2 and "cannot connect" in r.stderr and "127.0.0.1:1" in r.stderr


@pytest.mark.skipif(not HAVE_A32_CXX, reason="arm-linux-gnueabihf-g++ is not installed "
                    "(apt-get install g++-arm-linux-gnueabihf)")
def test_armv7_cross_compiles_and_exports(tmp_path):
    """armv7 is compile-only: there is no armv7 TVM runtime on PyPI to run it with, and the
    wheel's runtime sources are incomplete (see the README)."""
    from conftest import make_small_net

    torch.manual_seed(0)
    cm = f8tvm.compile(make_small_net(), torch.zeros(1, 3, 16, 16), target="armv7",
                       calib=[torch.randn(2, 3, 16, 16)])
    so, meta = cm.export(str(tmp_path / "small-armv7.so"))
    assert "ELF 32-bit" in _file(so) and "ARM, EABI5" in _file(so)
    assert not has_unsigned_dot(cm.int_mod)
    audit = json.loads(Path(meta).read_text())["audit"]
    assert audit["wide_multiplies"] == 0 and audit["macs_8bit"] > 0


def test_missing_cross_compiler_names_the_package(monkeypatch):
    fake = dataclasses.replace(TARGETS["arm"], name="arm-missing",
                               cross_compiler="no-such-aarch64-g++",
                               compiler_package="g++-aarch64-linux-gnu")
    with pytest.raises(ToolchainError, match=r"apt-get install g\+\+-aarch64-linux-gnu"):
        fake.check_toolchain()
    # checked before any work: compile fails at once, even with a model it cannot import
    monkeypatch.setitem(TARGETS, "arm-missing", fake)
    with pytest.raises(ToolchainError, match="no-such-aarch64-g"):
        f8tvm.compile(object(), None, target="arm-missing")


def test_presets_name_target_compiler_instruction():
    for name, triple, cxx, pkg in [
        ("arm", "aarch64-linux-gnu", "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
        ("arm-dotprod", "aarch64-linux-gnu", "aarch64-linux-gnu-g++", "g++-aarch64-linux-gnu"),
        ("armv7", "armv7a-linux-gnueabihf", "arm-linux-gnueabihf-g++", "g++-arm-linux-gnueabihf"),
    ]:
        p = TARGETS[name]
        assert p.tvm_target["mtriple"] == triple and p.tvm_target["num-cores"] >= 1
        assert (p.cross_compiler, p.compiler_package, p.activations) == (cxx, pkg, "int8")
        assert str(p.tvm().kind) == "llvm"
    assert "+dotprod" in TARGETS["arm-dotprod"].tvm_target["mattr"]
    assert TARGETS["arm-dotprod"].dot_instruction == "sdot"
    assert TARGETS["x86-avx512"].activations == "uint8"  # VNNI is u8 x s8: no offset on x86


_VECTOR_MUL = (r"^\s+([su]?ml[as]l?2?|[su]?mull?2?|[su]?dot|sq\w*mulh?|mul|fmul\w*|fml[as]\w*)"
               r"\s+(v\d+\.\w+.*)$")


def _asm_multiplies(cm):
    """Vector multiply instructions of the conv and depthwise kernels:
    {function: [(mnemonic, operands with register numbers dropped)]}."""
    import re

    asm = module_asm(cm)
    out, fn = {}, None
    for line in asm.splitlines():
        m = re.match(r"^([A-Za-z_][\w.]*):", line)
        if m and not m.group(1).startswith(".L"):
            fn = m.group(1)
            if fn.startswith("__tvm_ffi_"):  # the calling-convention wrapper of a kernel
                continue
            if "conv2d_nchwc" in fn or "depthwise_nchwc" in fn:
                out.setdefault(fn, [])
        m = re.match(_VECTOR_MUL, line)
        if m and fn in out:
            out[fn].append((m.group(1), re.sub(r"v\d+", "v", m.group(2))))
    return out


def _is_8bit_smull(op, args):
    """``smull``/``smlal`` (and their ``2`` forms) of 8-bit lanes into 16 bits."""
    return op in ("smull", "smull2", "smlal", "smlal2") and (".8b" in args or ".16b" in args)


@needs_a64_cxx
def test_dotprod_conv_asm_contains_sdot(builds):
    """arm-dotprod: every packed conv kernel multiplies with sdot (our 8x4 intrinsic); depthwise
    kernels with smull on 8-bit lanes; nothing else multiplies."""
    cm, _ = builds[1]["arm-dotprod"]
    muls = _asm_multiplies(cm)
    convs = {fn: ops for fn, ops in muls.items() if "conv2d_nchwc" in fn}
    assert convs, "no packed conv kernel in the module"
    no_sdot = [fn for fn, ops in convs.items() if not any(op == "sdot" for op, _ in ops)]
    assert not no_sdot, f"conv kernels without sdot: {no_sdot}"
    other = {fn: sorted({f"{op} {a}" for op, a in ops
                         if not (op == "sdot" and ".16b" in a) and not _is_8bit_smull(op, a)})
             for fn, ops in muls.items()}
    assert not any(other.values()), {fn: ops for fn, ops in other.items() if ops}
    sdots = sum(op == "sdot" for ops in convs.values() for op, _ in ops)
    # the pair form: quads taken by element (the first conv, with one quad per pixel, and
    # tiles of one pixel, where one dup serves every block of the tile, broadcast them)
    by_element = sum(op == "sdot" and ".4b[" in a for ops in convs.values() for op, a in ops)
    print(f"\nby element: {by_element} of {sdots} sdot")
    assert by_element > 0.6 * sdots
    print(f"\narm-dotprod: {len(convs)} conv kernels, {sdots} sdot")


# instructions beyond Armv8.0-A + NEON that LLVM could select for a named CPU: crypto, CRC,
# LSE atomics (v8.1), rounding doubling multiply-accumulate (v8.1), dot products (v8.2),
# half-precision arithmetic (v8.2)
_BEYOND_V80 = re.compile(r"\t(aes[a-z]*|sha[0-9a-z]+|pmull2?|crc32[a-z]*|ld(add|clr|eor|set)"
                         r"[a-z]*|cas[a-z]*|swp[a-z]*|sqrdml[as]h|[su]dot|f[a-z]+\tv\d+\.[48]h)\t")


@needs_a64_cxx
def test_arm_asm_stays_within_armv8_0(builds):
    """The `arm` preset names a CPU (``mcpu``: Cortex-A72) for LLVM's scheduling model only;
    its code must still run on any Armv8.0-A core with NEON (a Cortex-A53 without the
    optional crypto extension, as on the Raspberry Pi 3/4)."""
    asm = module_asm(builds[1]["arm"][0])
    beyond = sorted({m.group(1) for m in _BEYOND_V80.finditer(asm)})
    assert not beyond, beyond
    assert _BEYOND_V80.search("\tsdot\tv0.4s, v1.16b, v2.16b\n")  # the pattern matches


@needs_a64_cxx
def test_arm_asm_conv_products_are_8bit(builds):
    """NEON build: every vector multiply in a conv or depthwise kernel takes 8-bit lanes
    (``smull``/``smlal .8h, .8b, .8b``, ``smlal2 .8h, .16b, .16b``): the convs through our NEON
    intrinsics (the pair form: ``smlal`` adds a block's second quad into the first's int16
    products; the block-pair form of the convs on an even number of blocks: ``smlal2`` adds a
    lane's products of the pair's second block), the depthwise convs through int16 products of
    int8 lanes, which LLVM selects as smull.  Nothing beyond Armv8.0-A's NEON: the preset names
    a CPU (``mcpu``) for LLVM's scheduling model only."""
    cm, _ = builds[1]["arm"]
    muls = _asm_multiplies(cm)
    assert muls and all(muls.values()), "a conv kernel without any vector multiply"
    wide = {fn: sorted({f"{op} {args}" for op, args in ops if not _is_8bit_smull(op, args)})
            for fn, ops in muls.items()}
    assert not any(wide.values()), {fn: ops for fn, ops in wide.items() if ops}
    # the pair form: two quads' products per int16 lane (smull, then smlal adds the second)
    convs = [ops for fn, ops in muls.items() if "conv2d_nchwc" in fn]
    smull = sum(op == "smull" for ops in convs for op, _ in ops)
    smlal = sum(op == "smlal" for ops in convs for op, _ in ops)
    smlal2 = sum(op == "smlal2" and ".16b" in a for ops in convs for op, a in ops)
    print(f"\narm: {len(muls)} kernels, {sum(map(len, muls.values()))} smull/smlal .8b; "
          f"convs: {smull} smull, {smlal} smlal, {smlal2} smlal2")
    assert smlal + smlal2 > 0.8 * smull  # two products per int16 lane
    # the block-pair form: resnet18's 3x3 and 1x1 convs, mobilenet_v2's 1x1 convs on an even
    # number of blocks
    assert smlal2 > 0


@on_board
def test_instruction_counts_bracket_the_inferences(builds, board):
    """tools.arm_count: instructions per inference on the emulated board (QEMU plugin of ours,
    markers around the inferences).  Two counts with 3 and 5 inferences agree within 0.1%, and
    the one-inference segment is one inference plus the loop's own few instructions."""
    from tools import arm_count

    name, built = builds
    if name != "resnet18":
        pytest.skip("one model is enough")
    try:
        arm_count.setup()
    except (ToolchainError, RuntimeError) as err:  # no gcc, no Debian sources, no network
        pytest.skip(f"the instruction counter cannot be set up here: {err}")
    cm, so = built["arm-dotprod"]
    a = arm_count.count(so, 3, board=board, kernels=True)
    b = arm_count.count(so, 5, board=board, caches=False)
    assert a["per_inference"] > 1e6
    assert abs(a["per_inference"] - b["per_inference"]) <= 1e-3 * b["per_inference"]
    assert 0 <= a["one"] - a["per_inference"] < 0.01 * a["per_inference"]
    # the split by kernel: every kernel of the module by name, the rest is the runtime's; the
    # packed convs do most of the work; the parts add up to the whole
    split = {k["kernel"]: k for k in a["kernels"]}
    asm = module_asm(cm)
    kernels = {m[len("__tvm_ffi_"):] for m in re.findall(r"^(__tvm_ffi_\w+):", asm, re.M)}
    assert set(split) - {"runtime", "module (other)"} <= kernels
    convs = sum(k["instructions"] for name, k in split.items() if "conv2d_nchwc" in name)
    assert convs > 0.8 * a["per_inference"]
    assert split["runtime"]["instructions"] < 0.1 * a["per_inference"]
    assert abs(sum(k["instructions"] for k in split.values()) - a["per_inference"]) < 1
    for model in arm_count.CACHE_MODELS:
        parts = sum(k["caches"][model]["l1d"] for k in split.values())
        assert abs(parts - a["caches"][model]["l1d"]) < 1
    # each kernel beside its 8-bit MACs (the build's audit, by name): they add up to the
    # module's, every conv has some, and none runs fewer instructions than one sdot per 16
    assert sum(k["macs"] for k in split.values()) == cm.audit.macs_8bit
    assert all(k["macs"] > 0 for name, k in split.items() if "conv2d_nchwc" in name)
    assert all(k["per_16_macs"] >= 1.0 for k in split.values() if k["macs"])
    # without dotprod the same program is not runnable: sdot is an illegal instruction there
    with pytest.raises(RuntimeError, match="counting .* failed"):
        arm_count.count(so, 3, cpu="cortex-a72", board=board, caches=False)


@on_board
def test_cache_models_count_a_stream(board):
    """The plugin's cache models: one pass over 4 MiB (more than any modelled L2) misses once
    per 64-byte line in L1D and in L2; 16 KiB read again and again stays in a 64 KiB L1D."""
    from tools import arm_count

    try:
        arm_count.setup()
    except (ToolchainError, RuntimeError) as err:
        pytest.skip(f"the instruction counter cannot be set up here: {err}")
    big = arm_count.count(f"stream:{4 << 20}", 3, board=board)["caches"]
    lines = (4 << 20) / 64
    for model, c in big.items():
        assert lines <= c["l1d"] < 1.05 * lines and lines <= c["l2"] < 1.05 * lines, (model, c)
    small = arm_count.count(f"stream:{16 << 10}", 3, board=board)["caches"]
    assert small["a76"]["l1d"] < (16 << 10) / 64 / 2, small


def test_count_table_ratios_and_cycle_estimate(tmp_path):
    """The table's ratios compare each row with the best ORT row of its own model and CPU, for
    instructions, L2 misses and estimated cycles; the estimate follows its stated formula."""
    from tools import arm_count

    def row(model, cpu, system, instructions, l2):
        caches = {}
        for m in arm_count.CACHE_MODELS:
            c = dict(l1i=1e3, l1d=1e5, l2=l2)
            c["cycles"] = arm_count.cycle_estimate(m, instructions, c)
            caches[m] = c
        return dict(model=model, cpu=cpu, system=system, instructions=instructions,
                    caches=caches, check="ok")

    rows = arm_count.with_ratios([
        row("a", "max", "f8tvm arm-dotprod", 80e6, 1e5),
        row("a", "max", "ORT int8 u8s8", 100e6, 4e5),
        row("a", "max", "ORT int8 s8s8", 120e6, 2e5),
        row("b", "max", "ORT int8 s8s8", 1e6, 1e3),  # another model, another CPU: not peers
        row("a", "cortex-a72", "ORT int8 s8s8", 10e6, 1e3)])
    f8, u8 = rows[0], rows[1]
    assert f8["vs_best_ort"] == pytest.approx(0.8) and u8["vs_best_ort"] == 1.0
    assert f8["vs_best_ort_l2"]["a55"] == pytest.approx(0.5)  # the s8s8 row has fewer misses
    a55 = arm_count.CACHE_MODELS["a55"]
    want = (80e6 / a55["ipc"] + (1e3 + 1e5) * a55["l2_latency"] + 1e5 * a55["memory_latency"])
    assert f8["caches"]["a55"]["cycles"] == pytest.approx(want)
    arm_count.print_table(rows)
    if importlib.util.find_spec("matplotlib") is not None:  # the bench extra draws the plot
        arm_count.plot([r for r in rows if r["model"] == "a" and r["cpu"] == "max"],
                       str(tmp_path / "p.png"))
        assert (tmp_path / "p.png").stat().st_size > 1000


def test_count_markers_give_one_inference_per_kernel():
    """The plugin's running totals at markers 1, 2, 3 (segments of 1 and 3 inferences) become
    one inference: per bucket, buckets of one kernel name added up, a bucket first seen after
    marker 1 counted from zero, the caches' miss columns alongside."""
    from tools import arm_count

    width = 1 + 3 * len(arm_count.CACHE_MODELS)

    def line(tag, bucket, insns, miss):
        return f"{tag} {bucket} {insns} " + " ".join([str(miss)] * (width - 1))

    # bucket 0: 100 per inference (+5 of loop); buckets 1 and 2 (one name): 10 + 30
    text = "\n".join([line(1, 0, 1000, 50), line(1, 1, 0, 0),
                      line(2, 0, 1105, 60), line(2, 1, 10, 1), line(2, 2, 30, 2),
                      line(3, 0, 1410, 90), line(3, 1, 40, 4), line(3, 2, 120, 8)])
    res = arm_count._per_inference(arm_count._parse_marks(text), 3, "max",
                                   ["runtime", "k", "k"], caches=True)
    assert res["per_inference"] == 100 + 40 and (res["one"], res["many"]) == (145, 425)
    split = {k["kernel"]: k for k in res["kernels"]}
    assert split["runtime"]["instructions"] == 100 and split["k"]["instructions"] == 40
    # misses: bucket 1 (3 - 1) / 2, bucket 2 (6 - 2) / 2, runtime (30 - 10) / 2
    assert split["k"]["caches"]["a55"]["l1d"] == 1 + 2
    assert res["caches"]["a76"]["l2"] == 10 + 1 + 2
