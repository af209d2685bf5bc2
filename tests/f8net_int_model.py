"""An independent NumPy model of F8Net's official integer-only inference (``int_op_only``).

The test oracle for checkpoint import.  It is written from the method's description
(``F8NET_SPEC`` §1c-1e), reads nothing but a state_dict, and shares no code with
``f8tvm.frontend.f8net``: the layer order, strides, clipping masters and consumers are derived
here from the state_dict keys and the family's rules, the export (BN fold, eta, FLs, integer
weights and biases) is redone in float32 NumPy in the order the official export evaluates it, and
the forward pass follows the official integer model step by step, including its quirks:

* requantize: ``(A + 2**(d-1)) >> d`` with exact ties sent to the even neighbour, a left shift
  when ``d <= 0``, then clamp to [0, 255] or [-127, 127];
* explicit ReLU between body convs; int32 residual adds aligned by left shifts (wrapping);
* ResNet max-pool on the head's int32 output evaluated in float32, then back to int32;
* average pool = int32 sum of the whole map, FL + 6 (the hard-coded 7x7 pool), with the 64/49
  factor folded into the last block's ``body[-1]`` (ResNet: identity branch left unscaled), MBv2's
  tail, MBv1's last pointwise conv;
* logits returned at FL_in_fc + FL_w_fc, unshifted.

``avgpool="corrected"`` models the alternative: the true ``H*W`` and, for ResNet, the factor
folded into the classifier weights so it applies to the whole pooled sum.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

F32 = np.float32
_STAGE_STRIDES = {"mobilenet_v2": [1, 2, 2, 2, 1, 2, 1], "mobilenet_v1": [1, 2, 2, 2, 2]}


def _np(v):
    return v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)


def _torch_sqrt(v):
    """torch's float32 sqrt, which is not always correctly rounded (it differs from NumPy's in
    the last bit for about 1 value in 10**4): the official export runs it, so the model does."""
    import torch

    return torch.sqrt(torch.from_numpy(np.ascontiguousarray(v, F32))).numpy()


def wrap32(a):
    a = np.asarray(a, np.int64)
    return ((a + 2**31) % 2**32) - 2**31


def requantize(a, d: int, signed: bool):
    a = np.asarray(a, np.int64)
    if d > 0:
        half = 1 << (d - 1)
        r = a + half
        tie = np.mod(a, 1 << d) == half
        out = np.where(tie, (r >> (d + 1)) << 1, r >> d)
    else:
        out = a << (-d)
    return np.clip(out, -127, 127) if signed else np.clip(out, 0, 255)


def conv_int(x, w, b, stride, pad):
    """int64 conv, groups 1 or depthwise, exact (float64 products of 8-bit values)."""
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad))).astype(np.float64)
    ho, wo = (h + 2 * pad - kh) // stride + 1, (wd + 2 * pad - kw) // stride + 1
    out = np.zeros((n, o, ho, wo))
    wf = w.astype(np.float64)
    for i in range(kh):
        for j in range(kw):
            xs = xp[:, :, i:i + stride * ho:stride, j:j + stride * wo:stride]
            if cg == 1 and o == c and c > 1:  # depthwise
                out += wf[None, :, 0, i, j, None, None] * xs
            else:
                out += np.einsum("oc,nchw->nohw", wf[:, :, i, j], xs)
    return np.rint(out).astype(np.int64) + np.asarray(b, np.int64)[None, :, None, None]


def maxpool_f32(a):
    """3x3/2/1 max-pool as the official ResNet does it: float32, -inf padding, back to int."""
    f = np.pad(a.astype(F32), ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    h, w = (a.shape[2] - 1) // 2 + 1, (a.shape[3] - 1) // 2 + 1
    out = np.full(a.shape[:2] + (h, w), -np.inf, F32)
    for i in range(3):
        for j in range(3):
            out = np.maximum(out, f[:, :, i:i + 2 * h:2, j:j + 2 * w:2])
    return out.astype(np.int64)


class OfficialIntModel:
    """Export + integer forward of one checkpoint.

    Parameters
    ----------
    sd : dict
        The bare state_dict (no ``module.`` prefix).
    family : 'resnet', 'mobilenet_v2' or 'mobilenet_v1'
    config : 'conventional' or 'tiny'
    avgpool : 'official' or 'corrected'
    """

    def __init__(self, sd, family, config="conventional", avgpool="official"):
        self.sd = {k: _np(v) for k, v in sd.items()}
        self.family, self.avgpool = family, avgpool
        self.normalize = config == "tiny"
        self.no_clipping = config == "tiny"
        self.grid = config == "tiny"
        self._describe()

    # ------------------------------------------------------------------ structure
    def _describe(self):
        sd = self.sd
        blocks = sorted({k.split(".")[0] for k in sd if k.startswith("stage_")},
                        key=lambda p: tuple(int(t) for t in p.split("_")[1::2]))
        self.blocks = []
        master = None
        self.master, self.signed, self.stride, self.pad = {}, {}, {}, {}
        self.signed["head.0"] = self.normalize
        for p in blocks:
            stage, idx = (int(t) for t in p.split("_")[1::2])
            body = []
            while f"{p}.body.{len(body)}.conv.weight" in sd:
                body.append(f"{p}.body.{len(body)}")
            sc = f"{p}.shortcut.0" if f"{p}.shortcut.0.conv.weight" in sd else None
            if self.family == "resnet":
                stride = 2 if (idx == 0 and stage > 0) else 1
                first3 = next(q for q in body if sd[f"{q}.conv.weight"].shape[-1] == 3)
            else:
                stride = _STAGE_STRIDES[self.family][stage] if idx == 0 else 1
                first3 = next(q for q in body if sd[f"{q}.conv.weight"].shape[1] == 1)
            for q in body + ([sc] if sc else []):
                k = sd[f"{q}.conv.weight"].shape[-1]
                self.pad[q] = k // 2
                self.stride[q] = stride if q in (first3, sc) else 1
                self.signed[q] = False
            if self.family == "mobilenet_v2":
                self.signed[body[0]] = stage != 0  # the block input has no ReLU
            w0 = sd[f"{body[0]}.conv.weight"]
            cin = w0.shape[0] if w0.shape[1] == 1 else w0.shape[1]  # depthwise first conv
            cout = sd[f"{body[-1]}.conv.weight"].shape[0]
            residual = self.family != "mobilenet_v1" and sc is None and stride == 1 \
                and cin == cout
            if self.family != "mobilenet_v1":
                self.master[body[0]] = master
                if sc:
                    self.master[sc] = master
                master = body[0] if residual else None
            self.blocks.append((p, body, sc, residual))
        if self.family == "mobilenet_v2":
            self.master["tail.0"] = master
            self.signed["tail.0"] = True
        self.signed["classifier.0"] = False
        # consumers (whose eta divides a layer's output)
        order = ["head.0"] + [b[1][0] for b in self.blocks]
        end = "tail.0" if self.family == "mobilenet_v2" else "classifier.0"
        self.following = {"head.0": order[1], "tail.0": "classifier.0"}
        for k, (_, body, sc, _) in enumerate(self.blocks):
            nxt = order[k + 2] if k + 2 < len(order) else end
            self.following.update(itertools.pairwise(body))
            self.following[body[-1]] = nxt
            if sc:
                self.following[sc] = nxt

    # ------------------------------------------------------------------ export (float32)
    def _root(self, p):
        while self.master.get(p):
            p = self.master[p]
        return p

    def in_fl(self, p):
        if p == "head.0" and not self.normalize:
            return 8
        hi = 7 if self.signed[p] else 8
        return int(np.clip(np.round(self.sd[f"{p}.input_fraclen"].reshape(-1)[0]), 0, hi))

    def eta(self, p):
        if self.no_clipping or (p == "head.0" and not self.normalize):
            return F32(1)
        alpha = F32(abs(self.sd[f"{self._root(p)}.alpha"].reshape(-1)[0]))
        levels = F32(127 if self.signed[p] else 255)
        return F32(2.0 ** self.in_fl(p)) * alpha / levels

    def _weight_fl(self, w):
        if self.grid:
            errs = []
            for fl in range(8):
                s = F32(2.0**fl)
                res = np.clip(np.round(w * s), -127, 127) / s
                errs.append(np.sqrt(np.mean((w - res) ** 2, dtype=F32)))
            return int(np.argmin(errs))
        sigma = F32(np.std(w.astype(np.float64), ddof=1))
        return int(np.clip(np.floor(np.log2(F32(40) * (F32(1) / sigma))), 0, 7))

    def _int(self, w, b, fl_in):
        fl_w = self._weight_fl(w)
        w_int = np.clip(np.round(w * F32(2.0**fl_w)), -127, 127).astype(np.int64)
        acc = F32(2.0 ** (fl_in + fl_w))
        b_int = np.clip(np.round(b * acc), -(2**31 - 1), 2**31 - 1).astype(np.int64)
        return w_int, b_int, fl_in + fl_w

    def conv_params(self, p, scale=None):
        sd = self.sd
        g, beta = sd[f"{p}.bn.weight"].astype(F32), sd[f"{p}.bn.bias"].astype(F32)
        mu, var = sd[f"{p}.bn.running_mean"].astype(F32), sd[f"{p}.bn.running_var"].astype(F32)
        std = _torch_sqrt(var + F32(1e-5))
        e_next = self.eta(self.following[p])
        w = (g / std)[:, None, None, None] * sd[f"{p}.conv.weight"].astype(F32) * self.eta(p) \
            / e_next
        b = (beta - g / std * mu) / e_next
        if scale is not None:
            w, b = w * F32(scale), b * F32(scale)
        return self._int(w, b, self.in_fl(p))

    def fc_params(self, scale=None):
        p = "classifier.0"
        w = self.sd[f"{p}.weight"].astype(F32)
        fl = self._weight_fl(w)
        s = F32(2.0**fl)
        w_q = np.clip(np.round(w * s), -127, 127) / s
        ws = F32(1.0 / math.sqrt(w.shape[0])) * (F32(1) / F32(np.std(w_q.astype(np.float64),
                                                                      ddof=1)))
        b = self.sd[f"{p}.bias"].astype(F32) / self.eta(p) / ws
        if scale is not None:
            w = w * F32(scale)
        return self._int(w, b, self.in_fl(p))

    # ------------------------------------------------------------------ integer forward
    def _conv(self, p, a, fl_a, scale=None):
        w, b, fl = self.conv_params(p, scale)
        q = requantize(a, fl_a - self.in_fl(p), self.signed[p])
        return wrap32(conv_int(q, w, b, self.stride.get(p, 2 if p == "head.0" else 1),
                               self.pad.get(p, w.shape[-1] // 2))), fl

    def forward(self, x_int):
        """``x_int``: uint8 pixels (conventional) or the int8 input at the head's FL (tiny)."""
        a = np.asarray(x_int, np.int64)
        fl = 8 if not self.normalize else self.in_fl("head.0")
        a, fl = self._conv("head.0", a, fl)
        a = np.maximum(a, 0)
        if self.family == "resnet":
            a = maxpool_f32(a)
        last = len(self.blocks) - 1
        for k, (_, body, sc, residual) in enumerate(self.blocks):
            x, fx = a, fl
            for j, p in enumerate(body):
                scale = None
                if k == last and j == len(body) - 1 and self.family != "mobilenet_v2":
                    scale = self._fold_scale(a, p)
                a, fl = self._conv(p, a, fl, scale)
                if j < len(body) - 1:
                    a = np.maximum(a, 0)
            if sc is not None:
                x, fx = self._conv(sc, x, fx)
            if sc is not None or residual:
                f = max(fl, fx)
                a = wrap32((a << (f - fl)) + (x << (f - fx)))
                fl = f
            if self.family in ("resnet", "mobilenet_v1"):
                a = np.maximum(a, 0)
        if self.family == "mobilenet_v2":
            a, fl = self._conv("tail.0", a, fl, self._fold_scale(a, "tail.0", stride=1))
            a = np.maximum(a, 0)
        hw_final = a.shape[2] * a.shape[3]
        shift = 6 if self.avgpool == "official" else round(math.log2(hw_final))
        s = wrap32(a.sum(axis=(2, 3)))
        fl += shift
        fc_scale = None
        if self.avgpool == "corrected" and self.family == "resnet":
            fc_scale = 2.0**shift / hw_final
        w, b, fl_out = self.fc_params(fc_scale)
        q = requantize(s, fl - self.in_fl("classifier.0"), False)
        logits = wrap32(q @ w.T + b[None, :])
        return logits, fl_out

    def _fold_scale(self, a, p, stride=None):
        """The pool factor folded into conv ``p`` (None: not folded there)."""
        if self.avgpool == "official":
            return 64 / 49
        if self.family == "resnet":
            return None  # corrected ResNet: folded into the classifier instead
        st = self.stride[p] if stride is None else stride
        hw = ((a.shape[2] - 1) // st + 1) * ((a.shape[3] - 1) // st + 1)
        f = 2.0 ** round(math.log2(hw)) / hw
        return None if f == 1.0 else f
