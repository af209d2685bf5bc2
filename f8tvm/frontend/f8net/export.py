"""What the official integer-only export computes for each layer of a checkpoint (in float32
torch operations, in its order, so every rounding comes out the same): integer weights and
bias, fractional lengths and eta; and the float module's weights in F8Net's stored units."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from f8tvm.core import formats
from f8tvm.core.fixedpoint import STD_C_SIGNED, qrange

from .architectures import BN_EPS, Arch, F8NetConfig

_F24 = 2**24  # float32 holds every integer below this exactly


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
class ExportedLayer:
    in_fl: int
    signed: bool
    w_fl: int
    w_int: np.ndarray
    b_int: np.ndarray
    eta_in: float
    eta_out: float
    w_float: torch.Tensor  # the layer in F8Net's stored units (real / eta), before the pool fold
    b_float: torch.Tensor


def export_layers(sd: dict, arch: Arch, cfg: F8NetConfig, pool_scale: dict, fc_scale: float):
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
        out[q.prefix] = ExportedLayer(fl_in, q.signed, fl_w,
                                  w_int.numpy().astype(np.int8), b_int.double().numpy()
                                  .astype(np.int64).astype(np.int32), float(e_in),
                                  float(e_next.reshape(-1)[0]), w_float, b_float)
    return out


def float_state_dict(arch: Arch, exported: dict) -> dict:
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


def maxpool_exact(e: ExportedLayer) -> bool:
    """The official ResNet max-pools the head's int32 output in float32: exact below 2**24.

    A static bound on the head accumulator tells whether the integer max-pool f8tvm emits
    is guaranteed to agree.
    """
    w = np.abs(e.w_int.astype(np.int64)).reshape(e.w_int.shape[0], -1).sum(1)
    top = qrange(e.signed)[1]
    return bool(np.all(w * top + np.abs(e.b_int.astype(np.int64)) < _F24))
