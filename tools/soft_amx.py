"""The x86-amx program's own tile instructions on a CPU without AMX, counted:
``python -m tools.soft_amx``.

Every register-numbered AMX intrinsic call of the scheduled kernels (``ldtilecfg``,
``sttilecfg``, ``tilezero``, ``tileloadd64``, ``tdpbusd``, ``tilestored64``) is rerouted to the
function of the same name in ``soft_amx.c``: a software tile unit that follows the instructions'
definitions.  The description path (``intrin_amx.described()``) replaces the tile steps by their
meaning and so tests the schedule; this runs the instruction sequence the schedule emits --
which registers, which pointers and strides, the configuration -- everything but the silicon,
and counts it: per inference, the ``tdpbusd`` executed and their MACs (how full the tiles are),
the tile loads and their bytes, the configurations loaded, and the dots that add into an
accumulator one, two or three dots after the previous dot into it (a ``tdpbusd`` takes several
times its issue interval to produce its result, so such a dot waits); and, from the schedule,
the bytes the 1x1 convs copy pixel-major for their tiles (vector code: no tile instruction).

Prints a table per model, checks the output bit-exact against the NumPy reference, writes JSON.
The rest of x86-amx (depthwise convs, the RGB 1x1) is AVX-512 VNNI code: it needs a CPU with
AVX-512 VNNI.  No time is measured: the software unit's speed says nothing about AMX's.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace

import numpy as np
import torch

from f8tvm import api, pipeline
from f8tvm.core import _tvm
from f8tvm.core._tvm import te, tir, tvm
from f8tvm.models import get_model
from f8tvm.passes.audit_multiplies import call_counts
from f8tvm.reference import quantize_input, run_reference
from f8tvm.schedules import cpu as cpu_schedules
from f8tvm.targets import get_target, read_cpuinfo

_NAMES = ("ldtilecfg", "sttilecfg", "tilezero", "tileloadd64", "tdpbusd", "tilestored64")
# soft_amx.c's counters, in its order
COUNTS = ("dots", "macs", "loads", "load_bytes", "stores", "configs", "gap1", "gap2", "gap3")
_HERE = os.path.dirname(os.path.abspath(__file__))
_lib = None


def available() -> bool:
    """A C compiler to build the unit with."""
    return shutil.which("gcc") is not None or shutil.which("cc") is not None


def load():
    """Compile ``soft_amx.c`` (once per process) and load it where the kernels' calls resolve
    (``RTLD_GLOBAL``)."""
    global _lib
    if _lib is None:
        out = os.path.join(tempfile.mkdtemp(prefix="soft_amx_"), "soft_amx.so")
        cc = shutil.which("gcc") or shutil.which("cc")
        subprocess.run([cc, "-O2", "-shared", "-fPIC", "-o", out,
                        os.path.join(_HERE, "soft_amx.c")], check=True)
        _lib = ctypes.CDLL(out, mode=ctypes.RTLD_GLOBAL)
    return _lib


def reset() -> None:
    load().f8tvm_soft_reset()


def counts() -> dict:
    """What the unit executed since :func:`reset`, over all threads."""
    out = (ctypes.c_int64 * len(COUNTS))()
    load().f8tvm_soft_counts(out)
    return dict(zip(COUNTS, (int(v) for v in out)))


def reroute(func):
    """``func`` (a scheduled PrimFunc) with its AMX intrinsic calls made calls to the software
    tile unit, and how many call sites it rerouted."""
    ids = {int(_tvm.llvm_lookup_intrinsic_id(f"llvm.x86.{n}")): f"f8tvm_soft_{n}"
           for n in _NAMES}
    rerouted = [0]

    def swap(call):
        if getattr(call.op, "name", "") not in ("tirx.call_llvm_intrin",
                                                "tirx.call_llvm_pure_intrin"):
            return call
        name = ids.get(int(call.args[0].value))
        if name is None:
            return call
        rerouted[0] += 1
        return tir.call_extern("int32", name, *list(call.args)[1:])

    return _tvm.map_exprs(func, tvm.ir.Call, swap), rerouted[0]


def preset_for_this_cpu(flags):
    """``x86-amx`` for a CPU with the CPU ``flags``: without AVX-VNNI in LLVM's CPU model where
    the CPU lacks it (Zen 4): LLVM picks AVX-VNNI's VEX forms for 256-bit dot products in
    x86-amx's vector code (every AMX CPU has them)."""
    preset = get_target("x86-amx")
    if "avx_vnni" in flags:
        return preset
    mattr = [*preset.tvm_target.get("mattr", []), "-avxvnni"]
    return replace(preset, tvm_target={**preset.tvm_target, "mattr": mattr})


