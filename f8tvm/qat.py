"""F8Net quantization-aware training in PyTorch, exported as a :class:`FixedPointPlan`.

:func:`prepare` swaps fixed-point fake-quant modules into a float model (a copy by default):

* every ``Conv2d`` (with the ``BatchNorm2d`` that follows it) and ``Linear`` becomes a
  :class:`QLayer` that quantizes **its own input** (8-bit, unsigned after ReLU-like ops, signed
  otherwise) and its BN-folded, eta-scaled weight;
* every ``ReLU6``-like module becomes a :class:`QClip`, every ``AdaptiveAvgPool2d(1)`` a
  :class:`QAvgPool` (sum and ``2**-k``, ``k = round(log2(H*W))``; the rest lives in eta);
* additions, ReLU, max-pooling and reshapes stay the model's own code.

The F8Net method (``F8NET_SPEC`` §1), as f8tvm applies it to any graph:

* Activation FL from the standard deviation (``floor(log2(C / std))``, ``C = 70`` unsigned,
  ``40`` signed, unbiased std).  Training quantizes with the batch FL and keeps an EMA of it in a
  buffer (momentum 0.1, initial 6); evaluation uses ``clamp(round_half_even(buffer))``.
* Weight FL from the std of the effective weight (``C = 40``), recomputed on every forward, per
  layer (F8Net's default) or per output channel.
* PACT: one learnable clipping level ``alpha`` per activation stream, **shared by every consumer
  of a residual stream**.  It is folded as ``eta = 2**FL_m * |alpha| / (2**(8-s) - 1)`` (``FL_m``
  the rounded buffer of the stream's first consumer) into the producers' weights and bias, so
  tensors hold ``real / eta``.  f8tvm keeps one eta per stream (as its calibration does) rather
  than F8Net's one per consumer: residual adds then combine operands of one scale, and a consumer
  whose private FL differs from the master's clips at ``alpha * 2**(FL - FL_m)``.  Gradients
  reach alpha through the folding and the straight-through quantizer (masked to the unclipped
  range), which is PACT's gradient.
* BatchNorm folded with batch statistics by the double forward: a first convolution of the
  (eta-scaled) quantized input with the float weight updates the running statistics and gives
  the batch mean and biased variance used in the fold; evaluation folds the running statistics.
  ``freeze_bn`` folds the running statistics in training too (useful for tiny fine-tuning).
* ``W_eff = gamma / sigma * W * eta_in / eta_out``, ``b_eff = (beta + gamma * (b - mu) / sigma)
  / eta_out``; the network's input and its logits have ``eta = 1``.

In evaluation mode a :class:`QLayer` computes in float64 from exactly the integers it exports
(``w_int * 2**-w_fl``, ``b_int * 2**-(FL_in + w_fl)``, inputs rounded half to even and
clamped), so the prepared model's eval forward *is* the fake-quant semantics of the exported plan:
the compiled integer module returns its logits times ``2**FL`` bit for bit.
F8Net's classifier weight rescale (``rescale_forward``) is not applied: training starts from
float checkpoints whose classifier was trained without it.

:func:`save` writes a trained model as a self-describing checkpoint, :func:`load` rebuilds it
without calibration data, and ``python -m f8tvm.build --model NAME --qat-checkpoint PATH``
compiles it.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import tempfile
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from f8tvm.core import __version__, formats
from f8tvm.core.errors import F8TVMError, InputError
from f8tvm.core.fixedpoint import INT32_MAX, STD_C_SIGNED, STD_C_UNSIGNED, pool_shift, qrange
from f8tvm.core.plan import FixedPointPlan, LayerPlan
from f8tvm.frontend.torch_import import float_graph

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "TRAIN_REGIMES", "LayerExport",
           "QATCheckpoint", "QATConfig", "QAvgPool", "QClip", "QLayer", "TrainConfig",
           "QATSource", "evaluate", "fake_quant", "load", "plan_for", "prepare",
           "read_checkpoint", "save", "source", "std_fl", "to_float", "train"]

# alpha / sigma in the middle of the band where F8Net's std rule keeps the FL fixed
# (unsigned [3.64, 7.29), signed [3.18, 6.35)): the fallback when no samples were seen
_ALPHA_BAND = {False: 5.15, True: 4.49}


@dataclass(frozen=True)
class QATConfig:
    """How :func:`prepare` quantizes.

    Attributes
    ----------
    per_channel : bool
        Weight FL per output channel (F8Net's option) instead of per layer (its default).
    strict : bool
        F8Net's FL ranges (activations 0..8-s, weights 0..7); otherwise wider ranges
        (activations -8..20, weights -8..24), which cost nothing at run time.
    input_fl : int or None
        Fixed FL of the network input (e.g. 8 for ``pixel / 256``, F8Net's raw-pixel input);
        None: the std rule with an EMA buffer, like every other activation.
    momentum : float
        EMA momentum of the FL buffers.
    init_fl : float
        Initial value of the FL buffers.
    alpha : 'calibrate' or float
        Initial clipping levels: per stream, the level with the least quantization error on the
        calibration batches among those the std rule keeps stable (``alpha / sigma`` within
        its band), or a constant (F8Net: 8.0).
    freeze_bn : bool
        Fold the running BN statistics in training too (no double forward, no updates).
    """

    per_channel: bool = False
    strict: bool = True
    input_fl: int | None = None
    momentum: float = 0.1
    init_fl: float = 6.0
    alpha: str | float = "calibrate"
    freeze_bn: bool = False

    def act_range(self, signed: bool) -> tuple[int, int]:
        return formats.act_fl_range(signed, self.strict)

    def weight_range(self) -> tuple[int, int]:
        return formats.weight_fl_range(self.strict)


# ----------------------------------------------------------------------------- quantizers
def fake_quant(x, fl, signed: bool):
    """``clamp(round_half_even(x * 2**fl)) * 2**-fl`` with F8Net's straight-through gradient:
    passed where the value is inside the range, zero where it is clamped."""
    lo, hi = qrange(signed)
    scale = torch.exp2(torch.as_tensor(fl, dtype=x.dtype, device=x.device))
    r = torch.round(x * scale)
    q = torch.clamp(r, lo, hi) / scale
    if not x.requires_grad:
        return q
    mask = (r.abs() < hi) if signed else ((r > 0) & (r < hi))
    mask = mask.to(x.dtype)
    return q.detach() + x * mask - (x * mask).detach()


def std_fl(std, signed: bool, lo: int, hi: int):
    """F8Net's rule ``clamp(floor(log2(C / std)), lo, hi)`` as a float tensor."""
    c = STD_C_SIGNED if signed else STD_C_UNSIGNED
    return torch.clamp(torch.floor(torch.log2(c / torch.clamp(std, min=1e-30))), lo, hi)


def _round_fl(buffer, lo, hi) -> int:
    """Eval-time FL: the EMA buffer rounded half to even, clamped."""
    return int(torch.clamp(torch.round(buffer.detach().double().reshape(-1)[:1]), lo, hi))


# ----------------------------------------------------------------------------- streams
class _Streams(nn.Module):
    """The activation streams of a prepared model and their scale eta.

    A stream is a set of tensors that must share eta (joined by adds, ReLUs, clips, max-pools,
    reshapes).  Kinds: ``one`` (the network input and output: eta = 1), ``alpha`` (a learnable
    PACT clipping level; eta from the master consumer's FL) and ``derived`` (across a global
    average pool: another stream's eta times a constant).
    """

    def __init__(self, kinds, masters, derived, signed, init_alpha):
        super().__init__()
        self.kinds = list(kinds)
        self.masters = list(masters)  # stream -> name of the master QLayer (alpha streams)
        self.derived = list(derived)  # stream -> (source stream, factor) for derived streams
        self.signed = list(signed)
        self.alphas = nn.ParameterList(
            [nn.Parameter(torch.tensor(float(a))) for a in init_alpha])
        self.alpha_index = {}
        k = 0
        for i, kind in enumerate(self.kinds):
            if kind == "alpha":
                self.alpha_index[i] = k
                k += 1
        self._layers = {}  # name -> QLayer, set by prepare (not submodules)

    def alpha(self, s):
        return self.alphas[self.alpha_index[s]]

    def eta(self, s) -> torch.Tensor:
        """eta of stream ``s`` as a float64 scalar tensor (differentiable in alpha)."""
        kind = self.kinds[s]
        if kind == "one":
            return torch.ones((), dtype=torch.float64)
        if kind == "derived":
            src, factor = self.derived[s]
            return self.eta(src) * factor
        master = self._layers[self.masters[s]]
        signed = self.signed[s]
        fl = master.eval_fl()
        return (2.0**fl) * self.alpha(s).abs().double() / qrange(signed)[1]


# ----------------------------------------------------------------------------- modules
@dataclass
class LayerExport:
    """One layer's integers and formats, as exported into the plan."""

    in_fl: int
    signed: bool
    w_fl: np.ndarray
    w_int: np.ndarray
    b_int: np.ndarray
    eta_in: float
    eta_out: float

    @property
    def acc_fl(self) -> np.ndarray:
        return self.in_fl + self.w_fl


class QLayer(nn.Module):
    """A conv2d (with its BatchNorm folded in) or dense layer with F8Net fixed-point
    quantization of its input and weight (see the module docstring)."""

    def __init__(self, name, inner, bn, node, in_stream, out_stream, signed, cfg: QATConfig,
                 fixed_fl=None, streams=None):
        super().__init__()
        self.name, self.inner, self.bn = name, inner, bn
        self.bn_path = None  # where the BatchNorm sat in the float model
        self.kind = node.op
        self.attrs = dict(node.attrs)
        self.in_stream, self.out_stream, self.signed = in_stream, out_stream, bool(signed)
        self.cfg, self.fixed_fl = cfg, fixed_fl
        self.register_buffer("input_fraclen", torch.tensor([float(cfg.init_fl)]))
        self._ctx = [streams]  # a list, so the shared streams are not a submodule of each layer

    @property
    def streams(self) -> _Streams:
        return self._ctx[0]

    def eval_fl(self) -> int:
        if self.fixed_fl is not None:
            return int(self.fixed_fl)
        return _round_fl(self.input_fraclen, *self.cfg.act_range(self.signed))

    def _op(self, x, w, b):
        if self.kind == "dense":
            return F.linear(x, w, b)
        a = self.attrs
        pt, pl, pb, pr = a["padding"]
        if any((pt, pl, pb, pr)):
            x = F.pad(x, (pl, pr, pt, pb))
        return F.conv2d(x, w, b, a["strides"], 0, a["dilation"], a["groups"])

    def _weight_fl(self, w_eff, b_eff, in_fl):
        """F8Net's std rule on the effective weight, capped so that the int32 bias stays
        below 2**29 at the accumulator's FL (as f8tvm's calibration caps it)."""
        lo, hi = self.cfg.weight_range()
        w = w_eff.detach()
        cout = w.shape[0]
        if self.cfg.per_channel and self.kind == "conv2d":
            std = w.reshape(cout, -1).std(dim=1) if w[0].numel() > 1 else w.reshape(cout).abs()
        else:
            std = w.std().expand(cout)
        fl = std_fl(std, True, lo, hi)
        b_abs = b_eff.detach().abs().clamp(min=1e-30)
        cap = torch.floor(torch.log2(2.0**29 / b_abs)) - in_fl
        if not (self.cfg.per_channel and self.kind == "conv2d"):
            cap = cap.min().expand(cout)
        return torch.minimum(fl, torch.clamp(cap, min=lo))

    def _fold(self, w, b0, mu, sigma, eta_in, eta_out):
        if self.bn is not None:
            scale = self.bn.weight / sigma
            w = w * scale.reshape((-1,) + (1,) * (w.dim() - 1))
            b0 = self.bn.bias + (b0 - mu) * scale
        return w * (eta_in / eta_out), b0 / eta_out

    def forward(self, x):
        if not self.training:
            return self._eval_forward(x)
        lo, hi = self.cfg.act_range(self.signed)
        if self.fixed_fl is not None:
            fl = torch.tensor(float(self.fixed_fl))
        else:
            with torch.no_grad():
                fl = std_fl(x.detach().float().std(), self.signed, lo, hi)
                m = self.cfg.momentum
                self.input_fraclen.mul_(1 - m).add_(m * fl)
        q = fake_quant(x, fl, self.signed)
        eta_in = self.streams.eta(self.in_stream).to(x.dtype)
        eta_out = self.streams.eta(self.out_stream).to(x.dtype)
        w = self.inner.weight
        b0 = self.inner.bias
        if b0 is None:
            b0 = torch.zeros(w.shape[0], dtype=w.dtype)
        mu = sigma = None
        if self.bn is not None:
            if self.cfg.freeze_bn:
                mu, sigma = self.bn.running_mean, torch.sqrt(self.bn.running_var + self.bn.eps)
            else:  # the double forward: batch statistics of the float conv, running stats kept
                y0 = self._op(eta_in * q, w, b0)
                self.bn(y0)
                mu = y0.mean(dim=(0, 2, 3))
                sigma = torch.sqrt(y0.var(dim=(0, 2, 3), unbiased=False) + self.bn.eps)
        w_eff, b_eff = self._fold(w, b0, mu, sigma, eta_in, eta_out)
        w_fl = self._weight_fl(w_eff, b_eff, fl)
        wq = fake_quant(w_eff, w_fl.reshape((-1,) + (1,) * (w.dim() - 1)), True)
        return self._op(q, wq, b_eff)

    @torch.no_grad()
    def export(self) -> LayerExport:
        """The layer's integers at evaluation (running BN statistics, rounded FL buffers),
        computed in float64."""
        in_fl = self.eval_fl()
        eta_in = self.streams.eta(self.in_stream).detach()
        eta_out = self.streams.eta(self.out_stream).detach()
        w = self.inner.weight.detach().double()
        b0 = (self.inner.bias.detach().double() if self.inner.bias is not None
              else torch.zeros(w.shape[0], dtype=torch.float64))
        mu = sigma = None
        if self.bn is not None:
            mu = self.bn.running_mean.double()
            sigma = torch.sqrt(self.bn.running_var.double() + self.bn.eps)
        bn = self.bn
        if bn is not None:
            scale = bn.weight.detach().double() / sigma
            w = w * scale.reshape((-1,) + (1,) * (w.dim() - 1))
            b0 = bn.bias.detach().double() + (b0 - mu) * scale
        w_eff, b_eff = w * (eta_in / eta_out), b0 / eta_out
        w_fl = self._weight_fl(w_eff, b_eff, in_fl).to(torch.int64)
        wshape = (-1,) + (1,) * (w.dim() - 1)
        w_int = torch.clamp(torch.round(w_eff * torch.exp2(w_fl.double()).reshape(wshape)),
                            *qrange(True))
        b_int = torch.clamp(torch.round(b_eff * torch.exp2((in_fl + w_fl).double())),
                            -INT32_MAX, INT32_MAX)
        return LayerExport(in_fl, self.signed, w_fl.numpy().astype(np.int64),
                           w_int.numpy().astype(np.int8), b_int.numpy().astype(np.int32),
                           float(eta_in), float(eta_out))

    def _eval_forward(self, x):
        e = self.export()
        x = x.double()
        lo, hi = qrange(self.signed)
        q = torch.clamp(torch.round(x * 2.0**e.in_fl), lo, hi) * 2.0**-e.in_fl
        wshape = (-1,) + (1,) * (e.w_int.ndim - 1)
        w = torch.from_numpy(e.w_int.astype(np.float64) * np.exp2(-e.w_fl).reshape(wshape))
        b = torch.from_numpy(e.b_int.astype(np.float64) * np.exp2(-e.acc_fl))
        return self._op(q, w, b)

    def extra_repr(self) -> str:
        return (f"{self.name}: {self.kind}, in_stream={self.in_stream}, "
                f"out_stream={self.out_stream}, signed={self.signed}, fixed_fl={self.fixed_fl}")


class QClip(nn.Module):
    """``clamp(y, 0, hi)`` on stored values (``real / eta``); in evaluation, at the integer bound
    of the plan (``round(hi * 2**f / eta)`` at the producing layer's accumulator FL ``f``)."""

    def __init__(self, hi, stream, producer, original, streams):
        super().__init__()
        self.hi, self.stream, self.producer = float(hi), stream, producer
        self.original = original
        self._ctx = [streams]

    def forward(self, y):
        streams = self._ctx[0]
        if self.training:
            bound = self.hi / streams.eta(self.stream).to(y.dtype)
            return torch.minimum(torch.relu(y), bound)
        layer = streams._layers[self.producer]
        e = layer.export()
        hi = formats.clip_int(self.hi, e.acc_fl, float(streams.eta(self.stream))) \
            * np.exp2(-e.acc_fl)
        bound = torch.from_numpy(hi).reshape((1, -1) + (1,) * (y.dim() - 2))
        return torch.minimum(torch.relu(y.double()), bound)


class QAvgPool(nn.Module):
    """Global average pool as the integer program does it: the sum times ``2**-k``,
    ``k = round(log2(H*W))``; the factor ``2**k / (H*W)`` lives in eta."""

    def __init__(self, k, original):
        super().__init__()
        self.k, self.original = int(k), original

    def forward(self, x):
        return x.sum(dim=(2, 3), keepdim=True) * 2.0**-self.k


# ----------------------------------------------------------------------------- prepare
def _graph_of(model, example_input):
    return float_graph(model, example_input)[2]


def _module_name(node) -> str:
    return node.source.split(" (", 1)[0]


def _pair_batchnorms(model, example_input) -> dict:
    """conv module name -> the BatchNorm2d module name that directly consumes its output."""
    out_of, pairs, hooks = {}, {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: out_of.__setitem__(id(out), name)))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: pairs.__setitem__(
                    out_of.get(id(inp[0])), name)))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    pairs.pop(None, None)
    return pairs


