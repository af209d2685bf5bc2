"""RequantizeWithMultiplier: requantize through a 32-bit fixed-point multiplier, not a shift.

Relax pass, for the comparison build ``f8tvm.compile(..., requantize="multiplier")`` (the bench's
``f8tvm-int8-mul32`` row): what a gemmlowp/TFLite-style integer kernel does where F8Net shifts,
to show what the shift buys.  It is **not** an 8-bit-only program: every rewritten requantize
multiplies the int32 accumulator by an int32 multiplier into an int64 product, which the
multiplication audit reports as wide multiplies (the default build stays 8-bit only).

Rewrites every rounding right shift that ``emit_requantize`` emits (in NCHW or after
PackChannelBlocks, per-channel constants in either layout)::

    u = T + (2**(r-1) - 1);  y = (u + ((u >> r) & 1)) >> r   # round_half_even(T / 2**r)

into, with ``M = 2**30`` (an int32 per-channel multiplier tensor) and ``k = 30 + r``::

    P = int64(T) * int64(M)                                  # the 32 x 32 -> 64-bit multiply
    y = int32((P + (2**(k-1) - 1) + ((P >> k) & 1)) >> k)   # round_half_even(P / 2**k)

which is ``rounding_doubling_high_mul(T, M) >> s`` with ``s = r - 1``, the doubling high multiply
(a division by ``2**31``) and the exponent shift ``s`` done as *one* rounding of the 64-bit
product, ties to even as F8Net rounds.  ``P / 2**k = T / 2**r`` exactly, so ``y`` is the shift
build's value bit for bit (gemmlowp rounds twice, ties away from zero, which would not be) for
every ``T`` whose int32 rounding add ``T + 2**(r-1)`` does not overflow in the shift build (a
program the reference's int32 checks exclude; the int64 product cannot overflow).  The
left shifts (``fl_src < in_fl``) stay shifts, as in TFLite's ``MultiplyByQuantizedMultiplier``;
a requantize with no right shift on any channel (only a clip and a cast) has nothing to rewrite,
and neither has one whose ReLU6 bound :mod:`relay_passes.offset_activations` moved in between the
rounding's sum and its shift (int8-activation targets): it stays a shift.

Why after PackChannelBlocks: that pass keeps elementwise ops it knows in the blocked layout and
unblocks around any other op, ``multiply`` included; rewriting the packed program keeps the
multiply in the conv's fused epilogue, where the shift was.  Why a tensor multiplier: as a scalar
immediate ``2**30`` LLVM would turn the multiply back into a shift; loaded from a per-channel
tensor (as per-channel quantization has it) it stays a multiply.
"""

from __future__ import annotations

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import bindings, channel_shape, rebuild, with_main

from .quantize_to_integer import match_rounding_right_shift

R = relax.op
MULTIPLIER = 1 << 30  # the fixed-point 1/2 of rounding_doubling_high_mul (x * 2**30 / 2**31)
MULTIPLIER_SHIFT = 30  # log2(MULTIPLIER): the product is T * 2**30


def _rewrite(func):
    producers = {b.var: b.value for b in bindings(func)}
    count = [0]

    def handler(b, env, bb):
        m = match_rounding_right_shift(b.value, producers)
        if m is None:
            return None
        t, r = m
        name = _tvm.var_name(b.var)
        shape = channel_shape(_tvm.tensor_shape(env.get(t, t)))
        k = r + MULTIPLIER_SHIFT  # same shape as r: a scalar or per-channel
        k_c = relax.const(k, "int64")
        mult = relax.const(np.full(shape, MULTIPLIER, "int32"))
        prod = bb.emit(R.multiply(R.astype(env.get(t, t), "int64"), R.astype(mult, "int64")),
                       f"{name}_mul")
        rounding = relax.const((np.int64(1) << (k - 1)) - 1, "int64")
        lsb = R.bitwise_and(R.right_shift(prod, k_c), relax.const(np.array(1, "int64"), "int64"))
        y = R.right_shift(R.add(R.add(prod, rounding), lsb), k_c)
        count[0] += 1
        return bb.emit(R.astype(y, "int32"), name)  # |y| <= |T|: fits in int32

    # the shift form's offset binding (``_rnd``) is left unused
    return relax.analysis.remove_all_unused(rebuild(func, handler)), count[0]


def RequantizeWithMultiplier(info: dict | None = None):  # noqa: N802  (PascalCase, as in TVM)
    """The pass; ``info`` (a dict) receives ``rewritten``, the number of requantizes rewritten."""

    @tvm.transform.module_pass(opt_level=0, name="RequantizeWithMultiplier")
    def _pass(mod, ctx):
        new, n = _rewrite(mod["main"])
        if info is not None:
            info["rewritten"] = info.get("rewritten", 0) + n
        return with_main(mod, new)

    return _pass
