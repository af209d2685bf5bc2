"""BiasRows: a blocked conv's bias constant repeated along its output row.

Relax (Relay's successor in TVM) pass, for targets whose ``DotSpec.bias_rows`` asks for it
(``arm-dotprod``).  After :mod:`relay_passes.fold_constant_adds` a channel-blocked conv
(``conv2d_nchwc`` / ``depthwise_nchwc``, output ``(1, CB, H, W, L)``) is followed by one add of
an int32 constant of shape ``(1, CB, 1, 1, L)``: bias + rounding offset, which
:mod:`f8tvm.schedules.bias` then moves into the accumulators' init.  With one value per
channel, the init's load does not depend on the pixel: LLVM hoists it out of the loop over a
row's register tiles and starts every accumulator with a register copy (``mov``, one
instruction per output vector).  This pass gives the constant the shape ``(1, CB, 1, W, L)``,
the same values repeated for every output column: the init then reads the row's own 64 bytes
per pair of pixels, which cannot be hoisted, and the accumulators start from paired loads
(``ldp``: two vectors per instruction) instead of copies.

Measured (emulated instruction counts, one inference, 96x96 input): MobileNet-V2 on
``arm-dotprod`` 7.47 -> 7.33 M (-1.9%); every vector ``mov`` but 7 left its code.  The cost is
memory: ``W`` copies of each bias (MobileNet-V2 at 224x224: its ``.so`` 4.6 -> 5.5 MB; the
modelled L2 misses 0.47 -> 0.49 M on a Cortex-A55-class cache, still below ONNX Runtime's).

Exact: the add's broadcasting gives every output ``(b, c, y, x, l)`` the value it gave before,
``bias[0, c, 0, 0, l]``; nothing else changes.  Only int32 constants of exactly that shape
after a packed conv of that output shape are touched.
"""

from __future__ import annotations

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import bindings, expr_dtype, is_call, rebuild, with_main

R = relax.op
CONV_KERNELS = ("conv2d_nchwc", "depthwise_nchwc")  # PackChannelBlocks' kernels


def _packed_conv(value) -> bool:
    """Whether ``value`` calls one of PackChannelBlocks' conv kernels."""
    if not is_call(value, "relax.call_tir"):
        return False
    callee = value.args[0]
    return isinstance(callee, relax.GlobalVar) and callee.name_hint.startswith(CONV_KERNELS)


def _row_bias(value, producers):
    """``(conv result, bias repeated along the row)`` when ``value`` adds a per-channel int32
    constant to a packed conv's ``(1, CB, H, W, L)`` result, else None."""
    if not is_call(value, "relax.add"):
        return None
    for x, c in (value.args, value.args[::-1]):
        if not (isinstance(x, relax.Var) and _tvm.is_const(c) and _packed_conv(producers.get(x))
                and expr_dtype(x) == expr_dtype(c) == "int32"):
            continue
        shape = _tvm.tensor_shape(x)
        bias = _tvm.const_value(c)
        if len(shape) != 5 or bias.shape != (1, shape[1], 1, 1, shape[4]):
            return None
        return x, np.ascontiguousarray(np.broadcast_to(bias, (*bias.shape[:3], shape[3],
                                                               shape[4])))
    return None


def bias_rows(func, stats: dict | None = None):
    """The rewritten ``func``; ``stats`` (a dict) receives ``widened``, the constants repeated."""
    producers = {b.var: b.value for b in bindings(func)}
    found = {}
    for b in bindings(func):
        m = _row_bias(b.value, producers)
        if m is not None:
            found[b.var] = m

    def handler(b, env, bb):
        if b.var not in found:
            return None
        x, row = found[b.var]
        return bb.emit(R.add(env.get(x, x), relax.const(row)), _tvm.var_name(b.var))

    if stats is not None:
        stats["widened"] = stats.get("widened", 0) + len(found)
    return rebuild(func, handler) if found else func


def BiasRows(stats: dict | None = None):  # noqa: N802  (pass names are PascalCase, as in TVM)
    """The pass over ``main``; ``stats`` as :func:`bias_rows` takes it."""

    @tvm.transform.module_pass(opt_level=0, name="BiasRows")
    def _pass(mod, ctx):
        return with_main(mod, bias_rows(mod["main"], stats))

    return _pass