def _input_samples(model, names, batches, keep=20000) -> dict:
    """Unbiased std and a seeded random sample of the real input of each named module."""
    acc = {k: [0, 0.0, 0.0, []] for k in names}
    rng = np.random.default_rng(0)
    hooks = []
    for name, m in model.named_modules():
        if name in acc:
            def hook(mod, inp, name=name):
                v = inp[0].detach().double().reshape(-1)
                a = acc[name]
                a[0] += v.numel()
                a[1] += float(v.sum())
                a[2] += float((v * v).sum())
                v = v.numpy()
                a[3].append(rng.choice(v, keep, replace=False) if v.size > keep else v)
            hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for x in batches:
                model(torch.as_tensor(np.asarray(x, np.float32)))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for k, (n, s, ss, samples) in acc.items():
        if n > 1:
            mean = s / n
            out[k] = (math.sqrt(max(ss / n - mean * mean, 0.0) * n / (n - 1)),
                      np.concatenate(samples))
    return out


def _band_alpha(std: float, samples: np.ndarray, signed: bool) -> float:
    """The clipping level with the least quantization error among those F8Net's std rule can
    hold (``alpha / sigma`` inside the band where the FL has a fixed point; outside it the FL
    drifts until the effective clipping level is back inside)."""
    top = qrange(signed)[1]
    c_std = STD_C_SIGNED if signed else STD_C_UNSIGNED
    lo_c, hi_c = top / c_std, 2 * top / c_std
    best, best_err = _ALPHA_BAND[signed] * std, np.inf
    for c in np.geomspace(lo_c * 1.001, hi_c * 0.999, 24):
        a = c * std
        step = a / top
        q = np.clip(np.round(samples / step), -top if signed else 0, top) * step
        err = float(np.mean((q - samples) ** 2))
        if err < best_err:
            best, best_err = a, err
    return float(best)


