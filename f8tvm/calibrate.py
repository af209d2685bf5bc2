"""Calibration: run the float layer graph on calibration batches and decide a FixedPointPlan.

F8Net's rules (``../F8NET_SPEC`` §1b-1c, reimplemented): activation FL from the standard
deviation, weight FL from the std of the effective weight, a clipping level per activation folded
as ``eta = 2**FL * alpha / (2**(8-s) - 1)`` into the producing layer's weights and bias, with one
clipping level shared along every residual stream.  Post-training, error-minimizing choices are
offered beside the std rule (see :data:`f8tvm.core.plan.SCHEMES`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from f8tvm.core import formats
from f8tvm.core.errors import CalibrationWarning, F8TVMError, InputError
from f8tvm.core.fixedpoint import (
    INT32_MAX,
    fix_quant,
    mse_fraclen,
    qrange,
    std_fraclen,
    weight_fraclen,
)
from f8tvm.core.graph import Graph
from f8tvm.core.plan import SCHEMES, FixedPointPlan, LayerPlan, Scheme

MAX_SHIFT = 30
_SAMPLES = 20000  # values kept per quantization point for error-based choices


# ----------------------------------------------------------------------------- float execution
def run_float(graph: Graph, x, keep=None):
    """Execute the float graph with torch (float32); returns {node name: tensor} for ``keep``."""
    env = {graph.input: torch.as_tensor(np.asarray(x, np.float32))}
    consumers = graph.consumers()
    remaining = {k: len(v) for k, v in consumers.items()}
    out = {}
    keep = set(keep or ())
    with torch.no_grad():
        for n in graph.nodes[1:]:
            args = [env[i] for i in n.inputs]
            env[n.name] = _float_op(n, args, torch, F)
            for i in n.inputs:
                remaining[i] -= 1
                if remaining[i] == 0 and i != graph.output:
                    if i in keep:
                        out[i] = env[i]
                    del env[i]
    for k in keep:
        if k in env:
            out[k] = env[k]
    out[graph.output] = env[graph.output]
    return out


def _float_op(n, args, torch, F):
    a = n.attrs
    if n.op == "conv2d":
        x = args[0]
        p = a["padding"]
        if p[0] != p[2] or p[1] != p[3]:
            x = F.pad(x, (p[1], p[3], p[0], p[2]))
            p = [0, 0]
        return F.conv2d(x, torch.from_numpy(n.weight), torch.from_numpy(n.bias),
                        a["strides"], p[:2], a["dilation"], a["groups"])
    if n.op == "dense":
        return F.linear(args[0], torch.from_numpy(n.weight), torch.from_numpy(n.bias))
    if n.op == "add":
        return args[0] + args[1]
    if n.op == "relu":
        return torch.relu(args[0])
    if n.op == "clip":
        return torch.clamp(args[0], a["lo"], a["hi"])
    if n.op == "max_pool2d":
        p = a["padding"]
        x = F.pad(args[0], (p[1], p[3], p[0], p[2]), value=-float("inf"))
        return F.max_pool2d(x, a["pool_size"], a["strides"], 0, a["dilation"])
    if n.op == "global_avg_pool":
        return args[0].mean(dim=(2, 3), keepdim=True)
    if n.op == "reshape":
        return args[0].reshape(args[0].shape[0], *a["shape"][1:])
    raise F8TVMError(f"no float semantics for op {n.op}")


# ----------------------------------------------------------------------------- statistics
class _Stats:
    """Running std (unbiased) and a bounded random sample of one tensor's values."""

    def __init__(self, rng):
        self.n, self.s, self.ss, self.min = 0, 0.0, 0.0, np.inf
        self.samples, self.rng = [], rng

    def add(self, t):
        v = np.asarray(t, np.float64).ravel()
        self.n += v.size
        self.s += float(v.sum())
        self.ss += float((v * v).sum())
        self.min = min(self.min, float(v.min()))
        take = min(v.size, _SAMPLES)
        self.samples.append(self.rng.choice(v, take, replace=False) if take < v.size else v)

    @property
    def std(self):
        mean = self.s / self.n
        return np.sqrt(max(self.ss / self.n - mean * mean, 0.0) * self.n / max(self.n - 1, 1))

    def sample(self):
        v = np.concatenate(self.samples)
        return v if v.size <= 4 * _SAMPLES else self.rng.choice(v, 4 * _SAMPLES, replace=False)


