"""PackChannelBlocks: carry activations in the blocked layout ``(N, C/b, H, W, b)`` end to end.

Relax (Relay's successor in TVM) pass.  Why: the dot-product instructions (VNNI ``vpdpbusd``,
AVX2 ``vpmaddwd``, ARM ``sdot``) reduce ``depth`` adjacent input channels into each of ``lanes``
output channels, so weights and activations must be stored channel-blocked.  Converting around
every layer would cost a transpose per layer; instead the whole integer program is rewritten to
the blocked layout once, with a layout transform only at the graph boundary (the network input,
and where a tensor leaves the blocked world: the flatten before the classifier, the outputs).

What is computed does not change (bit-exact with the NCHW program).  Per binding:

* ``conv2d`` (groups = 1): ``conv_nchwc`` with weights packed ``(O/lanes, I/b, KH, KW, b/depth,
  lanes, depth)``; channel counts are zero-padded to the block (padded weights and biases are 0,
  so padded channels hold 0 everywhere and are never read by a real channel).  With
  ``column_pairs``, a conv whose input block is one quad (the RGB image) takes its window's
  columns in pairs: the window is zero-padded to an even width and its pairs of taps stand
  where a block's two quads would (``conv2d_nchwc(..., column_pairs=kw)``);
  With ``pixel_stream``, a conv of the NCHW image when it has fewer channels than the dot's
  depth (the RGB image) reads it as a stream of bytes instead (``conv2d_stream``: the image
  blocked as ``(N, 1, H, W, C)``, handed to the conv as a view of its rows ``(N, 1, H, 1, W*C)``,
  a window row's ``KW * C`` bytes ``depth`` at a time, no zero channel);
* depthwise ``conv2d``: ``depthwise_nchwc`` with weights ``(C/lanes, KH, KW, lanes)``, or with
  ``pair_taps`` (a 2-deep dot: AVX2 ``vpmaddwd``, NEON ``smull`` + ``smlal``)
  ``depthwise_pairs_nchwc`` with weights
  ``(C/lanes, KH, ceil(KW/g), lanes, g)``: ``g`` window columns per dot step (the spec's
  ``tap_group``: 2, or 4 for ``sdot`` and AVX-512's ``vpdpbusd``, whose padded plane is first
  rewritten as its column quads: ``tap_rewrite``); with ``tap_parity``, stride-1 ones on maps of
  an even width take weights ``(C/lanes, KH, G, 2, lanes, g)`` shifted by the output column's
  parity, so that a pixel pair reads the same groups (``pack_depthwise_parity``); with
  ``tap_rewrite_wide``, windows of 5 columns or more are rewritten as their column quads
  instead (except stride-1 ones on rows wider than that many pixels);
* elementwise ops (bias add, shifts, clip, cast, max/min, residual add): the same op on blocked
  tensors, per-channel constants ``(1, C, 1, 1)`` re-blocked to ``(1, C/b, 1, 1, b)``, once per
  constant: ops that share one (a requantize's two shifts) share its blocked copy, so the fused
  kernel takes it as one argument and keeps it in one register;
* ``max_pool2d``: the same pool with ``layout="NCHW{b}c"``; ``sum`` over H, W: over axes 2, 3;
* ``reshape`` of a ``1 x 1`` map to ``(N, C)``: a plain reshape (blocked order = channel order);
* dense (``matmul`` by a constant): a 1x1 ``conv_nchwc`` of the ``(N, I, 1, 1)`` map, blocked
  and back to ``(N, O)`` by reshapes;
* a constant spatial ``nn.pad`` (ARM's offset activations pad with -128 explicitly,
  ``offset_activations``): folded into the padding of the conv that reads it (the kernels pad
  with any value); any other reader gets the pad done on the blocked tensor;
* anything else (grouped conv, ...): its inputs are unblocked and the op runs as before.

Weights held in int16 (``wide_weights``, AVX2): a dot instruction that multiplies 16-bit lanes
(``vpmaddwd``) can take a weight tile straight from memory when it is stored widened; the values
stay 8-bit (the multiplication audit checks the constants).  Worth it for 1x1 convs (see
:func:`wide_weights_pay`); for 3x3 convs the narrow tile, widened in registers and shared by
several pixels, is as fast and half the bytes.  Activations widened (``wide_data``, AVX2):
every conv copies its padded input to int16 once (``conv2d_nchwc(..., wide_data=True)``), so an
activation pair is a single 32-bit broadcast load for ``vpmaddwd`` instead of a broadcast
plus a widening at each of its uses; a tap-pair depthwise conv rewrites its padded plane once
as widened column pairs (``depthwise_pairs_nchwc(..., rewrite=True)``) and keeps its weights
in int16.

Dot instructions that only take unsigned activations (VNNI is u8 x s8) get int8 inputs offset:
``conv(x, w) = conv(x + 128, w) - 128 * sum(w)`` with ``x + 128`` as uint8, padded with 128
(the offset zero), and ``-128 * sum(w)`` per output channel added to the int32 accumulator.
"""

