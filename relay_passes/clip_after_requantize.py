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

from f8tvm import _tvm
from f8tvm._tvm import relax, tvm
from f8tvm.fixedpoint import rq_reference

from ._bindings import bindings, rebuild

R = relax.op
_INT32_MAX = 2**31 - 1


def _is_call(v, op):
    return isinstance(v, relax.Call) and v.op.name == op


def _const(e):
    """The int64 value of a Relax constant (tensor or PrimValue), else None."""
    if _tvm.is_const(e):
        return _tvm.const_value(e).astype(np.int64)
    v = getattr(e, "value", None)
    v = getattr(v, "value", v)  # PrimValue -> IntImm -> int
    return np.int64(v) if isinstance(v, int) else None


def _dtype(e):
    ty = getattr(e, "ty", None)
    return str(ty.dtype) if isinstance(ty, _tvm.TensorType) else None


_EIGHT_BIT = {"int8": 128, "uint8": 255}


def value_bounds(func) -> dict:
    """An upper bound of ``|value|`` for the int32 tensors of ``func`` that it can bound: Var ->
    int64 array broadcastable to the tensor (per channel where the bound is).  Follows the ops of
    the integer program: 8-bit inputs, conv2d / matmul with constant weights (``sum |W|`` over a
    filter times the input's bound), add, subtract, maximum, minimum, clip, shifts, bitwise and,
    astype, max pooling; anything else is unbounded (absent)."""
    bound: dict = {}
    for p in func.params:
        if _dtype(p) in _EIGHT_BIT:
            bound[p] = np.int64(_EIGHT_BIT[_dtype(p)])

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
            dt = _dtype(b.var)  # a cast to 8 bits holds 8 bits, whatever it casts
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


class _Requantize:
    """A matched ``clip(RQ(t), lo, hi)``: ``t``, its left and right shifts (arrays, one of the two
    zero per channel), and how to emit ``RQ`` on another input."""

    def __init__(self, t, left, right, rounding, lo, hi):
        self.t, self.left, self.right, self.rounding = t, left, right, rounding
        self.lo, self.hi = lo, hi

    def shift(self):
        return self.right - self.left

    def emit(self, bb, x, name):
        """The requantize of ``x`` by the same shifts, as ``quantize_to_integer`` writes it."""
        if self.left_c is not None:
            x = bb.emit(R.left_shift(x, self.left_c), f"{name}_lsh")
        if self.right_c is not None:
            lsb = R.bitwise_and(R.right_shift(x, self.right_c), self.parity_c)
            x = bb.emit(R.right_shift(R.add(R.add(x, self.rounding_c), lsb), self.right_c),
                        f"{name}_rsh")
        return x


def _match_requantize(clip, producers):
    """``clip(RQ(t), lo, hi)`` -> :class:`_Requantize`, or None for any other shape."""
    lo, hi = (_const(a) for a in clip.args[1:])
    if lo is None or hi is None:
        return None
    e = clip.args[0]
    right_c = rounding_c = parity_c = left_c = None
    rsh = producers.get(e)
    if _is_call(rsh, "relax.right_shift"):  # ((t + c) + ((t >> r) & 1)) >> r
        summed, right_c = producers.get(rsh.args[0]), rsh.args[1]
        if not _is_call(summed, "relax.add"):
            return None
        first, lsb = (producers.get(a) for a in summed.args)
        if not (_is_call(first, "relax.add") and _is_call(lsb, "relax.bitwise_and")):
            return None
        inner = producers.get(lsb.args[0])
        if not (_is_call(inner, "relax.right_shift") and inner.args[0].same_as(first.args[0])
                and inner.args[1].same_as(right_c)):
            return None
        e, rounding_c, parity_c = first.args[0], first.args[1], lsb.args[1]
        if any(_const(c) is None for c in (right_c, rounding_c, parity_c)):
            return None
    lsh = producers.get(e)
    if _is_call(lsh, "relax.left_shift") and _const(lsh.args[1]) is not None:
        e, left_c = lsh.args[0], lsh.args[1]
    if right_c is None and left_c is None:
        return None
    zero = np.int64(0)
    rq = _Requantize(e, _const(left_c) if left_c is not None else zero,
                     _const(right_c) if right_c is not None else zero,
                     _const(rounding_c) if rounding_c is not None else zero, lo, hi)
    rq.left_c, rq.right_c, rq.rounding_c, rq.parity_c = left_c, right_c, rounding_c, parity_c
    if right_c is not None:  # exactly the ties-to-even trick; any other rounding is not ours
        right = np.asarray(rq.right)
        want_c = np.where(right > 0, (np.int64(1) << np.maximum(right - 1, 0)) - 1, 0)
        want_p = np.where(right > 0, 1, 0)
        if not (np.array_equal(*np.broadcast_arrays(rq.rounding, want_c))
                and np.array_equal(*np.broadcast_arrays(_const(parity_c), want_p))):
            return None
    return rq