# graph op -> the module types QAT swaps for it (functional forms cannot be swapped)
_SWAPPED = {"conv2d": nn.Conv2d, "dense": nn.Linear, "clip": (nn.ReLU6, nn.Hardtanh),
            "global_avg_pool": (nn.AdaptiveAvgPool2d,)}


def prepare(model: nn.Module, example_input, config: QATConfig | None = None, calib=None,
            inplace: bool = False, input_signed: bool | None = None) -> nn.Module:
    """Swap F8Net fixed-point fake-quant modules into a float model.

    Parameters
    ----------
    model : torch.nn.Module
        A float CNN that :func:`f8tvm.compile` accepts; ReLU6-like clips and the global average
        pool must be modules (``nn.ReLU6``, ``nn.AdaptiveAvgPool2d(1)``), not functional calls.
    example_input : torch.Tensor
        Float32 input of the shape the model will be compiled for.
    config : QATConfig, optional
    calib : iterable of arrays, optional
        Batches used to initialise the clipping levels (``config.alpha == 'calibrate'``) and
        to decide whether the input is signed; defaults to ``example_input``.
    inplace : bool
        Modify ``model`` instead of a deep copy.
    input_signed : bool, optional
        Whether the network input is quantized as signed 8-bit; None: signed when ``calib``
        holds a negative value.  The signedness shapes the modules but is no parameter or
        buffer: a model rebuilt from a checkpoint (on a zero input, which would say unsigned)
        must be given the saved one.

    Returns
    -------
    torch.nn.Module
        The prepared model, in training mode.  ``model.f8_streams`` holds the clipping levels.

    Raises
    ------
    F8TVMError
        The model uses a construct QAT cannot map onto its modules (named in the message).
    """
    cfg = config or QATConfig()
    example_input = torch.as_tensor(example_input, dtype=torch.float32)
    calib = [np.asarray(b, np.float32) for b in (calib or [example_input.numpy()])]
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    from .calibrate import nonnegative

    graph = _graph_of(model, example_input)
    bn_of = _pair_batchnorms(model, example_input)
    stream_of = formats.stream_index(graph)
    nonneg = nonnegative(graph)
    consumers = graph.consumers()
    if input_signed is None:
        input_signed = min(float(b.min()) for b in calib) < 0
    input_signed = bool(input_signed)
    n_streams = max(stream_of.values()) + 1

    # ---- streams: kind, master consumer, signedness
    first_consumer = {}  # stream -> first layer node consuming one of its tensors
    for n in graph.layers():
        first_consumer.setdefault(stream_of[n.inputs[0]], n)
    kinds, masters, derived, signed = ["one"] * n_streams, [None] * n_streams, \
        [None] * n_streams, [False] * n_streams
    fixed = {stream_of[graph.input], stream_of[graph.output]}
    pools = [n for n in graph.nodes if n.op == "global_avg_pool"]
    for s in range(n_streams):
        if s in fixed or s not in first_consumer:
            continue
        src = first_consumer[s].inputs[0]
        kinds[s], masters[s] = "alpha", _module_name(first_consumer[s])
        signed[s] = not nonneg[src]
    for p in pools:  # the pooled stream and its source differ by 2**k / HW
        hw = int(np.prod(graph[p.inputs[0]].shape[2:]))
        f = 2.0 ** pool_shift(hw) / hw
        a, b = stream_of[p.inputs[0]], stream_of[p.name]
        if kinds[a] == "one" and a not in fixed and kinds[b] == "alpha":
            kinds[a], derived[a] = "derived", (b, 1.0 / f)  # F8Net: the classifier's alpha
        elif b not in fixed:
            kinds[b], derived[b], masters[b] = "derived", (a, f), None
    if cfg.alpha == "calibrate":
        names = [masters[s] for s in range(n_streams) if kinds[s] == "alpha"]
        seen_inputs = _input_samples(model, names, calib)
    init_alpha = []
    for s in range(n_streams):
        if kinds[s] != "alpha":
            continue
        if cfg.alpha == "calibrate" and masters[s] in seen_inputs:
            std, samples = seen_inputs[masters[s]]
            init_alpha.append(_band_alpha(max(std, 1e-6), samples, signed[s]))
        else:
            init_alpha.append(float(8.0 if cfg.alpha == "calibrate" else cfg.alpha))
    streams = _Streams(kinds, masters, derived, signed, init_alpha)

    # ---- swap the modules
    layers, seen = {}, set()
    for n in graph.nodes:
        name = _module_name(n)
        if n.op in _SWAPPED:
            try:
                mod = model.get_submodule(name) if name else None
            except AttributeError:
                mod = None
            if not isinstance(mod, _SWAPPED[n.op]):
                raise F8TVMError(f"QAT: the {n.op} {n.name} ({n.source or 'top level'}) is a "
                                 "functional call or an unexpected module; write it as a module "
                                 "(nn.Conv2d, nn.Linear, nn.ReLU6, nn.AdaptiveAvgPool2d) so it "
                                 "can be swapped")
            if name in seen:
                raise F8TVMError(f"QAT: module {name} is used twice; give each use its own module")
            seen.add(name)
        if n.is_layer:
            inner = model.get_submodule(name)
            if type(inner) is nn.Conv2d and n.op == "conv2d":
                p = inner.padding
                if isinstance(p, str) or list(n.attrs["padding"]) != [p[0], p[1], p[0], p[1]]:
                    raise F8TVMError(f"QAT: {name} is padded outside its module; pad inside it")
            bn = None
            if name in bn_of:
                bn = model.get_submodule(bn_of[name])
                model.set_submodule(bn_of[name], nn.Identity())  # folded into the QLayer
            src = n.inputs[0]
            is_input = src == graph.input
            sgn = input_signed if is_input else not nonneg[src]
            fixed_fl = cfg.input_fl if is_input else None
            q = QLayer(name, inner, bn, n, stream_of[src], stream_of[n.name], sgn, cfg,
                       fixed_fl, streams)
            if is_input and fixed_fl is None and len(consumers[graph.input]) > 1:
                raise F8TVMError("QAT: the input feeds several layers; set QATConfig.input_fl")
            q.bn_path = bn_of.get(name)
            model.set_submodule(name, q)
            layers[name] = q
        elif n.op == "clip":
            prod = graph[n.inputs[0]]
            if not prod.is_layer:
                raise F8TVMError(f"QAT: clip {name} must follow a conv/dense layer directly")
            model.set_submodule(name, QClip(n.attrs["hi"], stream_of[n.name], _module_name(prod),
                                            model.get_submodule(name), streams))
        elif n.op == "global_avg_pool":
            hw = int(np.prod(graph[n.inputs[0]].shape[2:]))
            model.set_submodule(name, QAvgPool(pool_shift(hw), model.get_submodule(name)))
    streams._layers = layers
    model.add_module("f8_streams", streams)
    model.f8_qat = {"config": cfg, "input_signed": input_signed,
                    "input_shape": tuple(example_input.shape),
                    "output_shape": tuple(graph[graph.output].shape)}
    return model.train()