def pixel_major_copies(mod) -> list:
    """The pixel-major copies (blocks annotated ``schedules.cpu.PIXEL_MAJOR``) one inference of
    the scheduled module ``mod`` makes: ``(source shape, calls)`` per copy, ``calls`` its
    kernel's calls per inference."""
    calls, out = call_counts(mod), []
    for name, func in _tvm.primfuncs(mod):

        def visit(node, name=name):
            if _tvm.node_kind(node) == "SBlock" and cpu_schedules.PIXEL_MAJOR in node.annotations:
                shape = tuple(int(d) for d in _tvm.region_tensor(node.reads[0]).shape)
                out.append((shape, calls.get(name, 1)))

        _tvm.post_order_visit(func.body, visit)
    return out


def copied_bytes(mod) -> tuple[int, int]:
    """(copies, bytes copied) per inference of the scheduled module ``mod``
    (:func:`pixel_major_copies`)."""
    copies = pixel_major_copies(mod)
    return sum(n for _, n in copies), sum(math.prod(s) * n for s, n in copies)


def copy_time(mod, target) -> float:
    """Seconds the pixel-major copies of one inference of the scheduled module ``mod`` take on
    this CPU at TVM's thread count (vector code: it runs anywhere): each copy alone, with its
    kernel's loops (``schedules.cpu.pixel_major``) on its source's shape, the best of 7 x 100
    runs, times its kernel's calls (its source in cache, as the producer just wrote it)."""
    calls_of = {}  # each distinct shape built and timed once
    for shape, calls in pixel_major_copies(mod):
        calls_of[shape] = calls_of.get(shape, 0) + calls
    dev, total = tvm.cpu(), 0.0
    for shape, calls in calls_of.items():
        src = te.placeholder(shape, "uint8", name="src")
        dst = te.compute(shape, lambda *i: src(*i), name="copy")
        sch = _tvm.schedule_of(te.create_prim_func([src, dst]))
        cpu_schedules.pixel_major(sch, sch.get_sblock("copy"))
        lib = tvm.compile(sch.mod, target=target)
        n, c, h, w, lane = shape
        args = [tvm.runtime.tensor(np.zeros(s, "uint8"), dev) for s in (shape, (n, h, w, c, lane))]
        timer = lib.mod.time_evaluator("main", dev, number=100, repeat=7)
        total += min(timer(*args).results) * calls
    return total


def build(model, example_input, calib, preset):
    """The x86-amx program of ``model`` with its tile instructions on the software unit:
    ``(Build, rerouted call sites)`` (``Build.executable`` runs in this process)."""
    load()
    source = api.plan_source(model, example_input, calib)
    b = pipeline.Build(preset, source.model, source.example_input, source.plan_for)
    pipeline.run(b, until="schedule")
    mod, rerouted = b.ir["schedule"], 0
    for name, func in _tvm.primfuncs(mod):
        func, calls = reroute(func)
        mod, rerouted = _tvm.with_function(mod, name, func), rerouted + calls
    b.ir["schedule"] = mod
    pipeline.run(b, start="lower")
    return b, rerouted


