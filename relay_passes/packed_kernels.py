"""Tensor-expression definitions of the packed ("NCHW[b]c") integer kernels.

What they compute is exactly the NCHW integer op (see ``quantize_to_integer``); the blocked layout
exists so the dot-product instructions apply (``schedules/`` makes them fast).  Layouts:

* activations ``(N, C/b, H, W, b)``: channel ``c`` at ``[.., c // b, .., c % b]``
* conv weights ``(O/ob, I/ib, KH, KW, ib/k, ob, k)``: the innermost ``(ob, k)`` tile is the
  ``B`` operand of a ``k``-deep dot product (k = 4: VNNI ``vpdpbusd``, ARM ``sdot``;
  k = 2: AVX2 ``vpmaddwd``); or, for block pairs (``conv2d_nchwc(..., block_pairs=True)``),
  lane-major ``(O/ob, I/(2 ib), KH, KW, ob, 2 ib)``
* depthwise weights ``(C/b, KH, KW, b)``, or for the tap-pair form ``(C/b, KH, ceil(KW/2), b, 2)``
  (see :func:`depthwise_pairs_nchwc`)

A conv may read its input through a padded copy widened to int16 (``wide_data``); the copy holds
the same 8-bit values (the multiplication audit checks every store into it).
"""

from __future__ import annotations

from f8tvm.core._tvm import te, tir

CONV_BLOCK = "conv_nchwc"  # schedules find the kernels by these block names
DEPTHWISE_BLOCK = "depthwise_nchwc"
PAD_BLOCK = "pad_nchwc"
PAIR_BLOCK = "pairs_nchwc"  # the column groups a depthwise conv reads (rewrite)
PAIR_COPY = "block_pairs_nchwc"  # the block-pair copy a lanes-form conv reads
PAD_INTERIOR = "f8tvm_pad_interior"  # the pad block's annotation: [top, h, left, w]
# a byte stream's pad block (``conv2d_stream``, one column a row): [top, h, left, w], the
# columns counted in bytes of the row
PAD_STREAM = "f8tvm_pad_stream"
# the conv block's annotations: [column stride, column dilation] and [row stride, row dilation]
# of its window (schedules that load several window columns of a pixel, or several output rows'
# inputs, at once need them)
CONV_COLUMNS = "f8tvm_conv_columns"
CONV_ROWS = "f8tvm_conv_rows"


def _pad(data, padding, pad_value, extra_right=0, dtype=None):
    """The padded input (``padding``: top, left, bottom, right), converted to ``dtype`` if
    given (a widened copy is made even without padding)."""
    top, left, bottom, right = padding
    right += extra_right
    dtype = dtype or data.dtype
    if not any(padding) and not extra_right and dtype == data.dtype:
        return data
    n, cc, h, w, cb = data.shape

    def value(i, c, y, x, b):
        v = data[i, c, y - top, x - left, b].astype(dtype)
        if not (top or left or bottom or right):
            return v
        inside = tir.all(y >= top, y < h + top, x >= left, x < w + left)
        return tir.if_then_else(inside, v, tir.const(pad_value, dtype))

    # where the input lies in the padded copy (rows, columns): schedules split the copy there
    return te.compute((n, cc, h + top + bottom, w + left + right, cb), value, name=PAD_BLOCK,
                      attrs={PAD_INTERIOR: [top, int(h), left, int(w)]})


def out_size(size, k, stride, dilation, pad_a, pad_b):
    """Output length of a window ``k`` long over ``size`` (padded by ``pad_a``, ``pad_b``)."""
    return (size + pad_a + pad_b - (k - 1) * dilation - 1) // stride + 1


def _window(data, kh, kw, strides, padding, dilation, pad_value, extra_right=0, dtype=None):
    """What the convolutions share: the padded input, the output size, the kernel-window
    reduce axes and the input row / column an output pixel reads at a window offset.
    ``extra_right``: more pad columns than the window reads (the phantom tap of a pair)."""
    h, w = int(data.shape[2]), int(data.shape[3])
    (sh, sw), (dh, dw) = strides, dilation
    oh = out_size(h, kh, sh, dh, padding[0], padding[2])
    ow = out_size(w, kw, sw, dw, padding[1], padding[3])
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, kw), "rx")
    return (_pad(data, padding, pad_value, extra_right, dtype), oh, ow, ry, rx,
            lambda y: y * sh + ry * dh, lambda x: x * sw + rx * dw)


