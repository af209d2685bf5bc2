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
    p.add_argument("module", help="the .so written by f8tvm.build (its .json must sit beside it)")
    p.add_argument("--input", help="an image file; without it, a seeded random input is used")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--benchmark", action="store_true", help="also report the latency")
    p.add_argument("--rpc", metavar="HOST:PORT",
                   help="run on the board whose TVM RPC server listens there")
    a = p.parse_args(argv)
    if a.top < 1:
        p.error(f"--top must be >= 1, got {a.top}")
    if os.path.isdir(a.module):
        print(f"error: {a.module} is a folder: a microcontroller build runs on its emulator with "
              f"python -m f8tvm.mcu.run {a.module}", file=sys.stderr)
        return 2

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


if __name__ == "__main__":
    sys.exit(main())
