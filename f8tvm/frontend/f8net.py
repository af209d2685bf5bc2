"""Import checkpoints trained by the official F8Net code into a FixedPointPlan, bit-exactly.

A checkpoint is the state_dict of the official ``fix_resnet`` / ``fix_mobilenet_v2`` /
``fix_mobilenet_v1`` models: per quantized layer (``ReLUClipFXQConvBN``) the keys ``conv.weight``,
``bn.{weight,bias,running_mean,running_var,num_batches_tracked}``, ``alpha`` (the PACT clipping
level) and ``input_fraclen`` (an EMA of the input fractional length); per classifier
(``ReLUClipFXQLinear``) ``weight``, ``bias``, ``alpha``, ``input_fraclen``.

:func:`load_checkpoint` rebuilds what the official *integer-only* export (``int_op_only``, with
``quant_bias``, ``quant_avgpool`` and ``pool_fusing`` on) computes, and expresses it as a plan
that :func:`f8tvm.compile` consumes:

* input FL: 8 for the raw ``uint8`` pixel taken as ``P / 256`` (conventional); the head's own
  ``clamp(round_half_even(input_fraclen), 0, 7)`` for a signed normalised input (tiny finetuning);
* per layer ``FL_in = clamp(round_half_even(input_fraclen), 0, 8 - s)`` (``s`` = signed input);
* ``eta_L = 2**FL_in * |alpha| / (2**(8 - s) - 1)``, ``alpha`` taken from the layer's clipping
  master (shared along residual streams); ``eta = 1`` for the weight-only head and under
  ``no_clipping`` (tiny finetuning);
* ``W_eff = (gamma / sqrt(var + eps)) * W * eta_L / eta_next``,
  ``b_eff = (beta - gamma * mean / sqrt(var + eps)) / eta_next``, both times the average-pool
  factor where it is folded;
* ``FL_w = clamp(floor(log2(40 / std(W_eff))), 0, 7)`` (conventional, F8Net's std rule) or the
  RMSE-optimal FL in 0..7 (tiny finetuning, ``format_grid_search``);
* ``w_int = clamp(round_half_even(W_eff * 2**FL_w), -127, 127)``,
  ``b_int = clamp(round_half_even(b_eff * 2**(FL_in + FL_w)), -(2**31 - 1), 2**31 - 1)``;
* classifier: weights quantized from the raw ``W``; ``b_eff = b / eta_fc / ws`` with
  ``ws = (1 / sqrt(out_features)) / std(W_q)`` (F8Net's constant rescale).

These are evaluated with float32 torch operations in the same order as the official export, so
every rounding decision (ties included) comes out the same.

Average pooling: the integer program sums the last feature map and adds ``k`` to its FL; the
remaining factor ``2**k / (H*W)`` is folded offline.  ``avgpool="official"`` (the default)
reproduces the official export: ``k = 6`` and the factor ``64/49`` of its hard-coded 7x7 pool,
folded into the last conv of the network; for ResNet that is ``body[-1]`` of the last block only,
so the identity branch of that block is left unscaled (``F8NET_SPEC`` §1d).
``avgpool="corrected"`` applies the factor to the whole pooled sum with the true ``H*W``: for
ResNet it is folded into the classifier weights instead, for MobileNet it stays in the last conv
(already consistent there).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from f8tvm.core import formats
from f8tvm.core.errors import F8TVMError, InputError
from f8tvm.core.fixedpoint import STD_C_SIGNED, qrange
from f8tvm.core.plan import FixedPointPlan, LayerPlan
from f8tvm.frontend.torch_import import float_graph

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)

__all__ = ["ARCHS", "AVGPOOL_MODES", "CONFIGS", "CheckpointError", "F8NetCheckpoint",
           "F8NetConfig", "architecture", "load_checkpoint",
           "read_checkpoint"]

BN_EPS = 1e-5  # ReLUClipFXQConvBN's default; no official model overrides it
OFFICIAL_POOL_KERNEL = 7  # FXQAvgPool2d(7): the official int model always pools with this
AVGPOOL_MODES = ("official", "corrected")
DEFAULT_AVGPOOL = "official"
_MAX_LISTED = 12
_F24 = 2**24  # float32 holds every integer below this exactly


class CheckpointError(F8TVMError, ValueError):
    """The checkpoint does not match the architecture (keys or shapes)."""


@dataclass(frozen=True)
class F8NetConfig:
    """One family of official training configs (a registry entry of :data:`CONFIGS`).

    Attributes
    ----------
    normalize : bool
        Input is mean/std normalised and signed; the head quantizes it with its own FL
        (``normalize: True``).  Otherwise the input is the raw pixel ``P / 256`` and the head is
        weight-only (its input FL is 8).
    no_clipping : bool
        ``eta = 1`` everywhere (no PACT clipping level).
    weight_fl : 'std' or 'grid'
        Weight FL rule: ``format_from_metric`` with ``metric: std``, or ``format_grid_search``.
    """

    name: str
    normalize: bool
    no_clipping: bool
    weight_fl: str
    description: str = ""


CONFIGS = {c.name: c for c in [
    F8NetConfig("conventional", False, False, "std",
                "full quantized training: raw-pixel input, weight-only head, PACT alpha folded "
                "as eta, std-rule weight FLs (res18/mbv1/mbv2 *_fix_quant_* configs)"),
    F8NetConfig("tiny", True, True, "grid",
                "tiny finetuning from a float model: normalised signed input, no clipping "
                "(eta = 1), grid-searched weight FLs (res18/res50 *_pretrained_* configs)"),
]}


# ------------------------------------------------------------------------------- architectures
@dataclass(frozen=True)
class QLayer:
    """One quantized layer of an official F8Net model, named by its state_dict prefix."""

    prefix: str
    kind: str  # 'conv' or 'fc'
    cin: int
    cout: int
    kernel: int = 1
    stride: int = 1
    padding: int = 0
    groups: int = 1
    signed: bool = False  # F8Net's double_side: a signed 8-bit input
    head: bool = False  # the first layer (weight-only under the conventional config)
    master: str | None = None  # layer whose clipping level alpha this one shares
    following: str | None = None  # the layer consuming this one's output (its eta divides)

    def shapes(self) -> dict:
        if self.kind == "fc":
            return {"weight": (self.cout, self.cin), "bias": (self.cout,)}
        c = (self.cout,)
        return {"conv.weight": (self.cout, self.cin // self.groups, self.kernel, self.kernel),
                "bn.weight": c, "bn.bias": c, "bn.running_mean": c, "bn.running_var": c}


@dataclass(frozen=True)
class Arch:
    name: str
    family: str  # 'resnet', 'mobilenet_v2', 'mobilenet_v1'
    layers: tuple  # QLayer, in execution order
    blocks: tuple  # (block prefix, body prefixes, shortcut prefix or None, residual)
    pool_fold: str  # the conv into which the official export folds the avg-pool factor

    def layer(self, prefix) -> QLayer:
        return next(q for q in self.layers if q.prefix == prefix)


def _ch(c: int, width: float) -> int:
    return max(1, round(c * width))


def _resnet(name, depth, width, num_classes, signed_input):
    bottleneck = depth >= 50
    counts = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    expansion = 4 if bottleneck else 1
    feats = [_ch(c, width) for c in (64, 128, 256, 512)]
    layers = [QLayer("head.0", "conv", 3, _ch(64, width), 7, 2, 3, signed=signed_input,
                     head=True)]
    blocks = []
    channels, master = _ch(64, width), None
    for si, n in enumerate(counts):
        outp = feats[si] * expansion
        for i in range(n):
            stride = 2 if (i == 0 and si != 0) else 1
            p = f"stage_{si}_layer_{i}"
            if bottleneck:
                mid = outp // 4
                specs = [(channels, mid, 1, 1, 0), (mid, mid, 3, stride, 1), (mid, outp, 1, 1, 0)]
            else:
                specs = [(channels, outp, 3, stride, 1), (outp, outp, 3, 1, 1)]
            body = [QLayer(f"{p}.body.{j}", "conv", *s, master=master if j == 0 else None)
                    for j, s in enumerate(specs)]
            residual = stride == 1 and channels == outp
            shortcut = None
            if not residual:
                shortcut = QLayer(f"{p}.shortcut.0", "conv", channels, outp, 1, stride, 0,
                                  master=master)
            layers += body + ([shortcut] if shortcut else [])
            blocks.append((p, tuple(q.prefix for q in body),
                           shortcut.prefix if shortcut else None, residual))
            # a residual block's body[0] is the master of the next block's consumers
            master = body[0].prefix if residual else None
            channels = outp
    layers.append(QLayer("classifier.0", "fc", channels, num_classes))
    layers = _link(layers, blocks)
    return Arch(name, "resnet", tuple(layers), tuple(blocks), blocks[-1][1][-1])


def _mobilenet_v2(width, num_classes, signed_input):
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
               [6, 160, 3, 2], [6, 320, 1, 1]]
    channels = _ch(32, width)
    layers = [QLayer("head.0", "conv", 3, channels, 3, 2, 1, signed=signed_input, head=True)]
    blocks, master = [], None
    for si, (t, c, n, s) in enumerate(setting):
        outp = _ch(c, width)
        for i in range(n):
            stride = s if i == 0 else 1
            p = f"stage_{si}_layer_{i}"
            signed = si != 0  # the block input is a linear-bottleneck output (no ReLU)
            mid = channels * t
            # (cin, cout, kernel, stride, padding, groups): [expand,] depthwise, project
            specs = [(channels, mid, 1, 1, 0, 1)] if t != 1 else []
            specs += [(mid, mid, 3, stride, 1, mid), (mid, outp, 1, 1, 0, 1)]
            body = [QLayer(f"{p}.body.{j}", "conv", *sp, signed=signed if j == 0 else False,
                           master=master if j == 0 else None) for j, sp in enumerate(specs)]
            residual = stride == 1 and channels == outp
            layers += body
            blocks.append((p, tuple(q.prefix for q in body), None, residual))
            master = body[0].prefix if residual else None
            channels = outp
    tail = _ch(1280, width)
    layers.append(QLayer("tail.0", "conv", channels, tail, 1, 1, 0, signed=True, master=master))
    layers.append(QLayer("classifier.0", "fc", tail, num_classes))
    layers = _link(layers, blocks)
    return Arch("mobilenet_v2", "mobilenet_v2", tuple(layers), tuple(blocks), "tail.0")


def _mobilenet_v1(width, num_classes, signed_input):
    setting = [[64, 1, 1], [128, 2, 2], [256, 2, 2], [512, 6, 2], [1024, 2, 2]]
    channels = _ch(32, width)
    layers = [QLayer("head.0", "conv", 3, channels, 3, 2, 1, signed=signed_input, head=True)]
    blocks = []
    for si, (c, n, s) in enumerate(setting):
        outp = _ch(c, width)
        for i in range(n):
            p = f"stage_{si}_layer_{i}"
            body = [QLayer(f"{p}.body.0", "conv", channels, channels, 3, s if i == 0 else 1, 1,
                           groups=channels),
                    QLayer(f"{p}.body.1", "conv", channels, outp, 1, 1, 0)]
            layers += body
            blocks.append((p, tuple(q.prefix for q in body), None, False))
            channels = outp
    layers.append(QLayer("classifier.0", "fc", channels, num_classes))
    layers = _link(layers, blocks)
    return Arch("mobilenet_v1", "mobilenet_v1", tuple(layers), tuple(blocks),
                blocks[-1][1][-1])


def _link(layers, blocks):
    """Set ``following`` (whose eta divides a layer's output), as the official models link them:
    head -> the first block; inside a block body[i] -> body[i+1]; a block's last body conv and
    its shortcut -> the next block's body[0]; the last block -> the layer after the blocks (MBv2's
    tail, else the classifier); the tail -> the classifier."""
    in_block = {p for _, body, sc, _ in blocks for p in body + ((sc,) if sc else ())}
    after = [q.prefix for q in layers[1:] if q.prefix not in in_block]  # [tail,] classifier
    starts = [b[1][0] for b in blocks] + after[:1]
    nxt = {layers[0].prefix: starts[0]}
    for k, (_, body, sc, _) in enumerate(blocks):
        nxt.update(itertools.pairwise(body))
        nxt[body[-1]] = starts[k + 1]
        if sc:
            nxt[sc] = starts[k + 1]
    nxt.update(itertools.pairwise(after))
    return [_replace(q, following=nxt.get(q.prefix)) for q in layers]


def _replace(q, **kw):
    from dataclasses import replace

    return replace(q, **kw)


ARCHS = {
    "resnet18": lambda w, n, s: _resnet("resnet18", 18, w, n, s),
    "resnet50": lambda w, n, s: _resnet("resnet50", 50, w, n, s),
    "mobilenet_v1": _mobilenet_v1,
    "mobilenet_v2": _mobilenet_v2,
}


def architecture(arch: str, width: float = 1.0, num_classes: int = 1000,
                 config: str = "conventional") -> Arch:
    """The layer table of an official F8Net architecture (``width`` scales every channel count;
    1.0 is the official model)."""
    if arch not in ARCHS:
        raise InputError(f"unknown F8Net architecture {arch!r}; expected one of "
                         f"{', '.join(ARCHS)}")
    cfg = _config(config)
    return ARCHS[arch](width, num_classes, cfg.normalize)


def _config(config) -> F8NetConfig:
    if isinstance(config, F8NetConfig):
        return config
    if config not in CONFIGS:
        raise InputError(f"unknown F8Net config {config!r}; expected one of {', '.join(CONFIGS)}")
    return CONFIGS[config]


# ------------------------------------------------------------------------------- float module
class _ConvBN(nn.Module):
    def __init__(self, q: QLayer):
        super().__init__()
        self.conv = nn.Conv2d(q.cin, q.cout, q.kernel, q.stride, q.padding, groups=q.groups,
                              bias=False)
        self.bn = nn.BatchNorm2d(q.cout, eps=BN_EPS)

    def forward(self, x):
        return self.bn(self.conv(x))


class _Block(nn.Module):
    """A body of ConvBNs with ReLU between them (F8Net's unsigned quantizers), an optional
    shortcut ConvBN and residual add, and the family's activation at the end."""

    def __init__(self, arch: Arch, body, shortcut, residual, family):
        super().__init__()
        self.body = nn.Sequential(*[_ConvBN(arch.layer(p)) for p in body])
        if shortcut:
            self.shortcut = nn.Sequential(_ConvBN(arch.layer(shortcut)))
        self.residual, self.family = residual, family

    def forward(self, x):
        y = x
        for i, layer in enumerate(self.body):
            y = layer(torch.relu(y) if i else y)
        if self.family == "resnet":
            y = y + (self.shortcut(x) if hasattr(self, "shortcut") else x)
            return torch.relu(y)
        if self.family == "mobilenet_v1":
            return torch.relu(y)
        return y + x if self.residual else y  # MBv2: linear bottleneck


class F8NetFloatModel(nn.Module):
    """The float function of an F8Net checkpoint, with the official module names.

    Loaded by :func:`load_checkpoint`, it is the official fake-quant forward without its
    quantizers: every tensor holds F8Net's stored value ``real / eta`` (so residual adds combine
    operands exactly as the trained network does, power-of-two scale differences included), the
    layers carry ``W_eff`` and ``b_eff``, and the output is the training-time logits.  Clipping
    at ``alpha`` and the fractional lengths live in the plan only.
    """

    def __init__(self, arch: Arch):
        super().__init__()
        self.family = arch.family
        head = [_ConvBN(arch.layers[0]), nn.ReLU()]
        if arch.family == "resnet":
            head.append(nn.MaxPool2d(3, 2, 1))
        self.head = nn.Sequential(*head)
        self.block_names = []
        for p, body, sc, residual in arch.blocks:
            setattr(self, p, _Block(arch, body, sc, residual, arch.family))
            self.block_names.append(p)
        if arch.family == "mobilenet_v2":
            self.tail = nn.Sequential(_ConvBN(arch.layer("tail.0")), nn.ReLU())
        fc = arch.layer("classifier.0")
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(fc.cin, fc.cout))

    def forward(self, x):
        x = self.head(x)
        for p in self.block_names:
            x = getattr(self, p)(x)
        if self.family == "mobilenet_v2":
            x = self.tail(x)
        x = torch.flatten(self.avgpool(x), 1)
        return self.classifier(x)


