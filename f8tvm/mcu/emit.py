"""The C program of a microcontroller build: kernels, weights, the arena and ``f8_model_run``.

Input: the scheduled module (Relax ``main`` calling scalar kernels, :mod:`f8tvm.schedules.mcu`).
Output: a :class:`CProgram`, the text of its files and the facts a summary reports.

* ``kernels.c``: every kernel as a plain C function (TVM's C code generator, its runtime
  preamble replaced by ours), and ``f8_mul8``, the 8-bit product: the C multiply or the quarter
  squares table (``F8_PRODUCTS``, defaulting to the target's choice);
* ``model.c``: the weights as ``const`` arrays (flash), one static arena (SRAM) that holds the
  tensors between kernels (offsets planned by liveness, so tensors that are never live at the
  same time share bytes), and ``int f8_model_run(const int8_t *in, int32_t *out)``, which calls
  the kernels in order;
* ``model.h``: its prototype and the input/output facts (shape, fractional length);
* ``Makefile``: the cross compiler line that builds ``libf8model.a``;
* ``f8tvm.ld``: the memory map the emulators link with (flash at 0, SRAM at ``0x20000000``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax
from f8tvm.core.bindings import bindings
from f8tvm.core.errors import UnsupportedOpError
from f8tvm.schedules import mcu as mcu_schedules
from f8tvm.targets.mcu import CFLAGS, LINKER_SCRIPT

ALIGN = 8  # arena offsets (bytes)
KERNEL_PREFIX = "f8k_"
# quarter squares: a*b = S[a+b] - S[a-b], S[i] = floor(i*i/4), for any two 8-bit values
# (a, b in [-128, 255]): i in [-383, 510]
QSQ_MIN, QSQ_MAX = -383, 510

_CTYPES = {"int8": "int8_t", "uint8": "uint8_t", "int16": "int16_t", "int32": "int32_t",
           "uint16": "uint16_t", "uint32": "uint32_t"}


@dataclass
class Tensor:
    dtype: str
    shape: tuple
    nbytes: int


@dataclass
class KernelCall:
    symbol: str
    args: list  # C argument expressions
    layer: str  # the Relax binding it computes


@dataclass
class CProgram:
    """The generated C: ``files`` (name -> text) and what the summary reports."""

    files: dict
    arena_bytes: int
    weight_bytes: int
    input: Tensor
    output: Tensor
    calls: list = field(default_factory=list)  # KernelCall, in order


def ctype(dtype: str) -> str:
    if dtype not in _CTYPES:
        raise UnsupportedOpError(f"dtype {dtype} has no C type on microcontroller targets")
    return _CTYPES[dtype]


def _shape_dtype(expr) -> tuple[tuple, str]:
    return _tvm.tensor_shape(expr), _tvm.tensor_dtype(expr)


def _nbytes(shape, dtype) -> int:
    return int(np.prod(shape, dtype=np.int64)) * np.dtype(dtype).itemsize


def plan_arena(sizes: list, first_use: list, last_use: list) -> tuple[list, int]:
    """Offsets in one arena for tensors of ``sizes`` bytes live from ``first_use[i]`` to
    ``last_use[i]`` (binding indices, inclusive): first fit in definition order, so two tensors
    share bytes only when their lives do not overlap.  Returns (offsets, arena size)."""
    order = sorted(range(len(sizes)), key=lambda i: (first_use[i], -sizes[i]))
    placed: list = []  # (offset, end, tensor)
    offsets = [0] * len(sizes)
    for i in order:
        live = sorted((o, e) for o, e, j in placed
                      if not (last_use[j] < first_use[i] or last_use[i] < first_use[j]))
        size = -(-sizes[i] // ALIGN) * ALIGN
        at = 0
        for o, e in live:
            if at + size <= o:
                break
            at = max(at, -(-e // ALIGN) * ALIGN)
        offsets[i] = at
        placed.append((at, at + size, i))
    end = max((e for _, e, _ in placed), default=0)
    return offsets, end


def _c_array(values: np.ndarray, per_line: int = 24) -> str:
    flat = [str(int(v)) for v in values.reshape(-1)]
    lines = [", ".join(flat[i:i + per_line]) for i in range(0, len(flat), per_line)]
    return "  " + ",\n  ".join(lines)


def kernel_sources(scheduled) -> tuple[dict, str]:
    """``({Relax kernel name: C symbol}, C text of the kernels without preamble)``."""
    symbols, funcs = {}, {}
    for name, func in _tvm.primfuncs(scheduled):
        symbol = KERNEL_PREFIX + re.sub(r"\W", "_", name)
        symbols[name] = symbol
        func = mcu_schedules.requantize_as_calls(mcu_schedules.products_as_calls(func))
        funcs[symbol] = _tvm.plain_c_function(func, symbol)
    return symbols, _clean_tvm_c(_tvm.c_source(funcs))


_DROP = (re.compile(r'^#define TVM_EXPORTS'), re.compile(r'^#include "tvm/'),
         re.compile(r'^#include <math.h>'), re.compile(r'^void\* __tvm_ffi__library_ctx'))


def _clean_tvm_c(text: str) -> str:
    """TVM's C output without its runtime preamble and packed entry point; refuses one that
    still needs the runtime (a workspace allocation, a packed call)."""
    text = text.split("// CodegenC: NOTE: Auto-generated entry function")[0]
    lines = [ln for ln in text.splitlines()
             if not any(p.match(ln) for p in _DROP) and not ln.startswith("// tvm target")]
    out = "\n".join(lines).strip() + "\n"
    for needle in ("TVMBackend", "TVMFFI", "__tvm_ffi"):
        if needle in out:
            raise UnsupportedOpError(
                f"a kernel needs the TVM runtime ({needle}... in its C code), which a "
                "microcontroller build does not have")
    return out


REQUANTIZE_MODES = {"shift": 0, "mul64": 1, "mul32": 2}  # F8_REQUANTIZE


def kernels_c(body: str, products: str) -> str:
    table = np.array([(i * i) // 4 for i in range(QSQ_MIN, QSQ_MAX + 1)], np.int64)
    default = 1 if products == "table" else 0
    return f"""\
