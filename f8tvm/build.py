"""``python -m f8tvm.build``: build a model-zoo CNN into an F8Net integer-only ``.so`` + ``.json``.

The CLI only parses and validates, then takes one build path: the plan source its arguments name
(calibration, ``--qat-checkpoint``, ``--f8net-checkpoint``) goes through :func:`f8tvm.compile`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm import tqdm

from f8tvm.core.errors import F8TVMError
from f8tvm.core.plan import DEFAULT_SCHEME, SCHEMES
from f8tvm.schedules.tuning import check_database
from f8tvm.targets import TARGETS

from . import api, data, qat
from .calibrate import Calibration
from .frontend import f8net
from .models import MODELS, available_models, get_model
from .runtime import missing_cpu_flags


@dataclass(frozen=True)
class BuildArgs:
    model: str
    target: str
    output_dir: str
    weights: str | None
    input_size: int
    scheme: str
    calib: str
    calib_count: int
    seed: int
    debug_dump: str | None
    f8net_checkpoint: str | None = None
    f8net_config: str = "conventional"
    f8net_avgpool: str = "official"
    tuning_db: str | None = None
    qat_checkpoint: str | None = None
    ram_kb: int | None = None  # microcontroller targets: the SRAM the build may take

    def display(self) -> None:
        print("f8tvm build plan:")
        for k, v in asdict(self).items():
            print(f"  {k:12s} {v}")


def parse_args(argv=None) -> BuildArgs:
    p = argparse.ArgumentParser(prog="python -m f8tvm.build", description=__doc__.splitlines()[0])
    zoo = available_models()
    p.add_argument("--model", required=True, choices=zoo + [a for a in f8net.ARCHS if a not in zoo])
    p.add_argument("--target", default="host", choices=["host", *TARGETS])
    p.add_argument("--output-dir", default="out")
    p.add_argument("--weights", help="torchvision-style state_dict (.pth) to load")
    p.add_argument("--input-size", type=int, default=None, help="H = W of the input (default: "
                   "the model's, 224; a QAT checkpoint's own)")
    # calibration flags default to None so that a QAT build can tell them given (and refuse)
    p.add_argument("--scheme", default=None, choices=list(SCHEMES),
                   help=f"calibration scheme (default {DEFAULT_SCHEME})")
    p.add_argument("--calib", default=None,
                   help="'photos' (the unlabelled photos of ai-benchmark), 'random', a folder of "
                        "images, or 'auto' (photos when installed, else random; the default)")
    p.add_argument("--calib-count", type=int, default=None, help="default 16")
    p.add_argument("--seed", type=int, default=None, help="random weights and images (default 0)")
    p.add_argument("--debug-dump", help="write the IR after each phase into this folder")
    p.add_argument("--tuning-db", metavar="DIR",
                   help="apply the records of a tuning database (python -m f8tvm.tune --db DIR)")
    p.add_argument("--f8net-checkpoint", metavar="PATH",
                   help="a checkpoint trained by the official F8Net code (--model names its "
                        "architecture); its FLs, alphas and BN statistics replace calibration")
    p.add_argument("--f8net-config", default=None, choices=list(f8net.CONFIGS),
                   help="the checkpoint's training config family (default conventional)")
    p.add_argument("--f8net-avgpool", default=None, choices=f8net.AVGPOOL_MODES,
                   help="official: bit-exact with the official integer model; corrected: the "
                        f"pool factor applies to the whole pooled sum (default "
                        f"{f8net.DEFAULT_AVGPOOL})")
    p.add_argument("--qat-checkpoint", metavar="PATH",
                   help="a checkpoint written by f8tvm.qat.save (--model names its zoo "
                        "architecture); its trained formats replace calibration")
    p.add_argument("--ram", type=int, metavar="KIB",
                   help="microcontroller targets: refuse a build whose SRAM (arena and data) "
                        "exceeds this many KiB")
    a = p.parse_args(argv)
    mcu = TARGETS[a.target].mcu if a.target in TARGETS else None
    if a.ram is not None and mcu is None:
        p.error("--ram applies to microcontroller targets only (cortex-m0plus, rv32i, rv32im)")
    if a.ram is not None and a.ram < 1:
        p.error(f"--ram must be >= 1 KiB, got {a.ram}")
    if mcu is not None and a.tuning_db:
        p.error("--tuning-db: microcontroller kernels are not tuned")
    if a.qat_checkpoint:
        _check_qat_args(p, a, zoo)
    if a.f8net_checkpoint:
        if not os.path.isfile(a.f8net_checkpoint):
            p.error(f"--f8net-checkpoint: no such file: {a.f8net_checkpoint}")
        if a.model not in f8net.ARCHS:
            p.error(f"--f8net-checkpoint: --model must be one of {', '.join(f8net.ARCHS)}")
        if a.weights:
            p.error("--weights and --f8net-checkpoint are exclusive")
        given = [flag for dest, flag in _CALIBRATION.items() if getattr(a, dest) is not None]
        if given:
            p.error(f"--f8net-checkpoint cannot be combined with {', '.join(given)}: the "
                    "checkpoint's trained fixed-point formats replace calibration")
    elif a.f8net_config is not None or a.f8net_avgpool is not None:
        p.error("--f8net-config and --f8net-avgpool only apply with --f8net-checkpoint")
    elif a.model not in zoo:
        p.error(f"--model {a.model} needs --f8net-checkpoint")
    if a.weights and not os.path.isfile(a.weights):
        p.error(f"--weights: no such file: {a.weights}")
    if a.calib_count is not None and a.calib_count < 1:
        p.error("--calib-count must be >= 1")
    if a.input_size is not None and a.input_size < 1:
        p.error(f"--input-size must be >= 1, got {a.input_size}")
    if a.tuning_db:
        try:
            check_database(a.tuning_db)
        except (FileNotFoundError, F8TVMError) as err:
            p.error(f"--tuning-db: {err}")
    try:
        api.check_output_dir(a.output_dir)
    except F8TVMError as err:
        p.error(f"--output-dir: {err}")
    if a.qat_checkpoint:  # what the build does instead of calibrating
        scheme, calib, calib_count = "qat", "none", 0
    else:
        scheme, calib = a.scheme or DEFAULT_SCHEME, a.calib or "auto"
        calib_count = 16 if a.calib_count is None else a.calib_count
    return BuildArgs(a.model, a.target, a.output_dir, a.weights, a.input_size or 0, scheme,
                     calib, calib_count, a.seed or 0, a.debug_dump, a.f8net_checkpoint,
                     a.f8net_config or "conventional", a.f8net_avgpool or f8net.DEFAULT_AVGPOOL,
                     a.tuning_db, a.qat_checkpoint, a.ram)


# flags that choose the calibration: a trained checkpoint (QAT or F8Net) has decided them
_CALIBRATION = {"scheme": "--scheme", "calib": "--calib", "calib_count": "--calib-count",
                "seed": "--seed"}
# ... and for a QAT checkpoint the weights as well
_NOT_WITH_QAT = {"weights": "--weights", "f8net_checkpoint": "--f8net-checkpoint",
                 "f8net_config": "--f8net-config", "f8net_avgpool": "--f8net-avgpool",
                 **_CALIBRATION}


def _check_qat_args(p, a, zoo) -> None:
    """``--qat-checkpoint``: an existing file, a zoo model, no flag it would silently ignore
    (the checkpoint holds the weights and every fixed-point format)."""
    given = [flag for dest, flag in _NOT_WITH_QAT.items() if getattr(a, dest) is not None]
    if given:
        p.error(f"--qat-checkpoint cannot be combined with {', '.join(given)}: the checkpoint "
                "holds the trained weights and fixed-point formats (no calibration)")
    if not os.path.isfile(a.qat_checkpoint):
        p.error(f"--qat-checkpoint: no such file: {a.qat_checkpoint}")
    if a.model not in zoo:
        p.error(f"--qat-checkpoint: --model must be a zoo model ({', '.join(zoo)})")


def calibration_images(source: str, count: int, size: int, preprocess, seed: int = 0):
    """Calibration batches (1 x 3 x size x size float32) and a description of where they came
    from."""
    paths = None
    if source in ("auto", "photos"):
        try:
            paths = data.unlabelled_photos()
        except FileNotFoundError:
            if source == "photos":
                raise
    elif source != "random":
        if not os.path.isdir(source):
            raise FileNotFoundError(f"--calib: no such folder: {source}")
        exts = (".jpg", ".jpeg", ".png", ".bmp")
        paths = sorted(os.path.join(source, f) for f in os.listdir(source)
                       if f.lower().endswith(exts))
        if not paths:
            raise FileNotFoundError(f"--calib: no images in {source}")
    if paths:
        paths = paths[:count]
        return [data.load_image(p, size, preprocess) for p in paths], f"{len(paths)} photos"
    rng = np.random.default_rng(seed)
    pix = [rng.integers(0, 256, (1, 3, size, size)).astype(np.float64) / 255.0
           for _ in range(count)]
    mean = np.asarray(preprocess.mean).reshape(1, 3, 1, 1)
    std = np.asarray(preprocess.std).reshape(1, 3, 1, 1)
    return [((p - mean) / std).astype(np.float32) for p in pix], f"{count} random images"


class _Progress:
    """Progress display for the phases of a build."""

    def __init__(self):
        self.bar, self.t0, self.phase = None, time.time(), None

    def __call__(self, phase, done, total):
        if phase != self.phase:
            self.close()
            self.phase = phase
            if total:
                self.bar = tqdm(total=total, desc=f"  {phase}", unit="batch", leave=True)
            else:
                print(f"  [{time.time() - self.t0:6.1f}s] {phase} ...", flush=True)
        if self.bar is not None and total:
            self.bar.n = done
            self.bar.refresh()

    def close(self):
        if self.bar is not None:
            self.bar.close()
            self.bar = None


_PLAN_ORIGIN = {"qat": "from the QAT checkpoint: trained formats, no calibration",
                "f8net-checkpoint": "from the F8Net checkpoint, no calibration"}


def summary_table(cm, files) -> str:
    rows = cm.plan.shift_table(cm.graph)
    lines = [f"{'layer':34s} {'op':6s} {'in_fl':>5s} {'w_fl':>9s} {'shift':>9s} {'MACs':>12s}"]

    def fmt(v):
        return str(v) if isinstance(v, int) else f"{min(v)}..{max(v)}"

    for r in rows:
        name = r["source"] or r["layer"]
        lines.append(f"{name[:34]:34s} {r['op']:6s} {r['in_fl']:5d} {fmt(r['w_fl']):>9s} "
                     f"{fmt(r['in_shift']):>9s} {r['macs']:12,d}")
    a = cm.audit
    lines.append("")
    origin = _PLAN_ORIGIN.get(cm.plan.scheme, "calibrated")
    lines.append(f"plan: scheme {cm.plan.scheme} ({origin})")
    lines.append(f"layers: {len(rows)}   8-bit MACs: {a.macs_8bit:,}   shifts: {a.shifts:,}   "
                 f"wide multiplies: {a.wide_multiplies}")
    t = cm.extra_meta.get("tuning") or {}
    if cm.target.mcu is not None:
        fp = json.load(open(os.path.join(os.path.dirname(files[0]), "model.json")))["footprint"]
        lines.append(f"microcontroller build ({cm.target.isa}): flash {fp['flash_bytes']:,} B "
                     f"(weights {fp['weight_bytes']:,} B), SRAM {fp['sram_bytes']:,} B (arena "
                     f"{fp['arena_bytes']:,} B, stack {fp['stack_bytes']:,} B); no library "
                     "multiply in the linked image")
        lines.append(f"build it: make -C {os.path.dirname(files[0])} (libf8model.a + model.h)")
    elif t.get("database"):
        lines.append(f"kernels: {t['tuned']}/{t['tunable']} tuned from {t['database']} "
                     f"({t['exact']} exact, {t['by_anchor']} by anchor)")
    else:
        lines.append(f"kernels: default schedules for {cm.target.name} (untuned; "
                     f"python -m f8tvm.tune makes a database)")
    lines += [f"wrote {f}" for f in files]

    missing = missing_cpu_flags(cm.target.cpu_flags)
    if missing:  # built for another machine: say so, do not fail
        lines.append(f"note: this CPU lacks {', '.join(missing)}, which {cm.target.name} code "
                     "needs: the module runs on such a CPU, not here")
    return "\n".join(lines)


def qat_source(args: BuildArgs):
    """``--qat-checkpoint``: the trained model (:func:`f8tvm.qat.load`) as the plan source, at
    batch 1 and the checkpoint's input size; and the ``.json`` entries it adds."""
    ck = qat.read_checkpoint(args.qat_checkpoint)
    if ck.model_name != args.model:
        held = f"model {ck.model_name}" if ck.model_name else "no model-zoo name"
        raise F8TVMError(f"--qat-checkpoint {ck.path} holds {held}, not --model {args.model}")
    shape = ck.input_shape
    if len(shape) != 4 or shape[2] != shape[3]:
        raise F8TVMError(f"--qat-checkpoint {ck.path}: input shape {shape} is not an N x C x S x "
                         "S image batch (f8tvm.build makes square-image modules)")
    _, c, h, w = shape
    if args.input_size and args.input_size != h:
        raise F8TVMError(f"--qat-checkpoint {ck.path} was trained at input {h}x{w}, not "
                         f"--input-size {args.input_size}: its pool shifts and clipping levels "
                         "hold at that size only (leave --input-size out)")
    cfg = ck.config
    print(f"  QAT checkpoint: {args.model}, input {c}x{h}x{w} "
          f"({'signed' if ck.input_signed else 'unsigned'}), "
          f"{'per-channel' if cfg.per_channel else 'per-layer'} weight FLs; plan scheme qat: "
          "the trained formats, no calibration")
    pre = MODELS[args.model].preprocess
    extra = dict(model=args.model, preprocess=dict(mean=list(pre.mean), std=list(pre.std),
                                                   size=h))
    return qat.source(qat.load(ck), torch.zeros(1, c, h, w)), extra, os.path.basename(ck.path)


