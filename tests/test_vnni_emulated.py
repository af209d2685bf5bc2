"""The VNNI builds -- ``x86-avx512`` (AVX-512 VNNI, zmm) and ``x86-avxvnni`` (AVX-VNNI, the VEX
``vpdpbusd`` on ymm) -- executed, not only disassembled, on a CPU without VNNI: every kernel runs
on an emulated VNNI CPU (``tools/emulated_x86.py``) and the whole program is compared bit for
bit with the NumPy reference; the conv kernels also under other register tiles (the decisions
tuning makes) with full-range 8-bit operands."""

import re

import numpy as np
import pytest
import torch
from conftest import asm_functions, module_asm

import f8tvm
from f8tvm import pipeline
from f8tvm.core import _tvm
from f8tvm.core._tvm import tvm
from f8tvm.reference import quantize_input, run_reference
from f8tvm.runtime import Module
from f8tvm.schedules import default_schedule, find_dot, kernel_kind
from f8tvm.schedules.cpu import _divisors, default_conv_tiles
from tools import emulated_x86 as emu

SIZE = 16

pytestmark = pytest.mark.skipif(emu.available() is not None,
                                reason=f"no emulated VNNI CPU: {emu.available()}")


class _WideNet(torch.nn.Module):
    """Convs with two or more 16-lane output blocks (so tiles span channel blocks too), a
    strided 3x3, a 1x1 with a residual, signed activations into the last conv."""

    def __init__(self):
        super().__init__()
        nn = torch.nn
        self.stem = nn.Conv2d(3, 32, 3, padding=1)
        self.down = nn.Conv2d(32, 48, 3, stride=2, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(48)
        self.pw = nn.Conv2d(48, 48, 1)
        self.head = nn.Conv2d(48, 32, 1)

    def forward(self, x):
        x = torch.relu(self.stem(x))
        y = torch.relu(self.bn(self.down(x)))
        y = self.pw(y) + y  # signed sum feeds the head
        return torch.flatten(torch.nn.functional.adaptive_avg_pool2d(self.head(y), 1), 1)


VNNI_TARGETS = ["x86-avx512", "x86-avxvnni"]


@pytest.fixture(scope="module", params=[(t, n) for t in VNNI_TARGETS for n in ("small", "wide")],
                ids=lambda p: "-".join(p))
def vnni_build(request):
    from conftest import make_small_net

    target, name = request.param
    torch.manual_seed(0)
    net = make_small_net() if name == "small" else _WideNet().eval()
    calib = [np.random.default_rng(0).standard_normal((4, 3, SIZE, SIZE)).astype("float32")]
    return f8tvm.compile(net, torch.randn(1, 3, SIZE, SIZE), target=target, calib=calib)


def test_avxvnni_kernels_are_vex_ymm_only(vnni_build):
    """AVX-VNNI CPUs have no AVX-512: the x86-avxvnni build's dots are the VEX vpdpbusd on ymm
    and no instruction touches a zmm or mask register; the audit holds on both builds."""
    asm = module_asm(vnni_build)
    assert vnni_build.audit.wide_multiplies == 0 and vnni_build.audit.macs_8bit > 0
    if vnni_build.target.name == "x86-avxvnni":
        dots = [ln for ln in asm.splitlines() if "vpdpbusd" in ln]
        assert dots and all("{vex}" in ln and "%ymm" in ln for ln in dots)
        assert "%zmm" not in asm and not re.search(r"%k[0-7]\b", asm)
    else:
        assert re.search(r"vpdpbusd\t.*%zmm", asm)


def test_vnni_program_is_bit_exact_on_emulated_cpu(vnni_build, tmp_path):
    cm = vnni_build
    ex, report = emu.emulated_executable(cm.int_mod, cm.target,
                                         str(tmp_path))
    emulated = Module(ex, cm.metadata())  # not cm.run_int: it checks this CPU for VNNI
    rng = np.random.default_rng(7)
    for _ in range(3):
        q = quantize_input(rng.standard_normal((1, 3, SIZE, SIZE)).astype("float32"), cm.plan)
        assert np.array_equal(emulated.run_int(q)[0], run_reference(cm.graph, cm.plan, q))
    where = {n: r["where"] for n, r in report.items()}  # the kernels called
    # the vpdpbusd kernels all ran on the emulated CPU; only a kernel that hit the emulator's
    # known decoder gap (an EVEX gather) may have run natively, and none of those is a dot
    holding = [f for f, text in asm_functions(module_asm(cm)).items() if "vpdpbusd" in text]
    dots = {n for n in where if any(h == n or h.startswith(n + "_") for h in holding)}
    assert dots and all(where[n] == "emulated" for n in dots), where
    assert sum(v == "emulated" for v in where.values()) >= len(where) - 2, where


def _random_args(func, rng):
    from tvm.s_tir import meta_schedule as ms

    out = []
    for _, dtype, shape in (i.as_json() for i in ms.arg_info.ArgInfo.from_prim_func(func)):
        info = np.iinfo(dtype)
        out.append(rng.integers(info.min, info.max, size=shape, endpoint=True).astype(dtype))
    return out


def _widest(n, cap):
    """The largest tile up to ``cap`` that divides ``n`` (the schedules' own divisors)."""
    return max(d for d in _divisors(n) if d <= cap)


def test_vnni_conv_tiles_are_exact_on_emulated_cpu(vnni_build, tmp_path):
    """Each conv kernel under several register tiles (smallest, default, widest), on operands
    spanning the whole 8-bit range (a saturating dot, or a u8/s8 mix-up, would show), against
    the same PrimFunc unscheduled, compiled for this CPU."""
    cm = vnni_build
    preset = cm.target
    dot = find_dot(preset.dot)
    fused = pipeline.fuse(pipeline.pack(cm.int_mod, preset), preset)
    rng = np.random.default_rng(3)
    checked = 0
    for name, func in _tvm.primfuncs(fused):
        if kernel_kind(func) != "conv":
            continue
        args = _random_args(func, rng)
        _, occ, _, ow, _ = args[-1].shape  # output blocks and columns (NCHWc output)
        # the reduction's bytes: the weights' (icb, kh, kw, quads, ..., 4) axes
        depth = int(np.prod(args[1].shape[1:5])) * args[1].shape[-1]
        tiles = {(1, 1), default_conv_tiles(occ, ow, dot), default_conv_tiles(occ, ow, dot,
                                                                             depth=depth),
                 (_widest(occ, 4), _widest(ow, 4)), (1, _widest(ow, 16))}
        ref = [tvm.runtime.tensor(a) for a in args]
        tvm.compile(tvm.IRModule({"main": func.with_attr("global_symbol", "main")}),
                    target="llvm")["main"](*ref)
        expected = ref[-1].numpy()
        for t in sorted(tiles):
            exe = emu.compile_and_link(default_schedule(func, dot, t), preset.tvm(),
                                       str(tmp_path / f"{name}_{t[0]}x{t[1]}"))
            got = [a.copy() for a in args]
            emu.run_kernel(exe, got)
            assert np.array_equal(got[-1], expected), (name, t)
            checked += 1
    assert checked >= 4


@pytest.mark.parametrize("target", VNNI_TARGETS)
@pytest.mark.parametrize("model", ["resnet18", "mobilenet_v2", "efficientnet_lite0"])
def test_vnni_models_are_bit_exact_on_emulated_cpu(model, target, tmp_path):
    """The bench's three models, 224x224, built for each VNNI target and run whole on the
    emulated VNNI CPU (about 7 s a run): bit-exact with the NumPy reference."""
    from f8tvm.models import get_model

    torch.manual_seed(0)
    net, spec = get_model(model)
    size = spec.input_size
    rng = np.random.default_rng(1)
    calib = [rng.standard_normal((2, 3, size, size)).astype("float32")]
    cm = f8tvm.compile(net, torch.zeros(1, 3, size, size), target=target, calib=calib)
    ex, report = emu.emulated_executable(cm.int_mod, cm.target,
                                         str(tmp_path))
    q = quantize_input(rng.standard_normal((1, 3, size, size)).astype("float32"), cm.plan)
    out = Module(ex, cm.metadata()).run_int(q)[0]
    assert np.array_equal(out, run_reference(cm.graph, cm.plan, q))
    where = {n: r["where"] for n, r in report.items()}
    assert len(where) >= 20 and sum(v == "emulated" for v in where.values()) >= len(where) - 2


def test_emulated_x86_command_counts_and_checks(tmp_path, capsys):
    """``python -m tools.emulated_x86``: both builds bit-exact, the table and the JSON; the
    AVX-VNNI convs execute fewer instructions than AVX2's (32 MACs per dot, not 16)."""
    import json

    out = tmp_path / "counts.json"
    rc = emu.main(["--model", "mobilenet_v2", "--input-size", "32", "--targets",
                   "x86-avxvnni,x86", "--count", "--output", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "x86-avxvnni" in text and "vs first" in text
    rows = {r["target"]: r for r in json.loads(out.read_text())["rows"]}
    assert all(r["bit_exact"] and r["instructions"] > 0 for r in rows.values())
    vnni, avx2 = (rows[t]["instructions_by_kind"] for t in ("x86-avxvnni", "x86"))
    assert 0 < vnni["conv"] < avx2["conv"] / 1.5
    assert rows["x86"]["macs_8bit"] == rows["x86-avxvnni"]["macs_8bit"]  # same 8-lane blocks


def test_emulated_x86_command_rejects_other_targets(capsys):
    assert emu.main(["--model", "mobilenet_v2", "--targets", "x86,arm"]) == 2
    assert "not x86 targets: arm" in capsys.readouterr().err
