"""NumPy side of the single-kernel tests: the blocked layout and an int64 convolution."""

import numpy as np


def block(x, lanes=8):
    """NCHW -> ``(N, C/lanes, H, W, lanes)``."""
    n, c, h, w = x.shape
    return np.ascontiguousarray(x.reshape(n, c // lanes, lanes, h, w).transpose(0, 1, 3, 4, 2))


def unblock(y):
    n, cb, h, w, b = y.shape
    return y.transpose(0, 1, 4, 2, 3).reshape(n, cb * b, h, w)


def conv(x, w, stride, pad, depthwise=False, dilation=1):
    """int64 conv of NCHW ``x`` with OIHW ``w`` (``(C, 1, KH, KW)`` with ``depthwise``), zero
    padding ``(top, left, bottom, right)``."""
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    top, left, bottom, right = pad
    xp = np.zeros((n, c, h + top + bottom, wd + left + right), np.int64)
    xp[:, :, top:top + h, left:left + wd] = x
    oh = (h + top + bottom - (kh - 1) * dilation - 1) // stride + 1
    ow = (wd + left + right - (kw - 1) * dilation - 1) // stride + 1
    out = np.zeros((n, o, oh, ow), np.int64)
    for ky in range(kh):
        for kx in range(kw):
            y0, x0 = ky * dilation, kx * dilation
            rows = slice(y0, y0 + stride * (oh - 1) + 1, stride)
            cols = slice(x0, x0 + stride * (ow - 1) + 1, stride)
            win = xp[:, :, rows, cols]
            tap = w[:, :, ky, kx].astype(np.int64)
            if depthwise:
                out += win * tap[None, :, 0, None, None]
            else:
                out += np.einsum("nchw,oc->nohw", win, tap)
    return out
