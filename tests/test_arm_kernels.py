"""The ARM conv kernels alone: the pair forms (two quads per step), the window's column pairs
of the first conv and the depthwise tap pairs, bit-exact against an int64 NumPy conv, at the
operands' extremes.

The column-pair compute (``conv2d_nchwc(..., column_pairs=kw)``) is checked on the host; the
scheduled, tensorized kernels of both ARM presets run on the emulated aarch64 board (NEON's pair
form adds two products in int16: exact only while weights stay in [-127, 127], which the packer
enforces for that target).
"""

import os
import re
import textwrap

import numpy as np
import pytest
from conftest import kernel_source
from kernel_ref import conv, unblock
from test_arm import ARM_TARGETS, on_board

from f8tvm.core import _tvm
from f8tvm.core._tvm import cc, node_kind, primfuncs, relax, schedule_of, te, tir_pipeline, tvm
from f8tvm.core.errors import InputError
from f8tvm.passes.pack_channel_blocks import (
    PackChannelBlocks,
    pack_conv_weight,
    pack_conv_weight_columns,
    pack_conv_weight_pairs,
    pack_depthwise_pairs,
    pack_depthwise_parity,
)
from f8tvm.passes.packed_kernels import PAIR_BLOCK, conv2d_nchwc, depthwise_pairs_nchwc
from f8tvm.schedules import default_schedule, find_dot, kernel_block, kernel_kind
from f8tvm.targets import TARGETS, get_target

LANES, DEPTH = 8, 4

# (C_in, C_out, H, W, K, stride, pad): C_in <= 4 with K > 1 takes the window's columns in pairs
CASES = [
    (3, 16, 15, 15, 7, 2, (3, 3, 3, 3)),  # ResNet's first conv, odd window: a phantom tap
    (3, 8, 9, 9, 3, 2, (1, 1, 1, 1)),  # MobileNet's first conv
    (4, 8, 7, 7, 2, 1, (0, 0, 1, 1)),  # even window, uneven padding
    (16, 16, 9, 9, 3, 1, (1, 1, 1, 1)),  # a block's two quads (odd row, small weights: split)
    (24, 16, 8, 8, 3, 1, (1, 1, 1, 1)),  # even row: split accumulators on `arm`
    (24, 16, 5, 5, 1, 1, (0, 0, 0, 0)),
    (3, 8, 6, 6, 1, 1, (0, 0, 0, 0)),  # one quad, no window to pair: one quad per intrinsic
    (256, 8, 5, 5, 3, 1, (1, 1, 1, 1)),  # odd row, 18 KiB of weights a block: in chunks
]
# the cases `arm` schedules in split accumulators: every pair form (two quads a step); on an
# odd row one pixel at a time, the reduction in chunks whose weights fit 16 KiB (CASES[7])
SPLIT = CASES[:6] + CASES[7:]
# `arm`'s block pairs with lane-major weights (convs on an even number of input blocks): a
# 2-pixel row tile, a 9-pixel row one pixel at a time, a stride-2 window on 5-pixel rows and
# 5- and 7-pixel rows (whole rows a tile, 2 lanes a pass), a 9-pixel row whose 18 KiB of
# weights are taken in chunks, and unpadded 1x1 convs (even and odd rows, stride 2)
LANES_CASES = [
    (16, 16, 8, 8, 3, 1, (1, 1, 1, 1)),
    (16, 8, 9, 9, 3, 1, (1, 1, 1, 1)),
    (32, 8, 9, 9, 3, 2, (1, 1, 1, 1)),
    (256, 8, 9, 9, 3, 1, (1, 1, 1, 1)),
    (256, 8, 5, 5, 3, 1, (1, 1, 1, 1)),
    (64, 16, 7, 7, 3, 1, (1, 1, 1, 1)),
    (32, 16, 6, 6, 1, 1, (0, 0, 0, 0)),
    (32, 8, 7, 7, 1, 1, (0, 0, 0, 0)),
    (32, 8, 9, 9, 1, 2, (0, 0, 0, 0)),
]
# depthwise, tap pairs: (C, H, W, K, stride, pad)
DW_CASES = [
    (16, 9, 11, 3, 1, (1, 1, 1, 1)),
    (8, 12, 12, 3, 2, (1, 1, 1, 1)),
    (8, 13, 13, 5, 2, (2, 2, 2, 2)),
    (8, 16, 16, 5, 2, (2, 2, 2, 2)),  # rows of 8: 4-pixel tiles on `arm-dotprod` (5x5)
]
# depthwise, tap quads shared by a pixel pair (``arm-dotprod``'s stride-1 convs on even widths):
# (C, H, W, K, pad); widths 10-14 make 5-7 pairs a row
DW_PARITY_CASES = [
    (16, 9, 10, 3, (1, 1, 1, 1)),
    (16, 8, 10, 3, (1, 1, 1, 1)),  # 8 rows: output rows in pairs
    (8, 8, 12, 5, (2, 2, 2, 2)),
    (8, 7, 14, 7, (3, 3, 3, 3)),
]
# depthwise, the plane rewritten as its tap quads (``arm-dotprod``'s windows of 5 columns or
# more, except stride 1 on rows wider than 16 pixels): (C, H, W, K, stride, pad); rows of 14
# and 7 pixels (tiles of 7), 8 (two tiles of 4), stride 2 onto rows of 7, a 7x7 window, and 16
# channel blocks of 7x7 (4 a parallel task)
DW_REWRITE_CASES = [
    (16, 14, 14, 5, 1, (2, 2, 2, 2)),
    (8, 9, 7, 5, 1, (2, 2, 2, 2)),
    (8, 8, 8, 5, 1, (2, 2, 2, 2)),
    (8, 13, 13, 5, 2, (2, 2, 2, 2)),
    (8, 9, 9, 7, 1, (3, 3, 3, 3)),
    (128, 7, 7, 5, 1, (2, 2, 2, 2)),
]


