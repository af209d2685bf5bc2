"""How each op of the layer graph carries its fixed-point format: the one rule that every plan
source applies (calibration, QAT, F8Net checkpoints), and the facts around it.

A tensor's format is ``(fl, eta)``: ``real = eta * T / 2**fl``, with ``fl`` per channel (axis
1) and ``eta`` the stream's scale (F8Net's clipping level, folded into the producing layers).
Layers (conv2d, dense) decide their own formats; every other op's output format follows from its
inputs' by :data:`RULES`, one entry per op, each saying why:

==================  =========================================================================
op                  output format
==================  =========================================================================
relu, max_pool2d    the input's (a clamp at 0 and a max keep every value's scale)
clip (ReLU6)        the input's; the bound ``hi`` becomes ``clip_hi = round(hi * 2**fl / eta)``
add                 ``fl = max(fl_a, fl_b)`` per channel (the other operand is shifted left
                    to it, exactly); eta: the stream's, which both operands share
global_avg_pool     ``fl + k``, ``k = round(log2(H*W))``: the int32 sum over H*W pixels read at
                    ``2**k``; the rest ``2**k / (H*W)`` goes into eta (PTQ, QAT), or, for
                    F8Net's official model, into the next layer's weights (eta unchanged)
reshape             per-channel fl carried to the new channel axis: unchanged when the channel
                    count is, repeated per pixel for an NCHW -> (N, C*H*W) flatten, or broadcast
                    when every channel has the same fl; any other reshape cannot carry it
==================  =========================================================================

Tensors joined by adds and by scale-preserving ops (:data:`STREAM_OPS`) must share eta: they
form a *residual stream* (:func:`streams`).

This rule is the default.  Where its program could pass int32, :mod:`f8tvm.core.bounds` lowers
an add's ``fl`` (the operand above it is rounded right) or rounds a pool's inputs right first
(the plan's ``pool_shift``), after every plan source has decided.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from f8tvm.core.errors import F8TVMError
from f8tvm.core.fixedpoint import INT32_MAX, pool_shift

# ops whose output shares eta with its inputs: a stream is joined through them
STREAM_OPS = ("add", "relu", "clip", "max_pool2d", "reshape")
LAYER_OPS = ("conv2d", "dense")


# ----------------------------------------------------------------------------- FL ranges
def act_fl_range(signed: bool, strict: bool = True) -> tuple[int, int]:
    """The fractional lengths an 8-bit activation may take: F8Net's ``0 .. 8 - s`` (``strict``)
    or a wider range, which costs nothing at run time (only shift amounts change)."""
    return (0, 8 - int(signed)) if strict else (-8, 20)


def weight_fl_range(strict: bool = True) -> tuple[int, int]:
    """The fractional lengths an int8 weight may take: F8Net's ``0 .. 7`` or a wider range."""
    return (0, 7) if strict else (-8, 24)


# ----------------------------------------------------------------------------- sign
def nonnegative(graph) -> dict:
    """``{tensor name: True where it is >= 0 by construction}``: after a ReLU or clip, and
    through pools, reshapes and adds of such.  Such a tensor is quantized unsigned (F8Net's
    ``s = 0``: one more bit of precision).  The network input is not (its sign is the
    data's, which the plan source decides)."""
    nn_ = {}
    for n in graph.nodes:
        if n.op == "input":
            nn_[n.name] = False
        elif n.op in ("relu", "clip"):
            nn_[n.name] = True
        elif n.op in ("max_pool2d", "global_avg_pool", "reshape"):
            nn_[n.name] = nn_[n.inputs[0]]
        elif n.op == "add":
            nn_[n.name] = all(nn_[i] for i in n.inputs)
        else:
            nn_[n.name] = False
    return nn_


# ----------------------------------------------------------------------------- streams
def streams(graph) -> dict:
    """``{tensor name: stream root}``: the union-find of tensors that must share eta."""
    parent = {n.name: n.name for n in graph.nodes}

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for n in graph.nodes:
        if n.op in STREAM_OPS:
            for i in n.inputs:
                ra, rb = find(n.name), find(i)
                if ra != rb:
                    parent[rb] = ra
    return {n.name: find(n.name) for n in graph.nodes}