/* Kernels of an f8tvm microcontroller build: plain C functions, no runtime.
 *
 * Every data product is f8_mul8(a, b) of two 8-bit values (the compiler's audit checks it):
 *   F8_PRODUCTS=1  exact quarter squares, a*b = S[a+b] - S[a-b] with S[i] = floor(i*i/4)
 *                  (two table loads and a subtraction: for cores without a multiplier)
 *   F8_PRODUCTS=0  the C multiply
 * Every requantize is f8_round_shift(u, r) = round_half_even(T / 2^r), u = T + 2^(r-1) - 1:
 *   F8_REQUANTIZE=0  F8Net's shifts (the default: no multiply)
 *   F8_REQUANTIZE=1  for comparison: an int32 fixed-point multiplier and one rounding of the
 *                    int64 product (TFLite Micro / CMSIS-NN style; bit-exact with 0)
 *   F8_REQUANTIZE=2  for comparison: an int32 multiply and a rounding shift (PULP-NN style;
 *                    bit-exact with 0)
 * The comparison multipliers are read from variables, as a per-channel table would be. */
#include <stdint.h>
#include <stdbool.h>

#define TVM_DLL
#ifndef F8_PRODUCTS
#define F8_PRODUCTS {default}
#endif
#ifndef F8_REQUANTIZE
#define F8_REQUANTIZE 0
#endif

#if F8_PRODUCTS
static const uint16_t f8_qsq[{len(table)}] = {{
{_c_array(table, 16)}
}};
static inline int32_t f8_mul8(int32_t a, int32_t b) {{
  const uint16_t *s = f8_qsq + ({-QSQ_MIN});
  return (int32_t)s[a + b] - (int32_t)s[a - b];
}}
#else
static inline int32_t f8_mul8(int32_t a, int32_t b) {{ return a * b; }}
#endif