# ----------------------------------------------------------------------------- export
def to_float(qmodel: nn.Module) -> nn.Module:
    """The float model with the prepared model's weights (original modules back in place):
    the network :func:`f8tvm.compile` imports for the graph the plan is keyed by."""
    m = copy.deepcopy(qmodel)
    swaps = []
    for name, mod in m.named_modules():
        if isinstance(mod, QLayer):
            swaps.append((name, mod.inner))
            if mod.bn is not None:
                swaps.append((mod.bn_path, mod.bn))
        elif isinstance(mod, (QClip, QAvgPool)):
            swaps.append((name, mod.original))
    for name, mod in swaps:
        m.set_submodule(name, mod)
    del m.f8_streams
    del m.f8_qat
    return m.eval()


def plan_for(qmodel: nn.Module):
    """A callable ``graph -> FixedPointPlan`` for :func:`f8tvm.compile`: the prepared model's
    evaluation-mode integers, keyed by the graph of :func:`to_float` (matched by module name)."""

    def build(graph) -> FixedPointPlan:
        streams = qmodel.f8_streams
        layers = streams._layers
        fl, eta, lps, clip_hi = {}, {}, {}, {}
        input_fl = None
        for n in graph.nodes:
            if n.op == "input":
                continue
            src = n.inputs[0]
            name = _module_name(n)
            if n.is_layer:
                if name not in layers:
                    raise F8TVMError(f"QAT plan: graph layer {n.name} ({n.source}) has no "
                                     "prepared layer")
                e = layers[name].export()
                if src == graph.input:
                    if input_fl is not None and input_fl != e.in_fl:
                        raise F8TVMError("QAT plan: input consumers disagree on the input FL")
                    input_fl = e.in_fl
                lps[n.name] = LayerPlan(n.name, e.in_fl, e.signed, e.w_fl, e.w_int, e.b_int,
                                        e.eta_in, e.eta_out)
                fl[n.name] = e.acc_fl
                eta[n.name] = e.eta_out
                continue
            if src == graph.input:
                raise F8TVMError(f"QAT plan: {n.op} directly on the input is not supported")
            f = formats.propagate(n, graph, fl, eta)  # the one per-op rule
            fl[n.name], eta[n.name] = f.fl, f.eta
            if f.clip_hi is not None:
                clip_hi[n.name] = f.clip_hi
        info = qmodel.f8_qat
        fl[graph.input] = np.full(graph[graph.input].shape[1], input_fl, np.int64)
        eta[graph.input] = 1.0
        return FixedPointPlan("qat", int(input_fl), bool(info["input_signed"]), fl, eta, lps,
                              clip_hi, info={"qat": {
                                  "per_channel": info["config"].per_channel,
                                  "strict": info["config"].strict}})

    return build


