"""NumPy integer reference interpreter: the oracle for every bit-exactness test.

It executes a layer graph under a FixedPointPlan with int64 NumPy arithmetic only: no TVM, no
torch.  It shares nothing with the Relax rewrite but the plan; its requantization is the plain
floor-and-tie formula of :func:`f8tvm.core.fixedpoint.rq_reference`, while the compiler emits an
add-and-shift trick, so agreement is a real check.
"""

from __future__ import annotations

import numpy as np

from f8tvm.core.fixedpoint import fix_quant, qrange, rq_reference

_I32 = (-(2**31), 2**31 - 1)


def _cvec(v, ndim):
    v = np.asarray(v, np.int64)
    return v.reshape((1, -1) + (1,) * (ndim - 2))


def _conv_int(x, w, b, attrs):
    """int64 conv2d (NCHW/OIHW), exact via float64 products (|sums| << 2**53)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    g = attrs["groups"]
    (sh, sw), (dh, dw) = attrs["strides"], attrs["dilation"]
    pt, pl, pb, pr = attrs["padding"]
    xp = np.pad(x, ((0, 0), (0, 0), (pt, pb), (pl, pr))).astype(np.float64)
    ekh, ekw = (kh - 1) * dh + 1, (kw - 1) * dw + 1
    win = np.lib.stride_tricks.sliding_window_view(xp, (ekh, ekw), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # n, c, ho, wo, kh, kw
    ho, wo = win.shape[2], win.shape[3]
    win = win.reshape(n, g, cg, ho, wo, kh, kw)
    wg = w.reshape(g, o // g, cg, kh, kw).astype(np.float64)
    out = np.einsum("ngchwkl,gockl->ngohw", win, wg, optimize=True)
    out = np.rint(out).astype(np.int64).reshape(n, o, ho, wo)
    return out + _cvec(b, 4)


def _check32(name, a):
    if a.size and (a.min() < _I32[0] or a.max() > _I32[1]):
        raise OverflowError(f"{name}: int32 overflow in the integer program")
    return a


def run_reference(graph, plan, q_input, return_all=False):
    """Run the integer program on 8-bit input ``q_input`` (values at ``plan.input_fl``).

    Returns the int64 array of the output (int32 range) or, with ``return_all``, every tensor.
    """
    env = {graph.input: np.asarray(q_input, np.int64)}
    lo, hi = qrange(plan.input_signed)
    if env[graph.input].min() < lo or env[graph.input].max() > hi:
        raise ValueError(f"input values outside [{lo}, {hi}]")
    for n in graph.nodes[1:]:
        args = [env[i] for i in n.inputs]
        a = args[0]
        if n.is_layer:
            lp = plan.layers[n.name]
            shift = plan.fl[n.inputs[0]] - lp.in_fl
            q = rq_reference(a, _cvec(shift, a.ndim), lp.in_signed)
            if n.op == "conv2d":
                out = _conv_int(q, lp.w_int.astype(np.int64), lp.b_int, n.attrs)
            else:
                out = q @ lp.w_int.astype(np.int64).T + lp.b_int.astype(np.int64)[None, :]
        elif n.op == "relu":
            out = np.maximum(a, 0)
        elif n.op == "clip":
            out = np.minimum(np.maximum(a, 0), _cvec(plan.clip_hi[n.name], a.ndim))
        elif n.op == "add":
            # each operand is aligned to the add's FL: shifted left, or rounded right where the
            # plan lowered the FL to keep the sum in int32
            f = plan.fl[n.name]
            terms = [_check32(f"{n.name} operand {i}",
                              rq_reference(t, _cvec(plan.fl[i] - f, t.ndim), clamp=False))
                     for t, i in zip(args, n.inputs)]
            out = terms[0] + terms[1]
        elif n.op == "max_pool2d":
            at = n.attrs
            pt, pl, pb, pr = at["padding"]
            xp = np.pad(a, ((0, 0), (0, 0), (pt, pb), (pl, pr)), constant_values=_I32[0])
            (kh, kw), (sh, sw), (dh, dw) = at["pool_size"], at["strides"], at["dilation"]
            win = np.lib.stride_tricks.sliding_window_view(
                xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
            out = win[:, :, ::sh, ::sw, ::dh, ::dw].max(axis=(4, 5))
        elif n.op == "global_avg_pool":
            if n.name in plan.pool_shift:  # inputs rounded right before the sum
                a = rq_reference(a, _cvec(plan.pool_shift[n.name], a.ndim), clamp=False)
            out = a.sum(axis=(2, 3), keepdims=True)
        elif n.op == "reshape":
            out = a.reshape(a.shape[0], *n.shape[1:])
        else:
            raise NotImplementedError(n.op)
        env[n.name] = _check32(n.name, out)
    return env if return_all else env[graph.output]


def quantize_input(x, plan):
    """Float input -> 8-bit integers at ``plan.input_fl`` (ties to even, clamped)."""
    return fix_quant(x, plan.input_fl, plan.input_signed).astype(np.int64)
