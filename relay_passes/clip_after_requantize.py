"""ClipAfterRequantize: apply an activation's clip after the requantize that reads it, exactly.

A ReLU / ReLU6 layer of the integer program (``quantize_to_integer``) ends in an int32 clip, and
the next layer requantizes that to 8 bits and clips again::

    t = minimum(maximum(x, a), b)             # ReLU6 (ReLU: maximum only), per channel
    q = astype(clip(RQ(t), lo, hi))           # RQ: rounding shift, ties to even (monotone)

``RQ`` is monotone non-decreasing, so ``RQ(clip(x, a, b)) == clip(RQ(x), RQ(a), RQ(b))``, and the
two clips merge into one on the 8-bit side::

    q = astype(clip(minimum(maximum(RQ(x), L), H), lo, hi))
    L = max(lo, RQ(a)),  H = min(hi, RQ(b))   # per channel, computed here in NumPy

where ``maximum`` / ``minimum`` are left out when ``L == lo`` / ``H == hi`` for every channel (for
ReLU ``RQ(0) == 0``; for ReLU6 whenever 6.0 is past the 8-bit range).  The scalar ``clip(lo, hi)``
before the cast is what a vector ISA does for free (x86's saturating packs), so the requantize
epilogue of every ReLU layer loses one or two vector ops per output vector.

Exactness needs ``RQ(x)`` computed on the *unclipped* ``x`` not to overflow int32: the pass bounds
``|x|`` per channel through the program (a conv's bound is ``sum |W| * max |input|`` plus its
bias, see :func:`value_bounds`) and leaves a requantize alone when it cannot prove that, or when a
channel's merged interval would be empty.  Other readers of ``t`` (a residual) keep reading it.
The rewrite neither adds nor removes a multiplication.
"""

from __future__ import annotations

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import (
    bindings,
    channel_shape,
    expr_dtype,
    int_const,
    is_call,
    rebuild,
    with_main,
)
from f8tvm.core.fixedpoint import rq_reference

from .quantize_to_integer import (
    emit_rounding_shift,
    match_rounding_right_shift,
    rounding_constants,
)

R = relax.op
_INT32_MAX = 2**31 - 1


def _const(e):
    """The int64 value of a Relax constant (tensor, or a scalar operand), else None."""
    if _tvm.is_const(e):
        return _tvm.const_value(e).astype(np.int64)
    v = int_const(e)
    return np.int64(v) if v is not None else None


_EIGHT_BIT = {"int8": 128, "uint8": 255}


def value_bounds(func) -> dict:
    """An upper bound of ``|value|`` for the int32 tensors of ``func`` that it can bound: Var ->
    int64 array broadcastable to the tensor (per channel where the bound is).  Follows the ops of
    the integer program: 8-bit inputs, conv2d / matmul with constant weights (``sum |W|`` over a
    filter times the input's bound), add, subtract, maximum, minimum, clip, shifts, bitwise and,
    astype, max pooling; anything else is unbounded (absent)."""
    bound: dict = {}
    for p in func.params:
        if expr_dtype(p) in _EIGHT_BIT:
            bound[p] = np.int64(_EIGHT_BIT[expr_dtype(p)])

    def of(e):
        c = _const(e)
        if c is not None:
            return np.abs(c)
        return bound.get(e)

    for b in bindings(func):
        v = b.value
        if not isinstance(v, relax.Call) or not hasattr(v.op, "name"):
            continue
        op, args = v.op.name, v.args
        ins = [of(a) for a in args]
        out = None
        if op == "relax.astype":
            dt = expr_dtype(b.var)  # a cast to 8 bits holds 8 bits, whatever it casts
            out = np.int64(_EIGHT_BIT[dt]) if dt in _EIGHT_BIT else ins[0]
        elif op in ("relax.nn.conv2d", "relax.matmul") and ins[0] is not None \
                and _tvm.is_const(args[1]):
            w = np.abs(_tvm.const_value(args[1]).astype(np.int64))
            peak = np.max(ins[0])
            if op == "relax.nn.conv2d" and str(v.attrs.kernel_layout) == "OIHW":
                out = peak * w.sum(axis=(1, 2, 3)).reshape(1, -1, 1, 1)
            elif op == "relax.matmul" and w.ndim == 2:
                out = peak * w.sum(axis=0).reshape(1, -1)
        elif op in ("relax.add", "relax.subtract") and all(i is not None for i in ins):
            out = ins[0] + ins[1]
        elif op in ("relax.maximum", "relax.minimum") and all(i is not None for i in ins):
            out = np.maximum(ins[0], ins[1])
        elif op in ("relax.clip", "relax.nn.max_pool2d") and ins[0] is not None:
            out = ins[0]
        elif op == "relax.right_shift" and ins[0] is not None:
            out = ins[0]  # |x >> s| <= |x| for s >= 0 (floor: -1 >> s == -1)
        elif op == "relax.left_shift" and all(i is not None for i in ins):
            out = ins[0] << ins[1]
        elif op == "relax.bitwise_and" and ins[1] is not None:
            out = ins[1]  # and with a non-negative constant mask
        if out is not None:
            bound[b.var] = np.asarray(out, np.int64)
    return bound


