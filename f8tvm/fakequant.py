"""The fake-quantized PyTorch model: the float simulation of a FixedPointPlan.

Every tensor holds F8Net's stored value ``y = real / eta`` in float64; quantization points apply
``fix_quant`` (``torch.round`` = ties to even, clamp) exactly where the integer program
requantizes, weights are ``w_int * 2**-w_fl`` and biases ``b_int * 2**-acc_fl``.  All values are
dyadic rationals far below 2**53, so the output equals the integer program's output times
``2**-FL`` exactly; the tests check that.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from f8tvm.core.fixedpoint import qrange


class FakeQuantModel(torch.nn.Module):
    def __init__(self, graph, plan):
        super().__init__()
        self.graph, self.plan = graph, plan

    def _cvec(self, v, ndim):
        return torch.as_tensor(np.asarray(v, np.float64)).reshape((1, -1) + (1,) * (ndim - 2))

    def _quant(self, y, fl, signed):
        lo, hi = qrange(signed)
        return torch.clamp(torch.round(y * 2.0**fl), lo, hi) * 2.0**-fl

    def _round(self, y, fl, fl_in, ndim):
        """``y`` (at ``fl_in``) rounded to ``fl`` (ties to even) where ``fl < fl_in``."""
        fl = np.minimum(np.asarray(fl), np.asarray(fl_in))
        if np.array_equal(fl, fl_in):
            return y
        s = self._cvec(np.exp2(fl), ndim)
        return torch.round(y * s) / s

    def forward(self, x, return_stored=False):
        g, p = self.graph, self.plan
        env = {g.input: self._quant(torch.as_tensor(x, dtype=torch.float64), p.input_fl,
                                    p.input_signed)}
        for n in g.nodes[1:]:
            a = env[n.inputs[0]]
            if n.is_layer:
                lp = p.layers[n.name]
                q = self._quant(a, lp.in_fl, lp.in_signed)
                wshape = (-1,) + (1,) * (lp.w_int.ndim - 1)
                w = torch.as_tensor(lp.w_int.astype(np.float64) * np.exp2(-lp.w_fl).reshape(wshape))
                b = torch.as_tensor(lp.b_int.astype(np.float64) * np.exp2(-lp.acc_fl))
                if n.op == "conv2d":
                    at = n.attrs
                    pt, pl, pb, pr = at["padding"]
                    out = F.conv2d(F.pad(q, (pl, pr, pt, pb)), w, b, at["strides"], 0,
                                   at["dilation"], at["groups"])
                else:
                    out = F.linear(q, w, b)
            elif n.op == "relu":
                out = torch.relu(a)
            elif n.op == "clip":
                hi = self._cvec(p.clip_hi[n.name] * np.exp2(-p.fl[n.name]), a.ndim)
                out = torch.minimum(torch.relu(a), hi)
            elif n.op == "add":
                # an operand above the add's FL is rounded to it (the plan lowered the FL)
                f = p.fl[n.name]
                out = sum(self._round(env[i], f, p.fl[i], a.ndim) for i in n.inputs)
            elif n.op == "max_pool2d":
                at = n.attrs
                pt, pl, pb, pr = at["padding"]
                out = F.max_pool2d(F.pad(a, (pl, pr, pt, pb), value=-float("inf")),
                                   at["pool_size"], at["strides"], 0, at["dilation"])
            elif n.op == "global_avg_pool":
                # the stored value is the sum / 2**k; the HW / 2**k factor lives in eta.  k is
                # the plan's (an F8Net checkpoint keeps the official k = 6 at any H*W)
                if n.name in p.pool_shift:  # inputs rounded right before the sum
                    f = p.fl[n.inputs[0]] - p.pool_shift[n.name]
                    a = self._round(a, f, p.fl[n.inputs[0]], a.ndim)
                k = p.fl[n.name] - p.fl[n.inputs[0]] + p.pool_shift.get(n.name, 0)
                out = a.sum(dim=(2, 3), keepdim=True) * self._cvec(np.exp2(-k), a.ndim)
            elif n.op == "reshape":
                out = a.reshape(a.shape[0], *n.shape[1:])
            else:
                raise NotImplementedError(n.op)
            env[n.name] = out
        y = env[g.output]
        if return_stored:
            return y
        return y * p.eta[g.output]
