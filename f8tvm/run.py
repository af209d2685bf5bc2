"""``python -m f8tvm.run MODEL.so --input IMAGE``: run a built module and print the top-5.

Needs only NumPy, Pillow and TVM's runtime.  With ``--rpc HOST:PORT`` the module runs on a board's
TVM RPC server (uploaded there); the image is read and quantized on this side.
"""

from __future__ import annotations

import argparse
import os
import sys
from types import SimpleNamespace

import numpy as np

from f8tvm.core.errors import UnsupportedCPUError

from . import data, runtime
from .data import imagenet_class_names


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m f8tvm.run", description=__doc__.splitlines()[0])
    p.add_argument("module", help="the .so written by f8tvm.build (its .json must sit beside it), "
                                  "or a microcontroller build's folder (run on its emulator)")
    p.add_argument("--input", help="an image file; without it, a seeded random input is used")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--benchmark", action="store_true", help="also report the latency")
    p.add_argument("--rpc", metavar="HOST:PORT",
                   help="run on the board whose TVM RPC server listens there")
    p.add_argument("--count", action="store_true",
                   help="microcontroller builds: count instructions (Cortex-M0+: cycles) per "
                        "kernel")
    a = p.parse_args(argv)
    if a.top < 1:
        p.error(f"--top must be >= 1, got {a.top}")
    if os.path.isdir(a.module):
        return _run_mcu(a)

    try:
        m = runtime.load(a.module, remote=a.rpc)
        if m.board is not None:
            print(f"board: {m.board.describe()}")
        shape = m.input_shape
        pre = m.meta.get("preprocess")
        if a.input:
            prep = SimpleNamespace(mean=tuple(pre["mean"]), std=tuple(pre["std"])) if pre else None
            x = data.load_image(a.input, shape[-1], prep)
        else:
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        logits = m.run(x).reshape(-1)
    except (FileNotFoundError, ValueError, ConnectionError, UnsupportedCPUError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    names = imagenet_class_names() if logits.size == 1000 else None
    order = np.argsort(-logits)[: a.top]
    print(f"top-{a.top} ({m.meta.get('model', a.module)}, target {m.meta['target']['name']}):")
    for rank, k in enumerate(order, 1):
        label = f"  {names[k]}" if names else ""
        print(f"  {rank}. class {k:4d}{label}  logit {logits[k]:.4f}")
    if a.benchmark:
        b = m.benchmark()
        where = " on the board" if m.board is not None else ""
        print(f"latency{where}: median {b['median_ms']:.3f} ms  (p10 {b['p10_ms']:.3f}, "
              f"p90 {b['p90_ms']:.3f}, {b['runs']} runs)")
        if b.get("emulated"):
            print(f"note: the board is emulated ({b['emulated']}); these timings say nothing "
                  "about a real board")
    return 0


def _run_mcu(a) -> int:
    """A microcontroller build (a folder): quantize the input here, run on the emulator."""
    from f8tvm.core.errors import F8TVMError
    from f8tvm.core.fixedpoint import fix_quant
    from f8tvm.mcu.model import load_folder, run_folder

    if a.rpc or a.benchmark:
        print("error: --rpc and --benchmark do not apply to a microcontroller build (it runs "
              "on an emulator; --count counts its work)", file=sys.stderr)
        return 2
    try:
        meta = load_folder(a.module)
        inp = meta["input"]
        shape = inp["shape"]
        if a.input:
            pre = meta.get("preprocess")
            prep = SimpleNamespace(mean=tuple(pre["mean"]), std=tuple(pre["std"])) if pre else None
            x = data.load_image(a.input, shape[-1], prep)
        else:
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        q = fix_quant(x, inp["fl"], inp["signed"])  # as the .so runtime does: ties to even
        logits, counts = run_folder(a.module, q, count=a.count)
    except (FileNotFoundError, ValueError, F8TVMError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    order = np.argsort(-logits)[: a.top]
    print(f"top-{a.top} ({meta.get('model', a.module)}, {meta['target']['name']} on its "
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
