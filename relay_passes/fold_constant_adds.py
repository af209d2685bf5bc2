"""FoldConstantAdds: ``add(add(x, c1), c2)`` -> ``add(x, c1 + c2)`` for constant ``c1``, ``c2``.

Relax (Relay's successor in TVM) pass, the last rewrite before fusion.  A conv's accumulator gets
its bias added and, right after, the requantize's rounding offset (``u = T + 2**(r-1) - 1``, see
:mod:`relay_passes.quantize_to_integer`); on targets whose dot product wants unsigned data, the
offset correction ``-128 * sum(w)`` comes first.  Folded, that is one vector add per output vector
of the fused epilogue instead of two or three: a few percent of a conv whose reduction is short
(a 1x1 expand conv over 16-32 channels spends about a third of its instructions in the
epilogue).

Exact: the folded program computes ``x + (c1 + c2)`` where it computed ``(x + c1) + c2``; the
constants are summed in int64 and left unfolded when the sum does not fit int32, and the one add
left produces the value the last add produced, so it cannot overflow where the program did not.
An inner add is folded only when the outer add is its one use (otherwise its value is still
needed), chains fold whole (``((x + c1) + c2) + c3``), and only int32 adds are touched.
"""

from __future__ import annotations

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import (
    bindings,
    expr_dtype,
    fits_int32,
    is_call,
    rebuild,
    use_counts,
    with_main,
)

R = relax.op


def _const_add(value):
    """``(x, c)`` when ``value`` is ``add(x, c)`` / ``add(c, x)`` of an int32 variable and an
    int32 constant, else None."""
    if not is_call(value, "relax.add"):
        return None
    for x, c in (value.args, value.args[::-1]):
        if (isinstance(x, relax.Var) and _tvm.is_const(c) and expr_dtype(x) == "int32"
                and expr_dtype(c) == "int32"):
            return x, _tvm.const_value(c).astype(np.int64)
    return None


def fold_constant_adds(func, stats: dict | None = None):
    """The rewritten ``func``; ``stats`` (a dict) receives ``folded``, the adds removed."""
    uses = use_counts(func)
    sums = {}  # var -> (base var, int64 constant): var = base + constant
    folded = {}  # var -> (base var, constant) for the adds that absorb the one before
    for b in bindings(func):
        m = _const_add(b.value)
        if m is None:
            continue
        x, c = m
        sums[b.var] = (x, c)
        if x not in sums or uses.get(x, 0) != 1:
            continue
        base, c0 = sums[x]
        try:
            total = np.asarray(c0 + c)  # numpy broadcasting = the ops' broadcasting
        except ValueError:
            continue
        if total.ndim > len(_tvm.tensor_shape(b.var)) or not fits_int32(total):
            continue
        sums[b.var] = (base, total)
        folded[b.var] = (base, total)

    def handler(b, env, bb):
        if b.var not in folded:
            return None
        base, total = folded[b.var]
        const = relax.const(total.astype("int32"))
        return bb.emit(R.add(env.get(base, base), const), _tvm.var_name(b.var))

    if stats is not None:
        stats["folded"] = stats.get("folded", 0) + len(folded)
    if not folded:
        return func
    return relax.analysis.remove_all_unused(rebuild(func, handler))


def FoldConstantAdds(stats: dict | None = None):  # noqa: N802  (pass names are PascalCase)
    """The pass over ``main``; ``stats`` as :func:`fold_constant_adds` takes it."""

    @tvm.transform.module_pass(opt_level=0, name="FoldConstantAdds")
    def _pass(mod, ctx):
        return with_main(mod, fold_constant_adds(mod["main"], stats))

    return _pass
