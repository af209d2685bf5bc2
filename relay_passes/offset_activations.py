"""OffsetUnsignedActivations: feed conv2d/dense int8 instead of uint8 activations, exactly.

Why: F8Net's activations after ReLU are unsigned 8-bit, and the weights are signed.  x86 VNNI
multiplies exactly that (u8 x s8), but ARM's dot products are s8 x s8 (``sdot``) or u8 x u8
(``udot``), so on ARM a u8 x s8 conv would have to widen its operands.  Shifting the activation
by -128 makes it int8 and costs nothing at run time: the correction is a constant per output
channel, folded into the int32 bias.

Integer formula (``u`` uint8 in [0, 255], ``W`` int8, ``b`` int32, all sums exact in int32):

* ``s = u - 128`` as int8, emitted by the requantize epilogue itself:
  ``s = int8(clip(T - 128, lo - 128, hi - 128))`` for ``u = uint8(clip(T, lo, hi))`` (the
  subtract moved before the clip, exactly; fused into one kernel).  The clip to [-128, 127]
  right before the cast is a saturating narrowing (``sqxtn`` on ARM).  Where ``T`` is the
  ties-to-even right shift by ``r`` of ``x`` (``v = x + c``, ``T = (v + ((v >> r) & 1)) >> r``),
  the subtract goes into its rounding constant instead: ``T - 128`` is the same shift of
  ``x + c - (128 << r)`` (floor shifts commute with subtracting a multiple of ``2**r``, whose
  bit ``r`` is 0), one vector add fewer per 4 lanes; only where ``x + c - (128 << r)`` provably
  stays in int32 (``x`` bounded from its conv's constant weights and 8-bit input, and through
  the residual sums, shifts, clips and max pools that carry it);
* a ReLU6's bound ``H`` (per channel, ``u = uint8(clip(minimum(T, H), lo, hi))``) moves before
  that shift: with ``w >> r == T - 128``, ``minimum(T, H) - 128 == minimum(w, B) >> r`` for
  ``B = ((H - 127) << r) - 1`` (``w <= B`` exactly when ``floor(w / 2**r) <= H - 128``), where
  ``B`` fits int32.  The kernel then ends in a shift, a clamp and a cast, which ARM narrows with
  the shift inside (``schedules.intrin_arm.NEON_SHIFT_NARROW``), instead of shifting, taking the
  minimum, subtracting and narrowing each vector;
* conv2d: ``conv(u, W)[o] + b[o] = conv(pad(s, -128), W)[o] + (b[o] + 128 * S[o])`` with
  ``S[o] = sum_{i,kh,kw} W[o, i, kh, kw]`` (per output channel, any groups).  The zero
  padding of ``u`` is the value -128 of ``s``, so the padding becomes an explicit ``nn.pad``
  with -128 and the conv itself pads nothing;
* dense: ``u @ W + b = s @ W + (b + 128 * sum_k W[k, :])``.

Every other consumer of ``u`` (there is none in QuantizeToInteger's programs, where a requantized
tensor feeds exactly one layer) keeps reading ``u`` unchanged, and a conv result read by anything
but its bias add gets the correction added explicitly, so the program's outputs are unchanged bit
for bit.  No multiplication is added.
"""

from __future__ import annotations

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import (
    bindings,
    expr_dtype,
    fits_int32,
    int_const,
    is_call,
    rebuild,
    with_main,
)
from f8tvm.core.errors import F8TVMError
from f8tvm.core.fixedpoint import INT32_MAX

from .quantize_to_integer import match_rounding_right_shift, rounding_constants

R = relax.op
OFFSET = 128  # u8 -> s8: s = u - 128