def _activation_clip(t, producers):
    """``t = minimum(maximum(x, a), b)`` / ``maximum(x, a)`` / ``clip(x, a, b)`` with constant
    bounds -> ``(x, a, b)`` (``b`` None when there is no upper bound), else None."""
    v = producers.get(t)
    if _is_call(v, "relax.clip"):
        a, b = (_const(c) for c in v.args[1:])
        return (v.args[0], a, b) if a is not None and b is not None else None
    hi = None
    if _is_call(v, "relax.minimum") and _const(v.args[1]) is not None:
        hi = _const(v.args[1])
        v = producers.get(v.args[0])
    if _is_call(v, "relax.maximum") and _const(v.args[1]) is not None:
        return v.args[0], _const(v.args[1]), hi
    return None


def _rewrite_function(func, stats):
    producers = {b.var: b.value for b in bindings(func)}
    bounds = value_bounds(func)
    plans = {}  # clip var -> (rq, x, L, H)
    for b in bindings(func):
        if not _is_call(b.value, "relax.clip"):
            continue
        rq = _match_requantize(b.value, producers)
        act = rq and _activation_clip(rq.t, producers)
        if not act:
            continue
        x, a, hi_c = act
        bx = bounds.get(x)
        if bx is None:
            stats["unbounded"] += 1
            continue
        # RQ on the unclipped x: (x << l) + c + 1 must stay inside int32
        peak = (bx << rq.left) + rq.rounding + 1
        if np.any(peak > _INT32_MAX):
            stats["unbounded"] += 1
            continue
        s = rq.shift()
        lo, hi = int(rq.lo), int(rq.hi)
        low = np.maximum(lo, _rq(a, s))
        high = np.minimum(hi, _rq(hi_c, s)) if hi_c is not None else np.int64(hi)
        low, high = np.broadcast_arrays(low, high)
        if np.any(low > high):
            stats["empty"] += 1
            continue
        plans[b.var] = (rq, x, low, high)

    def handler(b, env, bb):
        plan = plans.get(b.var)
        if plan is None:
            return None
        rq, x, low, high = plan
        name = _tvm.var_name(b.var)
        base = name[:-len("_clip")] if name.endswith("_clip") else name
        t = rq.emit(bb, env.get(x, x), base)
        if np.any(low != rq.lo):
            t = bb.emit(R.maximum(t, _bound_const(low, b.var)), f"{base}_lo")
        if np.any(high != rq.hi):
            t = bb.emit(R.minimum(t, _bound_const(high, b.var)), f"{base}_hi")
        stats["moved"] += 1
        return bb.emit(R.clip(t, b.value.args[1], b.value.args[2]), name)

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
    shape = [int(d) for d in _tvm.tensor_shape(like)]
    channels = (1, shape[1]) + (1,) * (len(shape) - 2)
    return relax.const(np.broadcast_to(np.asarray(v, np.int64), channels).astype("int32"))


def clip_after_requantize(mod, stats: dict | None = None):
    """:class:`ClipAfterRequantize` on ``mod``'s ``main``; ``stats`` (a dict) receives the
    counts ``moved`` (requantizes rewritten), ``unbounded`` (left: overflow not excluded) and
    ``empty`` (left: a channel's merged interval is empty)."""
    counts = dict(moved=0, unbounded=0, empty=0)
    funcs = {gv: f for gv, f in mod.functions_items()}
    main = mod.get_global_var("main")
    funcs[main] = _rewrite_function(mod["main"], counts).with_attr("global_symbol", "main")
    if stats is not None:
        stats.update(counts)
    return tvm.IRModule(funcs, attrs=mod.attrs)


@tvm.transform.module_pass(opt_level=0, name="ClipAfterRequantize")
def ClipAfterRequantize(mod, ctx):  # noqa: N802  (pass names are PascalCase, as in TVM)
    """Rewrite ``main`` so that every provably safe activation clip is applied after the
    requantize that reads it (see the module doc)."""
    return clip_after_requantize(mod)