def f8net_source(args: BuildArgs):
    """``--f8net-checkpoint``: the checkpoint (it is a plan source) and the model's name."""
    ck = f8net.load_checkpoint(args.f8net_checkpoint, args.model, config=args.f8net_config,
                               avgpool=args.f8net_avgpool, input_size=args.input_size or 224)
    print(f"  F8Net checkpoint: {args.model}, config {ck.config}, avgpool {ck.avgpool} "
          f"(width {ck.info['width']:g}, {ck.info['num_classes']} classes)")
    return ck, dict(model=args.model)


def calibration_source(args: BuildArgs):
    """A zoo model calibrated on ``--calib`` images, and the ``.json`` entries it adds."""
    model, spec = get_model(args.model, weights=args.weights, seed=args.seed)
    if not spec.images:  # features, not images: calibrated on seeded normal samples
        if args.input_size:
            raise F8TVMError(f"--input-size: {args.model} takes inputs of shape "
                             f"{spec.input_shape}")
        if args.calib not in ("auto", "random"):
            raise F8TVMError(f"--calib {args.calib}: {args.model} takes {spec.input_shape} "
                             "features, not images; calibrate with --calib random")
        shape = spec.example_shape()
        rng = np.random.default_rng(args.seed)
        calib = [rng.standard_normal(shape).astype(np.float32)
                 for _ in range(args.calib_count)]
        print(f"  calibration: {args.calib_count} random inputs {shape}, scheme {args.scheme}")
        return Calibration(model, torch.zeros(shape), calib, args.scheme), dict(model=args.model)
    size = args.input_size or spec.input_size
    calib, what = calibration_images(args.calib, args.calib_count, size, spec.preprocess,
                                     args.seed)
    print(f"  calibration: {what}, scheme {args.scheme}")
    extra = dict(model=args.model, preprocess=dict(mean=list(spec.preprocess.mean),
                                                   std=list(spec.preprocess.std), size=size))
    return Calibration(model, torch.zeros(spec.example_shape(size)), calib, args.scheme), extra