# ------------------------------------------------------------------------------- checkpoints
def read_checkpoint(obj) -> dict:
    """The bare state_dict of a checkpoint: a file path or a dict, possibly wrapped as
    ``{"model": ...}`` (or ``{"state_dict": ...}``) with ``module.`` key prefixes."""
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        import pickle

        from f8tvm.models import load_state_dict_file

        try:
            return load_state_dict_file(obj)
        except pickle.UnpicklingError as err:
            # e.g. the official latest_checkpoint.pt, which pickles its meter objects
            raise CheckpointError(
                f"{obj}: not loadable as plain tensors (f8tvm never unpickles code); use the "
                "official best_model.pt or re-save torch.save({'model': ckpt['model']}, path)"
            ) from err
    if not isinstance(obj, Mapping):
        raise InputError(f"expected a checkpoint path or a state_dict, got {type(obj).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _expected_keys(arch: Arch) -> dict:
    """key -> shape (None for scalars/buffers whose shape is not checked strictly)."""
    keys = {}
    for q in arch.layers:
        for k, s in q.shapes().items():
            keys[f"{q.prefix}.{k}"] = s
        keys[f"{q.prefix}.alpha"] = ()
        keys[f"{q.prefix}.input_fraclen"] = (1,)
    return keys


def _optional_keys(arch: Arch) -> set:
    # Older torch versions did not save num_batches_tracked; it plays no part in inference.
    return {f"{q.prefix}.bn.num_batches_tracked" for q in arch.layers if q.kind == "conv"}


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def _check_keys(sd: dict, arch: Arch) -> None:
    want = _expected_keys(arch)
    optional = _optional_keys(arch)
    missing = set(want) - set(sd)
    unexpected = set(sd) - set(want) - optional
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if not problems:
        bad = []
        for k, shape in want.items():
            got = tuple(torch.as_tensor(sd[k]).shape)
            ok = got == shape or (shape in ((), (1,)) and int(np.prod(got)) == 1)
            if not ok:
                bad.append(f"{k}: expected {shape}, got {got}")
        if bad:
            problems.append("wrong shapes: " + "; ".join(bad[:_MAX_LISTED]))
    if problems:
        raise CheckpointError(f"checkpoint does not match F8Net {arch.name}: "
                              + " | ".join(problems))


def _infer_width(sd: dict, arch: str) -> float:
    w = sd.get("head.0.conv.weight")  # when absent, the key check names it
    return 1.0 if w is None else int(w.shape[0]) / (64 if arch.startswith("resnet") else 32)


def _infer_num_classes(sd: dict) -> int:
    w = sd.get("classifier.0.weight")  # when absent, the key check names it
    return 1000 if w is None else int(w.shape[0])


# ------------------------------------------------------------------------------- the export
def _f32(t) -> torch.Tensor:
    return torch.as_tensor(t).detach().to(torch.float32).cpu()


def _fix_quant(x, fl, bits, signed=True):
    """F8Net's fix_quant in float32: ``clamp(round_half_even(x * 2**fl)) / 2**fl``."""
    lo, hi = qrange(signed, bits)
    scale = torch.pow(torch.tensor(2.0), fl)
    return torch.clamp(torch.round(x * scale), lo, hi) / scale


def _act_fl(buffer, signed: bool) -> int:
    """Eval-time input FL: the EMA buffer rounded half to even, clamped to [0, 8 - s]."""
    return int(torch.clamp(torch.round(_f32(buffer).reshape(-1)[:1]),
                           *formats.act_fl_range(signed)))


def _weight_fl(w: torch.Tensor, rule: str) -> int:
    if rule == "std":
        dims = tuple(range(w.dim()))
        std = torch.std(w, dim=dims)
        return int(torch.clamp(torch.floor(torch.log2(STD_C_SIGNED / std)),
                               *formats.weight_fl_range()))
    errs = []  # format_grid_search: the RMSE-optimal FL, the first on ties
    lo, hi = formats.weight_fl_range()
    for fl in range(lo, hi + 1):
        res = _fix_quant(w, torch.tensor(float(fl)), 8)
        errs.append(float(torch.mean((w - res) ** 2) ** 0.5))
    return lo + int(np.argmin(np.asarray(errs, np.float32)))


@dataclass
class _Exported:
    in_fl: int
    signed: bool
    w_fl: int
    w_int: np.ndarray
    b_int: np.ndarray
    eta_in: float
    eta_out: float
    w_float: torch.Tensor  # the layer in F8Net's stored units (real / eta), before the pool fold
    b_float: torch.Tensor


def _export(sd: dict, arch: Arch, cfg: F8NetConfig, pool_scale: dict, fc_scale: float):
    """Per layer: integer weights, bias and formats, as the official int_op_only export."""
    layers = {q.prefix: q for q in arch.layers}

    def root(prefix):
        while layers[prefix].master is not None:
            prefix = layers[prefix].master
        return prefix

    def in_fl(q):
        if q.head and not cfg.normalize:
            return 8  # weight-only head: the raw pixel P/256
        return _act_fl(sd[f"{q.prefix}.input_fraclen"], q.signed)

    def eta(prefix) -> torch.Tensor:
        q = layers[prefix]
        if cfg.no_clipping or (q.head and not cfg.normalize):
            return torch.ones(1)
        alpha = torch.abs(_f32(sd[f"{root(prefix)}.alpha"]).reshape(1))
        return torch.pow(torch.tensor(2.0), torch.tensor([float(in_fl(q))])) * alpha / (
            2 ** (8 - int(q.signed)) - 1)

    out = {}
    for q in arch.layers:
        fl_in = in_fl(q)
        e_in = eta(q.prefix)
        if q.kind == "conv":
            g = _f32(sd[f"{q.prefix}.bn.weight"])
            beta = _f32(sd[f"{q.prefix}.bn.bias"])
            mean = _f32(sd[f"{q.prefix}.bn.running_mean"])
            std = torch.sqrt(_f32(sd[f"{q.prefix}.bn.running_var"]) + BN_EPS)
            e_next = eta(q.following)
            w = (g / std)[:, None, None, None] * _f32(sd[f"{q.prefix}.conv.weight"]) * e_in \
                / e_next
            b = (beta - g / std * mean) / e_next
            w_float, b_float = w, b
            s = pool_scale.get(q.prefix)
            if s is not None:
                w, b = w * s, b * s
        else:
            w_raw = _f32(sd[f"{q.prefix}.weight"])
            fl_raw = _weight_fl(w_raw, cfg.weight_fl)
            w_q = _fix_quant(w_raw, torch.tensor(float(fl_raw)), 8)
            ws = (1.0 / q.cout**0.5) / torch.std(w_q)  # the official form, whole tensor
            b = _f32(sd[f"{q.prefix}.bias"]) / e_in / ws
            w = w_raw * fc_scale if fc_scale != 1.0 else w_raw
            e_next = e_in * ws  # eval logits = training logits / (eta_fc * ws)
            w_float, b_float = w_raw * e_next, _f32(sd[f"{q.prefix}.bias"])
        fl_w = _weight_fl(w, cfg.weight_fl)
        w_int = torch.clamp(torch.round(w * 2.0**fl_w), *qrange(True))
        acc_fl = torch.tensor(float(fl_in + fl_w))
        b_int = torch.round(_fix_quant(b, acc_fl, 32) * torch.pow(torch.tensor(2.0), acc_fl))
        out[q.prefix] = _Exported(fl_in, q.signed, fl_w,
                                  w_int.numpy().astype(np.int8), b_int.double().numpy()
                                  .astype(np.int64).astype(np.int32), float(e_in),
                                  float(e_next.reshape(-1)[0]), w_float, b_float)
    return out


# ------------------------------------------------------------------------------- the plan
@dataclass
class F8NetCheckpoint:
    """An imported F8Net checkpoint: the float module, its example input and the plan.

    ``f8tvm.compile(ck.model, ck.example_input, plan=ck.plan)`` compiles it; :meth:`compile`
    does the same with one import of the module instead of two (the plan is keyed by the names
    of the imported graph, so :attr:`plan` and :attr:`graph` import it on first use).
    """

    arch: str
    config: str
    avgpool: str
    model: nn.Module
    example_input: torch.Tensor
    info: dict
    _exported: dict = field(repr=False)
    _graph: object = field(default=None, repr=False)
    _plan: FixedPointPlan | None = field(default=None, repr=False)

    def plan_for(self, graph, progress=None) -> FixedPointPlan:
        """The plan of this checkpoint over ``graph`` (the layer graph of :attr:`model`)."""
        plan = _plan(graph, self._exported, CONFIGS[self.config], self.info["pool_shift"])
        plan.info.update(f8net=dict(self.info))
        self._graph, self._plan = graph, plan
        return plan

    @property
    def graph(self):
        if self._graph is None:
            self.plan_for(float_graph(self.model, self.example_input)[2])
        return self._graph

    @property
    def plan(self) -> FixedPointPlan:
        if self._plan is None:
            _ = self.graph
        return self._plan

    def metadata(self) -> dict:
        """The ``.json``'s ``f8net`` entry and the input preprocessing of the official model."""
        if CONFIGS[self.config].normalize:
            pre = {"mean": list(_IMAGENET_MEAN), "std": list(_IMAGENET_STD)}
        else:  # the official input is the raw pixel P read as P / 256
            pre = {"mean": [0.0] * 3, "std": [256 / 255] * 3}
        return {"f8net": {"arch": self.arch, "config": self.config, "avgpool": self.avgpool},
                "preprocess": dict(pre, size=int(self.example_input.shape[-1]))}


def _float_state_dict(arch: Arch, exported: dict) -> dict:
    """The float module's weights: each layer in F8Net's stored units, as the official
    fake-quant forward computes before quantizing (BN folded into the conv, identity BN)."""
    out = {}
    for q in arch.layers:
        e = exported[q.prefix]
        if q.kind == "conv":
            ones = torch.ones(q.cout)
            out.update({f"{q.prefix}.conv.weight": e.w_float, f"{q.prefix}.bn.weight": ones,
                        f"{q.prefix}.bn.bias": e.b_float,
                        f"{q.prefix}.bn.running_mean": torch.zeros(q.cout),
                        f"{q.prefix}.bn.running_var": ones - BN_EPS,
                        f"{q.prefix}.bn.num_batches_tracked": torch.tensor(0)})
        else:
            out.update({f"{q.prefix}.weight": e.w_float, f"{q.prefix}.bias": e.b_float})
    return out


def _module_prefix(node) -> str:
    src = node.source.split(" (", 1)[0]
    return src.removesuffix(".conv")


def load_checkpoint(checkpoint, arch: str, config: str = "conventional",
                    avgpool: str = DEFAULT_AVGPOOL, input_size: int = 224,
                    width: float | None = None, num_classes: int | None = None
                    ) -> F8NetCheckpoint:
    """Import an official F8Net checkpoint as a float module plus a :class:`FixedPointPlan`.

    Parameters
    ----------
    checkpoint : str, path or dict
        A ``.pth`` saved by the official training, or the state_dict itself; a ``module.``
        prefix and a ``{"model": ...}`` wrapper are accepted.
    arch : {'resnet18', 'resnet50', 'mobilenet_v1', 'mobilenet_v2'}
    config : {'conventional', 'tiny'}
        The training config family (see :data:`CONFIGS`).
    avgpool : {'official', 'corrected'}
        Where the average-pool factor is folded (module docstring).  ``official`` (default)
        reproduces the official integer-only model bit for bit.
    input_size : int
        H = W of the input the module will be compiled for.
    width : float, optional
        Channel multiplier of the architecture (1.0 = the official models); inferred from the
        head's channel count when omitted.
    num_classes : int, optional
        Inferred from ``classifier.0.weight`` when omitted.

    Returns
    -------
    F8NetCheckpoint

    Raises
    ------
    CheckpointError
        Missing or unexpected keys, or wrong shapes (the keys are named).
    InputError
        Unknown architecture, config or avgpool mode.
    """
    cfg = _config(config)
    if arch not in ARCHS:
        raise InputError(f"unknown F8Net architecture {arch!r}; expected one of "
                         f"{', '.join(ARCHS)}")
    if avgpool not in AVGPOOL_MODES:
        raise InputError(f"unknown avgpool mode {avgpool!r}; expected one of "
                         f"{', '.join(AVGPOOL_MODES)}")
    sd = read_checkpoint(checkpoint)
    n_cls = num_classes or _infer_num_classes(sd)
    if width is None:
        width = _infer_width(sd, arch)
    a = architecture(arch, width, n_cls, cfg)
    _check_keys(sd, a)

    model = F8NetFloatModel(a).eval()
    x = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        final = model.head(x)
        for p in model.block_names:
            final = getattr(model, p)(final)
    hw = int(final.shape[2] * final.shape[3])

    # ---- the average-pool factor: where it is folded and with which shift
    if avgpool == "official":
        shift = round(math.log2(OFFICIAL_POOL_KERNEL**2))
        factor = 2.0**shift / OFFICIAL_POOL_KERNEL**2
        if hw != OFFICIAL_POOL_KERNEL**2:
            import warnings

            warnings.warn(f"F8Net official avgpool: the final map is {hw} pixels, not 7x7; the "
                          "official model still divides its sum by 49 (use avgpool='corrected' "
                          "for a mean)", stacklevel=2)
    else:
        shift = round(math.log2(hw))
        factor = 2.0**shift / hw
    pool_scale, fc_scale = {}, 1.0
    if avgpool == "corrected" and a.family == "resnet":
        fc_scale = factor  # the whole pooled sum, identity branch included
    elif factor != 1.0:
        pool_scale[a.pool_fold] = factor
    exported = _export(sd, a, cfg, pool_scale, fc_scale)

    model.load_state_dict(_float_state_dict(a, exported), strict=True)

    info = {"arch": arch, "config": cfg.name, "avgpool": avgpool, "pool_shift": shift,
            "pool_factor": factor, "final_hw": hw, "width": width, "num_classes": n_cls}
    if a.family == "resnet":
        info["head_maxpool_exact"] = _maxpool_exact(exported["head.0"])
        if not info["head_maxpool_exact"]:
            import warnings

            warnings.warn("F8Net head accumulator may exceed 2**24: the official model's float32 "
                          "max-pool can round it, f8tvm's int32 max-pool does not", stacklevel=2)
    return F8NetCheckpoint(arch, cfg.name, avgpool, model, x, info, exported)


def _maxpool_exact(e: _Exported) -> bool:
    """The official ResNet max-pools the head's int32 output in float32: exact below 2**24.

    A static bound on the head accumulator tells whether the integer max-pool f8tvm emits
    is guaranteed to agree.
    """
    w = np.abs(e.w_int.astype(np.int64)).reshape(e.w_int.shape[0], -1).sum(1)
    top = qrange(e.signed)[1]
    return bool(np.all(w * top + np.abs(e.b_int.astype(np.int64)) < _F24))


def _plan(graph, exported: dict, cfg: F8NetConfig, pool_shift: int) -> FixedPointPlan:
    fl, eta, layers = {}, {}, {}
    head = exported["head.0"]
    input_fl = head.in_fl
    for n in graph.nodes:
        if n.op == "input":
            fl[n.name] = np.full(n.shape[1], input_fl, np.int64)
            eta[n.name] = 1.0
            continue
        if n.is_layer:
            prefix = _module_prefix(n)
            e = exported.get(prefix)
            if e is None:
                raise F8TVMError(f"internal: graph layer {n.name} ({n.source}) has no F8Net "
                                 "layer")
            cout = n.weight.shape[0]
            w_fl = np.full(cout, e.w_fl, np.int64)
            layers[n.name] = LayerPlan(n.name, e.in_fl, e.signed, w_fl, e.w_int, e.b_int,
                                       e.eta_in, e.eta_out)
            fl[n.name] = e.in_fl + w_fl
            eta[n.name] = e.eta_out
        elif n.op in ("add", "global_avg_pool", "relu", "max_pool2d", "reshape"):
            # the one per-op rule; the official model folds the pool's 2**k / (H*W) into the
            # classifier's weights (its export), so eta stays
            f = formats.propagate(n, graph, fl, eta, pool_k=pool_shift, pool_factor_in_eta=False)
            fl[n.name], eta[n.name] = f.fl, f.eta
        else:
            raise F8TVMError(f"internal: unexpected op {n.op} in an F8Net graph")
    return FixedPointPlan("f8net-checkpoint", int(input_fl), bool(cfg.normalize), fl, eta,
                          layers, info={})