@dataclass
class QATSource:
    """A trained (prepared) model as a plan source for :func:`f8tvm.compile`: the float module
    of :func:`to_float` under :func:`plan_for`.  Its integer output equals the eval-mode model's
    output times 2**FL."""

    qmodel: nn.Module
    model: nn.Module
    example_input: torch.Tensor

    def plan_for(self, graph, progress=None) -> FixedPointPlan:
        return plan_for(self.qmodel)(graph)

    def metadata(self) -> dict:
        return {"qat": {"per_channel": self.qmodel.f8_qat["config"].per_channel}}


def source(qmodel: nn.Module, example_input=None) -> QATSource:
    """The plan source of a prepared (trained) model: ``f8tvm.compile(qat.source(q),
    target=...)`` compiles it (at ``example_input``'s shape, default the training input's)."""
    if example_input is None:
        example_input = torch.zeros(qmodel.f8_qat["input_shape"])
    qmodel.eval()
    return QATSource(qmodel, to_float(qmodel), example_input)


# ----------------------------------------------------------------------------- checkpoints
CHECKPOINT_FORMAT = "f8tvm-qat"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class QATCheckpoint:
    """The contents of a QAT checkpoint (see :func:`save`), validated by
    :func:`read_checkpoint`."""

    path: str
    version: int
    model_name: str | None
    config: QATConfig
    input_shape: tuple
    input_signed: bool
    output_shape: tuple
    state_dict: dict = field(repr=False)


