"""Fuzzing: random CNN graphs from the supported ops, compiled and run bit-exact against the NumPy
integer reference, with no int32 overflow.

    python -m tools.fuzz --graphs 200 --seed 1 --failures fuzz-failures/

Each graph is drawn from its own seed: convolutions (dense, depthwise, grouped; with and
without bias; strides, dilations, asymmetric padding), BatchNorm, ReLU / ReLU6, residual adds
whose branches differ in range by up to 1e6, max pools, a global average pool and dense layers
at odd sizes, with weight scales drawn from 1e-3 .. 1e3.  A graph is calibrated on random data,
compiled for the host, and its integer output compared with :func:`f8tvm.reference.run_reference`
(which raises on any int32 overflow) on the calibration input, random 8-bit inputs and the two
extreme inputs (all lowest, all highest).  A build refused with an f8tvm error that names the
problem counts as *refused*, not as a failure.

A failing graph is written as ``<failures>/case_<seed>.json`` (its spec: the graph itself, not
only the seed, so a change to the generator cannot lose it); put it under ``tests/fuzz_cases/``
and ``tests/test_fuzz.py`` replays it in every test run.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback

import numpy as np
import torch
import torch.nn as nn

import f8tvm
from f8tvm.core.errors import F8TVMError
from f8tvm.core.fixedpoint import qrange
from f8tvm.reference import quantize_input, run_reference


# ----------------------------------------------------------------------------- the generator
def random_spec(seed: int) -> dict:
    """A random graph spec (JSON-ready): input shape, ops in order, each naming its inputs by
    index into the tensors made so far (0: the input)."""
    rng = np.random.default_rng(seed)
    big = rng.random() < 0.25  # now and then a large image: long pool sums
    c = int(rng.choice([1, 3, 4]))
    h, w = (int(v) for v in rng.integers(24, 41, 2) if big) if big else (
        int(v) for v in rng.integers(5, 21, 2))
    shapes = [(c, h, w)]
    ops = []

    def conv_op(src, co=None, like=None):
        ci, hi, wi = shapes[src]
        if like is not None:  # a sibling branch: same geometry, another range
            op = dict(like, scale=float(like["scale"] * 10 ** rng.uniform(-3, 3)),
                      bn=bool(rng.random() < 0.5), act=str(rng.choice(["relu", "none"])))
            return op, shapes[-1]
        k = int(rng.choice([1, 3, 5]))
        d = int(rng.choice([1, 2])) if k > 1 else 1
        s = int(rng.choice([1, 1, 2]))
        pad = [int(rng.integers(0, (k // 2) * d + 1)) for _ in range(2)]
        depthwise = ci > 1 and co is None and rng.random() < 0.3
        co = ci if depthwise else co or int(rng.choice([2, 4, 6, 8, 12, 16]))
        groups = ci if depthwise else (2 if ci % 2 == 0 and co % 2 == 0 and rng.random() < 0.2
                                       else 1)
        ho = (hi + 2 * pad[0] - d * (k - 1) - 1) // s + 1
        wo = (wi + 2 * pad[1] - d * (k - 1) - 1) // s + 1
        if ho < 1 or wo < 1:
            return None, None
        return dict(op="conv", src=src, cout=co, k=k, stride=s, dilation=d, padding=pad,
                    groups=groups, bias=bool(rng.random() < 0.7), bn=bool(rng.random() < 0.5),
                    act=str(rng.choice(["relu", "relu", "relu6", "none"])),
                    scale=float(10 ** rng.uniform(-3, 3))), (co, ho, wo)

    for _ in range(int(rng.integers(2, 9))):
        kind = rng.choice(["conv", "conv", "block", "block", "add", "maxpool"])
        # mostly the newest tensor, so that most ops reach the output
        src = len(shapes) - 1 if rng.random() < 0.7 else int(rng.integers(len(shapes)))
        ci, hi, wi = shapes[src]
        if kind in ("conv", "block"):
            op, shape = conv_op(src)
            if op is None:
                continue
            ops.append(op)
            shapes.append(shape)
            if kind == "block":  # two branches whose ranges differ by up to 1e6, added
                twin, _ = conv_op(src, like=op)
                ops.append(twin)
                shapes.append(shape)
                ops.append(dict(op="add", src=len(shapes) - 2, other=len(shapes) - 1,
                                act=str(rng.choice(["relu", "none"]))))
                shapes.append(shape)
        elif kind == "add":
            same = [i for i, sh in enumerate(shapes) if sh == shapes[src] and i != src]
            if not same:
                continue
            ops.append(dict(op="add", src=src, other=int(rng.choice(same)),
                            act=str(rng.choice(["relu", "none"]))))
            shapes.append(shapes[src])
        else:
            k = int(rng.choice([2, 3]))
            s = int(rng.choice([1, 2]))
            p = int(rng.integers(0, k // 2 + 1))
            ho, wo = (hi + 2 * p - k) // s + 1, (wi + 2 * p - k) // s + 1
            if ho < 1 or wo < 1:
                continue
            ops.append(dict(op="maxpool", src=src, k=k, stride=s, padding=p))
            shapes.append((ci, ho, wo))
    last = len(shapes) - 1
    head = dict(gap=bool(rng.random() < 0.7 or np.prod(shapes[last]) > 512),
                dense=int(rng.choice([3, 7, 10])), bias=bool(rng.random() < 0.8),
                scale=float(10 ** rng.uniform(-3, 3)))
    return dict(seed=int(seed), input=[c, h, w], ops=ops, head=head)


class FuzzNet(nn.Module):
    """The PyTorch module of a spec (weights drawn from ``spec['seed']``)."""

    def __init__(self, spec: dict):
        super().__init__()
        self.spec = spec
        g = torch.Generator().manual_seed(spec["seed"])
        channels = [spec["input"][0]]
        self.layers = nn.ModuleList()
        for op in spec["ops"]:
            ci = channels[op["src"]]
            if op["op"] == "conv":
                conv = nn.Conv2d(ci, op["cout"], op["k"], op["stride"], tuple(op["padding"]),
                                 op["dilation"], op["groups"], bias=op["bias"])
                with torch.no_grad():
                    conv.weight.copy_(torch.randn(conv.weight.shape, generator=g)
                                      * op["scale"] / np.sqrt(conv.weight[0].numel()))
                    if op["bias"]:
                        conv.bias.copy_(torch.randn(op["cout"], generator=g) * op["scale"])
                mods = [conv]
                if op["bn"]:
                    bn = nn.BatchNorm2d(op["cout"])
                    with torch.no_grad():
                        bn.weight.copy_(torch.rand(op["cout"], generator=g) + 0.5)
                        bn.bias.copy_(torch.randn(op["cout"], generator=g) * 0.1)
                        bn.running_mean.copy_(torch.randn(op["cout"], generator=g) * 0.1)
                        bn.running_var.copy_(torch.rand(op["cout"], generator=g) + 0.5)
                    mods.append(bn)
                mods += {"relu": [nn.ReLU()], "relu6": [nn.ReLU6()], "none": []}[op["act"]]
                self.layers.append(nn.Sequential(*mods))
                channels.append(op["cout"])
            elif op["op"] == "add":
                self.layers.append(nn.ReLU() if op["act"] == "relu" else nn.Identity())
                channels.append(ci)
            else:
                self.layers.append(nn.MaxPool2d(op["k"], op["stride"], op["padding"]))
                channels.append(ci)
        head = spec["head"]
        self.gap = nn.AdaptiveAvgPool2d(1) if head["gap"] else nn.Identity()
        self.eval()
        with torch.no_grad():  # the head's input size, from the features themselves
            n_in = self._features(torch.zeros(1, *spec["input"])).shape[1]
        self.fc = nn.Linear(n_in, head["dense"], bias=head["bias"])
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(self.fc.weight.shape, generator=g)
                                 * head["scale"] / np.sqrt(n_in))
            if head["bias"]:
                self.fc.bias.copy_(torch.randn(head["dense"], generator=g) * head["scale"])
        self.eval()

    def _features(self, x):
        outs = [x]
        for op, layer in zip(self.spec["ops"], self.layers):
            a = outs[op["src"]]
            if op["op"] == "add":
                outs.append(layer(a + outs[op["other"]]))
            else:
                outs.append(layer(a))
        return torch.flatten(self.gap(outs[-1]), 1)

    def forward(self, x):
        return self.fc(self._features(x))


# ----------------------------------------------------------------------------- one case
def check_spec(spec: dict, target: str = "x86") -> str:
    """Build and check one spec.  Returns 'clean' or 'refused: <message>'; raises
    AssertionError (a mismatch) or any other error (a crash) on failure."""
    model = FuzzNet(spec)
    rng = np.random.default_rng(spec["seed"])
    shape = (1, *spec["input"])
    calib = [torch.from_numpy(rng.standard_normal((4, *spec["input"])).astype("float32"))]
    try:
        cm = f8tvm.compile(model, calib[0][:1], target=target, calib=calib)
    except F8TVMError as err:
        return f"refused: {err}"
    lo, hi = qrange(cm.plan.input_signed)
    inputs = [quantize_input(calib[0][:1].numpy(), cm.plan),
              rng.integers(lo, hi + 1, shape), np.full(shape, lo), np.full(shape, hi)]
    for i, q in enumerate(inputs):
        want = run_reference(cm.graph, cm.plan, q)  # raises OverflowError on an int32 wrap
        got, _ = cm.run_int(q.astype("int8" if cm.plan.input_signed else "uint8"))
        if not np.array_equal(np.asarray(got, np.int64).reshape(want.shape), want):
            bad = int(np.count_nonzero(np.asarray(got).reshape(want.shape) != want))
            raise AssertionError(f"input {i}: {bad} of {want.size} outputs differ from the "
                                 f"NumPy reference")
    return "clean"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.fuzz", description=__doc__.split("\n")[0])
    ap.add_argument("--graphs", type=int, default=50, help="how many random graphs (default 50)")
    ap.add_argument("--seed", type=int, default=0, help="first graph's seed (then seed+1, ...)")
    ap.add_argument("--target", default="x86", help="target preset that runs here (default x86)")
    ap.add_argument("--failures", default="fuzz-failures",
                    help="folder for failing graphs' specs (default fuzz-failures/)")
    args = ap.parse_args(argv)
    counts = {"clean": 0, "refused": 0, "failed": 0}
    start = time.time()
    for i in range(args.graphs):
        seed = args.seed + i
        spec = random_spec(seed)
        try:
            result = check_spec(spec, args.target)
        except Exception as err:  # noqa: BLE001 (every failure is written down, then counted)
            counts["failed"] += 1
            os.makedirs(args.failures, exist_ok=True)
            path = os.path.join(args.failures, f"case_{seed}.json")
            with open(path, "w") as f:
                json.dump(dict(spec, error=f"{type(err).__name__}: {err}",
                               traceback=traceback.format_exc()), f, indent=1)
            print(f"[{i + 1}/{args.graphs}] seed {seed}: FAILED ({type(err).__name__}: {err}) "
                  f"-> {path}", flush=True)
            continue
        kind = result.split(":")[0]
        counts[kind] += 1
        print(f"[{i + 1}/{args.graphs}] seed {seed}: {result}", flush=True)
    print(f"{args.graphs} graphs in {time.time() - start:.0f} s: {counts['clean']} clean, "
          f"{counts['refused']} refused by name, {counts['failed']} failed")
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