def build(args: BuildArgs):
    """The one build path: the plan source the arguments name (calibration, a QAT checkpoint or
    an F8Net checkpoint), compiled and exported.  Returns the compiled model and the files."""
    checkpoint = None
    if args.qat_checkpoint:
        source, extra, checkpoint = qat_source(args)
    elif args.f8net_checkpoint:
        source, extra = f8net_source(args)
    else:
        source, extra = calibration_source(args)
    progress = _Progress()
    cm = api.compile(source, target=args.target, progress=progress,
                     debug_dump=args.debug_dump, tuning_db=args.tuning_db, name=args.model)
    progress.close()
    cm.extra_meta.update(extra)
    if checkpoint:
        cm.extra_meta["qat"]["checkpoint"] = checkpoint
    stem = f"{args.model}-{cm.target.name}"
    if cm.target.mcu is not None:  # a folder of C sources
        ram = args.ram_kb * 1024 if args.ram_kb else None
        return cm, cm.export(os.path.join(args.output_dir, stem), ram_limit=ram)
    return cm, cm.export(os.path.join(args.output_dir, f"{stem}.so"))


def main(argv=None) -> int:
    args = parse_args(argv)
    args.display()
    try:
        cm, files = build(args)
    except (F8TVMError, FileNotFoundError, ValueError, KeyError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(summary_table(cm, files))
    return 0


if __name__ == "__main__":
    sys.exit(main())
