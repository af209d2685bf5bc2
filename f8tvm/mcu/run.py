"""``python -m f8tvm.mcu.run FOLDER``: run a microcontroller build on its target's emulator.

The float input (an image, or a seeded random tensor) is quantized here as the ``.so`` runtime
does (ties to even, clamped); the folder's sources are compiled and run under QEMU (RV32) or
Unicorn (Cortex-M0+); ``--count`` counts the inference's instructions (and Cortex-M0+ cycles) per
kernel; ``--machine microbit`` boots a Cortex-M0+ build on QEMU's BBC micro:bit.  Needs the
target's cross compiler and emulator, not TVM.
"""

from __future__ import annotations

import argparse
import sys
from types import SimpleNamespace

import numpy as np

from f8tvm import data
from f8tvm.core.errors import F8TVMError
from f8tvm.core.fixedpoint import fix_quant

from .runner import load_folder, run_folder


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m f8tvm.mcu.run", description=__doc__.splitlines()[0])
    p.add_argument("folder", help="the folder written by f8tvm.build for a microcontroller target")
    p.add_argument("--input", help="an image file; without it, a seeded random input is used")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--count", action="store_true",
                   help="count instructions (Cortex-M0+: cycles) per kernel (on Unicorn)")
    p.add_argument("--machine", choices=["microbit"],
                   help="cortex-m0plus builds: boot on QEMU's BBC micro:bit (a Cortex-M0, "
                        "16 KiB SRAM) instead of Unicorn")
    a = p.parse_args(argv)
    if a.top < 1:
        p.error(f"--top must be >= 1, got {a.top}")
    try:
        meta = load_folder(a.folder)
        inp = meta["input"]
        shape = inp["shape"]
        if a.input and (len(shape) != 4 or shape[1] != 3):
            raise F8TVMError(f"--input: {meta.get('model', a.folder)} takes input of shape "
                             f"{shape}, not an RGB image")
        if a.input:
            pre = meta.get("preprocess")
            prep = SimpleNamespace(mean=tuple(pre["mean"]), std=tuple(pre["std"])) if pre else None
            x = data.load_image(a.input, shape[-1], prep)
        else:
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        q = fix_quant(x, inp["fl"], inp["signed"])  # as the .so runtime does: ties to even
        logits, counts = run_folder(a.folder, q, count=a.count, machine=a.machine)
    except (FileNotFoundError, ValueError, F8TVMError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    order = np.argsort(-logits)[: a.top]
    print(f"top-{a.top} ({meta.get('model', a.folder)}, {meta['target']['name']} on its "
          "emulator; integer logits):")
    for rank, k in enumerate(order, 1):
        print(f"  {rank}. class {k:4d}  logit {int(logits[k])}")
    if counts is not None:
        cyc = meta["target"]["name"] == "cortex-m0plus"
        print(f"one inference: {counts.instructions:,} instructions"
              + (f", {counts.cycles:,} Cortex-M0+ cycles" if cyc else ""))
        for fn, (n, c) in sorted(counts.by_function.items(), key=lambda kv: -kv[1][0]):
            print(f"  {fn[:70]:70s} {n:>12,}" + (f" {c:>12,}" if cyc else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