def _block_in(cin):
    return DEPTH if cin <= DEPTH else LANES


def _operands(cin, cout, h, w, k):
    """int8 activations and weights with the extremes NEON's int16 pair sums meet: -128 x
    -127 in every product of the first output block's first row."""
    rng = np.random.default_rng(cin * 100 + k)
    x = rng.integers(-128, 128, (1, cin, h, w)).astype("int8")
    wt = rng.integers(-127, 128, (cout, cin, k, k)).astype("int8")
    x[0, :, :k + 1, :] = -128
    wt[:LANES] = -127
    return x, wt


def _block(x, b):
    n, c, h, w = x.shape
    xp = np.zeros((n, -(-c // b) * b, h, w), x.dtype)
    xp[:, :c] = x
    return np.ascontiguousarray(xp.reshape(n, -1, b, h, w).transpose(0, 1, 3, 4, 2))


def _kernel(cin, cout, h, w, k, stride, pad, target=None):
    """The TE conv (packed operands) and its PrimFunc, scheduled for ``target`` if given."""
    x, wt = _operands(cin, cout, h, w, k)
    b = _block_in(cin)
    columns = b == DEPTH and k > 1
    packed = (pack_conv_weight_columns(wt, LANES, DEPTH) if columns
              else pack_conv_weight(wt, b, LANES, DEPTH))
    data = te.placeholder(_block(x, b).shape, "int8", name="data")
    kernel = te.placeholder(packed.shape, "int8", name="kernel")
    out = conv2d_nchwc(data, kernel, (stride, stride), pad, (1, 1), 0,
                       column_pairs=k if columns else None)
    func = te.create_prim_func([data, kernel, out])
    if target is not None:
        func = default_schedule(func, find_dot(TARGETS[target].dot))
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    want = conv(x, wt, stride, pad)
    return mod, (_block(x, b), packed), [int(v) for v in out.shape], want


def _lanes_kernel(cin, cout, h, w, k, stride, pad, target=None):
    """The block-pair conv (``conv2d_nchwc(..., block_pairs=True)``) of a case, scheduled for
    ``target`` if given."""
    x, wt = _operands(cin, cout, h, w, k)
    packed = pack_conv_weight_pairs(wt, LANES, LANES)
    data = te.placeholder(_block(x, LANES).shape, "int8", name="data")
    kernel = te.placeholder(packed.shape, "int8", name="kernel")
    out = conv2d_nchwc(data, kernel, (stride, stride), pad, (1, 1), 0, block_pairs=True)
    func = te.create_prim_func([data, kernel, out])
    if target is not None:
        func = default_schedule(func, find_dot(TARGETS[target].dot))
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return mod, (_block(x, LANES), packed), [int(v) for v in out.shape], conv(x, wt, stride, pad)


@pytest.mark.parametrize("case", LANES_CASES[1:3])
def test_block_pairs_compute_is_exact(case):
    """The block-pair form itself (unscheduled, on the host): the padded input copied in
    pairs of blocks, each output lane's 16 weights per pair contiguous."""
    mod, (xb, packed), shape, want = _lanes_kernel(*case)
    assert packed.shape == (1, case[0] // 16, 3, 3, LANES, 16)
    assert np.array_equal(_on_host(mod, xb, packed, shape)[:, :case[1]], want)


def _packed_one(target, kind, x_shape, w, **conv_attrs):
    """The one ``kind`` kernel PackChannelBlocks makes for ``target`` from an int8 conv2d of
    ``w`` on an input of ``x_shape`` (``conv_attrs``: padding, strides, groups)."""
    x = relax.Var("x", relax.TensorType(x_shape, "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), out_dtype="int32", **conv_attrs),
                        name_hint="c")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = PackChannelBlocks(TARGETS[target].dot, "int8")(bb.get())
    funcs = [f for _, f in primfuncs(mod) if kernel_kind(f) == kind]
    assert len(funcs) == 1
    return funcs[0]


@pytest.mark.unit
def test_packer_takes_block_pairs_where_arm_can():
    """`arm` packs a conv on an even number of input blocks as block pairs, padded or not
    (lane-major weights: the conv's reduction is rc ry rx rj); an odd number of blocks (24
    channels: 3) and the other targets keep quads (rc ry rx rq rk)."""
    def conv_iterators(target, cin, pad):
        conv = _packed_one(target, "conv", (1, cin, 8, 8), np.ones((8, cin, 3, 3), "int8"),
                           padding=pad)
        # b o y x ol, then rc ry rx rj (block pairs) or rc ry rx rq rk (quads)
        return len(kernel_block(conv)[1].iter_vars)

    assert conv_iterators("arm", 16, (1, 1)) == 9
    assert conv_iterators("arm", 24, (1, 1)) == 10
    assert conv_iterators("arm", 16, (0, 0)) == 9
    assert conv_iterators("arm-dotprod", 16, (1, 1)) == 10


def _depthwise(c, h, w, k, stride, pad, target, parity=False, rewrite=False):
    """A tap-pair (``arm``) or tap-quad (``arm-dotprod``) depthwise kernel scheduled for
    ``target`` (None: unscheduled), with products of -128 and the smallest weight the target
    takes in the first row of the first block.  ``parity``: the tap quads shared by pixel
    pairs (``pack_depthwise_parity``; stride 1); ``rewrite``: the plane rewritten as its
    quads first."""
    rng = np.random.default_rng(c + h + k)
    x = rng.integers(-128, 128, (1, c, h, w)).astype("int8")
    spec = TARGETS[target or "arm-dotprod"].dot
    wt = rng.integers(spec.weight_min, 128, (c, 1, k, k)).astype("int8")
    x[0, :LANES, :k + 1, :] = -128
    wt[:LANES] = spec.weight_min  # -127 for NEON's tap pairs, -128 for sdot's quads
    if parity:
        packed = pack_depthwise_parity(wt, LANES, spec.tap_group)
        assert packed.shape[2:] == (-(-(k + 1) // 4), 2, LANES, 4)
    else:
        packed = pack_depthwise_pairs(wt, LANES, spec.tap_group)
        assert packed.shape[2:] == (-(-k // spec.tap_group), LANES, spec.tap_group)
    data = te.placeholder(_block(x, LANES).shape, "int8", name="data")
    kernel = te.placeholder(packed.shape, "int8", name="kernel")
    out = depthwise_pairs_nchwc(data, kernel, k, (stride, stride), pad, (1, 1), 0, rewrite)
    func = te.create_prim_func([data, kernel, out])
    if target is not None:
        func = default_schedule(func, find_dot(TARGETS[target].dot))
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    want = conv(x, wt, stride, pad, depthwise=True)
    return mod, (_block(x, LANES), packed), [int(v) for v in out.shape], want


@pytest.mark.parametrize("case", DW_PARITY_CASES)
def test_depthwise_parity_compute_is_exact(case):
    """The pixel-pair form itself (unscheduled, on the host): each pixel of a pair reads the
    pair's tap quads with the weights of its column parity (the odd pixel's shifted a column),
    the last quad's phantom taps reading pad columns with weight zero."""
    c, h, w, k, pad = case
    mod, (xb, packed), shape, want = _depthwise(c, h, w, k, 1, pad, None, parity=True)
    assert np.array_equal(_on_host(mod, xb, packed, shape)[:, :c], want)


def _packed_depthwise(target, width, stride, k=3):
    """The depthwise kernel PackChannelBlocks makes for ``target`` from a ``k`` x ``k``
    depthwise conv on 16 channels of 8-pixel rows ``width`` wide (padded to keep the size):
    the number of dims of its weights, and whether it rewrites its plane as tap groups."""
    dw = _packed_one(target, "depthwise", (1, 16, 8, width), np.ones((16, 1, k, k), "int8"),
                     strides=stride, padding=(k // 2,) * 2, groups=16)
    return len(dw.params[1].ty.shape), f'"{PAIR_BLOCK}"' in dw.script()


def test_packer_shares_tap_quads_where_arm_dotprod_can():
    """`arm-dotprod` packs a stride-1 depthwise conv on an even output width with parity
    weights (C/8, KH, G, 2, 8, 4); an odd width, a stride of 2 and the other targets keep
    one quad set per pixel."""
    assert _packed_depthwise("arm-dotprod", 8, 1) == (6, False)
    assert _packed_depthwise("arm-dotprod", 7, 1) == (5, False)
    assert _packed_depthwise("arm-dotprod", 8, 2) == (5, False)
    assert _packed_depthwise("arm", 8, 1) == (5, False)


@pytest.mark.parametrize("width, stride, k, rewritten", [
    (14, 1, 5, True), (16, 1, 5, True), (7, 1, 5, True), (18, 1, 5, False), (28, 1, 5, False),
    (56, 2, 5, True), (14, 1, 7, True), (14, 1, 3, False), (28, 2, 3, False)])
def test_packer_rewrites_wide_windows_on_arm_dotprod(width, stride, k, rewritten):
    """`arm-dotprod` rewrites the plane of a window of 5 or more columns as its tap quads (one
    quad set per pixel: weights (C/8, KH, G, 8, 4)), except a stride-1 conv on rows wider
    than 16 pixels (parity weights, quads gathered in place); 3x3 windows never; the other
    targets keep their forms."""
    assert _packed_depthwise("arm-dotprod", width, stride, k) == (
        (5, True) if rewritten else (6 if stride == 1 and width % 2 == 0 else 5, False))
    assert _packed_depthwise("arm", width, stride, k) == (5, False)
    assert _packed_depthwise("x86-avx512", width, stride, k)[1]  # always rewritten there


def _on_host(mod, xb, packed, shape):
    """The unscheduled kernel run on the host: its output, unblocked."""
    lib = tvm.compile(mod, target=get_target("x86").tvm())
    dev = tvm.cpu()
    y = tvm.runtime.tensor(np.zeros(shape, "int32"), dev)
    lib["main"](tvm.runtime.tensor(xb, dev), tvm.runtime.tensor(packed, dev), y)
    return unblock(y.numpy())


@pytest.mark.parametrize("case", CASES[:3])
def test_column_pairs_compute_is_exact(case):
    """The column-pair form itself (unscheduled, on the host): pairs of window columns in the
    place of quads, the phantom tap of an odd window reading a pad column with weight zero."""
    mod, (xb, packed), shape, want = _kernel(*case)
    assert packed.shape[3:5] == ((case[4] + 1) // 2, 2)
    assert not packed[:, :, :, -1, 1].any() if case[4] % 2 else True  # the phantom tap
    assert np.array_equal(_on_host(mod, xb, packed, shape)[:, :case[1]], want)


@pytest.mark.unit
def test_packer_refuses_weights_the_neon_pair_form_cannot_sum():
    """A weight of -128 (never F8Net's) would overflow NEON's int16 pair sums (the convs and
    depthwise tap pairs of ``arm``): it refuses it by name; ``arm-dotprod`` (sdot throughout)
    and x86 take it."""
    w = np.full((8, 3, 3, 3), 5, "int8")
    w[2, 1, 0, 0] = -128
    x = relax.Var("x", relax.TensorType((1, 3, 8, 8), "int8"))
    bb = relax.BlockBuilder()
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(w), padding=(1, 1), out_dtype="int32"),
                        name_hint="stem")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    mod = bb.get()
    with pytest.raises(InputError, match=r"conv 'stem'.*-128.*-127"):
        PackChannelBlocks(TARGETS["arm"].dot, "int8")(mod)
    PackChannelBlocks(TARGETS["arm-dotprod"].dot, "int8")(mod)
    PackChannelBlocks(TARGETS["x86"].dot, "any")(mod)


@pytest.mark.unit
@pytest.mark.parametrize("tiles", [None, (1, 2), (1, 4), (2, 1)])
def test_split_accumulators_depend_on_the_row_not_the_tile(tiles):
    """`arm` takes the split form (an rfactor block) on every row of a pair form, and on an
    odd row whose weights do not fit 16 KiB the reduction in chunks of input blocks with the
    row's pixels inside each, whatever the register tile: tuning samples tiles, and a
    record's tile must rebuild the program that was measured."""
    dot = find_dot(TARGETS["arm"].dot)
    # 8-pixel rows; 9-pixel rows with 2.3 KiB of weights a block; 5-pixel rows with 18 KiB
    for case, chunked in ((CASES[4], False), (CASES[3], False), (CASES[7], True)):
        x, wt = _operands(*case[:5])
        packed = pack_conv_weight(wt, LANES, LANES, DEPTH)
        data = te.placeholder(_block(x, LANES).shape, "int8", name="data")
        kernel = te.placeholder(packed.shape, "int8", name="kernel")
        out = conv2d_nchwc(data, kernel, (case[5],) * 2, case[6], (1, 1), 0)
        row = int(out.shape[3])
        use = tiles if tiles is None or row % tiles[1] == 0 else (tiles[0], 1)
        func = default_schedule(te.create_prim_func([data, kernel, out]), dot, use)
        assert "conv_nchwc_rf" in func.script(), (case, use)
        assert _pixels_inside_reduction(func) == chunked, (case, use)


@pytest.mark.unit
@pytest.mark.parametrize("case, row", [(LANES_CASES[0], False), (LANES_CASES[1], False),
                                       (LANES_CASES[4], True), (LANES_CASES[5], True),
                                       (LANES_CASES[8], True)])
def test_block_pairs_take_a_whole_odd_row_as_the_tile(case, row):
    """`arm`'s block pairs on a row of 3 to 7 pixels (odd): the row's pixels inside the
    reduction (one register tile), 2 lanes a pass (``NEON_2x16_LANES``); even rows keep
    2-pixel tiles of 8 lanes and longer odd rows one pixel a tile.  Read off the IR."""
    mod = _lanes_kernel(*case, target="arm")[0]
    func = mod["main"]
    assert _pixels_inside_reduction(func) == row, case
    lanes = re.findall(r"kernel\[[^\]]*, ([^,\]]+), 0:16\]", func.script())
    assert lanes and set(lanes) == ({"v_ol_o * 2:v_ol_o * 2 + 2"} if row else {"0:8"}), case


def _pixels_inside_reduction(func) -> bool:
    """Whether the split (or block-pair) form's loop over output pixels is nested inside a
    loop over input blocks (the reduction in chunks, or a whole row a tile), read off the IR:
    the loops around the tensorized step and which of its iterators each one binds."""
    found = []

    def walk(node, loops):
        kind = node_kind(node)
        if kind == "For":
            walk(node.body, loops + [node.loop_var])
        elif kind == "SeqStmt":
            for stmt in node.seq:
                walk(stmt, loops)
        elif kind == "SBlockRealize":
            if node.block.name_hint.startswith("conv_nchwc_rf_update"):
                found.append((loops, node))
            walk(node.block.body, loops)
        elif hasattr(node, "body"):
            walk(node.body, loops)

    walk(func.body, [])
    (loops, realize), = found
    binds = {iv.var.name: str(value) for iv, value in zip(realize.block.iter_vars,
                                                         realize.iter_values)}
    order = [name for var in loops for name, value in binds.items()
             if re.search(rf"\b{var.name}\b", value)]
    rc = next(i for i, name in enumerate(order) if name.startswith("v_rc"))
    x = next(i for i, name in enumerate(order) if name.startswith("v_x"))
    return rc < x


# the requantize epilogue's clamp-and-cast forms the saturating narrowing implements
NARROW = [("int8", -128, 127), ("int8", -127, 127), ("uint8", 0, 255)]
# per-channel right shifts of the narrowing that takes the shift in (``sqshl`` + ``tbl``):
# none (saturation everywhere), small, around the top byte (24) and the most (31)
SHIFTS = np.array([0, 1, 3, 7, 8, 9, 12, 15, 16, 17, 20, 23, 24, 25, 28, 31], "int32")


def _narrowing(dtype, lo, hi, target, width=8, by_channel=False):
    """A 16 -> 16 3x3 conv whose result, shifted right, is clamped to [lo, hi] and cast: both
    in-range values and saturation.  The shift is 8, or with ``by_channel`` :data:`SHIFTS`
    (a constant input, one per channel) after a bias add, as in a model's requantize.  Rows
    of ``width`` output pixels: 8 make tiles of a multiple of 4 (or 2) pixels, 7 tiles of an
    odd width, narrowed one pixel at a time (with the shift inside: the whole tile at once)."""
    x, wt = _operands(16, 16, 6, width, 3)
    packed = pack_conv_weight(wt, LANES, LANES, DEPTH)
    data = te.placeholder(_block(x, LANES).shape, "int8", name="data")
    kernel = te.placeholder(packed.shape, "int8", name="kernel")
    acc = conv2d_nchwc(data, kernel, (1, 1), (1, 1, 1, 1), (1, 1), 0)
    inputs, values = [data, kernel], [_block(x, LANES), packed]
    want = conv(x, wt, 1, (1, 1, 1, 1))
    if by_channel:
        shift = te.placeholder((1, 2, 1, 1, LANES), "int32", name="shift")
        biased = te.compute(acc.shape, lambda *i: acc(*i) + 5, name="bias")
        shifted = te.compute(acc.shape, lambda n, c, h, w, lane:
                             biased(n, c, h, w, lane) >> shift(0, c, 0, 0, lane), name="shift")
        inputs.append(shift)
        values.append(SHIFTS.reshape(1, 2, 1, 1, LANES))
        want = (want + 5) >> SHIFTS.reshape(1, -1, 1, 1)
    else:
        shifted = te.compute(acc.shape, lambda *i: acc(*i) >> 8, name="shift")
        want = want >> 8
    clamped = te.compute(acc.shape, lambda *i: te.max(te.min(shifted(*i), hi), lo), name="clip")
    out = te.compute(acc.shape, lambda *i: clamped(*i).astype(dtype), name="cast")
    func = default_schedule(te.create_prim_func([*inputs, out]),
                            find_dot(TARGETS[target].dot))
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    return mod, tuple(values), [int(v) for v in out.shape], np.clip(want, lo, hi), dtype


def test_odd_tile_narrows_in_parts_of_four_two_and_one():
    """`arm-dotprod`: a 7-pixel tile whose shift goes into the narrowing narrows the whole tile
    at once: three ``tbl`` of 4 vectors (2 pixels each) and one of 2 (the last pixel) per 14
    ``sqshl``, none of the ``mov``s that joined 8-byte halves (read off the host's asm; the
    board test runs it)."""
    mod = _narrowing("int8", -128, 127, "arm-dotprod", 7, by_channel=True)[0]
    lib = tvm.compile(mod, target=get_target("arm-dotprod").tvm())
    asm = kernel_source(lib)
    tables = [len(t.split(",")) for t in re.findall(r"\ttbl\tv\d+\.\d+b, \{([^}]*)\}", asm)]
    tiles = asm.count("\tsqshl\t") / 14
    assert tiles >= 1 and sorted(tables) == [2] * int(tiles) + [4] * int(3 * tiles), tables
    assert not re.search(r"\tmov\tv\d+\.d\[1\]", asm)


def _sqshl_top(x, shift, top):
    """NumPy model of the shift-in narrowing's lanes (``intrin_arm``): AArch64 ``SQSHL`` of
    int32 ``x`` by ``top - shift`` (saturating left; truncating right where negative), then the
    bits from ``top`` up, as the ``tbl`` of the top byte (``top`` 24) or the ``uzp2`` of the
    top half (16) reads them."""
    n = top - shift.astype(np.int64)
    x = x.astype(np.int64)
    moved = np.where(n >= 0, x << np.maximum(n, 0), x >> np.maximum(-n, 0))
    return np.clip(moved, -2**31, 2**31 - 1) >> top


def test_shift_in_narrowing_is_the_clamped_floor_shift():
    """What ``sqshl`` by ``24 - S`` and the top byte compute (the instruction modelled in
    NumPy, as the ARM ARM describes it) equals the requantize's ``clip(x >> S, -128, 127)``
    for every shift 0..31, at int32's extremes and around every saturation edge; the unsigned
    form's top half (``16 - S``), narrowed with unsigned saturation, equals ``clip(x >> S, 0,
    255)``."""
    rng = np.random.default_rng(7)
    edges = [0, 1, 127, 128, 255, 256, 2**15, 2**23, 2**24, 2**30, 2**31 - 1]
    near = np.array([e + d for e in edges for d in (-1, 0, 1)], np.int64)
    x = np.concatenate([near, -near, rng.integers(-2**31, 2**31, 20000)])
    x = np.clip(x, -2**31, 2**31 - 1)
    for s in range(32):
        shift = np.full(x.shape, s, np.int32)
        floor = x >> s
        for lo in (-128, -127):
            got = np.maximum(_sqshl_top(x, shift, 24), lo)
            assert np.array_equal(got, np.clip(floor, lo, 127)), s
        assert np.array_equal(np.clip(_sqshl_top(x, shift, 16), 0, 255), np.clip(floor, 0, 255))


def _requantize_func(dtype, lo, hi, width):
    """A kernel that is only a requantize (``schedules/_sch.py: schedule_requantize``): an
    int32 input of 16 channels (a residual sum, in a model), plus a constant, shifted right by
    :data:`SHIFTS` per channel, clamped to [lo, hi] and cast; unscheduled, with its input (int32's
    extremes included) and the NumPy result."""
    rng = np.random.default_rng(width)
    x = rng.integers(-2**31, 2**31 - 5, (1, 16, 3, width)).astype(np.int64)
    x[0, :, 0, :2] = [-2**31, 2**31 - 6]
    data = te.placeholder((1, 2, 3, width, LANES), "int32", name="data")
    shift = te.placeholder((1, 2, 1, 1, LANES), "int32", name="shift")
    biased = te.compute(data.shape, lambda *i: data(*i) + 5, name="bias")
    shifted = te.compute(data.shape, lambda n, c, h, w, lane:
                         biased(n, c, h, w, lane) >> shift(0, c, 0, 0, lane), name="shift")
    clamped = te.compute(data.shape, lambda *i: te.max(te.min(shifted(*i), hi), lo), name="clip")
    out = te.compute(data.shape, lambda *i: clamped(*i).astype(dtype), name="cast")
    want = np.clip((x + 5) >> SHIFTS.reshape(1, -1, 1, 1), lo, hi)
    return te.create_prim_func([data, shift, out]), x, want


def _requantize(dtype, lo, hi, target, width):
    """:func:`_requantize_func` scheduled for ``target``; rows of ``width`` pixels: 8 take the
    4-pixel narrowing, 6 the 2-pixel one, 7 the whole row at once (``arm-dotprod``; `arm`:
    one pixel at a time)."""
    func, x, want = _requantize_func(dtype, lo, hi, width)
    func = default_schedule(func, find_dot(TARGETS[target].dot))
    mod = tvm.IRModule({"main": func.with_attr("global_symbol", "main")})
    values = (_block(x.astype("int32"), LANES), SHIFTS.reshape(1, 2, 1, 1, LANES))
    return mod, values, [1, 2, 3, width, LANES], want, dtype


@pytest.mark.parametrize("target", ARM_TARGETS + ["x86-avx512"])
def test_requantize_kernel_takes_the_shift_narrowing(target):
    """A requantize on its own (no conv in the kernel) narrows with the shift inside on ARM,
    as the conv epilogues do (``sqshl`` + ``tbl``, no ``sshl``/``smin``); x86 (no such
    narrowing) keeps the generic vector loop.  Read off the asm (LLVM's; the board test runs
    the kernels)."""
    from f8tvm.schedules import _sch

    dot = find_dot(TARGETS[target].dot)
    for width in (8, 6, 7):
        for form in NARROW:
            sch = schedule_of(_requantize_func(*form, width)[0])
            assert _sch.schedule_requantize(sch, dot) == (target != "x86-avx512"), target
            if target == "x86-avx512":
                continue
            mod = _requantize(*form, target, width)[0]
            asm = tvm.compile(mod, target=get_target(target).tvm()).mod.inspect_source("asm")
            gather = "\tuzp2\t" if form[0] == "uint8" else "\ttbl\t"
            assert "\tsqshl\t" in asm and gather in asm, (target, width, form)
            assert "\tsshl\t" not in asm and "\tsmin\t" not in asm, (target, width, form)
            if target == "arm-dotprod" and width == 7 and form[0] == "int8":
                # the row narrowed whole: 3 tbl of 4 vectors (2 pixels each) and one of 2
                # (the 7th pixel), not 7 of 2
                tables = re.findall(r"\ttbl\tv\d+\.\w+, \{([^}]*)\}", asm)
                assert sorted(t.count("v") for t in tables) == [2, 4, 4, 4], tables


# a one-pixel 1x1 conv (a classifier): its reduction four input blocks a loop step on
# `arm-dotprod`
ONE_PIXEL = (64, 16, 1, 1, 1, 1, (0, 0, 0, 0))
WHOLE_ROW = (64, 16, 3, 7, 1, 1, (0, 0, 0, 0))  # a 1x1 conv whose tile is its 7-pixel row
TWO_PIXELS = (32, 16, 3, 8, 1, 1, (0, 0, 0, 0))  # 8-pixel tiles: two pixels per intrinsic


def test_one_pixel_conv_takes_four_input_blocks_a_step():
    """Read off the IR: the loop over input blocks split by 4, the inner part unrolled, on
    `arm-dotprod` (the board test runs it); a conv of more pixels keeps one block a step."""
    loops = re.findall(r"for (rc\w*) in (T\.unroll|range)\((\d+)\)",
                       _kernel(*ONE_PIXEL, target="arm-dotprod")[0]["main"].script())
    assert [(kind, n) for _, kind, n in loops] == [("range", "2"), ("T.unroll", "4")], loops
    wide = _kernel(64, 16, 1, 4, 1, 1, (0, 0, 0, 0), target="arm-dotprod")[0]["main"].script()
    assert "T.unroll(4)" not in re.sub(r"for (?!rc)\w+ in T\.unroll\(4\)", "", wide)


@pytest.mark.parametrize("width, steps", [
    (7, [("range", "4"), ("T.unroll", "2")]), (4, [("range", "4"), ("T.unroll", "2")]),
    (14, [("range", "8")])])
def test_whole_row_conv_takes_two_input_blocks_a_step(width, steps):
    """`arm-dotprod`: a 1x1 conv whose register tile is its whole row (7 or 4 pixels) takes
    two of its 8 input blocks per loop step (read off the IR); a 14-pixel row (two tiles of
    7) keeps one."""
    case = (64, 16, 3, width, 1, 1, (0, 0, 0, 0))
    loops = re.findall(r"for (rc\w*) in (T\.unroll|range)\((\d+)\)",
                       _kernel(*case, target="arm-dotprod")[0]["main"].script())
    assert [(kind, n) for _, kind, n in loops] == steps, loops


@pytest.mark.parametrize("case, two", [
    (TWO_PIXELS, True), ((16, 16, 8, 8, 3, 1, (1, 1, 1, 1)), True),
    ((32, 8, 9, 9, 1, 2, (0, 0, 0, 0)), False), (WHOLE_ROW, False)])
def test_even_tiles_take_two_pixels_per_step(case, two):
    """`arm-dotprod`'s pair form on a tile of an even width at stride 1 takes two pixels per
    intrinsic (``SDOT_8x8_LANE_2PX``): their 16 bytes one register, whose 4 quads ``sdot``
    reads by element, lanes 2 and 3 included, and no 8-byte activation loads; at stride 2 and
    on 7-pixel tiles a pixel each (read off the asm; the board test runs them)."""
    mod = _kernel(*case, target="arm-dotprod")[0]
    asm = tvm.compile(mod, target=get_target("arm-dotprod").tvm()).mod.inspect_source("asm")
    sdot = re.findall(r"\tsdot\tv\d+\.4s, v\d+\.16b, v\d+\.4b\[(\d)\]", asm)
    assert sdot and len(sdot) == asm.count("\tsdot\t"), case  # all by element
    assert ({"2", "3"} <= set(sdot)) == two, (case, sorted(set(sdot)))
    if two:
        eight_byte = re.findall(r"\tld[rp]\td\d+", asm)
        assert len(eight_byte) < len(sdot) // 16, (case, len(eight_byte))


@pytest.mark.parametrize("cin, width, steps", [
    (40, 14, [("T.unroll", "5")]), (48, 7, [("T.unroll", "6")]), (16, 14, [("range", "2")]),
    (56, 14, [("range", "7")])])
def test_short_reduction_conv_is_unrolled(cin, width, steps):
    """`arm-dotprod`: a 1x1 conv on 3 to 6 input blocks (``DotIntrin.unroll_blocks``) has its
    loop over them unrolled whole (read off the IR); 2 blocks LLVM unrolls by itself, 7 stay
    a loop."""
    case = (cin, 16, 3, width, 1, 1, (0, 0, 0, 0))
    loops = re.findall(r"for (rc\w*) in (T\.unroll|range)\((\d+)\)",
                       _kernel(*case, target="arm-dotprod")[0]["main"].script())
    assert [(kind, n) for _, kind, n in loops] == steps, loops


@pytest.mark.parametrize("k, stride, parity, tile, rows", [
    (5, 1, True, 4, None), (3, 1, True, 2, 2), (5, 2, False, 4, None), (7, 1, True, 4, None),
    (3, 2, False, 2, 2)])
def test_depthwise_register_tiles_on_arm_dotprod(k, stride, parity, tile, rows):
    """`arm-dotprod`: a window of 5 rows or more (whose weights do not fit the registers) is
    tiled 4 pixels at a time where 4 divides the row, a 3x3 window 2 pixels by 2 output rows
    (read off the IR)."""
    width = 16 if stride == 2 else 12  # output rows of 8 and 12 pixels, 8 rows
    mod = _depthwise(8, 8 * stride, width, k, stride, (k // 2,) * 4, "arm-dotprod", parity)[0]
    script = mod["main"].script()
    tiles = re.findall(r"for x_1 in T\.unroll\((\d+)\)", script)
    assert tiles == [str(tile)], (k, stride, tiles)
    pairs = re.findall(r"for y_1 in T\.unroll\((\d+)\)", script)
    assert pairs == ([str(rows)] if rows else []), (k, stride, pairs)


@pytest.mark.parametrize("case, tile", zip(DW_REWRITE_CASES, [7, 7, 4, 7, 3, 7]))
def test_depthwise_on_rewritten_quads_keeps_its_weights(case, tile):
    """`arm-dotprod` on a rewritten plane: the weights of a 5x5 (7x7) window stay in registers,
    so the register tile takes up to 7 pixels (the widest divisor of the row), and the
    window's rows stay a loop (read off the IR); the dot reads the quads, no ``tbl``."""
    mod = _depthwise(*case, "arm-dotprod", rewrite=True)[0]
    script = mod["main"].script()
    assert re.findall(r"for x_1 in T\.unroll\((\d+)\)", script) == [str(tile)], case
    assert re.search(rf"for ry in range\({case[3]}\):", script), case
    assert f"{PAIR_BLOCK} = T.sblock_alloc_buffer" in script


@pytest.mark.parametrize("c, width, tasks", [
    (128, 7, 4), (64, 7, 4), (32, 7, 4), (16, 7, 2), (128, 14, 16), (96, 7, 4)])
def test_small_rewritten_planes_share_a_task(c, width, tasks):
    """A task of a rewritten depthwise conv allocates its padded plane and its groups once: on
    small planes it takes up to 4 channel blocks (as many as divide the blocks, at least 4
    tasks left, the workspaces within a band's budget); 14-pixel rows' (13 KiB a plane)
    take one (read off the IR)."""
    mod = _depthwise(c, width, width, 5, 1, (2, 2, 2, 2), "arm-dotprod", rewrite=True)[0]
    script = mod["main"].script()
    assert re.findall(r"for \w+ in T\.parallel\((\d+)\)", script) == [str(tasks)], script


@pytest.mark.parametrize("limit, cap, on_stack", [
    (0, None, False),  # TVM's own rule: only under 1 KiB
    (1024, None, False),  # the padded plane is 1144 bytes
    (8 * 1024, None, True),
    (8 * 1024, 1024, False),  # within the limit, past the function's budget
])
def test_small_scratch_buffers_go_on_the_stack(limit, cap, on_stack, monkeypatch):
    """A depthwise task's padded plane (1144 bytes here) comes from the stack, not from the
    runtime's workspace calls, when it fits the target's ``stack_buffer_bytes`` and the
    function's budget (``_tvm.STACK_FUNCTION_BYTES``): read off the LLVM IR."""
    if cap is not None:
        monkeypatch.setattr(_tvm, "STACK_FUNCTION_BYTES", cap)
    mod = _depthwise(16, 9, 11, 3, 1, (1, 1, 1, 1), "arm-dotprod")[0]
    lib = tvm.compile(mod, target=get_target("arm-dotprod").tvm(),
                      tir_pipeline=tir_pipeline(limit))
    ll = kernel_source(lib, "ll")
    assert ("TVMBackendAllocWorkspace" not in ll) == on_stack
    assert TARGETS["arm-dotprod"].stack_buffer_bytes == TARGETS["arm"].stack_buffer_bytes \
        == 8 * 1024


_RUN = textwrap.dedent("""\
    import sys, numpy as np, tvm
    lib = tvm.runtime.load_module(sys.argv[1])
    args = [tvm.runtime.tensor(np.load(p)) for p in sys.argv[2:]]
    lib["main"](*args)
    np.save(sys.argv[-1], args[-1].numpy())
""")


@on_board
@pytest.mark.parametrize("target", ARM_TARGETS)
def test_arm_conv_kernels_are_exact_on_the_board(board, target, tmp_path):
    """Each case scheduled and tensorized for ``target`` (the pair intrinsics, the column-pair
    form for a one-quad input, the depthwise tap pairs, the narrowing epilogue),
    cross-compiled and run on the emulated board; and requantize kernels on their own (the
    narrowing with the shift inside, rows of 8, 6 and 7 pixels)."""
    built = []
    kernels = [(case, _kernel(*case, target=target)) for case in CASES]
    kernels += [((c, c, *rest), _depthwise(c, *rest, target=target) + ("int32",))
                for c, *rest in DW_CASES]
    parity = [(c, c, h, w, k, 1, pad, "parity") for c, h, w, k, pad in DW_PARITY_CASES
              ] if target == "arm-dotprod" else []
    kernels += [(case, _depthwise(*case[1:7], target=target, parity=True) + ("int32",))
                for case in parity]
    rewrite = [(c, c, *rest, "rewrite") for c, *rest in DW_REWRITE_CASES
               ] if target == "arm-dotprod" else []
    kernels += [(case, _depthwise(*case[1:7], target=target, rewrite=True) + ("int32",))
                for case in rewrite]
    kernels += [((16, 16) + form, _narrowing(*form, target, width))
                for width in (8, 7) for form in NARROW]
    kernels += [((16, 16, "by channel") + form, _narrowing(*form, target, width, True))
                for width in (8, 7) for form in NARROW]
    requantize = [(16, 16, f"requantize {width}") + form for width in (8, 6, 7)
                  for form in NARROW]
    kernels += [(case, _requantize(*case[3:], target, int(case[2].split()[1])))
                for case in requantize]
    if target == "arm-dotprod":
        kernels.append((ONE_PIXEL, _kernel(*ONE_PIXEL, target=target)))
        kernels.append((WHOLE_ROW, _kernel(*WHOLE_ROW, target=target)))
        kernels.append((TWO_PIXELS, _kernel(*TWO_PIXELS, target=target)))
    lanes = [case + ("lanes",) for case in LANES_CASES] if target == "arm" else []
    kernels += [(case, _lanes_kernel(*case[:7], target=target)) for case in lanes]
    for i, (case, (mod, values, shape, want, *out_dtype)) in enumerate(kernels):
        # the builds' TIR pipeline: the depthwise planes of up to 8 KiB on the stack
        lib = tvm.compile(mod, target=get_target(target).tvm(),
                          tir_pipeline=tir_pipeline(TARGETS[target].stack_buffer_bytes))
        asm = kernel_source(lib)
        if case[2:] in NARROW:  # the epilogue narrows with saturating narrows, no clamp
            assert re.search(r"\t(sq|uq)xtu?n2?\t", asm), (target, case)
            assert "\tsmin\t" not in asm, (target, case)
        if case[3:] in NARROW:  # the per-channel shift inside: sqshl, tbl (uzp2), no sshl
            gather = "\tuzp2\t" if case[3] == "uint8" else "\ttbl\t"
            assert "\tsqshl\t" in asm and gather in asm, (target, case)
            assert "\tsshl\t" not in asm and "\tsmin\t" not in asm, (target, case)
        # `arm` adds products into split accumulators (sadalp): tiles of 2 pixels on even
        # rows, of 1 pixel on odd rows with small weights
        split = target == "arm" and case not in requantize and (
            case in SPLIT or case[2:] in NARROW or case[3:] in NARROW or case in lanes)
        assert ("\tsadalp\t" in asm) == split, (target, case)
        if case in lanes:  # a lane's 16 products: smull + smlal2 on 16-byte loads, no dup
            assert "\tsmlal2\t" in asm and "\tdup\t" not in asm, (target, case)
        if len(CASES) <= i < len(CASES) + len(DW_CASES):  # depthwise: taps in pairs or quads
            quads = target == "arm-dotprod"  # each channel's 4 taps gathered (tbl), then sdot
            assert ("\ttbl\t" in asm and "\tsdot\t" in asm) == quads, (target, case)
            assert ("\tsmlal\t" in asm) != quads, (target, case)
        if case in parity:
            # a pixel pair's quads gathered once: one tbl per two sdot; a 3x3 window's two
            # output rows a tile (an even number of them) gather their shared input rows once:
            # 4 rows of quads for 2 x 3 rows of sdot
            _, _, h, _, k, _, pad = case[:7]
            rows = 2 if k <= 3 and (h + pad[0] + pad[2] - k + 1) % 2 == 0 else 1
            sdot, tbl = asm.count("\tsdot\t"), asm.count("\ttbl\t")
            assert tbl > 0 and sdot * (k + rows - 1) == 2 * rows * k * tbl, (case, sdot, tbl)
        if case in rewrite:  # the quads rewritten once (ext + st4), read by sdot as they are
            assert "\tsdot\t" in asm and "\ttbl\t" not in asm, case
        so = str(tmp_path / f"k{i}.so")
        lib.export_library(so, fcompile=cc.cross_compiler(TARGETS[target].cross_compiler))
        files = [str(tmp_path / f"k{i}_{n}.npy") for n in range(len(values) + 1)]
        zeros = np.zeros(shape, out_dtype[0] if out_dtype else "int32")
        for f, v in zip(files, (*values, zeros)):
            np.save(f, v)
        built.append((case, so, files, want))
    script = tmp_path / "run.py"
    script.write_text(_RUN)
    for case, so, files, want in built:
        r = board.run_python(str(script), so, *files)
        assert r.returncode == 0, r.stderr[-3000:]
        got = unblock(np.load(files[-1]))[:, :case[1]]
        assert np.array_equal(got, want), f"{target} {case}"
    assert os.path.getsize(built[0][1]) > 0