def run(b, q):
    """The program of ``build``'s ``b`` on the 8-bit input ``q``: its int32 output."""
    vm = tvm.relax.VirtualMachine(b.executable, tvm.cpu())
    dtype = "int8" if b.plan.input_signed else "uint8"
    out = vm["main"](tvm.runtime.tensor(np.ascontiguousarray(q.astype(dtype)), tvm.cpu()))
    return (out if hasattr(out, "numpy") else out[0]).numpy()


def measure(name: str, size: int | None = None) -> dict:
    """One inference of ``name`` (the bench's model and calibration data) on the unit:
    its counts, and whether the output equals the NumPy reference."""


    model, spec = get_model(name, seed=0)
    model.eval()
    size = size or spec.input_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, size, size)).astype("float32")
    calib = [rng.standard_normal((4, 3, size, size)).astype("float32")]
    cpu = read_cpuinfo()
    b, rerouted = build(model, torch.from_numpy(x), calib,
                        preset_for_this_cpu(cpu.flags if cpu else frozenset()))
    q = quantize_input(x, b.plan)
    reset()
    out = run(b, q)
    c = counts()
    exact = bool(np.array_equal(out, run_reference(b.graph, b.plan, q)))
    copies, copied = copied_bytes(b.ir["schedule"])
    seconds = copy_time(b.ir["schedule"], b.target.tvm())
    return dict(model=name, size=size, call_sites=rerouted, exact=exact, **c,
                pixel_major_copies=copies, pixel_major_bytes=copied,
                pixel_major_us=round(seconds * 1e6, 1))


def print_report(r: dict) -> None:
    dots = max(r["dots"], 1)
    print(f"\n== {r['model']} {r['size']}x{r['size']} on x86-amx (software tile unit): "
          f"{'bit-exact' if r['exact'] else 'NOT EXACT'} with the NumPy reference")
    print(f"  tdpbusd            {r['dots']:>12,}   {r['macs'] / 1e9:.3f} G MACs, "
          f"{100 * r['macs'] / (dots * 16 * 16 * 64):.0f}% of a full tile's")
    print(f"  tileloadd          {r['loads']:>12,}   {r['loads'] / dots:.2f} per tdpbusd, "
          f"{r['load_bytes'] / 2**20:.1f} MiB")
    print(f"  tilestored         {r['stores']:>12,}")
    print(f"  ldtilecfg          {r['configs']:>12,}")
    print(f"  dots into the accumulator of the dot 1 / 2 / 3 before: {r['gap1']:,} / "
          f"{r['gap2']:,} / {r['gap3']:,} ({100 * (r['gap1'] + r['gap2'] + r['gap3']) / dots:.0f}%"
          " of all)")
    print(f"  pixel-major copies {r['pixel_major_copies']:>12,}   "
          f"{r['pixel_major_bytes'] / 2**20:.1f} MiB (1x1 convs' activations), "
          f"{r['pixel_major_us']:.0f} us on this CPU")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.soft_amx",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--output", default="amx-counts.json")
    ap.add_argument("--threads", type=int, default=1, help="the copies' timing (and the run's)")
    a = ap.parse_args(argv)
    # TVM sizes its thread pool once per process, from this variable, when a kernel first runs
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    if not available():
        print("tools.soft_amx: needs a C compiler (gcc or cc) for the software tile unit",
              file=sys.stderr)
        return 2

    cpu = read_cpuinfo()
    if cpu is None or "avx512_vnni" not in cpu.flags:
        print("tools.soft_amx: x86-amx's depthwise convs are AVX-512 VNNI code: this CPU has no "
              "avx512_vnni", file=sys.stderr)
        return 2
    results = [measure(m, a.input_size) for m in a.models.split(",")]
    for r in results:
        print_report(r)
    with open(a.output, "w") as f:
        json.dump(dict(argv=sys.argv[1:] if argv is None else argv, cpu=cpu.model,
                       threads=a.threads, results=results), f, indent=1)
    print(f"\nwrote {a.output}")
    return 0 if all(r["exact"] for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
