"""The float boundary's kernel: the float input's 8-bit quantization, built beside the program.

The integer program takes the 8-bit input; ``f8tvm.runtime.Module.run`` quantizes a float input
first.  Done in NumPy that step is six passes over the float image (and, measured on
MobileNet-V2 at 224x224 on one core, about 7% of the whole run); this kernel does it in one,
into the program's input tensor.  It is not part of the integer program (``main`` does not call
it), and it multiplies nothing either: scaling by ``2**fl`` adds ``fl`` to the float's exponent
field, which is exact wherever the result can round to something other than 0, the only values
it is used for.

The result equals :meth:`f8tvm.runtime.Module.quantize` (``rint(x * 2**fl)`` clamped to the
8-bit range, ties to even) for every finite ``x``.  In the same pass the kernel finds whether
``x`` is finite: its third argument receives the largest exponent field of the input (the
float's bits and ``EXPONENT``), which is ``EXPONENT`` itself exactly when some value is infinite
or NaN.  The runtime reads it after the call and then takes the NumPy path, which refuses such an
input (or clamps it, when asked to).  A separate NumPy check cost more than the kernel: 13 us on
a 224x224 image with the image in cache, 35-70 us right after a run of the program, which leaves
the caches cold.

The output's kernel (``DEQUANTIZE_OUTPUT``) is the other side: the int32 output to float32,
``float32(float64(acc) * scale[c])`` with the runtime's factor ``eta * 2**-fl`` of each channel,
the same two IEEE operations as :meth:`f8tvm.runtime.Module.dequantize`, so the same bits.  It is
the one float multiply in the library, and it is outside the integer program as the NumPy step
was (``main`` does not call it; the audit reports it apart, ``AuditReport.boundary_multiplies``).
In NumPy the step is cheap on warm caches but not right after the program: four NumPy calls
then cost 40-60 us (measured on ResNet-18 at one thread, 1000 logits), the kernel 10.
"""

from __future__ import annotations

import math

from f8tvm.core import _tvm
from f8tvm.core._tvm import te, tir
from f8tvm.core.fixedpoint import FLOAT32_EXPONENT as EXPONENT
from f8tvm.core.fixedpoint import qrange

from . import _sch

# the kernel's symbol in the library.  A build before the finite flag named its two-argument
# kernel ``f8tvm_quantize_input``; a new name makes an older runtime skip this one (and take the
# NumPy path) instead of calling it with two arguments.
QUANTIZE_INPUT = "f8tvm_quantize_input_checked"

# |fl| beyond this leaves float32's normal range in the constants below: no kernel (NumPy then)
MAX_FL = 100

# the output's kernel in the library (see the module's docstring)
DEQUANTIZE_OUTPUT = "f8tvm_dequantize_output"

# the float boundary's kernels, input's then output's: in the library, outside the program
KERNELS = (QUANTIZE_INPUT, DEQUANTIZE_OUTPUT)


def quantize_input(shape, fl: int, signed: bool):
    """The scheduled PrimFunc ``QUANTIZE_INPUT(x: float32[shape], q: int8/uint8[shape],
    flag: int32[1])``, or None where ``fl`` is out of the kernel's range or the input has fewer
    than two axes."""
    if abs(fl) > MAX_FL or len(shape) < 2:
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
        exponent = tir.bitwise_and(tir.reinterpret("int32", x(*i)), tir.const(EXPONENT, "int32"))
        return tir.Select(tir.abs(v) <= rounds_to_zero, f32(0.0), q).astype(dtype), exponent

    # one loop nest writes both: the 8-bit value and the input's exponent field
    q, exponent = te.compute(x.shape, quantize, name="quantize")
    rows = tuple(shape[:-1])
    w = te.reduce_axis((0, shape[-1]), name="w")
    row_max = te.compute(rows, lambda *r: te.max(exponent(*r, w), axis=w), name="row_max")
    over = [te.reduce_axis((0, n), name=f"r{k}") for k, n in enumerate(rows)]
    flag = te.compute((1,), lambda _: te.max(row_max(*over), axis=over), name="flag")
    func = te.create_prim_func([x, q, flag]).with_attr("global_symbol", QUANTIZE_INPUT)

    sch = _tvm.schedule_of(func)
    loops = sch.get_loops(sch.get_sblock("quantize_v0"))  # the nest of both outputs
    row = sch.fuse(*loops[:-1])
    sch.parallel(row)
    lanes = _sch.widest_divisor(int(shape[-1]), 32)
    if lanes >= 4:
        sch.vectorize(sch.split(loops[-1], [None, lanes])[1])
    # each row's maximum inside the row's iteration (the exponents stay one row in cache), in
    # ``lanes`` partial maxima (independent, so LLVM vectorizes them); the rows' maxima after
    # the parallel loop, one row at a time
    blk = sch.get_sblock("row_max")
    if lanes >= 4 and shape[-1] > lanes:
        partial = sch.rfactor(sch.split(sch.get_loops(blk)[-1], [None, lanes])[1],
                              factor_axis=len(rows))
        sch.reverse_compute_at(partial, row)
        sch.reverse_compute_at(blk, row)
        lane, step = sch.get_loops(partial)[-2:]  # as rfactor made them
        sch.reorder(step, lane)
        name = sch.get(partial).name_hint
        sch.decompose_reduction(partial, step)
        sch.vectorize(sch.get_loops(sch.get_sblock(name + "_init"))[-1])
    else:
        sch.reverse_compute_at(blk, row)
    return sch.mod["main"].with_attr("global_symbol", QUANTIZE_INPUT)


def dequantize_output(shape):
    """The scheduled PrimFunc ``DEQUANTIZE_OUTPUT(acc: int32[shape], scale: float64[C],
    y: float32[shape])``, ``C = shape[1]``: ``y = float32(float64(acc) * scale[c])`` for the
    element's channel ``c``; None where the output has fewer than two axes."""
    if len(shape) < 2:
        return None
    acc = te.placeholder(tuple(shape), "int32", name="acc")
    scale = te.placeholder((shape[1],), "float64", name="scale")
    y = te.compute(acc.shape, lambda *i: (acc(*i).astype("float64") * scale[i[1]]).astype(
        "float32"), name="dequantize")
    func = te.create_prim_func([acc, scale, y]).with_attr("global_symbol", DEQUANTIZE_OUTPUT)
    sch = _tvm.schedule_of(func)
    loops = sch.get_loops(sch.get_sblock("dequantize"))
    rows = sch.fuse(*loops[:-1])
    if math.prod(shape) >= 1 << 16:  # a feature map's worth (a classifier's logits: one core)
        sch.parallel(rows)
    lanes = _sch.widest_divisor(int(shape[-1]), 8)  # float64 lanes of a 512-bit register
    if lanes >= 2:
        sch.vectorize(sch.split(loops[-1], [None, lanes])[1])
    return sch.mod["main"].with_attr("global_symbol", DEQUANTIZE_OUTPUT)
