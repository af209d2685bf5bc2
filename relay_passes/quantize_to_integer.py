"""QuantizeToInteger: rewrite the float program into F8Net's integer-only program, from a plan.

Relax (Relay's successor in TVM) pass.  Reads only the FixedPointPlan and the layer graph; emits
a new ``main(q_in: int8|uint8) -> (int32,)`` where, per node (``T`` = int32 tensors, FLs per
channel, ``>>`` arithmetic):

* conv2d / dense:  ``q = RQ(T_src, d = fl_src - in_fl)``;
                   ``acc = conv(q, w_int8, int32) + b_int32``
* RQ(T, d):        ``T' = T << max(-d, 0)``, ``r = max(d, 0)``,
                   ``u = T' + (2**(r-1) - 1)``, ``y = (u + ((u >> r) & 1)) >> r``
                   (= round_half_even(T'/2**r); the constants are 0 where r = 0),
                   then ``clip`` to [0, 255] / [-127, 127] and cast

Why ``y`` rounds half to even: write ``T' = q * 2**r + m``, ``0 <= m < 2**r``.  Below the half
(``m < 2**(r-1)``) ``u`` and ``u + 1`` both floor to ``q``; above it both floor to ``q + 1``; so
the parity bit only matters at the tie, ``m = 2**(r-1)``, where ``u = q * 2**r + 2**r - 1``:
``u >> r = q`` and ``y = q + (q & 1)``, the even neighbour.  Taking the parity of ``u`` rather
than of ``T'`` makes the offset the first operation on ``T'``, so a constant added just before
(the conv's bias) folds into it (:mod:`relay_passes.fold_constant_adds`).
* relu / ReLU6:    ``max(T, 0)`` / ``min(max(T, 0), hi_int)``
* add (residual):  ``(A << (f - fl_a)) + (B << (f - fl_b))``, ``f = max(fl_a, fl_b)``; stays int32
                   (where that could pass int32, the plan's ``f`` is lower and an operand is
                   rounded right instead: :mod:`f8tvm.core.bounds`)
* max_pool2d:      ``max_pool(RQ(T))`` on int8/uint8 when every consumer of the pool is a layer
                   quantizing its input to one format (RQ is monotone, so this equals
                   ``RQ(max_pool(T))`` exactly); on int32 when the pool feeds a residual stream,
                   which F8Net keeps at 32 bits (ResNet's stem pool feeds the first identity add)
* global avgpool:  ``sum`` over H, W in int32; the 2**k / HW factor lives in eta (folded offline);
                   where the sum could pass int32 its inputs are first clipped where every reader
                   saturates anyway, or rounded right by the plan's ``pool_shift``
* RQ's left shift: where it could pass int32, ``T`` is clipped first to where the 8-bit
                   result saturates anyway (exact)

No multiplication is emitted outside conv2d/dense, whose operands are 8-bit.
"""

from __future__ import annotations

import numpy as np

from f8tvm.core import _tvm, bounds
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import is_call
from f8tvm.core.fixedpoint import INT32_MAX, qrange

R = relax.op


def _const(v, ndim=None, dtype="int32"):
    """A scalar constant when ``v`` is uniform, else a (1, C, 1, 1) / (1, C) one."""
    v = np.asarray(v)
    if v.size == 1 or np.all(v == v.flat[0]):
        return relax.const(np.array(v.flat[0], dtype)), True
    return relax.const(v.astype(dtype).reshape((1, -1) + (1,) * (ndim - 2))), False


def rounding_constants(right):
    """The constants of the ties-to-even right shift by ``right`` (0 where ``right`` is 0): the
    rounding offset ``2**(r-1) - 1`` and the parity mask."""
    right = np.asarray(right, np.int64)
    return (np.where(right > 0, (np.int64(1) << np.maximum(right - 1, 0)) - 1, 0),
            np.where(right > 0, 1, 0))


def emit_rounding_shift(bb, t, shift, name):
    """Emit ``t`` shifted by ``shift`` (per channel; > 0: right, rounding ties to even; < 0:
    left), the integer part of ``RQ`` (see module doc)."""
    shift = np.asarray(shift, np.int64)
    ndim = len(_tvm.tensor_shape(t))
    left, right = np.maximum(-shift, 0), np.maximum(shift, 0)
    if left.any():
        t = bb.emit(R.left_shift(t, _const(left, ndim)[0]), f"{name}_lsh")
    if right.any():
        rounding, parity = rounding_constants(right)
        r_c = _const(right, ndim)[0]
        u = bb.emit(R.add(t, _const(rounding, ndim)[0]), f"{name}_rnd")
        lsb = R.bitwise_and(R.right_shift(u, r_c), _const(parity, ndim)[0])
        t = bb.emit(R.right_shift(R.add(u, lsb), r_c), f"{name}_rsh")
    return t