def _prepared_info(qmodel) -> dict:
    info = getattr(qmodel, "f8_qat", None)
    if not isinstance(info, dict) or not hasattr(qmodel, "f8_streams"):
        raise F8TVMError("not a prepared QAT model (make one with f8tvm.qat.prepare)")
    return info


def _zoo_model(name: str, num_classes: int, origin: str) -> nn.Module:
    """A zoo architecture with random weights (they are overwritten); ``origin`` says who
    asked, for the message."""
    from .models import MODELS, get_model

    if name not in MODELS:
        raise F8TVMError(f"{origin}: model {name!r} is not in the model zoo ({', '.join(MODELS)});"
                         " load it with qat.load(path, model=<the float model>)")
    return get_model(name, pretrained=False, num_classes=num_classes)[0]


def _check_zoo_architecture(qmodel, name: str, info: dict) -> None:
    """Refuse to record a zoo name the model does not have: the checkpoint would save fine and
    fail only when :func:`load` or the build CLI rebuilds the model from that name."""
    from .models import _load_strict

    zoo = _zoo_model(name, int(info["output_shape"][1]), "qat.save")
    try:
        _load_strict(zoo, to_float(qmodel).state_dict(), origin="the QAT model")
    except ValueError as err:
        raise F8TVMError(f"qat.save: the model is not the zoo's {name}: {err}") from err


