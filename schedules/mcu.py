"""Kernels for microcontrollers: scalar loops whose only memory is their parameters.

A microcontroller build has no TVM runtime, so a kernel may not allocate (TVM would call
``TVMBackendAllocWorkspace`` for any buffer that does not fit its stack limit).  The schedule
therefore folds every intermediate of a fused kernel away:

* every injective block (padding, bias add, requantize, clip, cast) is inlined into its consumer
  or, after a reduction, computed per output element right after it (``reverse_compute_at``);
* each reduction keeps one accumulator per output element (its init hoisted before the
  reduction loops), which TVM compacts to a one-element local array: a register.

The padding thus becomes a bounds test per tap instead of a padded copy: no scratch memory at
all, the arena holds only the tensors between kernels.  Nothing is vectorized (the cores have
no SIMD) or parallel.

:func:`products_as_calls` then turns every 8-bit x 8-bit product into a call of ``f8_mul8``, a
static inline function of the generated C (:mod:`f8tvm.mcu`) that the target implements as its
multiply or as an exact table lookup; :func:`requantize_as_calls` turns every rounding right
shift into ``f8_round_shift(u, r)``, F8Net's shift or, for the side-by-side comparison, the
same rounding through a multiplier (bit-exact either way).
"""

from __future__ import annotations

from f8tvm.core import _tvm
from f8tvm.core._tvm import expr_dtype, node_kind, region_tensor, tir
from f8tvm.core.errors import UnsupportedOpError

MUL8 = "f8_mul8"  # the product function the generated C defines
ROUND_SHIFT = "f8_round_shift"  # the requantize's rounding shift, ditto
UNROLL_TAPS = 3  # reduction loops this short are unrolled (a 3x3 window's rows and columns)
UNROLL_INNER = 4  # the innermost long reduction loop is unrolled by this factor
MAX_LOCAL = 16  # elements a kernel may keep in a local array (registers / a few stack words)


def _is_reduction(sch, rv) -> bool:
    return any(int(iv.iter_type) == 2 for iv in sch.get(rv).iter_vars)


def _writes_param(sch, rv, params) -> bool:
    return any(region_tensor(w).same_as(p) for w in sch.get(rv).writes for p in params)


def scalar_schedule(func, name: str = "kernel"):
    """``func`` (a fused, unscheduled PrimFunc) with no intermediate buffer larger than one
    element.  Raises :class:`UnsupportedOpError` naming the kernel whose intermediate cannot be
    folded."""
    sch = _tvm.schedule_of(func)
    params = list(func.params)
    root = sch.get_sblock("root")
    for rv in sch.get_child_blocks(root):
        if _is_reduction(sch, rv) or _writes_param(sch, rv, params):
            continue
        try:
            sch.compute_inline(rv)
        except Exception:  # e.g. read by a reduction through a non-injective map
            try:
                sch.reverse_compute_inline(rv)
            except Exception:  # left for the check below
                pass
    for rv in sch.get_child_blocks(root):
        if not _is_reduction(sch, rv):
            continue
        block = sch.get(rv)
        spatial = sum(int(iv.iter_type) == 0 for iv in block.iter_vars)
        loops = sch.get_loops(rv)
        consumers = sch.get_consumers(rv)
        if len(consumers) == 1 and spatial > 0 and not _is_reduction(sch, consumers[0]):
            sch.reverse_compute_at(consumers[0], loops[spatial - 1])
        # only sums are unrolled: TVM's C code generator declares a maximum's let-bound
        # operand once for all unrolled copies (a max pool read its first tap's running
        # maximum for every tap: wrong results, found by the emulator tests)
        is_sum = node_kind(getattr(block.body, "value", None)) == "Add"
        if len(loops) > spatial:
            sch.decompose_reduction(rv, loops[spatial])
            for i, loop in enumerate(loops[spatial:] if is_sum else []):
                extent = _tvm.loop_extent(sch, loop)
                if extent is None:
                    continue
                if extent <= UNROLL_TAPS:  # a small window's taps: constant offsets and tests
                    sch.unroll(loop)
                elif i == len(loops) - spatial - 1 and extent % UNROLL_INNER == 0:
                    # the innermost long reduction (a 1x1 conv's channels): 4 products per
                    # loop step
                    sch.unroll(sch.split(loop, [None, UNROLL_INNER])[1])
    _check_no_scratch(sch.mod["main"], name)
    return sch.mod["main"]


def _check_no_scratch(func, name: str) -> None:
    """Refuse a kernel that would still allocate: every buffer its blocks allocate must compact
    to at most :data:`MAX_LOCAL` elements (the accumulator of one output element)."""
    for buf, size in _tvm.compacted_allocations(func):
        if size > MAX_LOCAL:
            raise UnsupportedOpError(
                f"kernel {name}: the intermediate {buf} ({size} elements) cannot be folded "
                "into its consumer; a microcontroller kernel may not allocate memory (there is "
                "no runtime), and this fused pattern is not supported on microcontroller "
                "targets")


def _bits8(expr) -> bool:
    """The operand carries an 8-bit value: an 8-bit expression cast wider (a load, or a padded
    load: ``if_then_else`` of loads and 8-bit constants)."""
    while node_kind(expr) == "Cast":
        expr = expr.value
    dt = expr_dtype(expr)
    return dt in ("int8", "uint8")


def products_as_calls(func):
    """``func`` with every 8-bit x 8-bit product ``int32(a) * int32(b)`` a call
    ``f8_mul8(int32(a), int32(b))``; other multiplies (index arithmetic, a comparison build's
    wide requantize) are left as they are."""

    def rewrite(e):
        if _bits8(e.a) and _bits8(e.b) and expr_dtype(e) == "int32":
            return tir.call_extern("int32", MUL8, e.a, e.b)
        return e

    return _tvm.map_exprs(func, tir.Mul, rewrite)


def schedule_module(fused):
    """Every kernel of the fused module ``fused`` under :func:`scalar_schedule`."""
    out = fused
    for name, func in _tvm.primfuncs(fused):
        out = _tvm.with_function(out, name, scalar_schedule(func, name))
    return out


def _is_one(e) -> bool:
    return node_kind(e) == "IntImm" and int(e.value) == 1


def requantize_as_calls(func):
    """``func`` with every ties-to-even rounding shift ``(u + ((u >> r) & 1)) >> r`` (what
    ``emit_requantize`` emits, ``u`` the accumulator plus bias and rounding offset) a call
    ``f8_round_shift(u, r)``."""

    def rewrite(e):
        u, r = e.a, e.b
        if node_kind(u) != "Add" or expr_dtype(e) != "int32":
            return e
        for x, t in ((u.a, u.b), (u.b, u.a)):
            if (node_kind(t) == "BitwiseAnd" and _is_one(t.b) and node_kind(t.a) == "RShift"
                    and _tvm.same_expr(t.a.a, x) and _tvm.same_expr(t.a.b, r)):
                return tir.call_extern("int32", ROUND_SHIFT, x, r)
        return e

    return _tvm.map_exprs(func, tir.RShift, rewrite)
