"""Microcontroller builds side by side: F8Net's shift-only requantize against the same program
requantized with multipliers, per layer and per inference, on the same emulator.

    python -m tools.mcu_cycles --models resnet8 ds_cnn mobilenet_v1_025 \\
        --targets cortex-m0plus rv32i --output benchmarks/mcu-cycles.json [--plot mcu.png]

Each model is built once per target (random weights, calibrated on seeded random inputs); the
variants are the same C sources compiled with other macros (``kernels.c``):

=============  ============================================================================
variant        requantize / products
=============  ============================================================================
f8tvm          F8Net's rounding shift; products by the core's multiply (M0+ ``muls``) or the
               quarter-squares table (RV32I): the default build
mul64          the same, requantized by an int32 multiplier with an int64 product and one
               rounding (TFLite Micro / CMSIS-NN style)
mul32          the same, requantized by an int32 multiply and a rounding shift (PULP-NN style)
libmul         RV32I only: products by the C multiply (libgcc's ``__mulsi3``), shift requantize
libmul+mul64   RV32I only: both library multiplies (what a conventional int8 kernel needs)
=============  ============================================================================

Counts come from Unicorn (:mod:`f8tvm.mcu.cycles`): instructions, and for the Cortex-M0+ cycles
from the TRM's instruction timings.  Every variant's logits are checked equal to the default
build's (they are bit-exact by construction).  Code size is the linked image's ``.text``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np
import torch

from f8tvm import api
from f8tvm.mcu import cycles, toolchain
from f8tvm.models import get_model
from f8tvm.reference import run_reference
from f8tvm.targets import get_target

VARIANTS = {
    "f8tvm": {},
    "mul64": {"F8_REQUANTIZE": 1},
    "mul32": {"F8_REQUANTIZE": 2},
    "libmul": {"F8_PRODUCTS": 0},
    "libmul+mul64": {"F8_PRODUCTS": 0, "F8_REQUANTIZE": 1},
}
RV_ONLY = ("libmul", "libmul+mul64")


def measure(model_name: str, target_name: str, seed: int = 0) -> dict:
    target = get_target(target_name)
    model, spec = get_model(model_name, seed=seed)
    shape = spec.example_shape()
    rng = np.random.default_rng(seed)
    calib = [rng.standard_normal(shape).astype(np.float32) for _ in range(4)]
    t0 = time.time()
    cm = api.compile(model, torch.zeros(shape), target=target_name, calib=calib,
                     name=model_name)
    build_s = time.time() - t0
    lo, hi = (-127, 127) if cm.plan.input_signed else (0, 255)
    q = rng.integers(lo, hi + 1, size=shape).astype(cm.program.input.dtype)
    want = run_reference(cm.graph, cm.plan, q).reshape(-1)
    row = dict(model=model_name, target=target_name, isa=target.isa, macs=cm.audit.macs_8bit,
               arena_bytes=cm.program.arena_bytes, weight_bytes=cm.program.weight_bytes,
               build_s=round(build_s, 1), variants={})
    with tempfile.TemporaryDirectory(prefix="f8tvm-mcu-cycles-") as work:
        cm._write_sources(work)
        for name, defines in VARIANTS.items():
            if name in RV_ONLY and target.mcu.products != "table":
                continue
            elf = cycles.build_image(target, work, os.path.join(work, f"{name}.elf"), defines)
            runner = cycles.Runner(target, elf, q.nbytes, want.size)
            t0 = time.time()
            out, counts = runner.run(q)
            if not (out == want).all():
                raise SystemExit(f"{model_name} {target_name} {name}: logits differ from the "
                                 "reference")
            size = toolchain.sizes(target, elf)
            calls = cm.program.calls
            if [c.symbol for c in calls] != [c[0] for c in counts.by_call]:
                raise SystemExit(f"{model_name} {name}: the counted calls are not model.c's")
            per_layer = {c.layer: dict(instructions=n, cycles=cy)
                         for c, (_, n, cy) in zip(calls, counts.by_call, strict=True)}
            row["variants"][name] = dict(
                defines=defines, instructions=counts.instructions,
                cycles=counts.cycles if target.mcu.emulator == "unicorn-thumb" else None,
                code_bytes=size.text - cm.program.weight_bytes,
                library_multiplies=toolchain.library_multiplies(target, elf),
                per_layer=per_layer, emulated_s=round(time.time() - t0, 1))
            print(f"  {model_name:18s} {target_name:14s} {name:13s} "
                  f"{counts.instructions:>13,} instr"
                  + (f" {counts.cycles:>13,} cycles" if row["variants"][name]["cycles"] else ""),
                  flush=True)
    return row


def table(rows: list) -> str:
    lines = ["| model | target | MACs | variant | instructions | M0+ cycles | vs f8tvm | code | "
             "library multiplies |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        base = r["variants"]["f8tvm"]
        key = "cycles" if base["cycles"] else "instructions"
        for name, v in r["variants"].items():
            ratio = v[key] / base[key]
            cyc = f"{v['cycles'] / 1e6:.2f} M" if v["cycles"] else "-"
            libs = ", ".join(v["library_multiplies"]) or "none"
            lines.append(f"| {r['model']} | {r['target']} | {r['macs'] / 1e6:.2f} M | {name} | "
                         f"{v['instructions'] / 1e6:.2f} M | {cyc} | {ratio:.2f}x | "
                         f"{v['code_bytes'] / 1024:.1f} KiB | {libs} |")
    return "\n".join(lines)


def plot(rows: list, path: str) -> None:
    import matplotlib  # lazy: the [bench] extra

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # lazy: after choosing the backend

    fig, axes = plt.subplots(len(rows), 1, figsize=(11, 3.2 * len(rows)), squeeze=False)
    for ax, r in zip(axes[:, 0], rows, strict=True):
        key = "cycles" if r["variants"]["f8tvm"]["cycles"] else "instructions"
        layers = [k for k in r["variants"]["f8tvm"]["per_layer"] if k != "f8_model_run"]
        width = 0.8 / len(r["variants"])
        for i, (name, v) in enumerate(r["variants"].items()):
            ys = [v["per_layer"].get(k, {}).get(key, 0) / 1e6 for k in layers]
            ax.bar(np.arange(len(layers)) + i * width, ys, width, label=name)
        ax.set_title(f"{r['model']} on {r['target']}: {key} per layer")
        ax.set_ylabel(f"M {key}")
        ax.set_xticks(np.arange(len(layers)) + 0.4)
        ax.set_xticklabels(layers, rotation=60, ha="right", fontsize=6)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.mcu_cycles", description=__doc__.split(
        "\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet8", "ds_cnn", "mobilenet_v1_025"])
    p.add_argument("--targets", nargs="+", default=["cortex-m0plus", "rv32i"])
    p.add_argument("--output", default="mcu-cycles.json")
    p.add_argument("--plot")
    p.add_argument("--table", metavar="JSON", help="print the table (and --plot) of an earlier "
                                                   "run's JSON instead of measuring")
    a = p.parse_args(argv)
    if a.table:
        with open(a.table) as f:
            rows = json.load(f)["rows"]
        print(table(rows))
        if a.plot:
            plot(rows, a.plot)
        return 0
    rows = [measure(m, t) for m in a.models for t in a.targets]
    text = table(rows)
    print(text)
    meta = dict(command="python -m tools.mcu_cycles " + " ".join(sys.argv[1:] if argv is None
                                                                  else argv),
                host=platform.processor() or platform.machine(),
                date=time.strftime("%Y-%m"), rows=rows)
    tmp = a.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1)
    os.replace(tmp, a.output)
    if a.plot:
        plot(rows, a.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
