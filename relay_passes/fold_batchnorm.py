"""FoldBatchNorm: fold inference BatchNorm into the preceding conv2d's weights and a bias add.

Why: F8Net quantizes the *effective* (BN-folded) weight, ``W_eff = W * gamma / sqrt(var + eps)``,
with bias ``b_eff = beta + (b - mean) * gamma / sqrt(var + eps)``.  TVM has a similar pass, but it
renames the conv; this one keeps every binding's name (the PyTorch module it came from).
Rewrite (Relax): ``bn(conv2d(x, W) [+ b])[0]  ->  conv2d(x, W_eff) + b_eff``.
"""

from __future__ import annotations

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import bindings, is_call, rebuild, use_counts, with_main
from f8tvm.core.errors import UnsupportedOpError


def _producer_map(func):
    return {b.var: b.value for b in bindings(func)}


def _fold(func):
    producers = _producer_map(func)
    uses = use_counts(func)
    plan = {}  # bn binding var -> (conv var, bias var or None, scale, shift)
    for b in bindings(func):
        v = b.value
        if not (isinstance(v, relax.Call) and v.op.name == "relax.nn.batch_norm"):
            continue
        if bool(getattr(v.attrs, "training", False)):  # batch statistics: nothing to fold
            raise UnsupportedOpError(
                f"batch_norm '{_tvm.var_name(b.var)}' is in training mode (it normalizes with "
                "each batch's statistics); export the model in eval mode")
        x, gamma, beta, mean, var = v.args
        consts = [gamma, beta, mean, var]
        if not all(_tvm.is_const(c) for c in consts):
            raise UnsupportedOpError(
                f"batch_norm '{_tvm.var_name(b.var)}' has non-constant statistics")
        gamma, beta, mean, var = (_tvm.const_value(c).astype(np.float64) for c in consts)
        inv = gamma / np.sqrt(var + float(v.attrs.epsilon))
        conv_var, bias = x, None
        src = producers.get(x)
        # conv2d + bias add (a Conv2d with bias=True) before the BN
        if isinstance(src, relax.Call) and src.op.name == "relax.add" and uses.get(x) == 1:
            a, c = src.args
            cval = producers.get(c, c)
            if isinstance(cval, relax.Call) and cval.op.name == "relax.reshape":
                cval = cval.args[0]
            if _tvm.is_const(cval):
                conv_var, bias = a, _tvm.const_value(cval).reshape(-1).astype(np.float64)
                src = producers.get(a)
        if not (isinstance(src, relax.Call) and src.op.name == "relax.nn.conv2d"
                and _tvm.is_const(src.args[1]) and uses.get(conv_var) == 1):
            raise _unfoldable(b.var, src, producers)
        b0 = bias if bias is not None else 0.0
        plan[b.var] = (conv_var, inv, beta + (b0 - mean) * inv)
    return plan


def _unfoldable(var, src, producers) -> UnsupportedOpError:
    """The error for a BatchNorm with no convolution to fold into, saying what it follows;
    ``.binding`` names the BN's binding so the importer can point at the PyTorch module."""
    if isinstance(src, relax.Call) and src.op.name == "relax.add":  # a Linear's bias add
        src = next((producers.get(a) for a in src.args
                    if is_call(producers.get(a), "relax.matmul")), src)
    if is_call(src, "relax.matmul"):
        what = ("follows a Linear: f8tvm folds a BatchNorm only into the Conv2d right before "
                "it; fold it into the Linear (weight and bias times gamma / sqrt(var + eps), "
                "plus beta - mean * that) or remove it")
    elif is_call(src, "relax.nn.conv2d"):
        what = ("follows a convolution whose output is also used elsewhere: f8tvm folds a "
                "BatchNorm only into a Conv2d that feeds nothing else")
    else:
        op = src.op.name.replace("relax.", "") if isinstance(src, relax.Call) else "an input"
        what = (f"follows {op}, not a Conv2d: f8tvm folds every BatchNorm into the Conv2d "
                f"right before it")
    err = UnsupportedOpError(f"BatchNorm {what}")
    err.binding = _tvm.var_name(var)
    return err


def fold_batchnorm(func):
    """``func`` with every inference batch_norm folded into its conv2d.  Called from plain
    Python, its :class:`UnsupportedOpError` keeps ``.binding`` (raised inside the TVM pass, the
    error crosses tvm-ffi as a new exception without its attributes)."""
    plan = _fold(func)
    if not plan:
        return func
    convs = {conv: (bn, inv) for bn, (conv, inv, _) in plan.items()}
    folded = {}  # bn var -> new add var

    def handler(b, env, bb):
        v = b.value
        if b.var in convs:
            bn, inv = convs[b.var]
            w = _tvm.const_value(v.args[1]).astype(np.float64)
            w = (w * inv.reshape(-1, 1, 1, 1)).astype(np.float32)
            call = relax.op.nn.conv2d(env[v.args[0]], relax.const(w), strides=v.attrs.strides,
                                      padding=v.attrs.padding, dilation=v.attrs.dilation,
                                      groups=v.attrs.groups, out_dtype="float32")
            return bb.emit(call, _tvm.var_name(b.var))
        if b.var in plan:
            conv, _, shift = plan[b.var]
            bias = relax.const(shift.astype(np.float32).reshape(1, -1, 1, 1))
            folded[b.var] = relax.op.add(env[conv], bias)
            return relax.Tuple([])  # only ever read through [0], handled below
        if isinstance(v, relax.TupleGetItem) and v.tuple_value in folded and v.index == 0:
            return bb.emit(folded[v.tuple_value], _tvm.var_name(b.var))
        return None

    return rebuild(func, handler)


@tvm.transform.module_pass(opt_level=0, name="FoldBatchNorm")
def FoldBatchNorm(mod, ctx):  # noqa: N802  (pass names are PascalCase, as in TVM)
    """Fold every inference batch_norm into the conv2d that feeds it (names preserved)."""
    return with_main(mod, fold_batchnorm(mod["main"]))