def collect_stats(graph: Graph, batches, progress=None) -> dict:
    """Statistics of every tensor that feeds a layer (and of the input), over ``batches``."""
    quant_points = {n.inputs[0] for n in graph.layers()} | {graph.input}
    rng = np.random.default_rng(0)
    stats = {k: _Stats(rng) for k in quant_points}
    for x in batches:
        x = np.asarray(x, np.float32)
        if tuple(x.shape[1:]) != tuple(graph[graph.input].shape[1:]):
            raise InputError(f"calibration batch has shape {x.shape}, the model expects "
                             f"{graph[graph.input].shape}")
        vals = run_float(graph, x, keep=quant_points)
        stats[graph.input].add(x)
        for k in sorted(quant_points - {graph.input}):  # a fixed order: the sampling rng is shared
            stats[k].add(vals[k].numpy())
        if progress:
            progress()
    return stats


# ----------------------------------------------------------------------------- planning
def plan_fixed_point(graph: Graph, stats: dict, scheme: str | Scheme = "mse") -> FixedPointPlan:
    """Decide every fractional length, clipping level (eta) and integer weight."""
    sch = SCHEMES[scheme] if isinstance(scheme, str) else scheme
    nonneg = formats.nonnegative(graph)
    stream_of = formats.streams(graph)
    input_signed = bool(stats[graph.input].min < 0)  # raw [0, 1] inputs stay unsigned

    def act_range(signed):
        return formats.act_fl_range(signed, sch.strict)

    w_lo, w_hi = formats.weight_fl_range(sch.strict)

    def choose_fl(name, signed, eta):
        st = stats[name]
        lo, hi = act_range(signed)
        if sch.act_fl == "std":
            return int(std_fraclen(st.std / eta, signed, lo, hi))
        y = st.sample() / eta
        return mse_fraclen(y, signed, _fl_candidates(y, signed, lo, hi))[0]

    # ---- eta per stream, in topological order of the streams' first tensors
    eta: dict = {}
    stream_eta: dict = {}
    info_streams = []
    input_fl = choose_fl(graph.input, input_signed, 1.0)
    layer_of_input = {}
    for n in graph.layers():
        layer_of_input.setdefault(n.inputs[0], []).append(n)
    members: dict = {}
    for n in graph.nodes:
        members.setdefault(stream_of[n.name], []).append(n.name)
    fl: dict = {}
    layers: dict = {}
    clip_hi: dict = {}

    for n in graph.nodes:
        root = stream_of[n.name]
        if root not in stream_eta:
            names = members[root]
            if graph.input in names or graph.output in names:
                e = 1.0
            elif n.op == "global_avg_pool":
                e = formats.pool_eta(eta[n.inputs[0]], int(np.prod(graph[n.inputs[0]].shape[2:])))
            elif sch.clip == "mse":
                e = _search_eta(names, layer_of_input, stats, nonneg, act_range)
            else:
                e = 1.0
            stream_eta[root] = e
            info_streams.append(dict(stream=root, tensors=len(names), eta=e))
        eta[n.name] = stream_eta[root]

        # ---- formats, in topological order (inputs already decided)
        if n.op == "input":
            fl[n.name] = np.full(n.shape[1], input_fl, np.int64)
        elif n.is_layer:
            src = n.inputs[0]
            signed = not nonneg[src]
            in_fl = input_fl if src == graph.input else choose_fl(src, signed, eta[src])
            if src == graph.input:
                signed = input_signed
            w_eff = n.weight.astype(np.float64) * eta[src] / eta[n.name]
            per_channel = sch.per_channel and n.name != graph.output
            w_fl = weight_fraclen(w_eff, sch.weight_fl, per_channel, w_lo, w_hi)
            # The int32 bias shares the accumulator's FL: cap w_fl so |b_int| < 2**29 (tiny
            # weights beside a large bias, e.g. a near-dead BN channel, would overflow).
            b_abs = np.abs(n.bias.astype(np.float64) / eta[n.name])
            cap = np.floor(np.log2(2.0**29 / np.maximum(b_abs, 1e-30))).astype(np.int64) - in_fl
            cap = cap if per_channel else np.full_like(cap, cap.min())
            w_fl = np.minimum(w_fl, np.maximum(cap, w_lo))
            bshape = (-1,) + (1,) * (w_eff.ndim - 1)
            w_int = fix_quant(w_eff, w_fl.reshape(bshape), True).astype(np.int8)
            b_int = np.clip(np.round(n.bias.astype(np.float64) / eta[n.name]
                                     * np.exp2(in_fl + w_fl)), -INT32_MAX, INT32_MAX)
            layers[n.name] = LayerPlan(n.name, int(in_fl), bool(signed), w_fl, w_int,
                                       b_int.astype(np.int32), eta[src], eta[n.name])
            fl[n.name] = in_fl + w_fl
            shift = fl[src] - in_fl
            if np.abs(shift).max() > MAX_SHIFT:
                raise F8TVMError(f"layer {n.source or n.name}: requantize shift "
                                 f"{int(np.abs(shift).max())} is out of range (at most "
                                 f"{MAX_SHIFT}): {_why_degenerate(graph, n, stats)}")
        elif n.op != "input":  # every other op: the one per-op rule (its eta is the stream's)
            f = formats.propagate(n, graph, fl, eta)
            fl[n.name] = f.fl
            if f.clip_hi is not None:
                clip_hi[n.name] = f.clip_hi
    saturated = _saturation(graph, stats, layers, input_fl, input_signed, eta)
    plan = FixedPointPlan(sch.name, int(input_fl), input_signed, fl, eta, layers, clip_hi,
                          info=dict(streams=info_streams, saturated=saturated))
    zero = _zero_layers(graph)
    if zero:
        warnings.warn(f"{len(zero)} layer(s) have all-zero weights and bias "
                      f"({', '.join(zero[:3])}{', ...' if len(zero) > 3 else ''}): the values "
                      f"after them are constant; were the trained weights loaded?",
                      CalibrationWarning, stacklevel=2)
    if saturated:
        worst = ", ".join(f"{s['tensor']} {s['fraction']:.0%}" for s in saturated[:3])
        warnings.warn(
            f"calibration: {len(saturated)} quantized tensor(s) saturate on more than "
            f"{SATURATION_WARN:.0%} of the calibration values ({worst}): the scheme's FL range "
            f"({sch.name}: activations {act_range(True)[0]}..{act_range(False)[1]}) cannot hold "
            f"them, so the results will be poor; check the weights and the input scale",
            CalibrationWarning, stacklevel=2)
    return plan