#if F8_REQUANTIZE == 1
int32_t f8_rq_multiplier = 1 << 30;  /* T * 2^30 / 2^(30 + r) = T / 2^r */
static inline int32_t f8_round_shift(int32_t u, int32_t r) {{
  int32_t k = 30 + r;
  int64_t p = (int64_t)(u - ((1 << (r - 1)) - 1)) * (int64_t)f8_rq_multiplier;
  return (int32_t)((p + (((int64_t)1 << (k - 1)) - 1) + ((p >> k) & 1)) >> k);
}}
#elif F8_REQUANTIZE == 2
int32_t f8_rq_multiplier = 1;  /* T * 1 / 2^r */
static inline int32_t f8_round_shift(int32_t u, int32_t r) {{
  int32_t p = (u - ((1 << (r - 1)) - 1)) * f8_rq_multiplier;
  return (p + ((1 << (r - 1)) - 1) + ((p >> r) & 1)) >> r;
}}
#else
static inline int32_t f8_round_shift(int32_t u, int32_t r) {{
  return (u + ((u >> r) & 1)) >> r;
}}
#endif

{body}"""


def emit_c(scheduled, target, model_name: str, input_fl: int, version: str) -> CProgram:
    """The C program of ``scheduled`` (the MCU schedule phase's module) for ``target``."""
    symbols, body = kernel_sources(scheduled)
    main = scheduled["main"]
    (param,) = main.params
    in_shape, in_dtype = _shape_dtype(param)
    bs = bindings(main)
    ret = main.body.body
    for b in bs:  # the returned tuple is bound in the block
        if isinstance(ret, relax.Var) and b.var.same_as(ret) and isinstance(b.value, relax.Tuple):
            ret = b.value
    ret_fields = list(ret.fields) if isinstance(ret, relax.Tuple) else [ret]
    if len(ret_fields) != 1:
        raise UnsupportedOpError(f"a microcontroller build returns one tensor, the model "
                                 f"returns {len(ret_fields)}")
    final = ret_fields[0]
    defs, last_use = {}, {}  # binding index where each tensor is made, and last read
    for i, b in enumerate(bs):
        v = b.value
        if isinstance(v, relax.Tuple):  # the returned tuple
            continue
        if not (isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir"):
            raise UnsupportedOpError(
                f"binding {_tvm.var_name(b.var)}: {v.op if isinstance(v, relax.Call) else v} "
                "is not a kernel call; microcontroller builds run kernels only")
        defs[b.var] = i
        for a in _call_args(v):
            if isinstance(a, relax.Var):
                last_use[a] = i
    if not (isinstance(final, relax.Var) and final in defs):
        raise UnsupportedOpError("the model's output is not computed by a kernel")
    inter = [v for v in defs if not v.same_as(final)]
    sizes = [_nbytes(*_shape_dtype(v)) for v in inter]
    offsets, arena = plan_arena(sizes, [defs[v] for v in inter],
                                [last_use.get(v, defs[v]) for v in inter])
    where = {}
    for v, off in zip(inter, offsets, strict=True):
        where[v] = f"(f8_arena + {off})"
    out_shape, out_dtype = _shape_dtype(final)
    where[final] = "out"
    where[param] = "in"
    consts, const_names = [], []  # (name, value); (Relax constant, name)
    calls = []
    for b in bs:
        v = b.value
        if isinstance(v, relax.Tuple):
            continue
        gv = v.args[0]
        args = []
        for a in [*_call_args(v), b.var]:
            if _tvm.is_const(a):
                expr = next((n for c, n in const_names if c.same_as(a)), None)
                if expr is None:
                    expr = f"f8_w{len(consts)}"
                    const_names.append((a, expr))
                    consts.append((expr, _tvm.const_value(a)))
                dtype = _tvm.tensor_dtype(a)
            elif isinstance(a, relax.Var) and a in where:
                expr = where[a]
                dtype = _tvm.tensor_dtype(a)
            else:
                raise UnsupportedOpError(f"binding {_tvm.var_name(b.var)}: argument {a} is "
                                         "neither a tensor of the program nor a constant")
            args.append(f"({ctype(dtype)} *){expr}")
        calls.append(KernelCall(symbols[gv.name_hint], args, _tvm.var_name(b.var)))
    weight_bytes = sum(int(c.nbytes) for _, c in consts)
    input_t = Tensor(in_dtype, in_shape, _nbytes(in_shape, in_dtype))
    output_t = Tensor(out_dtype, out_shape, _nbytes(out_shape, out_dtype))
    if out_dtype != "int32":
        raise UnsupportedOpError(f"the model's output is {out_dtype}; f8_model_run writes int32")
    files = {
        "kernels.c": kernels_c(body, target.mcu.products),
        "model.h": _model_h(model_name, target, input_t, output_t, input_fl, arena, version),
        "model.c": _model_c(model_name, target, consts, calls, body, ctype(in_dtype), version),
        "Makefile": _makefile(target),
        "f8tvm.ld": LINKER_SCRIPT,
    }
    return CProgram(files, arena, weight_bytes, input_t, output_t, calls)


def _call_args(call) -> list:
    args = call.args[1]
    return list(args.fields) if isinstance(args, relax.Tuple) else [args]


def _model_h(name, target, inp, out, input_fl, arena, version) -> str:
    dims = " x ".join(str(d) for d in inp.shape)
    return f"""\
/* {name} for {target.name} ({target.isa}), generated by f8tvm {version}.
 * An F8Net integer program: every product 8-bit x 8-bit, requantized by shifts only. */
#ifndef F8_MODEL_H
#define F8_MODEL_H
#include <stdint.h>

/* input: {ctype(inp.dtype)}[{dims}] (NCHW), value = q / 2^F8_INPUT_FL */
#define F8_INPUT_ELEMENTS {int(np.prod(inp.shape))}
#define F8_INPUT_BYTES {inp.nbytes}
#define F8_INPUT_FL {int(input_fl)}
#define F8_INPUT_SIGNED {1 if inp.dtype == "int8" else 0}
/* output: int32_t[{" x ".join(str(d) for d in out.shape)}], the integer logits */
#define F8_OUTPUT_ELEMENTS {int(np.prod(out.shape))}
#define F8_OUTPUT_BYTES {out.nbytes}
/* the static arena (SRAM) that holds the tensors between layers */
#define F8_ARENA_BYTES {arena}

/* Runs one inference; `in` holds F8_INPUT_BYTES, `out` F8_OUTPUT_ELEMENTS values.  Not
 * reentrant (one arena).  Returns 0. */
int f8_model_run(const {ctype(inp.dtype)} *in, int32_t *out);

#endif
"""


def _model_c(name, target, consts, calls, kernel_text, in_ctype, version) -> str:
    protos = [ln.replace("TVM_DLL ", "").strip() for ln in kernel_text.splitlines()
              if ln.startswith("TVM_DLL void ") and ln.rstrip().endswith(";")]
    weights = []
    for cname, value in consts:
        dt = str(value.dtype)
        weights.append(f"static const {ctype(dt)} {cname}[{max(value.size, 1)}] = {{\n"
                       f"{_c_array(value.astype(np.int64))}\n}};")
    lines = [f"  {c.symbol}({', '.join(c.args)});  /* {c.layer} */" for c in calls]
    return f"""\
/* {name} for {target.name}, generated by f8tvm {version}: the weights (flash), the arena
 * (SRAM) and the layer calls. */
#include <stdint.h>
#include <stdbool.h>
#include "model.h"

{chr(10).join(protos)}

{chr(10).join(weights)}

static uint8_t f8_arena[F8_ARENA_BYTES > 0 ? F8_ARENA_BYTES : 1] __attribute__((aligned({ALIGN})));

int f8_model_run(const {in_ctype} *in, int32_t *out) {{
{chr(10).join(lines)}
  return 0;
}}
"""


def _makefile(target) -> str:
    flags = " ".join((*target.mcu.cflags, *CFLAGS))
    return f"""\
# Builds libf8model.a for {target.name}; link it into your firmware with model.h.
# Needs nothing from TVM.  make CFLAGS+=-DF8_PRODUCTS=0|1 chooses the C multiply or the table
# for the 8-bit products (default: the target's); -DF8_REQUANTIZE=1|2 the comparison requantizes
# (see kernels.c).
CC = {target.cross_compiler}
AR = {target.cross_compiler.rsplit("-", 1)[0]}-ar
CFLAGS = {flags}

libf8model.a: model.o kernels.o
\t$(AR) rcs $@ $^

%.o: %.c model.h
\t$(CC) $(CFLAGS) -c $< -o $@

clean:
\trm -f model.o kernels.o libf8model.a
"""