def _offset_function(func):
    producers = {b.var: b.value for b in bindings(func)}
    signed = {}  # old uint8 var -> new int8 var (u - 128)
    corrected = {}  # old accumulator var -> (new accumulator on s, correction)

    def to_signed(u, env, bb):
        if u in signed:
            return signed[u]
        name = f"{_tvm.var_name(u)}_s8"
        src = producers.get(u)
        clip = producers.get(src.args[0]) if is_call(src, "relax.astype") else None
        lo, hi = (int_const(a) for a in clip.args[1:]) if is_call(clip, "relax.clip") else (
            None, None)
        if (lo is not None and hi is not None and 0 <= lo and hi <= 255
                and expr_dtype(clip.args[0]) == "int32"):
            # the requantize epilogue: subtract, then clip to [lo, hi] - 128 (within int8)
            t = _offset_in_rounding(clip.args[0], producers, env, bb, name)
            if t is None:
                t = _offset_under_minimum(clip.args[0], producers, env, bb, name)
            if t is None:
                t = R.subtract(env.get(clip.args[0], clip.args[0]),
                               relax.const(np.int32(OFFSET)))
            s = R.clip(t, lo - OFFSET, hi - OFFSET)
        else:
            s = R.subtract(R.astype(env.get(u, u), "int32"), relax.const(np.int32(OFFSET)))
        signed[u] = bb.emit(R.astype(s, "int8"), name)
        return signed[u]

    def handler(b, env, bb):
        v = b.value
        name = _tvm.var_name(b.var)
        if ((is_call(v, "relax.nn.conv2d") or is_call(v, "relax.matmul"))
                and expr_dtype(v.args[0]) == "uint8" and _tvm.is_const(v.args[1])):
            s = to_signed(v.args[0], env, bb)
            w = _tvm.const_value(v.args[1]).astype(np.int64)
            if v.op.name == "relax.nn.conv2d":
                a = v.attrs
                if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
                    raise F8TVMError(f"OffsetUnsignedActivations: conv2d '{name}' in layout "
                                     f"{a.data_layout}/{a.kernel_layout}; expected NCHW/OIHW")
                top, left, bottom, right = (int(p) for p in a.padding)
                if top or left or bottom or right:
                    # u's zero padding is s = -128
                    s = bb.emit(R.nn.pad(s, [0, 0, 0, 0, top, bottom, left, right],
                                         pad_value=float(-OFFSET)), f"{name}_pad")
                acc = R.nn.conv2d(s, v.args[1], strides=a.strides, padding=[0, 0, 0, 0],
                                  dilation=a.dilation, groups=a.groups, data_layout="NCHW",
                                  kernel_layout="OIHW", out_layout=a.out_layout,
                                  out_dtype=a.out_dtype)
                corr = OFFSET * w.sum(axis=(1, 2, 3)).reshape(1, -1, 1, 1)
            else:
                acc = R.matmul(s, v.args[1], out_dtype=v.attrs.out_dtype)
                corr = OFFSET * w.sum(axis=-2).reshape(1, -1)  # x[.., K] @ W[K, N]
            acc = bb.emit(acc, f"{name}_s8")
            corrected[b.var] = (acc, corr)
            # the exact accumulator, for consumers other than the bias add (dead code otherwise)
            return bb.emit(R.add(acc, _i32(corr, name)), name)
        if is_call(v, "relax.add"):
            x, y = v.args
            if y in corrected and _tvm.is_const(x):
                x, y = y, x
            if x in corrected and _tvm.is_const(y):
                acc, corr = corrected[x]
                bias = _tvm.const_value(y).astype(np.int64)
                return bb.emit(R.add(acc, _i32(bias + corr, name)), name)
        return None

    new = rebuild(func, handler)
    return relax.analysis.remove_all_unused(new)


def _lower_bound(x, producers):
    """A lower bound of int32 ``x`` (a NumPy array broadcasting to its shape), from the
    bindings that make it: a conv2d / matmul of 8-bit data by constant weights, adds (of a
    constant, or of two bounded values: a residual sum), clips, max pools, left shifts by
    constants; None where it is not one of those."""
    v = producers.get(x)
    if v is None or not isinstance(v, relax.Call):
        return None
    op, args = v.op.name, v.args
    if op in ("relax.nn.conv2d", "relax.matmul") and _tvm.is_const(args[1]):
        lo, hi = {"int8": (-128, 127), "uint8": (0, 255)}.get(expr_dtype(args[0]), (None, None))
        if lo is None:
            return None
        w = _tvm.const_value(args[1]).astype(np.int64)
        least = np.where(w > 0, w * lo, w * hi)
        if op == "relax.nn.conv2d":  # its zero padding is within [lo, hi]
            if str(v.attrs.kernel_layout) != "OIHW" or str(v.attrs.data_layout) != "NCHW":
                return None
            return least.sum(axis=(1, 2, 3)).reshape(1, -1, 1, 1)
        return least.sum(axis=-2).reshape(1, -1) if w.ndim == 2 else None
    if op == "relax.add":
        for a, c in (args, args[::-1]):
            if _tvm.is_const(c):
                b = _lower_bound(a, producers)
                return None if b is None else b + _tvm.const_value(c).astype(np.int64)
        # a residual sum (the program's int32 values do not wrap: the plan is fitted so)
        bounds = [_lower_bound(a, producers) for a in args]
        return None if any(b is None for b in bounds) else bounds[0] + bounds[1]
    if op == "relax.nn.max_pool2d":  # every window holds one of its input's values
        return _lower_bound(args[0], producers)
    if op == "relax.maximum" and _tvm.is_const(args[1]):
        c = _tvm.const_value(args[1]).astype(np.int64)
        b = _lower_bound(args[0], producers)
        return c if b is None else np.maximum(b, c)
    if op == "relax.clip":
        lo = int_const(args[1])
        return None if lo is None else np.int64(lo)
    if op == "relax.minimum" and _tvm.is_const(args[1]):
        return _lower_bound(args[0], producers)
    if op == "relax.left_shift" and _tvm.is_const(args[1]):
        b = _lower_bound(args[0], producers)
        return None if b is None else b << _tvm.const_value(args[1]).astype(np.int64)
    return None