SATURATION_WARN = 0.10  # warn when more than this share of a tensor's values saturate


def _saturation(graph, stats, layers, input_fl, input_signed, eta) -> list[dict]:
    """The quantized tensors (a layer's input at its FL) where more than
    :data:`SATURATION_WARN` of the calibration values fall outside the 8-bit range, worst
    first."""
    points = {graph.input: (input_fl, input_signed, 1.0)}
    for n in graph.layers():
        lp = layers[n.name]
        points.setdefault(n.inputs[0], (lp.in_fl, lp.in_signed, eta[n.inputs[0]]))
    out = []
    for name, (in_fl, signed, e) in points.items():
        y = stats[name].sample() / e * 2.0**in_fl
        lo, hi = qrange(signed)
        frac = float(np.mean((y > hi + 0.5) | (y < lo - 0.5))) if y.size else 0.0
        if frac > SATURATION_WARN:
            out.append(dict(tensor=graph[name].source or name, fraction=round(frac, 4)))
    return sorted(out, key=lambda s: -s["fraction"])


def _zero_layers(graph) -> list[str]:
    return [n.source or n.name for n in graph.layers()
            if not np.any(n.weight) and not np.any(n.bias)]


def _why_degenerate(graph, node, stats) -> str:
    """Why a layer's input has no sensible format: zero weights upstream, or constant data."""
    zero = _zero_layers(graph)
    if zero:
        return (f"{len(zero)} layer(s) have all-zero weights and bias ({', '.join(zero[:3])}), "
                f"so the values after them are constant; load the trained weights")
    st = stats.get(node.inputs[0])
    if st is not None and st.std == 0:
        return ("its input is constant on every calibration value; calibrate on real or "
                "random inputs, not constant ones")
    return ("its input's range on the calibration data is far from its accumulator's; the "
            "weights or the calibration data may be degenerate (values over 2**20 or under "
            "2**-20)")


