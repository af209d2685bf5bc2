"""ParityByTest: the parity bit of a ties-to-even right shift read by a bit test.

Relax (Relay's successor in TVM) pass, for targets that have a vector bit test
(``TargetPreset.parity_test``: AArch64's ``cmtst``).  The ties-to-even shift of
:mod:`relay_passes.quantize_to_integer` adds the parity bit of the shifted value,
``lsb = (u >> r) & p`` (``p`` is 1 where ``r > 0``, else 0, per channel).  This pass writes the
same bit as ``lsb = int32((u & (p << r)) != 0)``: LLVM then emits a bit test and a subtract (the
test's all-ones lanes subtracted: ``cmtst`` + ``sub``) where the shift form takes a shift, an
and and an add, one instruction fewer per output vector of every requantize.  On x86 the test
form is no shorter (AVX-512: ``vptestmd`` + ``vpmovm2d`` + ``vpsubd``; AVX2: one more), so the
x86 presets keep the shift form.

Exact: for ``0 <= r <= 31`` and ``p`` in {0, 1}, bit ``r`` of ``u`` is set exactly when
``(u >> r) & 1`` is 1 (``>>`` is arithmetic, but bit 0 of ``u >> r`` is bit ``r`` of ``u``);
with ``p = 0`` both are 0.  Only int32 shifts with constant ``r`` and ``p`` are rewritten, and only
where every ``p`` is 0 or 1.
"""

from __future__ import annotations

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import bindings, expr_dtype, is_call, rebuild, with_main

R = relax.op


def _parity(value, producers):
    """``(u, mask)`` when ``value`` is ``(u >> r) & p`` (module doc), ``mask = p << r`` as
    int32 bits; else None."""
    if not (is_call(value, "relax.bitwise_and") and _tvm.is_const(value.args[1])):
        return None
    shifted = producers.get(value.args[0])
    if not (is_call(shifted, "relax.right_shift") and _tvm.is_const(shifted.args[1])):
        return None
    u = shifted.args[0]
    if expr_dtype(u) != "int32" or expr_dtype(value) != "int32":
        return None
    p = _tvm.const_value(value.args[1]).astype(np.int64)
    r = _tvm.const_value(shifted.args[1]).astype(np.int64)
    if not (np.isin(p, (0, 1)).all() and (r >= 0).all() and (r <= 31).all()):
        return None
    p, r = np.broadcast_arrays(p, r)
    mask = (p << r).astype(np.uint32).view(np.int32)  # bit 31 is int32's sign bit
    return u, mask


def parity_by_test(func, stats: dict | None = None):
    """The rewritten ``func``; ``stats`` (a dict) receives ``rewritten``, the bits rewritten."""
    producers = {b.var: b.value for b in bindings(func)}
    found = {}
    for b in bindings(func):
        m = _parity(b.value, producers)
        if m is not None:
            found[b.var] = m

    def handler(b, env, bb):
        if b.var not in found:
            return None
        u, mask = found[b.var]
        name = _tvm.var_name(b.var)
        bits = bb.emit(R.bitwise_and(env.get(u, u), relax.const(mask)), f"{name}_bit")
        test = bb.emit(R.not_equal(bits, relax.const(0, "int32")), f"{name}_test")
        return bb.emit(R.astype(test, "int32"), name)

    if stats is not None:
        stats["rewritten"] = stats.get("rewritten", 0) + len(found)
    if not found:
        return func
    return relax.analysis.remove_all_unused(rebuild(func, handler))


def ParityByTest(stats: dict | None = None):  # noqa: N802  (pass names are PascalCase)
    """The pass over ``main``; ``stats`` as :func:`parity_by_test` takes it."""

    @tvm.transform.module_pass(opt_level=0, name="ParityByTest")
    def _pass(mod, ctx):
        return with_main(mod, parity_by_test(mod["main"], stats))

    return _pass