def save(qmodel: nn.Module, path, model_name: str | None = None) -> str:
    """Write a self-describing QAT checkpoint: everything :func:`load` needs to rebuild the
    prepared model without calibration data.

    The file (``torch.save`` of plain dicts, lists and tensors, readable with
    ``weights_only=True``) holds the prepared model's state_dict (weights, BN statistics, FL
    EMA buffers, clipping levels), the :class:`QATConfig`, the input shape and signedness, the
    output shape, the zoo model name and a format version.  It is written to a temporary file
    beside ``path`` and renamed, so ``path`` is either the old file or the complete new one.
    Optimizer state is not saved: the checkpoint is for export (or fine-tuning afresh).

    Parameters
    ----------
    qmodel : torch.nn.Module
        From :func:`prepare` (trained or not) or :func:`load`.
    path : str or os.PathLike
    model_name : str, optional
        The model-zoo name of the architecture (:func:`f8tvm.models.available_models`), which
        lets ``python -m f8tvm.build --qat-checkpoint`` and ``load(path)`` rebuild it; checked
        against the model.  Defaults to the name of the checkpoint ``qmodel`` was loaded from.

    Returns
    -------
    str
        The absolute path written.

    Raises
    ------
    F8TVMError
        ``qmodel`` is not prepared, or ``model_name`` is unknown or another architecture.
    """
    info = _prepared_info(qmodel)
    model_name = model_name if model_name is not None else info.get("model_name")
    if model_name is not None:
        _check_zoo_architecture(qmodel, model_name, info)
    ck = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
          "f8tvm_version": __version__, "model_name": model_name,
          "config": asdict(info["config"]), "input_shape": list(info["input_shape"]),
          "input_signed": bool(info["input_signed"]),
          "output_shape": list(info["output_shape"]),
          "state_dict": {k: v.detach().cpu().clone() for k, v in qmodel.state_dict().items()}}
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".f8tvm-qat-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ck, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _shape(value, what: str, path: str) -> tuple:
    if not (isinstance(value, (list, tuple)) and value and all(type(v) is int for v in value)):
        raise F8TVMError(f"QAT checkpoint {path}: {what} {value!r} is not a shape")
    return tuple(value)


def read_checkpoint(path) -> QATCheckpoint:
    """Read and validate a checkpoint written by :func:`save` (no model is built).

    Raises
    ------
    F8TVMError
        Missing file, unreadable or not a QAT checkpoint, unsupported format version, or a
        malformed field (each named in the message).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise F8TVMError(f"QAT checkpoint not found: {path}")
    try:  # weights_only: never run code from a checkpoint
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupted or another kind of file
        raise F8TVMError(f"{path} is not a QAT checkpoint (torch.load cannot read it: "
                         f"{_first_line(err)})") from err
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        hint = ""
        if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
            hint = " (it looks like a plain state_dict: float weights go to --weights)"
        raise F8TVMError(f"{path} is not a QAT checkpoint: no '{CHECKPOINT_FORMAT}' format "
                         f"tag; write one with f8tvm.qat.save{hint}")
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        raise F8TVMError(f"QAT checkpoint {path}: format version {version!r} is not supported "
                         f"(this f8tvm reads version {CHECKPOINT_VERSION})")
    try:
        config = QATConfig(**obj["config"])
    except (KeyError, TypeError) as err:
        raise F8TVMError(f"QAT checkpoint {path}: bad config ({_first_line(err)})") from err
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise F8TVMError(f"QAT checkpoint {path}: no state_dict of tensors")
    name = obj.get("model_name")
    if name is not None and not isinstance(name, str):
        raise F8TVMError(f"QAT checkpoint {path}: model_name {name!r} is not a string")
    return QATCheckpoint(path, version, name, config,
                         _shape(obj.get("input_shape"), "input_shape", path),
                         bool(obj.get("input_signed")),
                         _shape(obj.get("output_shape"), "output_shape", path), sd)


def load(source, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a prepared model from a checkpoint written by :func:`save`.

    The architecture comes from the checkpoint's zoo model name, or from ``model`` (the float
    model, as given to :func:`prepare`; not modified).  :func:`prepare` runs on a zero input of
    the saved shape (no calibration data: the saved clipping levels replace the calibrated
    ones), then the saved state_dict is loaded strictly, so the evaluation-mode model (and its
    compiled module) equals the one that was saved.

    Parameters
    ----------
    source : str, os.PathLike or QATCheckpoint
        The checkpoint file, or what :func:`read_checkpoint` returned for it.
    model : torch.nn.Module, optional
        The float architecture; required when the checkpoint has no zoo model name.

    Returns
    -------
    torch.nn.Module
        The prepared model, in evaluation mode (:func:`train` switches it back).

    Raises
    ------
    F8TVMError
        What :func:`read_checkpoint` raises; no or an unknown zoo model name without
        ``model``; state_dict keys missing or unexpected, or of the wrong shape (named).
    """
    ck = source if isinstance(source, QATCheckpoint) else read_checkpoint(source)
    if model is None:
        if ck.model_name is None:
            raise F8TVMError(f"QAT checkpoint {ck.path} has no model-zoo name (saved without "
                             "model_name); load it with qat.load(path, model=<the float model>)")
        model = _zoo_model(ck.model_name, ck.output_shape[1], f"QAT checkpoint {ck.path}")
        inplace = True
    else:
        inplace = False
    x = torch.zeros(ck.input_shape)
    q = prepare(model, x, ck.config, calib=[x.numpy()], inplace=inplace,
                input_signed=ck.input_signed)
    from .models import _load_strict

    try:
        _load_strict(q, ck.state_dict, origin=f"QAT checkpoint {ck.path}")
    except ValueError as err:
        raise F8TVMError(str(err)) from err
    q.f8_qat["model_name"] = ck.model_name
    return q.eval()