def _match_requantize(clip, producers):
    """``clip(RQ(t), lo, hi)`` -> ``(t, shift)`` (``shift`` as :func:`emit_rounding_shift` takes
    it: > 0 right, < 0 left, per channel), or None for any other shape."""
    e = clip.args[0]
    right = left = np.int64(0)
    m = match_rounding_right_shift(producers.get(e), producers)
    if m is not None:
        e, right = m
    lsh = producers.get(e)
    if is_call(lsh, "relax.left_shift") and _const(lsh.args[1]) is not None:
        e, left = lsh.args[0], _const(lsh.args[1])
    if e.same_as(clip.args[0]):  # no shift at all: not a requantize
        return None
    return e, right - left


def _activation_clip(t, producers):
    """``t = minimum(maximum(x, a), b)`` / ``maximum(x, a)`` / ``clip(x, a, b)`` with constant
    bounds -> ``(x, a, b)`` (``b`` None when there is no upper bound), else None."""
    v = producers.get(t)
    if is_call(v, "relax.clip"):
        a, b = (_const(c) for c in v.args[1:])
        return (v.args[0], a, b) if a is not None and b is not None else None
    hi = None
    if is_call(v, "relax.minimum") and _const(v.args[1]) is not None:
        hi = _const(v.args[1])
        v = producers.get(v.args[0])
    if is_call(v, "relax.maximum") and _const(v.args[1]) is not None:
        return v.args[0], _const(v.args[1]), hi
    return None


def _rewrite_function(func, stats):
    producers = {b.var: b.value for b in bindings(func)}
    bounds = value_bounds(func)
    plans = {}  # clip var -> (x, shift, L, H)
    for b in bindings(func):
        if not is_call(b.value, "relax.clip"):
            continue
        rq = _match_requantize(b.value, producers)
        act = rq and _activation_clip(rq[0], producers)
        if not act:
            continue
        (_, s), (x, a, hi_c) = rq, act
        bx = bounds.get(x)
        if bx is None:
            stats["unbounded"] += 1
            continue
        # RQ on the unclipped x: (x << l) + c + 1 must stay inside int32
        rounding, _ = rounding_constants(np.maximum(s, 0))
        peak = (bx << np.maximum(-s, 0)) + rounding + 1
        if np.any(peak > _INT32_MAX):
            stats["unbounded"] += 1
            continue
        lo, hi = (int(_const(c)) for c in b.value.args[1:])
        low = np.maximum(lo, _rq(a, s))
        high = np.minimum(hi, _rq(hi_c, s)) if hi_c is not None else np.int64(hi)
        low, high = np.broadcast_arrays(low, high)
        if np.any(low > high):
            stats["empty"] += 1
            continue
        plans[b.var] = (x, s, low, high)

    def handler(b, env, bb):
        plan = plans.get(b.var)
        if plan is None:
            return None
        x, s, low, high = plan
        lo, hi = b.value.args[1:]
        name = _tvm.var_name(b.var)
        base = name[:-len("_clip")] if name.endswith("_clip") else name
        t = emit_rounding_shift(bb, env.get(x, x), s, base)
        if np.any(low != _const(lo)):
            t = bb.emit(R.maximum(t, _bound_const(low, b.var)), f"{base}_lo")
        if np.any(high != _const(hi)):
            t = bb.emit(R.minimum(t, _bound_const(high, b.var)), f"{base}_hi")
        stats["moved"] += 1
        return bb.emit(R.clip(t, lo, hi), name)

    if not plans:
        return func
    return relax.analysis.remove_all_unused(rebuild(func, handler))


def _rq(v, shift):
    """RQ of constants, unclamped (broadcast against the per-channel shift)."""
    v, shift = np.broadcast_arrays(np.asarray(v, np.int64), np.asarray(shift, np.int64))
    return rq_reference(v, shift, clamp=False)


def _bound_const(v, like):
    """A per-channel bound, as a (1, C, 1, 1) / (1, C) tensor even when it is uniform: a scalar
    bound next to the scalar ``clip(lo, hi)`` folds into one clamp that no saturating pack
    implements, while a tensor bound stays a single ``minimum`` and leaves ``clip(lo, hi)`` to
    the pack (one vector op less per output vector on x86)."""
    channels = channel_shape([int(d) for d in _tvm.tensor_shape(like)])
    return relax.const(np.broadcast_to(np.asarray(v, np.int64), channels).astype("int32"))


def clip_after_requantize(mod, stats: dict | None = None):
    """:class:`ClipAfterRequantize` on ``mod``'s ``main``; ``stats`` (a dict) receives the
    counts ``moved`` (requantizes rewritten), ``unbounded`` (left: overflow not excluded) and
    ``empty`` (left: a channel's merged interval is empty)."""
    counts = dict(moved=0, unbounded=0, empty=0)
    main = _rewrite_function(mod["main"], counts)
    if stats is not None:
        stats.update(counts)
    return with_main(mod, main)


@tvm.transform.module_pass(opt_level=0, name="ClipAfterRequantize")
def ClipAfterRequantize(mod, ctx):  # noqa: N802  (pass names are PascalCase, as in TVM)
    """Rewrite ``main`` so that every provably safe activation clip is applied after the
    requantize that reads it (see the module doc)."""
    return clip_after_requantize(mod)