from __future__ import annotations

import numpy as np

from f8tvm.core import _tvm
from f8tvm.core._tvm import relax, tvm
from f8tvm.core.bindings import bindings
from f8tvm.core.errors import InputError
from f8tvm.targets import DotSpec

from .packed_kernels import (
    conv2d_nchwc,
    conv2d_stream,
    depthwise_nchwc,
    depthwise_pairs_nchwc,
    out_size,
)

R = relax.op
_ELEMENTWISE = {
    "relax.add", "relax.subtract", "relax.right_shift", "relax.left_shift", "relax.bitwise_and",
    "relax.maximum", "relax.minimum", "relax.clip", "relax.astype",
}


def _round_up(n, b):
    return -(-n // b) * b


class _Blocked:
    """A blocked stand-in for an NCHW tensor of ``channels`` channels (padded to ``block``)."""

    def __init__(self, expr, channels, block):
        self.expr, self.channels, self.block = expr, channels, block


class _Padded:
    """A spatial constant pad of a blocked tensor, not emitted yet: a conv reading it pads
    inside its kernel.  ``padding``: (top, left, bottom, right)."""

    def __init__(self, source: _Blocked, padding, value: int):
        self.source, self.padding, self.value = source, tuple(padding), value


def _zero_padded(w, o_step, i_step):
    """``(O, I, KH, KW)`` weights with O and I zero-padded to multiples of the steps."""
    o, i, kh, kw = w.shape
    wp = np.zeros((_round_up(o, o_step), _round_up(i, i_step), kh, kw), w.dtype)
    wp[:o, :i] = w
    return wp


def pack_conv_weight(w, block_in, lanes, depth):
    """``(O, I, KH, KW)`` int8 -> ``(O/lanes, I/block_in, KH, KW, block_in/depth, lanes, depth)``,
    zero-padding O and I."""
    wp = _zero_padded(w, lanes, block_in)
    op_, ip, kh, kw = wp.shape
    wp = wp.reshape(op_ // lanes, lanes, ip // block_in, block_in // depth, depth, kh, kw)
    return np.ascontiguousarray(wp.transpose(0, 2, 5, 6, 3, 1, 4))


def pack_conv_weight_pairs(w, block_in, lanes):
    """``(O, I, KH, KW)`` int8 -> ``(O/lanes, I/(2 block_in), KH, KW, lanes, 2 block_in)``: each
    output lane's weights for a pair of input blocks contiguous (``conv2d_nchwc(...,
    block_pairs=True)``), zero-padding O and I."""
    width = 2 * block_in
    wp = _zero_padded(w, lanes, width)
    op_, ip, kh, kw = wp.shape
    wp = wp.reshape(op_ // lanes, lanes, ip // width, width, kh, kw)
    return np.ascontiguousarray(wp.transpose(0, 2, 4, 5, 1, 3))


def pack_conv_weight_columns(w, lanes, depth):
    """The weights of a conv on an input of one quad per block (``I <= depth``) with the window's
    columns in pairs: ``(O, I, KH, KW)`` -> ``(O/lanes, 1, KH, ceil(KW/2), 2, lanes, depth)``,
    the window zero-padded to an even width (``conv2d_nchwc(..., column_pairs=KW)``)."""
    kw = w.shape[3]
    even = np.zeros(w.shape[:3] + (kw + kw % 2,), w.dtype)
    even[..., :kw] = w
    packed = pack_conv_weight(even, depth, lanes, depth)  # (.., KW', 1, lanes, depth)
    return np.ascontiguousarray(packed.reshape(packed.shape[:3] + (kw // 2 + kw % 2, 2)
                                               + packed.shape[5:]))


def pack_conv_weight_stream(w, lanes, depth):
    """The weights of a conv on a thin image read as a byte stream (``conv2d_stream``):
    ``(O, C, KH, KW)`` -> ``(O/lanes, 1, KH, G, 1, lanes, depth)``, ``G = ceil(KW*C/depth)``:
    a window row's bytes ``j = kx*C + c`` in groups of ``depth``, zero past ``KW*C`` and for
    padded O."""
    o, c, kh, kw = w.shape
    groups = -(-kw * c // depth)
    op_ = _round_up(o, lanes)
    flat = np.zeros((op_, kh, groups * depth), w.dtype)
    flat[:o, :, :kw * c] = w.transpose(0, 2, 3, 1).reshape(o, kh, kw * c)
    flat = flat.reshape(op_ // lanes, lanes, kh, groups, depth).transpose(0, 2, 3, 1, 4)
    return np.ascontiguousarray(flat[:, None, :, :, None])


def pack_depthwise_weight(w, lanes):
    """``(C, 1, KH, KW)`` -> ``(C/lanes, KH, KW, lanes)``, zero-padding C."""
    c, _, kh, kw = w.shape
    cp = _round_up(c, lanes)
    wp = np.zeros((cp, kh, kw), w.dtype)
    wp[:c] = w[:, 0]
    return np.ascontiguousarray(wp.reshape(cp // lanes, lanes, kh, kw).transpose(0, 2, 3, 1))


def pack_depthwise_pairs(w, lanes, group=2):
    """``(C, 1, KH, KW)`` -> ``(C/lanes, KH, ceil(KW/group), lanes, group)``: column
    ``group * p + k`` of the window at ``[.., p, :, k]``, zero for the phantom columns past KW
    and for padded C."""
    c, _, kh, kw = w.shape
    cp, kp = _round_up(c, lanes), -(-kw // group)
    wp = np.zeros((cp, kh, group * kp), w.dtype)
    wp[:c, :, :kw] = w[:, 0]
    wp = wp.reshape(cp // lanes, lanes, kh, kp, group)
    return np.ascontiguousarray(wp.transpose(0, 2, 3, 1, 4))


def pack_depthwise_parity(w, lanes, group=4):
    """``(C, 1, KH, KW)`` -> ``(C/lanes, KH, G, 2, lanes, group)``, ``G = ceil((KW+1)/group)``:
    for output column parity ``q`` (0: even, 1: odd), tap ``group * p + k`` of the pixel pair's
    shared groups holds the window's column ``group * p + k - q`` (zero outside the window and
    for padded C).  An even pixel's window starts at the pair's first column, an odd one's a
    column later: both read the same ``G`` groups (``depthwise_pairs_nchwc``)."""
    c, _, kh, kw = w.shape
    cp, kp = _round_up(c, lanes), -(-(kw + 1) // group)
    wp = np.zeros((cp, kh, 2, group * kp), w.dtype)
    for q in (0, 1):
        wp[:c, :, q, q:q + kw] = w[:, 0]
    wp = wp.reshape(cp // lanes, lanes, kh, 2, kp, group)
    return np.ascontiguousarray(wp.transpose(0, 2, 4, 3, 1, 5))


def wide_weights_pay(kh: int, kw: int, channels_in: int, out_width: int) -> bool:
    """Store a conv's packed weights widened to int16 (AVX2)?  Measured on a Zen 3 core: 1x1
    convs on maps up to 14 wide (register tiles of 1-2 pixels, so every weight tile is widened
    for one or two products) run 15-30% faster; a slab of up to 256 input channels x 8 output
    blocks stays in L1.  On wider maps (MobileNet-V2's 1x1 convs on 28-112 wide maps, with
    activations widened too and the epilogue narrowing 4 pixels at once) 2-8% faster: the
    weight widening was a tenth of those kernels' instructions.  3x3 convs are not faster
    (5% slower; ``out_width`` is kept for the callers that measured it)."""
    return kh == kw == 1 and channels_in <= 256


def _pack_const(value, block):
    """A ``(1, C, 1, 1)`` per-channel constant -> ``(1, C/b, 1, 1, b)`` (zero-padded)."""
    c = value.shape[1]
    cp = _round_up(c, block)
    v = np.zeros((1, cp, 1, 1), value.dtype)
    v[:, :c] = value
    return v.reshape(1, cp // block, block, 1, 1).transpose(0, 1, 3, 4, 2).copy()


class _Packer:
    def __init__(self, lanes, depth, unsigned_only, pair_taps=False, wide_weights=False,
                 wide_data=False, column_pairs=False, weight_min=-128, tap_group=2,
                 tap_rewrite=False, block_pairs=False, tap_parity=False, tap_rewrite_wide=0,
                 pixel_stream=False):
        self.lanes, self.depth, self.unsigned_only = lanes, depth, unsigned_only
        self.pair_taps, self.wide_weights, self.wide_data = pair_taps, wide_weights, wide_data
        self.column_pairs, self.weight_min = column_pairs, weight_min
        self.tap_group, self.tap_rewrite = tap_group, tap_rewrite
        self.block_pairs, self.tap_parity = block_pairs, tap_parity
        self.tap_rewrite_wide = tap_rewrite_wide
        self.pixel_stream = pixel_stream
        self.bb = relax.BlockBuilder()
        self.env = {}  # old Var -> new Expr or _Blocked
        self.consts = {}  # (constant, block) -> its blocked constant, made once

    # --------------------------------------------------------------------- layout boundary
    def in_block(self, channels: int) -> int:
        """The channel block of a conv input entering the blocked layout: ``lanes``, or for a
        narrower input (the RGB image) its channels rounded up to the dot depth."""
        return self.lanes if channels >= self.lanes else _round_up(channels, self.depth)

    def block(self, expr, block):
        shape = _tvm.tensor_shape(expr)
        c = shape[1]
        packed = self.bb.emit(R.layout_transform(
            expr, lambda n, ch, h, w: (n, ch // block, h, w, ch % block),
            pad_value=0 if c % block else None))
        return _Blocked(packed, c, block)

    def unblock(self, v):
        if not isinstance(v, _Blocked):
            return v
        b = v.block
        t = self.bb.emit(R.layout_transform(v.expr, lambda n, c, h, w, cb: (n, c * b + cb, h, w)))
        if _tvm.tensor_shape(t)[1] != v.channels:
            t = self.bb.emit(R.strided_slice(t, axes=[1], begin=[0], end=[v.channels]))
        return t

    def arg(self, a, keep_pad=False):
        """The new value of an old argument; a deferred pad is emitted unless ``keep_pad``."""
        if isinstance(a, relax.Var):
            a = self.env.get(a, a)
            if isinstance(a, _Padded) and not keep_pad:
                a = self.materialize(a)
        return a

    def materialize(self, p: _Padded) -> _Blocked:
        top, left, bottom, right = p.padding
        x = p.source
        out = self.bb.emit(R.nn.pad(x.expr, [0, 0, 0, 0, top, bottom, left, right, 0, 0],
                                    pad_value=float(p.value)))
        return _Blocked(out, x.channels, x.block)

    # --------------------------------------------------------------------- rules
    def visit(self, b):
        v = b.value
        name = _tvm.var_name(b.var)
        if isinstance(v, relax.Call) and isinstance(v.op, tvm.ir.Op):
            op = v.op.name
            rule = {"relax.nn.conv2d": self.conv2d, "relax.nn.max_pool2d": self.max_pool,
                    "relax.sum": self.sum, "relax.reshape": self.reshape,
                    "relax.nn.pad": self.pad, "relax.matmul": self.matmul}.get(op)
            if rule is None and op in _ELEMENTWISE:
                rule = self.elementwise
            if rule is not None:
                out = rule(v, name)
                if out is not None:
                    return out
            args = [self.unblock(self.arg(a)) for a in v.args]
            return self.bb.emit(relax.Call(v.op, args, v.attrs, v.ty_args), name)
        if isinstance(v, relax.Var):  # an alias: the same (possibly blocked) value
            return self.arg(v, keep_pad=True)
        if isinstance(v, relax.Tuple):
            return self.bb.emit(relax.Tuple([self.unblock(self.arg(f)) for f in v.fields]), name)
        raise NotImplementedError(f"PackChannelBlocks: binding {name}: {type(v).__name__}")

    def conv2d(self, call, name):
        data, weight = call.args
        a = call.attrs
        if not _tvm.is_const(weight) or str(a.data_layout) != "NCHW":
            return None
        w = _tvm.const_value(weight)
        o, i_per_group, kh, kw = w.shape
        groups = int(a.groups)
        x = self.arg(data, keep_pad=True)
        strides = [int(s) for s in a.strides]
        padding = [int(p) for p in a.padding]
        dilation = [int(d) for d in a.dilation]
        pad_value = 0
        if isinstance(x, _Padded):
            if any(padding) or (groups != 1 and x.source.block != self.lanes):
                x = self.materialize(x)
            else:  # the explicit pad becomes the kernel's padding
                padding, pad_value, x = list(x.padding), x.value, x.source
        c_in = x.channels if isinstance(x, _Blocked) else _tvm.tensor_shape(x)[1]
        if groups == 1:
            return self._conv(x, w, strides, padding, dilation, pad_value, name)
        if groups == c_in == o and i_per_group == 1:
            if not isinstance(x, _Blocked) or x.block != self.lanes:
                x = self.block(self.unblock(x), self.lanes)
            window = (strides, padding, dilation, pad_value)
            self._check_weights(w, name)
            if self.pair_taps and dilation[1] == 1 and kw > 1:
                te_func = depthwise_pairs_nchwc
                width = _tvm.tensor_shape(x.expr)[3]
                ow = out_size(width, kw, strides[1], dilation[1], padding[1], padding[3])
                parity = self.tap_parity and strides[1] == 1 and ow % 2 == 0
                rewrite = self.tap_rewrite or (
                    self.tap_rewrite_wide and kw >= 5
                    and not (parity and ow > self.tap_rewrite_wide))
                pack = (pack_depthwise_parity if parity and not rewrite
                        else pack_depthwise_pairs)
                packed = pack(w, self.lanes, self.tap_group)
                if self.wide_data:  # widened pairs read with int16 weights from memory
                    packed = packed.astype(np.int16)
                # the plane rewritten once as its tap groups: widened pairs (AVX2), quads
                args = (relax.const(packed), kw, *window, bool(self.wide_data or rewrite))
            else:
                te_func = depthwise_nchwc
                args = (relax.const(pack_depthwise_weight(w, self.lanes)), *window)
            out = self.bb.emit(self.bb.call_te(
                te_func, x.expr, *args, primfunc_name_hint="depthwise_nchwc"), name)
            return _Blocked(out, o, self.lanes)
        return None

    def _check_weights(self, w, name):
        """Refuse weights below the target's ``weight_min`` (NEON's int16 sums of two products
        are exact for weights in [-127, 127] only)."""
        if w.size and int(w.min()) < self.weight_min:
            raise InputError(f"conv {name!r}: weight {int(w.min())} is below "
                             f"{self.weight_min}, the smallest this target's kernels sum "
                             f"exactly (F8Net's weights are in [-127, 127])")

    def _conv(self, x, w, strides, padding, dilation, pad_value, name) -> _Blocked:
        """``conv_nchwc`` of ``x`` (blocked, or NCHW to block) with OIHW weights ``w``."""
        self._check_weights(w, name)
        kw = w.shape[3]
        if not isinstance(x, _Blocked):
            c_in = _tvm.tensor_shape(x)[1]
            if (self.pixel_stream and c_in < self.depth and kw > 1
                    and list(dilation) == [1, 1]):
                return self._conv_stream(x, w, strides, padding, pad_value, name)
            x = self.block(x, self.in_block(c_in))
        pairs = (self.column_pairs and x.block == self.depth and dilation[1] == 1 and kw > 1
                 and not self.wide_weights)
        blocks = -(-w.shape[1] // x.block)
        # 1x1 convs too: their pair copy (~2 instructions a pixel and block) is small beside
        # the `dup`s and loads the quad form spends on every output block
        block_pairs = (self.block_pairs and not pairs and x.block == self.lanes
                       and blocks % 2 == 0 and not self.wide_weights)
        if block_pairs:
            kernel = pack_conv_weight_pairs(w, x.block, self.lanes)
        elif pairs:
            kernel = pack_conv_weight_columns(w, self.lanes, self.depth)
        else:
            kernel = pack_conv_weight(w, x.block, self.lanes, self.depth)
        data = x.expr
        if self.wide_weights:
            _, icc, _, width, ib = _tvm.tensor_shape(data)
            kh, kw = w.shape[2:]
            ow = out_size(width, kw, strides[1], dilation[1], padding[1], padding[3])
            if wide_weights_pay(kh, kw, icc * ib, ow):
                kernel = kernel.astype(np.int16)
        return self._emit_conv(data, w, pad_value, name, lambda d, pv: self.bb.call_te(
            conv2d_nchwc, d, relax.const(kernel), strides, padding, dilation, pv,
            self.wide_data, kw if pairs else None, block_pairs,
            primfunc_name_hint="conv2d_nchwc"))

    def _emit_conv(self, data, w, pad_value, name, conv) -> _Blocked:
        """The conv ``conv(data, pad_value)`` (a ``call_te``) of OIHW weights ``w`` emitted as
        ``name``; int8 activations offset to uint8 first where the target's multiplies take
        uint8 only (module doc: padded with the offset zero, the accumulators then less
        ``128 * sum(w)`` per output channel)."""
        offset = self.unsigned_only and _tvm.tensor_dtype(data) == "int8"
        if not offset:
            return _Blocked(self.bb.emit(conv(data, pad_value), name), w.shape[0], self.lanes)
        if pad_value != 0:
            raise NotImplementedError("PackChannelBlocks: offset of a non-zero padded input")
        data = self.bb.emit(R.astype(R.add(R.astype(data, "int16"),
                                           relax.const(np.int16(128))), "uint8"))
        out = self.bb.emit(conv(data, 128), name + "_offset")
        corr = -128 * w.astype(np.int64).sum(axis=(1, 2, 3))
        corr = _pack_const(corr.astype("int32").reshape(1, -1, 1, 1), self.lanes)
        return _Blocked(self.bb.emit(R.add(out, relax.const(corr)), name), w.shape[0],
                        self.lanes)

    def _conv_stream(self, x, w, strides, padding, pad_value, name) -> _Blocked:
        """A conv of the thin NCHW image ``x`` (fewer channels than the dot's depth) read as a
        byte stream (``conv2d_stream``): the image blocked as one block of its ``C`` channels
        (``(N, 1, H, W, C)``, no zero channel), a window row's ``KW*C`` bytes in steps of the
        dot's depth.  ResNet-18's 7x7 stem: 42 dot steps per output pixel instead of 49 on the
        image padded to 4 channels (its kernel alone on Zen 5, 1 thread: 0.344 -> 0.29-0.30
        ms; 0.274 with the rows handed over as a view, its padding copy then a vector copy)."""
        # (N, C, H, W) -> (N, 1, H, W, C) by a transpose (an injective op: it fuses with the
        # offset below, and its loops run over the output; ``layout_transform`` without
        # padding is an opaque kernel, one scalar per pixel and channel: 47 us at 224x224)
        hwc = self.bb.emit(R.permute_dims(x, [0, 2, 3, 1]))
        data = self.bb.emit(R.expand_dims(hwc, 1))
        n, c, h, width = _tvm.tensor_shape(x)
        kernel = pack_conv_weight_stream(w, self.lanes, self.depth)

        def conv(d, pv):
            # the conv reads each row flat, ``(N, 1, H, 1, W*C)``: a view of the same bytes (no
            # copy; a reshape would fuse into the transpose and cost its loops their shape)
            flat = self.bb.emit(R.memory.view(d, (n, 1, h, 1, width * c)))
            return self.bb.call_te(conv2d_stream, flat, relax.const(kernel), c, w.shape[3],
                                   strides, padding, pv, primfunc_name_hint="conv2d_nchwc")

        return self._emit_conv(data, w, pad_value, name, conv)

    def matmul(self, call, name):
        """Dense ``(N, I) @ (I, O)`` as a 1x1 conv of the ``(N, I, 1, 1)`` map, so that it runs
        on the dot-product kernels too (a generic matmul loop is an order of magnitude slower
        and multiplies widened values); its ``(N, O)`` result leaves the blocked layout."""
        data, weight = call.args
        x = self.arg(data)
        if (not _tvm.is_const(weight) or isinstance(x, _Blocked)
                or len(_tvm.tensor_shape(x)) != 2 or str(call.attrs.out_dtype) != "int32"):
            return None
        w = _tvm.const_value(weight)
        if w.ndim != 2 or _tvm.tensor_dtype(x) not in ("int8", "uint8"):
            return None
        n, i = _tvm.tensor_shape(x)
        o = w.shape[1]
        blk = self.in_block(i)
        if i % blk == 0:  # a 1 x 1 map is blocked by a reshape (blocked order = channel order)
            x4 = _Blocked(self.bb.emit(R.reshape(x, (n, i // blk, 1, 1, blk))), i, blk)
        else:
            x4 = self.block(self.bb.emit(R.reshape(x, (n, i, 1, 1))), blk)
        out = self._conv(x4, np.ascontiguousarray(w.T).reshape(o, i, 1, 1), [1, 1],
                         [0, 0, 0, 0], [1, 1], 0, name)
        cb, b = _tvm.tensor_shape(out.expr)[1], out.block
        t = self.bb.emit(R.reshape(out.expr, (n, cb * b)), name)
        if cb * b != o:
            t = self.bb.emit(R.strided_slice(t, axes=[1], begin=[0], end=[o]))
        return t

    def elementwise(self, call, name):
        args = [self.arg(a) for a in call.args]
        blocked = [a for a in args if isinstance(a, _Blocked)]
        if not blocked:
            return None
        ref = blocked[0]
        if any(b.block != ref.block or b.channels != ref.channels for b in blocked):
            return None
        new = []
        for a in args:
            if isinstance(a, _Blocked):
                new.append(a.expr)
            elif _tvm.is_const(a):
                val = _tvm.const_value(a)
                if val.ndim == 0:
                    new.append(a)
                elif val.ndim == 4 and val.shape[0] == 1 and val.shape[2:] == (1, 1):
                    new.append(self.blocked_const(a, val, ref.block))
                else:
                    return None
            elif isinstance(a, relax.Var):
                if len(_tvm.tensor_shape(a)) != 4:
                    return None
                new.append(self.block(a, ref.block).expr)
            else:  # attributes passed as arguments (clip bounds)
                new.append(a)
        out = self.bb.emit(relax.Call(call.op, new, call.attrs, call.ty_args), name)
        return _Blocked(out, ref.channels, ref.block)

    def blocked_const(self, const, value, block):
        """The blocked copy of a per-channel constant, made once per (constant, block)."""
        key = (const, block)
        if key not in self.consts:
            self.consts[key] = relax.const(_pack_const(value, block))
        return self.consts[key]

    def pad(self, call, name):
        x = self.arg(call.args[0])
        a = call.attrs
        width = [int(p) for p in a.pad_width]
        if (not isinstance(x, _Blocked) or str(a.pad_mode) != "constant" or len(width) != 8
                or any(width[:4])):
            return None
        value = float(a.pad_value)
        if value != int(value):
            return None
        top, bottom, left, right = width[4:]
        return _Padded(x, (top, left, bottom, right), int(value))

    def max_pool(self, call, name):
        x = self.arg(call.args[0])
        if not isinstance(x, _Blocked):
            return None
        a = call.attrs
        out = self.bb.emit(R.nn.max_pool2d(
            x.expr, pool_size=[int(p) for p in a.pool_size], strides=[int(s) for s in a.strides],
            padding=[int(p) for p in a.padding], dilation=[int(d) for d in a.dilation],
            ceil_mode=bool(a.ceil_mode), layout=f"NCHW{x.block}c"), name)
        return _Blocked(out, x.channels, x.block)

    def sum(self, call, name):
        x = self.arg(call.args[0])
        a = call.attrs
        axes = [int(i) for i in a.axis] if a.axis is not None else None
        if not isinstance(x, _Blocked) or axes != [2, 3] or not bool(a.keepdims):
            return None
        out = self.bb.emit(R.sum(x.expr, axis=[2, 3], keepdims=True), name)
        return _Blocked(out, x.channels, x.block)

    def reshape(self, call, name):
        x = self.arg(call.args[0])
        shape = _tvm.tensor_shape(call)
        if not isinstance(x, _Blocked) or len(shape) != 2:
            return None
        n, cb, h, w, b = _tvm.tensor_shape(x.expr)
        if (h, w) != (1, 1) or shape != (n, x.channels):
            return None
        t = self.bb.emit(R.reshape(x.expr, (n, cb * b)), name)
        if cb * b != x.channels:
            t = self.bb.emit(R.strided_slice(t, axes=[1], begin=[0], end=[x.channels]))
        return t


def pack_module(func, spec: DotSpec, activations: str = "any"):
    """A module with the blocked version of the integer ``main`` (see module doc) and the
    kernels it calls, for the dot instruction described by ``spec``; with ``activations``
    ``'uint8'`` (the target's multiplies take uint8 only) int8 inputs are offset by +128."""
    p = _Packer(spec.lanes, spec.depth, activations == "uint8", spec.pair_taps,
                spec.wide_weights, spec.wide_data, spec.column_pairs, spec.weight_min,
                spec.tap_group, spec.tap_rewrite, spec.block_pairs, spec.tap_parity,
                spec.tap_rewrite_wide, spec.pixel_stream)
    params = list(func.params)
    attrs = dict(func.attrs) if func.attrs is not None else {}
    attrs.pop("global_symbol", None)
    with p.bb.function("main", params, attrs=attrs):
        with p.bb.dataflow():
            for b in bindings(func):
                p.env[b.var] = p.visit(b)
            body = func.body.body
            if isinstance(body, relax.Var):
                res = p.unblock(p.arg(body))
            else:
                res = relax.Tuple([p.unblock(p.arg(f)) for f in body.fields])
            out = p.bb.emit_output(res)
        p.bb.emit_func_output(out)
    return p.bb.get()


def PackChannelBlocks(spec: DotSpec, activations: str = "any"):  # noqa: N802  (as TVM's)
    """The pass: blocks ``main``'s activations by ``spec.lanes`` channels for a
    ``spec.depth``-deep dot, in the forms ``spec`` asks for (module doc); ``activations`` is the
    target's (:attr:`f8tvm.targets.TargetPreset.activations`)."""

    @tvm.transform.module_pass(opt_level=0, name="PackChannelBlocks")
    def _pass(mod, ctx):
        return pack_module(mod["main"], spec, activations)

    return _pass
