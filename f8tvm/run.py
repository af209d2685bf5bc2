"""``python -m f8tvm.run MODEL.so --input IMAGE``: run a built module and print the top-5.

Needs only NumPy, Pillow and TVM's runtime.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m f8tvm.run", description=__doc__.splitlines()[0])
    p.add_argument("module", help="the .so written by f8tvm.build (its .json must sit beside it)")
    p.add_argument("--input", help="an image file; without it, a seeded random input is used")
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--benchmark", action="store_true", help="also report the latency")
    a = p.parse_args(argv)
    from . import runtime

    try:
        m = runtime.load(a.module)
        shape = m.input_shape
        pre = m.meta.get("preprocess")
        if a.input:
            from types import SimpleNamespace

            from . import data

            prep = SimpleNamespace(mean=tuple(pre["mean"]), std=tuple(pre["std"])) if pre else None
            x = data.load_image(a.input, shape[-1], prep)
        else:
            x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        logits = m.run(x).reshape(-1)
    except (FileNotFoundError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    from .data import imagenet_class_names

    names = imagenet_class_names() if logits.size == 1000 else None
    order = np.argsort(-logits)[: a.top]
    print(f"top-{a.top} ({m.meta.get('model', a.module)}, target {m.meta['target']['name']}):")
    for rank, k in enumerate(order, 1):
        label = f"  {names[k]}" if names else ""
        print(f"  {rank}. class {k:4d}{label}  logit {logits[k]:.4f}")
    if a.benchmark:
        b = m.benchmark()
        print(f"latency: median {b['median_ms']:.3f} ms  (p10 {b['p10_ms']:.3f}, "
              f"p90 {b['p90_ms']:.3f}, {b['runs']} runs)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