def conv2d_nchwc(data, kernel, strides, padding, dilation, pad_value=0, wide_data=False,
                 column_pairs=None, block_pairs=False):
    """``out[n, o//ob, y, x, o%ob] = sum_{i,ky,kx} int32(d[n, i, y*s+ky*dl, x*s+kx*dl])
    * int32(w[o, i, ky, kx])`` in the packed layouts (module doc); padding uses ``pad_value``
    (0, or the activation offset when activations are stored offset).  ``wide_data``: the
    (padded) input is first copied widened to int16, so that a 16-bit dot instruction
    (``vpmaddwd``) broadcasts activation pairs straight from memory.

    ``column_pairs`` (the window's width ``kw``, for an input of one quad per channel block:
    the RGB image): the window's columns are taken two at a time, in the place of the block's
    quads, so that a pair intrinsic (two quads per step) applies to the first conv too.  The
    kernel is ``(O/ob, I/ib, KH, ceil(kw/2), 2, ob, k)``, i.e. the packed weights of a window
    padded to an even width with zero taps; the phantom tap reads one pad column past the
    window (its MACs are executed and counted, as in :func:`depthwise_pairs_nchwc`).  Width
    dilation must be 1 (a pair is two adjacent pixels, ``2 * ib`` contiguous bytes).

    ``block_pairs``: the input is read from a padded copy whose blocks are pairs of its blocks
    (``2 * ib`` channels, an even number of input blocks), with lane-major weights
    ``(O/ob, I/(2 ib), KH, KW, ob, 2 ib)``: a lane's weights for one pixel of the window are
    contiguous, as are the pixel's ``2 ib`` activations (one 16-byte load on ARM)."""
    if block_pairs:
        return _conv_block_pairs(data, kernel, strides, padding, dilation, pad_value)
    n, icc, _, _, ib = (int(v) for v in data.shape)
    occ, icc2, kh, kw, ibk, ob, depth = (int(v) for v in kernel.shape)
    dtype = "int16" if wide_data else None
    if column_pairs is None:
        assert icc == icc2 and ib == ibk * depth, (data.shape, kernel.shape)
        dp, oh, ow, ry, rx, row, col = _window(data, kh, kw, strides, padding, dilation,
                                               pad_value, dtype=dtype)
    else:  # kw is the number of column pairs here
        assert (icc == icc2 and ib == depth and ibk == 2 and kw == (column_pairs + 1) // 2
                and dilation[1] == 1), (data.shape, kernel.shape, column_pairs, dilation)
        dp, oh, ow, ry, _, row, _ = _window(data, kh, column_pairs, strides, padding, dilation,
                                            pad_value, extra_right=2 * kw - column_pairs,
                                            dtype=dtype)
        rx = te.reduce_axis((0, kw), "rx")
    rc = te.reduce_axis((0, icc), "rc")
    rq = te.reduce_axis((0, ibk), "rq")  # the block's quad, or the tap in a column pair
    rk = te.reduce_axis((0, depth), "rk")
    sw = strides[1]

    def read(b, y, x):
        if column_pairs is None:
            return dp[b, rc, row(y), col(x), rq * depth + rk]
        return dp[b, rc, row(y), x * sw + 2 * rx + rq, rk]

    return te.compute(
        (n, occ, oh, ow, ob),
        lambda b, o, y, x, ol: te.sum(
            read(b, y, x).astype("int32") * kernel[o, rc, ry, rx, rq, ol, rk].astype("int32"),
            axis=[rc, ry, rx, rq, rk]),
        name=CONV_BLOCK, attrs={CONV_COLUMNS: [int(sw), int(dilation[1])],
                                CONV_ROWS: [int(strides[0]), int(dilation[0])]})


