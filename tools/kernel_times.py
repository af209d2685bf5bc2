"""Where a model's time goes, kernel by kernel: ``python -m tools.kernel_times``.

Builds each ``--model`` for each ``--target`` (the bench's model, input and calibration data),
takes the scheduled kernels (the pipeline through ``schedule``), compiles them alone for the
target and times each with TVM's time evaluator on random inputs of its own shapes (the kernels
are integer programs: their time does not depend on the values), one thread by default.  Each
kernel's time is multiplied by the number of times the model calls it.  Prints, per model and
target, the kinds of kernel (``conv``, ``conv-amx``, ``depthwise``, ``other``) with their share
of the summed time, their 8-bit MACs and MAC rate, and the slowest kernels; writes JSON.

The sum is the kernels' time alone: the whole model (the bench) adds the VM's calls and the
float boundary.  ``conv-amx``: a conv scheduled on AMX tiles (``x86-amx``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import torch

from f8tvm import api, pipeline
from f8tvm.core import _tvm
from f8tvm.core._tvm import tvm
from f8tvm.models import get_model
from f8tvm.passes.audit_multiplies import audit_module, call_counts
from f8tvm.schedules import cpu, find_dot, kernel_block
from f8tvm.targets import get_target
from f8tvm.targets.cpu import enable_amx


def _kind(func, dot) -> str:
    kind, block = kernel_block(func)
    if kind == "conv" and cpu.amx_conv(block, dot):
        return "conv-amx"
    return kind


def _random_args(func, dev):
    rng = np.random.default_rng(0)
    args = []
    for p in func.params:
        buf = p if hasattr(p, "shape") else func.buffer_map[p]  # 0.27: params are buffers
        shape = [int(d) for d in buf.shape]
        dtype = str(buf.dtype)
        if dtype.startswith(("int", "uint")):
            info = np.iinfo(dtype)
            lo, hi = max(int(info.min), -100), min(int(info.max), 100)
            a = rng.integers(lo, hi + 1, shape).astype(dtype)
        else:
            a = rng.standard_normal(shape).astype(dtype)
        args.append(tvm.runtime.tensor(a, dev))
    return args


def kernel_times(model_name: str, target: str, size: int | None = None, number: int = 20,
                 repeat: int = 5) -> dict:
    """``{'kernels': [...], 'kinds': {...}, 'total_ms'}`` for one model on one target."""
    model, spec = get_model(model_name, seed=0)
    model.eval()
    size = size or spec.input_size
    rng = np.random.default_rng(0)
    x = torch.from_numpy(rng.standard_normal((1, 3, size, size)).astype("float32"))
    calib = [rng.standard_normal((4, 3, size, size)).astype("float32")]
    preset = get_target(target)
    if "amx_tile" in preset.cpu_flags:
        enable_amx()
    source = api.plan_source(model, x, calib)
    b = pipeline.Build(preset, source.model, source.example_input, source.plan_for)
    pipeline.run(b, until="schedule")
    scheduled = b.ir["schedule"]
    fused = dict(_tvm.primfuncs(b.ir["fuse"]))  # the kinds are read before scheduling
    dot = find_dot(preset.dot)
    calls = call_counts(scheduled)
    macs = audit_module(scheduled).kernel_macs  # per kernel, over all its calls
    dev = tvm.cpu()
    rows = []
    for name, func in _tvm.primfuncs(scheduled):
        kind = _kind(fused[name], dot) if name in fused else "other"
        one = tvm.IRModule({name: func.with_attr("global_symbol", name)})
        lib = _tvm.compile_relax_lowered(one, preset.tvm(), preset.stack_buffer_bytes)
        args = _random_args(func, dev)
        rt = lib.mod if hasattr(lib, "mod") else lib  # the runtime module of an Executable
        timer = rt.time_evaluator(name, dev, number=number, repeat=repeat)
        ms = float(np.median(timer(*args).results)) * 1e3
        n = calls.get(name, 1)
        rows.append(dict(name=name, kind=kind, calls=n, ms_per_call=ms, ms=ms * n,
                         macs=int(macs.get(name, 0))))
    rows.sort(key=lambda r: -r["ms"])
    total = sum(r["ms"] for r in rows)
    kinds: dict = {}
    for r in rows:
        k = kinds.setdefault(r["kind"], dict(ms=0.0, macs=0, kernels=0))
        k["ms"] += r["ms"]
        k["macs"] += r["macs"]
        k["kernels"] += 1
    return dict(model=model_name, target=target, input_size=size, total_ms=total,
                kinds=kinds, kernels=rows)


def print_report(res: dict, top: int = 8) -> None:
    total = res["total_ms"]
    print(f"\n== {res['model']} {res['input_size']}x{res['input_size']} on {res['target']}: "
          f"kernels sum to {total:.3f} ms")
    print(f"{'kind':<10} {'kernels':>7} {'ms':>8} {'share':>6} {'GMAC':>7} {'GMAC/s':>7}")
    for kind, k in sorted(res["kinds"].items(), key=lambda kv: -kv[1]["ms"]):
        rate = k["macs"] / (k["ms"] * 1e6) if k["ms"] and k["macs"] else 0
        print(f"{kind:<10} {k['kernels']:>7} {k['ms']:>8.3f} {100 * k['ms'] / total:>5.1f}% "
              f"{k['macs'] / 1e9:>7.3f} {rate:>7.0f}")
    print(f"slowest {top}:")
    for r in res["kernels"][:top]:
        rate = r["macs"] / (r["ms"] * 1e6) if r["ms"] and r["macs"] else 0
        print(f"  {r['ms']:7.3f} ms  x{r['calls']}  {r['kind']:<9} {rate:5.0f} GMAC/s  "
              f"{r['name'][:70]}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.kernel_times",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="resnet18,mobilenet_v2,efficientnet_lite0")
    ap.add_argument("--targets", default="host")
    ap.add_argument("--input-size", type=int, default=None)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--top", type=int, default=8)
    ap.add_argument("--output", default="kernel-times.json")
    a = ap.parse_args(argv)
    # TVM sizes its thread pool once per process, from this variable, when a kernel first runs
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    results = []
    for model in a.models.split(","):
        for target in a.targets.split(","):
            res = kernel_times(model, target, a.input_size)
            res["threads"] = a.threads
            print_report(res, a.top)
            results.append(res)
    with open(a.output, "w") as f:
        json.dump(dict(argv=sys.argv[1:] if argv is None else argv, results=results), f,
                  indent=1)
    print(f"\nwrote {a.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