def emit_requantize(bb, t, shift, signed, name, saturate=None):
    """Emit ``RQ(t, shift)`` (see module doc) and the cast to int8/uint8.  ``saturate``: per
    channel, where a left shift of ``t`` could pass int32 (:func:`f8tvm.core.bounds.
    needs_saturation`): there ``t`` is first clipped to where the result saturates anyway."""
    if saturate is not None and np.any(saturate):
        shift = np.asarray(shift, np.int64)
        c = np.where(saturate, bounds.saturating_bound(signed, np.maximum(-shift, 0)),
                     INT32_MAX)
        ndim = len(_tvm.tensor_shape(t))
        t = bb.emit(R.minimum(R.maximum(t, _const(-c, ndim)[0]), _const(c, ndim)[0]),
                    f"{name}_sat")
    t = emit_rounding_shift(bb, t, shift, name)
    lo, hi = qrange(signed)
    t = bb.emit(R.clip(t, lo, hi), f"{name}_clip")
    return bb.emit(R.astype(t, "int8" if signed else "uint8"), f"{name}_q")


def match_rounding_right_shift(value, producers):
    """``(T, r)`` when ``value`` is the ties-to-even ``right_shift`` of
    :func:`emit_rounding_shift` (``r`` its constant shift, int64), else None.  ``producers``:
    Var -> bound expression of the function."""
    if not (is_call(value, "relax.right_shift") and _tvm.is_const(value.args[1])):
        return None
    r = _tvm.const_value(value.args[1])
    total = producers.get(value.args[0])
    if not is_call(total, "relax.add"):
        return None
    args = list(total.args)
    for u, b in (args, args[::-1]):
        rounded, lsb = producers.get(u), producers.get(b)
        if not (is_call(rounded, "relax.add") and is_call(lsb, "relax.bitwise_and")
                and _tvm.is_const(rounded.args[1]) and _tvm.is_const(lsb.args[1])):
            continue
        inner = producers.get(lsb.args[0])
        if not (is_call(inner, "relax.right_shift") and inner.args[0].same_as(u)
                and _tvm.is_const(inner.args[1])
                and np.array_equal(_tvm.const_value(inner.args[1]), r)):
            continue
        r64 = r.astype(np.int64)
        rounding, parity, rb = np.broadcast_arrays(
            _tvm.const_value(rounded.args[1]).astype(np.int64),
            _tvm.const_value(lsb.args[1]).astype(np.int64), r64)
        want_rounding, want_parity = rounding_constants(rb)
        if np.array_equal(rounding, want_rounding) and np.array_equal(parity, want_parity):
            return rounded.args[0], r64
    return None


def integer_function(graph, plan):
    """Build the integer Relax function of ``graph`` under ``plan``."""
    bb = relax.BlockBuilder()
    in_shape = graph[graph.input].shape
    x = relax.Var("q_in", _tvm.TensorType(in_shape, "int8" if plan.input_signed else "uint8"))
    env = {}  # node -> int32 (or the 8-bit input) Relax var
    pooled8 = _int8_pools(graph, plan)  # pool node -> (in_fl, signed) of its 8-bit form
    walk = bounds.analyse(graph, plan)  # value ranges: where a shift needs saturating
    q8 = {}  # node -> its 8-bit Relax var, when the 8-bit form is all consumers need
    with bb.function("main", [x]):
        with bb.dataflow():
            env[graph.input] = x
            wide = []  # the input as int32, emitted once when first needed

            def wide_input():
                if not wide:
                    wide.append(bb.emit(R.astype(x, "int32"), "q_in_i32"))
                return wide[0]

            for n in graph.nodes[1:]:
                src = n.inputs[0]
                if n.is_layer:
                    lp = plan.layers[n.name]
                    if src == graph.input and lp.in_fl == plan.input_fl:
                        q = x
                    elif src in q8:
                        q = q8[src]
                    else:
                        t = env[src]
                        if src == graph.input:
                            t = wide_input()
                        shift = plan.fl[src] - lp.in_fl
                        q = emit_requantize(bb, t, shift, lp.in_signed, n.name,
                                            bounds.needs_saturation(*walk.ranges[src], shift))
                    out = _emit_layer(bb, n, lp, q)
                elif n.name in pooled8:
                    in_fl, signed = pooled8[n.name]
                    shift = plan.fl[src] - in_fl
                    q = emit_requantize(bb, env[src], shift, signed, n.name,
                                        bounds.needs_saturation(*walk.ranges[src], shift))
                    q8[n.name] = out = _emit_max_pool(bb, n, q)
                else:
                    args = []
                    for i in n.inputs:
                        if i == graph.input:
                            args.append(wide_input())
                        else:
                            args.append(env[i])
                    out = _emit_elementwise(bb, n, plan, args, walk)
                env[n.name] = out
            result = bb.emit_output(relax.Tuple([env[graph.output]]))
        bb.emit_func_output(result)
    return bb.get()["main"]