def conv2d_stream(data, kernel, c, kw, strides, padding, pad_value=0):
    """The conv of an image of ``c`` channels, fewer than the dot's depth (the RGB image), read
    as a stream of bytes: ``data`` is ``(N, 1, H, 1, W * c)``, a row of pixels as ``W * c``
    contiguous bytes (pixel-major, channels innermost: the ``(N, 1, H, W, c)`` blocking viewed
    flat), so a window row's ``kw`` pixels are ``kw * c`` adjacent bytes, taken ``depth`` at a
    time as if they were channels:

    ``out[n, o//ob, y, x, o%ob] = sum_{ky, g, k} s[n, y*sh+ky, x*sw*c + g*depth + k]
    * w[o//ob, 0, ky, g, 0, o%ob, k]``

    with ``s`` the padded rows as bytes and the kernel ``(O/ob, 1, KH, G, 1, ob, depth)``,
    ``G = ceil(kw * c / depth)`` (:func:`pack_conv_weight_stream`): byte ``g*depth + k`` of a
    window row is channel ``j % c`` of its column ``j // c``; past ``kw * c`` the weights are
    zero (those bytes belong to the next pixel).  A 7-wide window on 3 channels is 6 steps of
    4 bytes a row (24 bytes, 21 real) where the image padded to 4 channels takes 7 (28, 21
    real).  Dilation must be 1.  The padded stream is ``(N, 1, H', 1, F)``: F bytes a row (the
    dot's bytes must lie in the innermost axis), at least the window's reach past the last
    output pixel.  The input is flat already so that the padding copy reads a row as bytes
    too (read as ``(W, c)`` pixels, each byte's index is a division by ``c``, and LLVM moves
    the row one byte at a time: 22 us of ResNet-18's 0.30 ms stem)."""
    n, icc, h, one, row = (int(v) for v in data.shape)
    occ, kc, kh, groups, kq, ob, depth = (int(v) for v in kernel.shape)
    assert icc == kc == kq == one == 1 and row % c == 0, (data.shape, c)
    assert groups == -(-kw * c // depth), (data.shape, kernel.shape, kw)
    w = row // c
    (sh, sw), (top, left, bottom, right) = strides, padding
    oh = out_size(h, kh, sh, 1, top, bottom)
    ow = out_size(w, kw, sw, 1, left, right)
    width = max((w + left + right) * c, (ow - 1) * sw * c + groups * depth)

    def value(i, z, y, q, f):
        u = f - left * c  # the byte within the image's row
        inside = tir.all(y >= top, y < h + top, u >= 0, u < row)
        return tir.if_then_else(inside, data[i, z, y - top, q, u],
                                tir.const(pad_value, data.dtype))

    stream = te.compute((n, 1, h + top + bottom, 1, width), value, name=PAD_BLOCK,
                        attrs={PAD_STREAM: [top, h, left * c, w * c]})
    rc = te.reduce_axis((0, 1), "rc")
    ry = te.reduce_axis((0, kh), "ry")
    rx = te.reduce_axis((0, groups), "rx")
    rq = te.reduce_axis((0, 1), "rq")
    rk = te.reduce_axis((0, depth), "rk")
    return te.compute(
        (n, occ, oh, ow, ob),
        lambda b, o, y, x, ol: te.sum(
            stream[b, rc, y * sh + ry, rq, x * sw * c + rx * depth + rk].astype("int32")
            * kernel[o, rc, ry, rx, rq, ol, rk].astype("int32"), axis=[rc, ry, rx, rq, rk]),
        name=CONV_BLOCK, attrs={CONV_COLUMNS: [int(sw), 1], CONV_ROWS: [int(sh), 1]})


def depthwise_nchwc(data, kernel, strides, padding, dilation, pad_value=0):
    """``out[n, c, y, x, b] = sum_{ky,kx} d[n, c, y*s+ky*dl, x*s+kx*dl, b] * w[c, ky, kx, b]``;
    the product is formed in int16 (exact for 8-bit operands: |p| <= 128 * 255) and accumulated
    in int32, so the vector multiply stays narrow."""
    n, cc, _, _, cb = (int(v) for v in data.shape)
    cc2, kh, kw, cb2 = (int(v) for v in kernel.shape)
    assert (cc, cb) == (cc2, cb2), (data.shape, kernel.shape)
    dp, oh, ow, ry, rx, row, col = _window(data, kh, kw, strides, padding, dilation, pad_value)
    return te.compute(
        (n, cc, oh, ow, cb),
        lambda b, c, y, x, cl: te.sum(
            (dp[b, c, row(y), col(x), cl].astype("int16")
             * kernel[c, ry, rx, cl].astype("int16")).astype("int32"),
            axis=[ry, rx]),
        name=DEPTHWISE_BLOCK)


BAND_BYTES = 24 * 1024  # a band's column groups: half of a 48 KB L1 data cache


def depthwise_band(oh: int, stride: int, rows_of, row_bytes: int,
                   budget: int = BAND_BYTES) -> int:
    """Output rows per band of a rewritten depthwise conv: the most rows (a divisor of ``oh``)
    whose column groups -- ``rows_of(b)`` input rows of ``row_bytes`` each -- fit ``budget``;
    the whole plane where no band fits that rewrites at most twice the rows it advances (a
    3x3 conv of stride 1 on rows too wide for two output rows a band: measured on
    MobileNet-V2's 112x112 plane, one row a band made it slower).  MobileNet-V2's depthwise
    kernels (x86-amx, alone): 0.556 -> 0.484 ms (stride 2 from 112x112: 125 -> 95 us)."""
    fits = [b for b in range(1, oh + 1) if oh % b == 0 and rows_of(b) * row_bytes <= budget
            and rows_of(b) <= 2 * b * stride]
    return max(fits, default=oh)


def depthwise_pairs_nchwc(data, kernel, kw, strides, padding, dilation, pad_value=0,
                          rewrite=False, band=None):
    """The depthwise conv of :func:`depthwise_nchwc` with the window's columns taken two at a
    time, so that a 2-deep dot instruction (AVX2 ``vpmaddwd``) forms two taps' products of a
    channel and adds them in one step:
    ``out[n, c, y, x, b] = sum_{ky, p, k} d[n, c, y*s+ky*dl, x*s+2p+k, b] * w[c, ky, p, b, k]``.
    ``kernel`` is ``(C/b, KH, ceil(kw/2), b, 2)``; an odd ``kw`` leaves one phantom tap per row
    whose weight is zero (it reads one pad column past the window; those MACs are executed and
    counted).  Width dilation must be 1 (the pair is two adjacent columns).  A kernel of
    ``(C/b, KH, ceil(kw/4), b, 4)`` takes the columns four at a time (a 4-deep dot over one
    channel's taps: ``sdot``), the window padded to a multiple of 4 with phantom taps.

    ``rewrite``: the padded input is first rewritten as its column groups, ``groups[n, c, y, j,
    b, k] = d_pad[n, c, y, j*g + k, b]`` (``g`` = gcd(stride, 2): every column group a window
    reads, once), so that the dot reads a group of taps of a channel block as one load, with no
    shuffle per use: pairs widened to int16 (AVX2 ``vpmaddwd``: 8 channels x 2 taps, 32 bytes),
    quads of 8-bit values (AVX-512 ``vpdpbusd``: 16 channels x 4 taps, 64 bytes).

    The groups are made a band of ``band`` output rows at a time (default
    :func:`depthwise_band`: as many as fit half of L1), ``groups[n, c, i, r, j, b, k]`` for
    band ``i``'s input rows ``r``: the schedule makes each band's right before its rows of
    output, so they are read from L1 (a whole plane's groups are 4x its bytes: the dot would
    read them from L2).  Bands overlap by the window's rows: those are rewritten twice."""
    n, cc, _, _, cb = (int(v) for v in data.shape)
    if len(kernel.shape) == 6:
        return _depthwise_parity(data, kernel, kw, strides, padding, dilation, pad_value)
    cc2, kh, kp, cb2, group = (int(v) for v in kernel.shape)
    assert ((cc, cb) == (cc2, cb2) and group in (2, 4) and kp == -(-kw // group)), (
        data.shape, kernel.shape, kw)
    assert dilation[1] == 1, dilation
    dp, oh, ow, ry, _, row, _ = _window(data, kh, kw, strides, padding, dilation, pad_value,
                                        extra_right=group * kp - kw)
    rp = te.reduce_axis((0, kp), "rp")
    rk = te.reduce_axis((0, group), "rk")
    sw = strides[1]
    if not rewrite:
        return te.compute(
            (n, cc, oh, ow, cb),
            lambda b, c, y, x, cl: te.sum(
                dp[b, c, row(y), x * sw + group * rp + rk, cl].astype("int32")
                * kernel[c, ry, rp, cl, rk].astype("int32"),
                axis=[ry, rp, rk]),
            name=DEPTHWISE_BLOCK)
    g = 2 if sw % 2 == 0 else 1
    _, _, hp, wp, _ = (int(v) for v in dp.shape)
    dtype = "int16" if group == 2 else dp.dtype
    sh, dh = strides[0], dilation[0]
    groups = (wp - group) // g + 1

    def rows_of(b):  # the input rows a band of b output rows reads
        return (b - 1) * sh + (kh - 1) * dh + 1

    if band is None:
        band = depthwise_band(oh, sh, rows_of,
                              groups * cb * group * (2 if dtype == "int16" else 1))
    assert oh % band == 0, (oh, band)
    pairs = te.compute(
        (n, cc, oh // band, rows_of(band), groups, cb, group),
        lambda i, c, t, y, j, b, k: dp[i, c, t * band * sh + y, j * g + k, b].astype(dtype),
        name=PAIR_BLOCK)
    return te.compute(
        (n, cc, oh, ow, cb),
        lambda b, c, y, x, cl: te.sum(
            pairs[b, c, y // band, y % band * sh + ry * dh, x * (sw // g) + rp * (group // g),
                  cl, rk].astype("int32")
            * kernel[c, ry, rp, cl, rk].astype("int32"),
            axis=[ry, rp, rk]),
        name=DEPTHWISE_BLOCK)


def _depthwise_parity(data, kernel, kw, strides, padding, dilation, pad_value):
    """:func:`depthwise_pairs_nchwc` with a parity kernel ``(C/b, KH, G, 2, b, g)``
    (``pack_depthwise_parity``), stride 1 across, an even output width: output pixel ``x``
    reads the ``G`` tap groups from the column ``x - x % 2`` on, with the weights of its parity
    ``x % 2``, so the two pixels of a pair read the same groups.  The last group may reach one
    pad column past the window of the odd pixel (phantom taps, zero weights)."""
    n, cc, _, _, cb = (int(v) for v in data.shape)
    cc2, kh, kp, two, cb2, group = (int(v) for v in kernel.shape)
    assert ((cc, cb, two) == (cc2, cb2, 2) and kp == -(-(kw + 1) // group)
            and strides[1] == 1 and dilation[1] == 1), (data.shape, kernel.shape, kw, strides)
    dp, oh, ow, ry, _, row, _ = _window(data, kh, kw, strides, padding, dilation, pad_value,
                                        extra_right=group * kp - kw - 1)
    assert ow % 2 == 0, ow
    rp = te.reduce_axis((0, kp), "rp")
    rk = te.reduce_axis((0, group), "rk")
    return te.compute(
        (n, cc, oh, ow, cb),
        lambda b, c, y, x, cl: te.sum(
            dp[b, c, row(y), x // 2 * 2 + group * rp + rk, cl].astype("int32")
            * kernel[c, ry, rp, x % 2, cl, rk].astype("int32"),
            axis=[ry, rp, rk]),
        name=DEPTHWISE_BLOCK)


def _conv_block_pairs(data, kernel, strides, padding, dilation, pad_value):
    """:func:`conv2d_nchwc` with ``block_pairs`` (see there)."""
    n, icc, _, _, ib = (int(v) for v in data.shape)
    occ, pcc, kh, kw, ob, width = (int(v) for v in kernel.shape)
    assert icc % 2 == 0 and pcc * 2 == icc and width == 2 * ib, (data.shape, kernel.shape)
    padded, oh, ow, ry, rx, row, col = _window(data, kh, kw, strides, padding, dilation,
                                               pad_value)
    # the (padded) input's blocks in pairs: channel c of pair block p is block 2p + c // ib's
    _, _, hp, wp, _ = padded.shape
    dp = te.compute((n, icc // 2, hp, wp, width),
                    lambda i, c, y, x, j: padded[i, 2 * c + j // ib, y, x, j % ib],
                    name=PAIR_COPY)
    rc = te.reduce_axis((0, pcc), "rc")
    rj = te.reduce_axis((0, width), "rj")
    return te.compute(
        (n, occ, oh, ow, ob),
        lambda b, o, y, x, ol: te.sum(
            dp[b, rc, row(y), col(x), rj].astype("int32")
            * kernel[o, rc, ry, rx, ol, rj].astype("int32"), axis=[rc, ry, rx, rj]),
        name=CONV_BLOCK, attrs={CONV_COLUMNS: [int(strides[1]), int(dilation[1])],
                                CONV_ROWS: [int(strides[0]), int(dilation[0])]})
