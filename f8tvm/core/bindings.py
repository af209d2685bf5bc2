"""Shared machinery for f8tvm's Relax passes: rebuild a straight-line ``main`` binding by binding.

The programs f8tvm handles are single dataflow blocks (a CNN's forward), so a pass is a loop over
bindings that emits replacements with chosen names.  Choosing names matters: every layer keeps
the name of the PyTorch module it came from, which is how plans, reports and errors refer to it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax


def substitute(expr, env: dict):
    """``expr`` with every variable replaced through ``env`` (old Var -> new Expr)."""
    if isinstance(expr, relax.Var):
        return env.get(expr, expr)
    if isinstance(expr, relax.Call):
        args = [substitute(a, env) for a in expr.args]
        return relax.Call(expr.op, args, expr.attrs, expr.ty_args)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute(f, env) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(expr.tuple_value, env), expr.index)
    return expr


def is_call(v, op: str) -> bool:
    """Whether ``v`` is a call of the Relax operator named ``op`` (``"relax.add"``, ...)."""
    return isinstance(v, relax.Call) and v.op.name == op


def expr_dtype(e) -> str | None:
    """The dtype of a tensor-typed Relax expression, else None."""
    ty = getattr(e, "ty", None)
    return str(ty.dtype) if isinstance(ty, _tvm.TensorType) else None


def int_const(v) -> int | None:
    """The integer of a scalar operand (an IntImm, or a PrimValue holding one: a clip bound),
    else None."""
    v = getattr(v, "value", None)
    v = getattr(v, "value", v)  # PrimValue -> IntImm -> int
    return int(v) if isinstance(v, int) else None


def fits_int32(v) -> bool:
    """Whether every value of the integer array ``v`` is representable in int32."""
    v = np.asarray(v)
    return not v.size or (int(v.min()) >= -(2**31) and int(v.max()) <= 2**31 - 1)


def channel_shape(shape) -> tuple:
    """The broadcast shape of a per-channel constant for a tensor of ``shape``: ``(1, C)``,
    ``(1, C, 1, 1)`` or, channel-blocked, ``(1, C/b, 1, 1, b)``."""
    out = [1] * len(shape)
    if len(shape) >= 2:
        out[1] = shape[1]
    if len(shape) == 5:
        out[4] = shape[4]
    return tuple(out)


def bindings(func) -> list:
    """The bindings of a function whose body is one (dataflow) block."""
    blocks = func.body.blocks
    if len(blocks) != 1:
        raise ValueError(f"expected a single binding block, found {len(blocks)}")
    return list(blocks[0].bindings)


def use_counts(func) -> dict:
    """Number of uses of every variable, the function's return counting as a use."""
    counts: dict = {}

    def visit(e):
        if isinstance(e, relax.Var):
            counts[e] = counts.get(e, 0) + 1

    for b in bindings(func):
        relax.analysis.post_order_visit(b.value, visit)
    relax.analysis.post_order_visit(func.body.body, visit)
    return counts


Handler = Callable[[object, dict, relax.BlockBuilder], object]


def rebuild(func, handler: Handler | None = None, params=None, name: Callable | None = None):
    """Rebuild ``func`` binding by binding.

    ``handler(binding, env, bb)`` may emit replacement bindings with ``bb`` and return the new
    expression for ``binding.var``; returning ``None`` keeps the binding (with substituted
    arguments).  ``name(binding)`` picks the name of kept bindings.  ``params`` replaces the
    function's parameters (a list of new Vars, same order).
    """
    bb = relax.BlockBuilder()
    old_params = list(func.params)
    new_params = params if params is not None else old_params
    env = {old: new for old, new in zip(old_params, new_params)}
    attrs = dict(func.attrs) if func.attrs is not None else {}
    attrs.pop("global_symbol", None)
    with bb.function("main", new_params, attrs=attrs):
        with bb.dataflow():
            for b in bindings(func):
                new = handler(b, env, bb) if handler else None
                if new is None:
                    label = name(b) if name else _tvm.var_name(b.var)
                    new = bb.emit(substitute(b.value, env), label)
                env[b.var] = new
            out = bb.emit_output(substitute(func.body.body, env))
        bb.emit_func_output(out)
    return bb.get()["main"]


def copy_module(mod):
    """A new module holding ``mod``'s functions: what a pass may change without changing the
    caller's module (assigning ``mod[name]`` changes it in place)."""
    return _tvm.tvm.IRModule(dict(mod.functions_items()), attrs=mod.attrs)


def with_main(mod, main):
    """A new module: ``mod`` with its ``main`` replaced by ``main``."""
    out = copy_module(mod)
    out[mod.get_global_var("main")] = main.with_attr("global_symbol", "main")
    return out
