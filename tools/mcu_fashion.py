"""A small CNN trained on Fashion-MNIST, built for a microcontroller and for this host: accuracy on
the 10,000 test images of the MCU build (run on its emulator), and whether its logits equal the
host build's bit for bit.

    python -m tools.mcu_fashion --target rv32i --output benchmarks/mcu-fashion.json

Needs Debian's ``dataset-fashion-mnist``.  The CNN (:class:`FashionCNN`, 28x28 grey, 0.5 M MACs)
trains in float for ``--epochs`` on the 60,000 training images, is calibrated (F8Net's
fixed point, scheme ``mse``) on 256 of them, and compiled twice: ``--target`` (run under its
emulator, all test images in one process) and ``x86`` (run here).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import torch
from torch import nn

from f8tvm import api, data
from f8tvm.reference import quantize_input, run_reference

from .accuracy import train_float


class FashionCNN(nn.Module):
    """conv 8 - pool - conv 16 - pool - conv 32 - global pool - linear 10 (ReLU, BatchNorm)."""

    def __init__(self):
        super().__init__()

        def block(cin, cout):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False),
                                 nn.BatchNorm2d(cout), nn.ReLU())

        self.features = nn.Sequential(block(1, 8), nn.MaxPool2d(2), block(8, 16), nn.MaxPool2d(2),
                                      block(16, 32))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


def pixels(u8) -> np.ndarray:
    return (u8.astype(np.float32) / 256.0).astype(np.float32)  # exact at FL 8


def run(target: str, epochs: float, images: int | None, seed: int = 0, log=print) -> dict:
    xtr, ytr = data.fashion_mnist("train")
    xte, yte = data.fashion_mnist("test")
    if images:
        xte, yte = xte[:images], yte[:images]
    torch.manual_seed(seed)
    model = FashionCNN()
    t0 = time.time()
    if epochs > 0:
        train_float(model, pixels(xtr), ytr, epochs, 128, lr=0.05, seed=seed,
                    log=lambda m: None)
    train_s = time.time() - t0
    model.eval()
    with torch.no_grad():
        float_pred = model(torch.from_numpy(pixels(xte))).argmax(1).numpy()
    rng = np.random.default_rng(seed)
    calib = [pixels(xtr[i:i + 32]) for i in rng.choice(len(xtr) - 32, 8)]
    example = torch.from_numpy(pixels(xtr[:1]))
    mcu = api.compile(model, example, target=target, calib=calib, name="fashion_cnn")
    host = api.compile(model, example, target="x86", plan=mcu.plan)
    dtype = mcu.program.input.dtype
    q = np.stack([quantize_input(pixels(x[None]), mcu.plan).astype(dtype) for x in xte])
    t0 = time.time()
    mcu_logits = mcu.run_int_many(q).reshape(len(q), -1)
    mcu_s = time.time() - t0
    host_logits = np.stack([host.run_int(qi)[0].reshape(-1) for qi in q])
    ref = np.stack([run_reference(mcu.graph, mcu.plan, qi).reshape(-1) for qi in q[:200]])
    row = dict(
        target=target, epochs=epochs, train_s=round(train_s, 1), test_images=int(len(q)),
        macs=mcu.audit.macs_8bit, float_accuracy=float(np.mean(float_pred == yte)),
        mcu_accuracy=float(np.mean(mcu_logits.argmax(1) == yte)),
        host_accuracy=float(np.mean(host_logits.argmax(1) == yte)),
        same_predictions=int(np.sum(mcu_logits.argmax(1) == host_logits.argmax(1))),
        bit_exact_with_host=bool(np.array_equal(mcu_logits, host_logits)),
        bit_exact_with_reference_first_200=bool(np.array_equal(mcu_logits[:200], ref)),
        emulated_s=round(mcu_s, 1), footprint=mcu.footprint().to_json())
    log(json.dumps(row, indent=1))
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m tools.mcu_fashion",
                                description=__doc__.splitlines()[0])
    p.add_argument("--target", default="rv32i", choices=["rv32i", "rv32im", "cortex-m0plus"])
    p.add_argument("--epochs", type=float, default=2.0)
    p.add_argument("--images", type=int, help="test images (default: all 10,000)")
    p.add_argument("--output")
    a = p.parse_args(argv)
    row = run(a.target, a.epochs, a.images)
    if a.output:
        row["command"] = "python -m tools.mcu_fashion " + " ".join(
            sys.argv[1:] if argv is None else argv)
        row["date"] = time.strftime("%Y-%m")
        tmp = a.output + ".tmp"
        with open(tmp, "w") as f:
            json.dump(row, f, indent=1)
        os.replace(tmp, a.output)
    return 0 if row["bit_exact_with_host"] else 1


if __name__ == "__main__":
    sys.exit(main())
