"""F8Net's fixed-point arithmetic and fractional-length rules, in NumPy.

Conventions (F8Net, ``models/fix_quant_ops.py`` of the official code):

* an 8-bit tensor with fractional length ``FL`` holds ``q = clamp(round_half_even(y * 2**FL))``,
  ``q`` in [0, 255] (unsigned) or [-127, 127] (signed; -128 is never used);
* ``FL`` from the standard deviation: ``FL = floor(log2(C / std(y)))``, ``C = 40`` for signed and
  ``70`` for unsigned tensors, std unbiased (N-1);
* requantization from an int32 accumulator at ``FL_a`` to ``FL``:
  ``clamp(round_half_even(A / 2**(FL_a - FL)))`` (a left shift when ``FL > FL_a``).
"""

from __future__ import annotations

import numpy as np

STD_C_SIGNED = 40.0
STD_C_UNSIGNED = 70.0
INT32_MAX = 2**31 - 1
# a float32's exponent field: all ones exactly for infinity and NaN (the float input kernel's
# finite flag is the largest of its input's)
FLOAT32_EXPONENT = 0x7F800000


def qrange(signed: bool, bits: int = 8) -> tuple[int, int]:
    """Integer range of an F8Net tensor: symmetric when signed."""
    return (-(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1) if signed else (0, 2**bits - 1)


def pool_shift(hw: int) -> int:
    """F8Net's average-pool shift: ``round(log2(H*W))``; the ``2**k / (H*W)`` rest is folded."""
    return int(round(np.log2(hw)))


def fix_quant(y, fl, signed: bool, bits: int = 8):
    """``clamp(round_half_even(y * 2**fl))`` as float64 integers (``fl`` broadcasts)."""
    lo, hi = qrange(signed, bits)
    return np.clip(np.round(np.asarray(y, np.float64) * np.exp2(fl)), lo, hi)


def std_fraclen(std, signed: bool, lo: int, hi: int):
    """F8Net's rule: the largest n with ``std <= C / 2**n``, clamped to [lo, hi]."""
    c = STD_C_SIGNED if signed else STD_C_UNSIGNED
    std = np.maximum(np.asarray(std, np.float64), 1e-30)
    return np.clip(np.floor(np.log2(c / std)), lo, hi).astype(np.int64)


def mse_fraclen(y, signed: bool, candidates) -> tuple[int, float]:
    """The FL among ``candidates`` with the least quantization error on samples ``y``."""
    y = np.asarray(y, np.float64).ravel()
    best, best_err = None, np.inf
    for n in candidates:
        err = float(np.mean((fix_quant(y, n, signed) * 2.0**-n - y) ** 2))
        if err < best_err:
            best, best_err = int(n), err
    return best, best_err


def weight_fraclen(w, rule: str, per_channel: bool, lo: int, hi: int) -> np.ndarray:
    """Per-output-channel FL of an effective weight (identical entries when per layer).

    ``rule``: ``std`` (F8Net, C = 40), ``mse`` (least squared error), ``max`` (the largest FL that
    keeps the channel's largest magnitude representable).
    """
    w = np.asarray(w, np.float64)
    cout = w.shape[0]
    flat = w.reshape(cout, -1)
    groups = [flat[i] for i in range(cout)] if per_channel else [flat.ravel()]
    out = []
    for g in groups:
        if rule == "std":
            std = np.std(g, ddof=1) if g.size > 1 else abs(g).max()
            out.append(int(std_fraclen(std, True, lo, hi)))
        elif rule == "max":
            m = max(float(np.abs(g).max()), 1e-30)
            out.append(int(np.clip(np.floor(np.log2(127.5 / m)), lo, hi)))
        elif rule == "mse":
            m = max(float(np.abs(g).max()), 1e-30)
            top = int(np.clip(np.floor(np.log2(127.5 / m)), lo, hi))
            out.append(mse_fraclen(g, True, range(max(lo, top - 2), min(hi, top + 4) + 1))[0])
        else:
            raise ValueError(f"unknown weight FL rule {rule!r}")
    fl = np.array(out, np.int64)
    return fl if per_channel else np.repeat(fl, cout)


def rq_reference(acc, shift, signed: bool = True, clamp: bool = True):
    """Requantize int64 ``acc`` by ``shift`` (per element or broadcast), ties to even, and clamp
    to the 8-bit range (``signed``) unless ``clamp`` is false.

    Written plainly (floor division, explicit tie test) as the oracle for the shift tricks the
    compiler emits.
    """
    acc = np.asarray(acc, np.int64)
    shift = np.broadcast_to(np.asarray(shift, np.int64), acc.shape)
    right = np.maximum(shift, 0)
    left = np.maximum(-shift, 0)
    a = acc << left
    q = a >> right  # floor
    rem = a - (q << right)
    half = np.where(right > 0, np.int64(1) << np.maximum(right - 1, 0), 0)
    up = (right > 0) & ((rem > half) | ((rem == half) & (q % 2 == 1)))
    if not clamp:
        return q + up
    lo, hi = qrange(signed)
    return np.clip(q + up, lo, hi)