# ----------------------------------------------------------------------------- training
@dataclass(frozen=True)
class TrainConfig:
    """A training regime (an entry of :data:`TRAIN_REGIMES`).

    Attributes
    ----------
    steps : int
        Optimizer steps.
    lr : float
        Peak learning rate (cosine decay to 0).
    optimizer : 'sgd' or 'adam'
    weight_decay : float
        On weights only (not on BN parameters, biases or clipping levels).
    temperature : float
        Distillation temperature when a teacher is given.
    """

    name: str
    steps: int
    lr: float
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    temperature: float = 1.0
    description: str = ""


TRAIN_REGIMES = {r.name: r for r in [
    TrainConfig("conventional", 2000, 0.01, "sgd", 1e-4, 1.0,
                "quantization-aware training from a float checkpoint on labelled data"),
    TrainConfig("tiny", 300, 1e-4, "adam", 0.0, 1.0,
                "tiny fine-tuning: a few hundred steps on a small (calibration) set, small lr, "
                "optionally distilled from the float model"),
]}


def _param_groups(model, wd):
    decay, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() > 1 and "f8_streams" not in name else other).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": other, "weight_decay": 0.0}]


def train(qmodel: nn.Module, batches, regime: str | TrainConfig = "conventional", teacher=None,
          steps: int | None = None, lr: float | None = None, log=None) -> list:
    """Train a prepared model.

    Parameters
    ----------
    qmodel : torch.nn.Module
        From :func:`prepare`.
    batches : iterable
        Yields ``(x, y)`` (labelled) or ``x`` (with a teacher); cycled until ``steps``.
    regime : str or TrainConfig
        ``conventional`` (labelled QAT from a float checkpoint) or ``tiny`` (fine-tuning).
    teacher : torch.nn.Module, optional
        Float model whose softened outputs are the targets (distillation); with labels too,
        the loss is the sum.
    steps, lr : optional
        Override the regime's.
    log : callable(step, loss), optional

    Returns
    -------
    list of float
        The loss of every step.
    """
    cfg = TRAIN_REGIMES[regime] if isinstance(regime, str) else regime
    steps = cfg.steps if steps is None else steps
    lr = cfg.lr if lr is None else lr
    groups = _param_groups(qmodel, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=lr)
    else:
        raise InputError(f"unknown optimizer {cfg.optimizer!r}")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / max(steps, 1))))
    if teacher is not None:
        teacher.eval()
    qmodel.train()
    losses, step, t = [], 0, cfg.temperature
    while step < steps:
        progressed = False
        for b in batches:
            progressed = True
            x, y = (b if isinstance(b, (tuple, list)) else (b, None))
            x = torch.as_tensor(x, dtype=torch.float32)
            out = qmodel(x).float()
            loss = out.new_zeros(())
            if y is not None:
                loss = loss + F.cross_entropy(out, torch.as_tensor(y, dtype=torch.long))
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(x) / t, dim=1)
                loss = loss + F.kl_div(F.log_softmax(out / t, dim=1), soft,
                                       reduction="batchmean") * t * t
            if y is None and teacher is None:
                raise InputError("unlabelled batches need a teacher")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if log is not None:
                log(step, losses[-1])
            step += 1
            if step >= steps:
                break
        if not progressed:
            raise InputError("no training batches")
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, batches) -> np.ndarray:
    """Logits of ``model`` in eval mode over ``batches`` (arrays or (x, y) pairs), stacked
    (float64 for a prepared model: exactly the compiled module's output times 2**-FL)."""
    model.eval()
    outs = []
    for b in batches:
        x = b[0] if isinstance(b, (tuple, list)) else b
        outs.append(model(torch.as_tensor(np.asarray(x), dtype=torch.float32)).numpy())
    return np.concatenate(outs)