def _emit_layer(bb, n, lp, q):
    w = relax.const(lp.w_int.astype("int8"))
    if n.op == "conv2d":
        a = n.attrs
        acc = R.nn.conv2d(q, w, strides=a["strides"], padding=a["padding"],
                          dilation=a["dilation"], groups=a["groups"], out_dtype="int32")
        b = relax.const(lp.b_int.astype("int32").reshape(1, -1, 1, 1))
    else:
        acc = R.matmul(q, relax.const(np.ascontiguousarray(lp.w_int.T).astype("int8")),
                       out_dtype="int32")
        b = relax.const(lp.b_int.astype("int32").reshape(1, -1))
    acc = bb.emit(acc, f"{n.name}_acc")
    return bb.emit(R.add(acc, b), n.name)


def _int8_pools(graph, plan) -> dict:
    """Max-pools whose consumers are all layers reading one 8-bit format (see module doc)."""
    consumers = graph.consumers()
    out = {}
    for n in graph.nodes:
        if n.op != "max_pool2d" or n.inputs[0] == graph.input:
            continue
        users = [graph[c] for c in consumers.get(n.name, [])]
        if not users or n.name == graph.output or not all(u.is_layer for u in users):
            continue
        formats = {(int(plan.layers[u.name].in_fl), bool(plan.layers[u.name].in_signed))
                   for u in users}
        if len(formats) == 1:
            out[n.name] = formats.pop()
    return out


def _emit_max_pool(bb, n, a):
    at = n.attrs
    return bb.emit(R.nn.max_pool2d(a, pool_size=at["pool_size"], strides=at["strides"],
                                   padding=at["padding"], dilation=at["dilation"]), n.name)


def _emit_elementwise(bb, n, plan, args, walk):
    a = args[0]
    ndim = len(n.shape)
    zero = relax.const(np.array(0, "int32"))
    if n.op == "relu":
        return bb.emit(R.maximum(a, zero), n.name)
    if n.op == "clip":
        hi, _ = _const(plan.clip_hi[n.name], ndim)
        return bb.emit(R.minimum(R.maximum(a, zero), hi), n.name)
    if n.op == "add":
        f = plan.fl[n.name]
        terms = []
        for k, (t, i) in enumerate(zip(args, n.inputs)):
            s = f - plan.fl[i]  # > 0: aligned up; < 0: rounded down (f8tvm.core.bounds)
            if (s < 0).any():
                terms.append(emit_rounding_shift(bb, t, -s, f"{n.name}_op{k}"))
            else:
                terms.append(R.left_shift(t, _const(s, ndim)[0]) if s.any() else t)
        return bb.emit(R.add(*terms), n.name)
    if n.op == "max_pool2d":
        return _emit_max_pool(bb, n, a)
    if n.op == "global_avg_pool":
        if n.name in walk.pool_clip:  # saturate where every reader saturates (bounds)
            a = bb.emit(R.minimum(a, _const(walk.pool_clip[n.name], ndim)[0]), f"{n.name}_sat")
        if n.name in plan.pool_shift:
            a = emit_rounding_shift(bb, a, plan.pool_shift[n.name], f"{n.name}_pre")
        return bb.emit(R.sum(a, axis=[2, 3], keepdims=True), n.name)
    if n.op == "reshape":
        return bb.emit(R.reshape(a, n.shape), n.name)
    raise NotImplementedError(n.op)


def QuantizeToInteger(graph, plan):  # noqa: N802  (pass names are PascalCase, as in TVM)
    """The pass: replaces ``main`` by the integer program of ``graph`` under ``plan``."""

    @tvm.transform.module_pass(opt_level=0, name="QuantizeToInteger")
    def _pass(mod, ctx):
        return tvm.IRModule({"main": integer_function(graph, plan)})

    return _pass
