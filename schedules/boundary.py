"""The float boundary's kernel: the float input's 8-bit quantization, built beside the program.

The integer program takes the 8-bit input; ``f8tvm.runtime.Module.run`` quantizes a float input
first.  Done in NumPy that step is six passes over the float image (and, measured on
MobileNet-V2 at 224x224 on one core, about 7% of the whole run); this kernel does it in one,
into the program's input tensor.  It is not part of the integer program (``main`` does not call
it), and it multiplies nothing either: scaling by ``2**fl`` adds ``fl`` to the float's exponent
field, which is exact wherever the result can round to something other than 0, the only values
it is used for.

The result equals :meth:`f8tvm.runtime.Module.quantize` (``rint(x * 2**fl)`` clamped to the
8-bit range, ties to even) for every finite ``x``; the runtime checks that ``x`` is finite before
it calls the kernel.
"""

from __future__ import annotations

import math

from f8tvm.core import _tvm
from f8tvm.core._tvm import te, tir
from f8tvm.core.fixedpoint import qrange

from . import _sch

QUANTIZE_INPUT = "f8tvm_quantize_input"  # the kernel's symbol in the library

# |fl| beyond this leaves float32's normal range in the constants below: no kernel (NumPy then)
MAX_FL = 100


def quantize_input(shape, fl: int, signed: bool):
    """The scheduled PrimFunc ``QUANTIZE_INPUT(x: float32[shape], q: int8/uint8[shape])``, or
    None where ``fl`` is out of the kernel's range."""
    if abs(fl) > MAX_FL:
        return None
    lo, hi = qrange(signed)
    dtype = "int8" if signed else "uint8"
    x = te.placeholder(tuple(shape), "float32", name="x")
    f32 = lambda v: tir.const(v, "float32")  # noqa: E731
    # constants exact in float32: the clamp keeps the scaled value within one of the range, so
    # the exponent addition cannot overflow; values at most half a step from 0 round to 0 (where
    # the exponent addition could underflow, so they are selected out)
    below, above = f32(math.ldexp(lo - 1, -fl)), f32(math.ldexp(hi + 1, -fl))
    rounds_to_zero = f32(math.ldexp(1.0, -fl - 1))

    def quantize(*i):
        v = tir.max(tir.min(x(*i), above), below)
        scaled = tir.reinterpret("float32", tir.reinterpret("int32", v) + tir.const(fl << 23,
                                                                                      "int32"))
        q = tir.max(tir.min(tir.nearbyint(scaled), f32(hi)), f32(lo))
        return tir.Select(tir.abs(v) <= rounds_to_zero, f32(0.0), q).astype(dtype)

    q = te.compute(x.shape, quantize, name="quantize")
    func = te.create_prim_func([x, q]).with_attr("global_symbol", QUANTIZE_INPUT)
    sch = _tvm.schedule_of(func)
    loops = sch.get_loops(sch.get_sblock("quantize"))
    if len(loops) > 1:
        sch.parallel(sch.fuse(*loops[:-1]))
    lanes = _sch.widest_divisor(int(shape[-1]), 32)
    if lanes >= 4:
        sch.vectorize(sch.split(loops[-1], [None, lanes])[1])
    return sch.mod["main"].with_attr("global_symbol", QUANTIZE_INPUT)
