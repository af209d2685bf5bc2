"""The official F8Net architectures as layer tables (:class:`Arch`, one :class:`LayerSpec` per
quantized layer, named by its state_dict prefix), the training-config families
(:data:`CONFIGS`), and the float module whose forward an imported checkpoint runs
(:class:`F8NetFloatModel`, with the official module names)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass, replace

import torch
from torch import nn

from f8tvm.core.errors import InputError

BN_EPS = 1e-5  # ReLUClipFXQConvBN's default; no official model overrides it


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


@dataclass(frozen=True)
class LayerSpec:
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
    layers: tuple  # LayerSpec, in execution order
    blocks: tuple  # (block prefix, body prefixes, shortcut prefix or None, residual)
    pool_fold: str  # the conv into which the official export folds the avg-pool factor

    def layer(self, prefix) -> LayerSpec:
        return next(q for q in self.layers if q.prefix == prefix)


def _ch(c: int, width: float) -> int:
    return max(1, round(c * width))


def _resnet(name, depth, width, num_classes, signed_input):
    bottleneck = depth >= 50
    counts = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    expansion = 4 if bottleneck else 1
    feats = [_ch(c, width) for c in (64, 128, 256, 512)]
    layers = [LayerSpec("head.0", "conv", 3, _ch(64, width), 7, 2, 3, signed=signed_input,
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
            body = [LayerSpec(f"{p}.body.{j}", "conv", *s, master=master if j == 0 else None)
                    for j, s in enumerate(specs)]
            residual = stride == 1 and channels == outp
            shortcut = None
            if not residual:
                shortcut = LayerSpec(f"{p}.shortcut.0", "conv", channels, outp, 1, stride, 0,
                                  master=master)
            layers += body + ([shortcut] if shortcut else [])
            blocks.append((p, tuple(q.prefix for q in body),
                           shortcut.prefix if shortcut else None, residual))
            # a residual block's body[0] is the master of the next block's consumers
            master = body[0].prefix if residual else None
            channels = outp
    layers.append(LayerSpec("classifier.0", "fc", channels, num_classes))
    layers = _link(layers, blocks)
    return Arch(name, "resnet", tuple(layers), tuple(blocks), blocks[-1][1][-1])


def _mobilenet_v2(width, num_classes, signed_input):
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1],
               [6, 160, 3, 2], [6, 320, 1, 1]]
    channels = _ch(32, width)
    layers = [LayerSpec("head.0", "conv", 3, channels, 3, 2, 1, signed=signed_input, head=True)]
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
            body = [LayerSpec(f"{p}.body.{j}", "conv", *sp, signed=signed if j == 0 else False,
                           master=master if j == 0 else None) for j, sp in enumerate(specs)]
            residual = stride == 1 and channels == outp
            layers += body
            blocks.append((p, tuple(q.prefix for q in body), None, residual))
            master = body[0].prefix if residual else None
            channels = outp
    tail = _ch(1280, width)
    layers.append(LayerSpec("tail.0", "conv", channels, tail, 1, 1, 0, signed=True, master=master))
    layers.append(LayerSpec("classifier.0", "fc", tail, num_classes))
    layers = _link(layers, blocks)
    return Arch("mobilenet_v2", "mobilenet_v2", tuple(layers), tuple(blocks), "tail.0")


def _mobilenet_v1(width, num_classes, signed_input):
    setting = [[64, 1, 1], [128, 2, 2], [256, 2, 2], [512, 6, 2], [1024, 2, 2]]
    channels = _ch(32, width)
    layers = [LayerSpec("head.0", "conv", 3, channels, 3, 2, 1, signed=signed_input, head=True)]
    blocks = []
    for si, (c, n, s) in enumerate(setting):
        outp = _ch(c, width)
        for i in range(n):
            p = f"stage_{si}_layer_{i}"
            body = [LayerSpec(f"{p}.body.0", "conv", channels, channels, 3, s if i == 0 else 1, 1,
                           groups=channels),
                    LayerSpec(f"{p}.body.1", "conv", channels, outp, 1, 1, 0)]
            layers += body
            blocks.append((p, tuple(q.prefix for q in body), None, False))
            channels = outp
    layers.append(LayerSpec("classifier.0", "fc", channels, num_classes))
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
    return [replace(q, following=nxt.get(q.prefix)) for q in layers]


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
    cfg = resolve_config(config)
    return ARCHS[arch](width, num_classes, cfg.normalize)


def resolve_config(config) -> F8NetConfig:
    if isinstance(config, F8NetConfig):
        return config
    if config not in CONFIGS:
        raise InputError(f"unknown F8Net config {config!r}; expected one of {', '.join(CONFIGS)}")
    return CONFIGS[config]


class _ConvBN(nn.Module):
    def __init__(self, q: LayerSpec):
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