def _offset_in_rounding(t, producers, env, bb, name):
    """``T - 128`` for the requantize result ``t`` (old program), as the same ties-to-even
    shift with the offset in its rounding constant (module doc), emitted on ``env``'s vars;
    None when ``t`` is not such a shift or the shifted sum could leave int32."""
    parts = _offset_rounding_sum(t, producers, env, bb, name)
    if parts is None:
        return None
    w, r = parts
    return R.right_shift(w, relax.const(r.astype("int32")))


def _offset_under_minimum(t, producers, env, bb, name):
    """``minimum(T, H) - 128`` for ``t = minimum(T, H)`` (a ReLU6's bound ``H`` per channel on
    the requantize result ``T``), with the bound moved before the shift (module doc):
    ``(min(w, ((H - 127) << r) - 1)) >> r`` where ``w >> r`` is ``T - 128``; None when ``t`` is
    not that or the bound leaves int32."""
    m = producers.get(t)
    if not (is_call(m, "relax.minimum") and _tvm.is_const(m.args[1])):
        return None
    parts = _offset_rounding_sum(m.args[0], producers, env, bb, name)
    if parts is None:
        return None
    w, r = parts
    high = _tvm.const_value(m.args[1]).astype(np.int64) - OFFSET
    bound = ((high + 1) << r) - 1  # floor(x / 2**r) <= high  <=>  x <= bound
    if not fits_int32(bound):
        return None
    w = bb.emit(w, f"{name}_par")
    return R.right_shift(R.minimum(w, relax.const(bound.astype("int32"))),
                         relax.const(r.astype("int32")))


def _offset_rounding_sum(t, producers, env, bb, name):
    """``(w, r)``: ``w`` the sum whose floor shift right by ``r`` is ``T - 128`` (``T`` = ``t``,
    a ties-to-even shift of the old program; the offset in its rounding constant, the parity
    bit added: module doc), emitted on ``env``'s vars; None when ``t`` is not such a shift or
    the shifted sum could leave int32."""
    m = match_rounding_right_shift(producers.get(t), producers)
    if m is None:
        return None
    x, r = m
    bound = _lower_bound(x, producers)
    if bound is None:
        return None
    rounding, parity = rounding_constants(r)
    c = rounding - (np.int64(OFFSET) << r)
    if not fits_int32(c) or np.any(bound + c < -INT32_MAX - 1):
        return None
    r32 = relax.const(r.astype("int32"))
    v = bb.emit(R.add(env.get(x, x), relax.const(c.astype("int32"))), f"{name}_rnd")
    lsb = R.bitwise_and(R.right_shift(v, r32), relax.const(parity.astype("int32")))
    return R.add(v, lsb), r


def _i32(v, name):
    v = np.asarray(v, np.int64)
    if not fits_int32(v):
        raise F8TVMError(f"OffsetUnsignedActivations: the corrected bias of '{name}' overflows "
                         "int32")
    return relax.const(v.astype("int32"))


def has_unsigned_dot(mod) -> bool:
    """Whether any conv2d/matmul of ``mod``'s ``main`` still reads uint8 data."""
    return any((is_call(b.value, "relax.nn.conv2d") or is_call(b.value, "relax.matmul"))
               and expr_dtype(b.value.args[0]) == "uint8" for b in bindings(mod["main"]))


@tvm.transform.module_pass(opt_level=0, name="OffsetUnsignedActivations")
def OffsetUnsignedActivations(mod, ctx):  # noqa: N802  (pass names are PascalCase, as in TVM)
    """Rewrite ``main`` so that every conv2d/dense reads int8 ``u - 128`` instead of uint8 ``u``.
    """
    return with_main(mod, _offset_function(mod["main"]))


def offset_for_target(mod, preset):
    """Apply :func:`OffsetUnsignedActivations` when the target's dot product wants int8 data."""
    return OffsetUnsignedActivations(mod) if preset.activations == "int8" else mod