def _fl_candidates(y, signed, lo, hi):
    """FLs worth trying on samples ``y``: from the one that just fits the largest magnitude
    (no clipping) up to 5 more bits (clipping the tail for resolution)."""
    top = float(np.abs(y).max()) or 1.0
    guess = int(np.clip(np.floor(np.log2(qrange(signed)[1] / top)), lo, hi))
    return range(max(lo, guess - 1), min(hi, guess + 5) + 1)


def _search_eta(names, layer_of_input, stats, nonneg, act_range) -> float:
    """The eta mantissa (in [1, 2)) with the least total relative quantization error.

    Every consumer of the stream then picks its own FL for that eta: the clipping level is
    shared along the stream, the FLs stay private, as in F8Net.
    """
    points = [t for t in names if t in layer_of_input and t in stats]
    if not points:
        return 1.0
    samples = [(stats[t].sample(), not nonneg[t]) for t in points]
    best, best_err = 1.0, np.inf
    for m in 1.0 + np.arange(32) / 32.0:
        total = 0.0
        for y, signed in samples:
            yv = y / m
            lo, hi = act_range(signed)
            _, err = mse_fraclen(yv, signed, _fl_candidates(yv, signed, lo, hi))
            total += err * m * m / max(float(np.mean(y * y)), 1e-30)
        if total < best_err:
            best, best_err = float(m), total
    return best


def calibrate(graph: Graph, batches, scheme="mse", progress=None) -> FixedPointPlan:
    """Collect statistics on ``batches`` (arrays N x C x H x W) and return the plan."""
    stats = collect_stats(graph, batches, progress)
    return plan_fixed_point(graph, stats, scheme)


def calibration_batches(calib, example_input) -> list:
    """Calibration data as float32 NumPy batches: ``calib``'s items (arrays, tensors, or
    ``(input, label)`` pairs), or the example input alone when ``calib`` is None.

    Raises :class:`InputError` naming the problem: no batches, a batch whose shape is not the
    example input's (but for the batch size), or one holding NaN or infinity."""
    want = tuple(np.shape(example_input))[1:]
    out = []
    for i, b in enumerate([example_input] if calib is None else calib):
        if isinstance(b, (tuple, list)):
            b = b[0]
        if isinstance(b, torch.Tensor):
            b = b.detach().cpu().numpy()
        try:
            b = np.asarray(b, np.float32)
        except (TypeError, ValueError) as err:
            raise InputError(f"calibration batch {i} is not an array of numbers ({err})") from None
        if b.ndim != len(want) + 1 or tuple(b.shape[1:]) != want:
            raise InputError(f"calibration batch {i} has shape {tuple(b.shape)}; the model's "
                             f"input is N x {' x '.join(map(str, want))}")
        bad = int(np.size(b) - np.count_nonzero(np.isfinite(b)))
        if bad:
            raise InputError(f"calibration batch {i} holds {bad} NaN or infinite value(s)")
        out.append(b)
    if not out:
        raise InputError("no calibration data: calib is empty (pass batches of inputs, or "
                         "calib=None to calibrate on the example input alone)")
    return out


@dataclass
class Calibration:
    """The plan source of post-training quantization: statistics of ``model``'s float graph on
    ``calib`` (default: the example input alone), formats by ``scheme``."""

    model: object
    example_input: object
    calib: object = None
    scheme: str | Scheme = "mse"

    def __post_init__(self):
        # checked here, before the build starts: a bad batch is an error in seconds
        self.batches = calibration_batches(self.calib, self.example_input)

    def plan_for(self, graph: Graph, progress=None) -> FixedPointPlan:
        batches = self.batches
        done = [0]

        def tick():
            done[0] += 1
            if progress is not None:
                progress("calibrate", done[0], len(batches))

        return plan_fixed_point(graph, collect_stats(graph, batches, tick), self.scheme)

    def metadata(self) -> dict:
        return {}