def stream_index(graph) -> dict:
    """``{tensor name: stream number}``, streams numbered in the order of their first tensor."""
    roots = streams(graph)
    index: dict = {}
    for n in graph.nodes:
        index.setdefault(roots[n.name], len(index))
    return {name: index[root] for name, root in roots.items()}


# ----------------------------------------------------------------------------- the rule
@dataclass(frozen=True)
class Format:
    """An op's output format: ``fl`` per channel, ``eta``, and for a clip its integer bound."""

    fl: np.ndarray
    eta: float
    clip_hi: np.ndarray | None = None


def clip_int(hi: float, fl, eta: float) -> np.ndarray:
    """The integer bound of a clip at format ``(fl, eta)``: ``round(hi * 2**fl / eta)`` per
    channel, within ``[0, INT32_MAX]``."""
    v = np.round(hi * np.exp2(np.asarray(fl, np.float64)) / eta)
    return np.clip(v, 0, INT32_MAX).astype(np.int64)


def pool_eta(eta_in: float, hw: int) -> float:
    """eta after a global average pool over ``hw`` pixels whose sum is read at ``2**k``,
    ``k = round(log2(hw))``: ``eta_in * 2**k / hw`` (evaluated in that order)."""
    return eta_in * 2.0 ** pool_shift(hw) / hw


def _same(n, graph, fl, eta, opts):
    src = n.inputs[0]
    return Format(fl[src], eta[src])


def _clip(n, graph, fl, eta, opts):
    src = n.inputs[0]
    return Format(fl[src], eta[src], clip_int(n.attrs["hi"], fl[src], eta[src]))


def _add(n, graph, fl, eta, opts):
    a, b = n.inputs
    return Format(np.maximum(fl[a], fl[b]), eta[a])


def _global_avg_pool(n, graph, fl, eta, opts):
    src = n.inputs[0]
    hw = int(np.prod(graph[src].shape[2:]))
    k = pool_shift(hw) if opts["pool_k"] is None else opts["pool_k"]
    return Format(fl[src] + k, pool_eta(eta[src], hw) if opts["pool_factor_in_eta"] else eta[src])


def reshape_channels(src_shape, out_shape) -> np.ndarray | None:
    """For each channel of a reshape's output, the input channel it comes from: the same when
    the channel count is kept, each channel repeated per pixel for an NCHW -> (N, C*H*W)
    flatten; None for any other reshape (only a per-tensor value can cross it)."""
    if len(out_shape) >= 2 and out_shape[1] == src_shape[1]:
        return np.arange(src_shape[1])
    if len(src_shape) == 4 and len(out_shape) == 2:
        return np.repeat(np.arange(src_shape[1]), int(np.prod(src_shape[2:])))
    return None


def _reshape(n, graph, fl, eta, opts):
    src = n.inputs[0]
    f = fl[src]
    index = reshape_channels(graph[src].shape, n.shape)
    if index is not None:
        out = f[index]
    elif np.all(f == f[0]):
        out = np.full(n.shape[1] if len(n.shape) > 1 else 1, f[0], np.int64)
    else:
        raise F8TVMError(f"reshape {n.source or n.name}: cannot carry per-channel formats")
    return Format(out, eta[src])


# op -> rule(node, graph, fl, eta, options) -> Format
RULES = {
    "relu": _same,
    "max_pool2d": _same,
    "clip": _clip,
    "add": _add,
    "global_avg_pool": _global_avg_pool,
    "reshape": _reshape,
}


def propagate(node, graph, fl: dict, eta: dict, *, pool_k: int | None = None,
              pool_factor_in_eta: bool = True) -> Format:
    """The output format of a non-layer ``node`` from its inputs' ``fl``/``eta`` (dicts by
    tensor name).  ``pool_k`` overrides a global average pool's ``k`` (F8Net's official
    model always shifts by ``round(log2(7*7))``); ``pool_factor_in_eta=False`` leaves the pool's
    ``2**k / (H*W)`` out of eta, for a plan source that folds it into the next layer."""
    rule = RULES.get(node.op)
    if rule is None:
        raise F8TVMError(f"op {node.op} ({node.source or node.name}) has no fixed-point format "
                         f"rule; supported: {', '.join([*LAYER_OPS, *RULES])}")
    return rule(node, graph, fl, eta, dict(pool_k=pool_k, pool_factor_in_eta=pool_factor_in_eta))
