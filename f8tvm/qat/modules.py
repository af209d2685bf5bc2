"""The fake-quant modules :func:`f8tvm.qat.prepare` swaps in, and their configuration: the
fixed-point quantizer with F8Net's straight-through gradient, the per-stream clipping levels,
and the conv/dense, clip and average-pool modules."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from f8tvm.core import formats
from f8tvm.core.fixedpoint import INT32_MAX, STD_C_SIGNED, STD_C_UNSIGNED, qrange


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
