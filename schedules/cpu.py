"""CPU schedules for the packed integer kernels (``relay_passes.packed_kernels``).

conv: register tile of ``oc_tile`` x ``ow_tile`` accumulators (vectors of int32 lanes), reduction
over input-channel groups of the dot depth innermost, the target's dot-product instruction via
tensorization (:data:`schedules.DOT`), the requantize epilogue
computed at the register tile (so no int32 tensor reaches memory; narrowed to 8 bits four pixels
at a time, or two, where the target has the intrinsic), parallel over output rows.
The two tile sizes are the decisions tuning explores (``sample_perfect_tile``); without tuning they
come from :func:`default_conv_tiles`.
"""

from __future__ import annotations

import math

from f8tvm.core import _tvm
from f8tvm.passes import packed_kernels as pk
from f8tvm.passes.packed_kernels import (
    CONV_BLOCK,
    DEPTHWISE_BLOCK,
    PAD_BLOCK,
    PAIR_BLOCK,
    PAIR_COPY,
)

from . import _sch
from . import intrin_amx as amx
from ._sch import divisors as _divisors


def odd_split_blocks(depth: int, dot) -> int:
    """Output blocks per one-pixel tile of the split form on a row that has no split width,
    for a reduction of ``depth`` bytes (input channels x window taps): the most, up to
    ``dot.split_odd_blocks``, whose weights fit ``dot.split_odd_bytes``.  When none fits:
    ``dot.split_odd_blocks`` where the target takes the reduction in chunks
    (``dot.split_odd_chunks``, :func:`odd_split_chunk`), else 0 (the row keeps the 8-lane
    form)."""
    if dot.pair_split is None or not dot.split_odd_bytes:
        return 0
    for t in (dot.split_odd_blocks, 1):
        if t * 8 * depth <= dot.split_odd_bytes:
            return t
    return dot.split_odd_blocks if dot.split_odd_chunks else 0


def odd_split_chunk(blocks: int, depth: int, t: int, dot) -> int:
    """Input blocks per chunk of the reduction of a one-pixel split tile of ``t`` output
    blocks (:func:`odd_split_blocks`'s; ``blocks`` input blocks, ``depth`` bytes in all): the
    most that divide ``blocks`` whose weights fit ``dot.split_odd_bytes`` (at least 1); 0 when
    all of them fit (no chunks).  The row's pixels then run chunk by chunk, each chunk's
    weights read from memory once and from L1 by the other pixels."""
    if t * 8 * depth <= dot.split_odd_bytes:
        return 0
    per_block = t * 8 * depth // blocks
    return max([d for d in _divisors(blocks) if d * per_block <= dot.split_odd_bytes] or [1])


def split_widths(ow: int, dot, depth: int = 0) -> list[int]:
    """The split form's tile widths for a row of ``ow`` pixels (``dot.split_tile`` or fewer
    that divide it, at least 2; or ``[1]``: :func:`odd_split_blocks` for a reduction of
    ``depth`` bytes): a conv takes the split form exactly when there is one, so that the
    choice depends on the conv alone, never on the tile (tuning samples tiles; a record's tile
    must rebuild the program that was measured)."""
    if dot.pair_split is None:
        return []
    widths = [d for d in _divisors(ow) if 2 <= d <= dot.split_tile]
    if not widths and depth and odd_split_blocks(depth, dot):
        return [1]
    return widths


def default_conv_tiles(occ: int, ow: int, dot, wide_weights: bool = False,
                       wide_data: bool = False, pairs: bool = False,
                       depth: int = 0) -> tuple[int, int]:
    """(oc_tile, ow_tile): the register tile (at most ``dot.accumulators`` vectors) with the
    fewest operand instructions per dot instruction: an activation broadcast is shared by the
    ``oc_tile`` weight tiles, a weight tile by the ``ow_tile`` pixels.  A widened (int16)
    weight tile is the dot's memory operand: it costs a load, no instruction (at most 8 of them
    per step: a wider slab of int16 weights leaves L1).  A widened activation pair
    (``wide_data``) is a broadcast load: ``dot.wide_data_a_cost`` (0.5 was the best of 0 to 2
    on EfficientNet-Lite0's convs; the loads are not free).

    ``pairs`` (``dot.pair_intrin``): one activation load serves two quads (half the cost), and
    the tile must fit ``dot.pair_registers`` (two per accumulator, one per pixel's activations,
    two for a weight tile), or hold at most ``dot.pair_tile`` accumulators (a whole row of up
    to twice that many pixels in one output block: its weights are then read once per row).
    A tile of several output blocks pays ``dot.b_cost_far`` per weight
    tile where the target sets it.  Ties go to the narrower output-block tile: each block's
    weights are then read once per row of pixels, not once per pixel group.

    With split accumulators (``dot.pair_split``): a row of an even width takes the split
    form's widest tile of one output block (``dot.split_tile`` pixels, or fewer that divide the
    row, at least 2): 12 instructions per step instead of 16, and no spills.  An odd row gets
    one pixel per tile, whose weights are then read again for every pixel, from L1: where
    ``dot.split_odd_blocks`` output blocks' weights fit ``dot.split_odd_bytes``
    (:func:`odd_split_blocks`, ``depth`` bytes per lane), or, with ``dot.split_odd_chunks``,
    in chunks of the reduction that fit (:func:`odd_split_chunk`: ResNet-18's 7-pixel rows,
    36 KiB of weights per block; without chunks one pixel at a time had 2.9x the modelled L1D
    misses of a Cortex-A55-class cache); else the row keeps the 8-lane form's tile.

    ``depth``: the reduction's bytes (input channels x window taps); a short reduction takes
    at most the accumulators ``dot.short_tiles`` gives its depth (or ``dot.short_wide``'s
    tile), and a one-pixel row (the classifier) at most ``dot.dense_blocks`` output blocks."""
    widths = split_widths(ow, dot, depth) if pairs else []
    if widths == [1]:  # an odd row: one pixel, output blocks that divide the conv's
        t = odd_split_blocks(depth, dot)
        return (t if occ % t == 0 else 1), 1
    if widths:
        return 1, max(widths)
    best, best_cost = (1, 1), float("inf")
    b_cost = 0.1 if wide_weights else dot.b_cost
    a_cost = dot.wide_data_a_cost if wide_data else dot.a_cost
    if pairs:
        a_cost /= 2
    limit = dot.accumulators
    if depth > 0:  # the first tier deep enough for the reduction, if any
        limit = min(limit, next((n for most, n in dot.short_tiles if depth <= most), limit))
    if ow == 1 and dot.dense_blocks:
        limit = min(limit, dot.dense_blocks)
    wide = dot.short_wide[1:] if dot.short_wide and depth > dot.short_wide[0] else None
    for t_w in _divisors(ow):
        for t_o in _divisors(occ):
            if t_o * t_w > limit and (t_o, t_w) != wide:
                continue
            if t_w > 16 or (wide_weights and t_o > 8):
                continue
            if pairs and dot.pair_registers and 2 * t_o * t_w + t_w + 2 > dot.pair_registers:
                continue
            if (pairs and dot.pair_tile and t_o * t_w > dot.pair_tile
                    and not (t_o == 1 and t_w == ow <= 2 * dot.pair_tile)):
                continue
            b = dot.b_cost_far if dot.b_cost_far is not None and t_o > 1 else b_cost
            cost = a_cost / t_o + b / t_w
            if cost < best_cost - 1e-9:
                best, best_cost = (t_o, t_w), cost
    return best


def pair_form(block, dot) -> bool:
    """Whether the conv ``block`` takes ``dot``'s pair form: both quads of an 8-channel block
    per step (int8 activations and weights)."""
    if dot.pair_intrin is None:
        return False
    rq = int(block.iter_vars[8].dom.extent)  # b o y x ol rc ry rx rq rk
    return rq == 2 and _sch.operand_dtypes(block) == ("int8", "int8")


def split_form(block, dot) -> bool:
    """Whether the conv ``block`` takes split accumulators (twice the registers: the default
    tile is at most ``split_tile`` accumulators): the pair form on a row that has a split tile
    width (:func:`split_widths`), whatever the tile.  Its schedule factors the reduction
    (``rfactor``)."""
    ext = [int(iv.dom.extent) for iv in block.iter_vars]  # b o y x ol rc ry rx rq rk
    depth = ext[5] * ext[6] * ext[7] * ext[8] * ext[9]
    return pair_form(block, dot) and bool(split_widths(ext[3], dot, depth))


def schedule_conv(sch, dot, tune: bool = False, tiles=None) -> None:
    """Schedule the fused PrimFunc in ``sch`` that holds a ``conv_nchwc`` block, tensorized with
    ``dot`` (a :class:`schedules.DotIntrin`).  ``tiles``: the (oc, ow) register tile, e.g. from
    a tuning record; default :func:`default_conv_tiles`."""
    conv = sch.get_sblock(CONV_BLOCK)
    if amx_conv(sch.get(conv), dot):
        schedule_conv_amx(sch, dot, tune, tiles)
        return
    if lanes_form(sch.get(conv), dot):
        schedule_conv_lanes(sch, dot, tune, tiles)
        return
    b, o, y, x, ol, rc, ry, rx, rq, rk = sch.get_loops(conv)
    occ, ow = _sch.extent(sch, o), _sch.extent(sch, x)
    a_dtype, b_dtype = _sch.operand_dtypes(sch.get(conv))
    pairs = pair_form(sch.get(conv), dot)
    split = split_form(sch.get(conv), dot)
    depth = 1  # the reduction's bytes: input blocks x window x the block's quads x 4
    for loop in (rc, ry, rx, rq, rk):
        depth *= _sch.extent(sch, loop)
    t_o, t_w = tiles or default_conv_tiles(occ, ow, dot, b_dtype == "int16", a_dtype == "int16",
                                           pairs, depth)
    o_o, o_i = _sch.tile(sch, o, t_o, tune, max_inner=8)
    x_o, x_i = _sch.tile(sch, x, t_w, tune, max_inner=16)
    # a column pair (``column_pairs``: the input block is one quad) or a block's quads
    columns = pairs and _sch.activation_block(sch.get(conv)) == dot.depth
    if split:
        conv, (b, o_o, y, x_o, rc, ry, rx, o_i, x_i, rq) = _split_accumulators(
            sch, conv, (b, o_o, y, x_o, rc, ry, rx, o_i, x_i, rq, ol, rk))
        last = sch.get_sblock(CONV_BLOCK)  # the lanes' final sums
    elif pairs:
        sch.reorder(b, o_o, y, x_o, rc, ry, rx, o_i, x_i, rq, ol, rk)
    else:
        sch.reorder(b, o_o, y, x_o, rc, ry, rx, rq, o_i, x_i, ol, rk)
        if dot.prefetch_weights and occ > t_o:  # there is a next output tile
            sch.annotate(rq, WEIGHT_PREFETCH, _sch.weight_buffer(sch.get(conv)).name)
    sch.parallel(sch.fuse(b, o_o, y))  # before tensorize: parallel needs a plain reduction block
    first = rc  # the reduction's outermost loop
    tile, pixels = x_o, _sch.extent(sch, x_i)  # where the sums and the epilogue go
    # (from the conv alone, not the tile: a tuning record must rebuild what was measured)
    chunk = odd_split_chunk(_sch.extent(sch, rc), depth, odd_split_blocks(depth, dot), dot) \
        if split and split_widths(ow, dot, depth) == [1] else 0
    if chunk:
        first, rc, tile, pixels = _chunk_reduction(sch, conv, rc, x_o, chunk, ow)
    blocks = _sch.extent(sch, rc)  # the input blocks the reduction's loop steps over
    one_by_one = _sch.extent(sch, ry) * _sch.extent(sch, rx) == 1
    if split and one_by_one and blocks % 2 == 0 and blocks > 2:
        # a 1x1 conv's input blocks two per loop step: its loop overhead (4 instructions per
        # step) is a tenth of a step of the split form (MobileNet-V2 on arm: 110.3 -> 108.8 M
        # instructions; the 8-lane form's 7-pixel tiles got longer with it: they spill)
        rc_o, rc_i = sch.split(rc, [None, 2])
        sch.unroll(rc_i)
        first = first if chunk else rc_o
    if pairs and not split and ow == 1 and blocks % 4 == 0 and one_by_one:
        # a one-pixel 1x1 conv (the classifier): its loop over input blocks four steps a body,
        # the loop's 3 instructions per 4 sdot were a third of it (MobileNet-V2's 1280 -> 1000
        # on arm-dotprod: 0.201 -> 0.147 M instructions; 5 output blocks a tile instead of
        # one, as well: 0.158 M)
        rc_o, rc_i = sch.split(rc, [None, 4])
        sch.unroll(rc_i)
        first = rc_o
    elif pairs and not split and 2 < blocks <= dot.unroll_blocks and one_by_one:
        # a 1x1 conv on a few input blocks: its loop over them unrolled, one body per tile
        # (EfficientNet-Lite0 on arm-dotprod: 45.58 -> 45.52 M instructions)
        sch.unroll(rc)
    elif pairs and not split and 1 < ow == pixels and blocks % 2 == 0 and blocks > 2 \
            and one_by_one:
        # a 1x1 conv whose tile is its whole row (7-pixel rows on sdot): two input blocks a
        # step (EfficientNet-Lite0 on arm-dotprod: 46.50 -> 46.24 M instructions, MobileNet-V2
        # 36.82 -> 36.64; on every row, the 14-pixel rows' 7-pixel tiles got longer: 46.45)
        rc_o, rc_i = sch.split(rc, [None, 2])
        sch.unroll(rc_i)
        first = rc_o
    if split:
        lanes = _sum_split(sch, last, tile)
    # epilogue (bias, requantize, residual, clip, cast) at the register tile
    _sch.fuse_epilogue(sch, last if split else conv, tile, dot, pixels)
    init = sch.decompose_reduction(conv, first)
    _sch.vectorize_inner(sch, init, unroll_rest=True, below=tile)
    if split:
        sch.tensorize(lanes, dot.split_sum)
        sch.tensorize(rq, dot.pair_split_columns if columns else dot.pair_split)
    elif pairs and _two_pixels(sch, conv, x_i, dot, columns):
        # two pixels per intrinsic: their 16 bytes one load (a pixel each: 8-byte loads)
        x_i, two = sch.split(x_i, [None, 2])
        sch.tensorize(two, dot.pair_intrin_2px)
    elif pairs:
        sch.tensorize(rq, dot.pair_intrin_columns if columns else dot.pair_intrin)
    else:
        sch.tensorize(ol, dot.intrin_for(sch.get(conv)))
    if dot.unroll_window:
        # the window's columns in one body: taps that read the same pixels (a stride-s window's
        # tap s + k and tap k of the next pixel) load them once; LLVM unrolls only the
        # small tiles by itself
        sch.unroll(rx)
        if dot.unroll_rows and _sch.extent(sch, ry) <= 3:
            # a 7x7 window's rows unrolled made ResNet-18's first conv 17% longer (spills)
            sch.unroll(ry)
    sch.unroll(x_i)
    sch.unroll(o_i)
    _sch.schedule_pad(sch, PAD_BLOCK)


# the loop whose steps prefetch the next output tile's weights (``DotIntrin.prefetch_weights``);
# its value names the weight buffer
WEIGHT_PREFETCH = "f8tvm.prefetch_weights"


def prefetch_weights(func):
    """``func`` (a scheduled conv) with the next output tile's weights prefetched from the loop
    :func:`schedule_conv` annotated with WEIGHT_PREFETCH; ``func`` itself where there is none.

    A model's weights do not stay in the caches from one run to the next (ResNet-18's are
    11 MB), and a register tile reads all of its output blocks' weights in each of its steps (a
    step: one tile of pixels, the whole reduction), the first step from memory: on a 7x7 row,
    2 x 73 KiB in 1 us, more than a core's share of memory bandwidth.  Instead, each step of a
    tile prefetches the next tile's weights of the input blocks ``c`` with ``c mod steps ==
    step``, one line of each output block per reduction position, as its own reduction passes
    those positions: every line is prefetched once, spread over the tile (where there are more
    steps than input blocks, the first steps prefetch one block each).  The test depends on
    the input block alone, so LLVM takes it out of the inner loops (a test per position of
    the whole reduction, instead, added 27% to ResNet-18's instructions on ``x86-avx512``, 64%
    on ``x86-avxvnni``).  The last tile prefetches nothing.
    A prefetch is a hint: no value changes.  Only where the accumulators are the kernel's own
    buffer (an epilogue follows, as in every conv of a model; on the stack: the preset's
    ``stack_buffer_bytes``).  The program alone on Zen 5, one thread: ResNet-18 3.97 -> 3.82
    ms, MobileNet-V2 1.11 -> 1.07, EfficientNet-Lite0 1.40 -> 1.33."""
    loops = _tvm.annotated_loops(func, WEIGHT_PREFETCH)
    if not loops:
        return func
    (loop,) = loops
    name = str(loop.annotations[WEIGHT_PREFETCH])
    realize, region = next(
        (r, reg) for r in _tvm.block_realizes(loop.body) for reg in r.block.reads
        if _tvm.region_tensor(reg).name == name)
    weights = _tvm.region_tensor(region)

    def unchanged():  # the annotation taken off, no prefetch
        return _tvm.with_loop_body(func, loop, lambda n: n.body, WEIGHT_PREFETCH)

    sums = _tvm.region_tensor(realize.block.writes[0])
    if any(p.same_as(sums) for p in func.params):
        # the accumulators in the kernel's output (no epilogue): LLVM cannot tell them from
        # the weights the prefetch reads, and would store them at every step
        return unchanged()
    ivs, values = realize.block.iter_vars, list(realize.iter_values)  # b o y x ol rc ry rx rq rk
    bound = {iv.var: v for iv, v in zip(ivs, values)}
    inner = []  # the loops inside the annotated one: the register tile's
    _tvm.post_order_visit(loop.body, lambda n: inner.append(n) if _tvm.node_kind(n) == "For"
                          else None)

    def uses(expr, var) -> bool:
        found = []
        _tvm.post_order_visit(expr, lambda n: found.append(n) if n.same_as(var) else None)
        return bool(found)

    zero = {f.loop_var: _tvm.tir.const(0, "int64") for f in inner}
    blocks = [f for f in inner if uses(values[1], f.loop_var)]
    if len(blocks) > 1:  # (not a tile schedule_conv makes: one loop over the tile's blocks)
        return unchanged()
    pixels = [f for f in inner if uses(values[3], f.loop_var)]
    t_o = math.prod(int(f.extent) for f in blocks)
    t_w = math.prod(int(f.extent) for f in pixels)
    oh, ow = int(ivs[2].dom.extent), int(ivs[3].dom.extent)
    steps = oh * (ow // t_w)
    step = values[2] * (ow // t_w) + _tvm.tir.floordiv(_tvm.substitute(values[3], zero), t_w)
    block_in = values[5]  # the reduction's input block: its window and quads follow
    start = [_tvm.substitute(_tvm.substitute(r.min, bound), zero) for r in region.region]
    last = int(weights.shape[0])
    due = _tvm.tir.all(_tvm.tir.floormod(block_in, steps) == step, start[0] + 2 * t_o <= last)
    body = _tvm.unrolled_loop("p", t_o, lambda p: _tvm.prefetch(  # block p of the next tile
        weights, [start[0] + t_o + p] + start[1:]))
    return _tvm.with_loop_body(
        func, loop, lambda n: _tvm.tir.SeqStmt([_tvm.tir.IfThenElse(due, body, None), n.body]),
        WEIGHT_PREFETCH)


def _two_pixels(sch, conv, x_i, dot, columns: bool) -> bool:
    """Whether the pair form takes two pixels per intrinsic (``dot.pair_intrin_2px``): a
    tile of an even number of pixels, adjacent in the input (stride 1), each a channel
    block's two quads (not a column pair)."""
    if dot.pair_intrin_2px is None or columns or _sch.extent(sch, x_i) % 2:
        return False
    return int(sch.get(conv).annotations[pk.CONV_COLUMNS][0]) == 1


def _chunk_reduction(sch, block, rc, x_o, chunk: int, ow: int):
    """Weights too big for L1: ``block``'s reduction over input blocks ``rc`` in chunks of
    ``chunk``, the row's pixel tiles ``x_o`` inside each chunk (their partial sums wait in
    memory).  Returns ``(chunk loop, rc inside it, tile, pixels)``: the sums and the epilogue
    then go once per row (the block's outermost loop, ``ow`` pixels)."""
    first, rc = sch.split(rc, [None, chunk])
    sch.reorder(first, x_o)
    return first, rc, sch.get_loops(block)[0], ow


def lanes_form(block, dot) -> bool:
    """Whether the conv ``block`` reads block pairs with lane-major weights
    (``conv2d_nchwc(..., block_pairs=True)``: iterators b o y x ol rc ry rx rj) and ``dot``
    has the intrinsic for them."""
    return dot.lanes_intrin is not None and len(block.iter_vars) == 9


def lanes_tiles(ow: int) -> tuple[int, int]:
    """The default register tile of the lanes form: one output block (8 accumulators a pixel,
    each 4 partial sums) by 2 pixels on even rows (8 weight vectors shared by both), one pixel
    on odd rows (but for those :func:`lanes_row` takes whole)."""
    return 1, (2 if ow % 2 == 0 else 1)


def lanes_row(ow: int, dot) -> int:
    """Output lanes per pass when a whole odd row of 3 to 7 pixels is the lanes form's register
    tile (``dot.lanes_row_intrin``): per reduction step, 2 lanes' weights and the row's pixels
    are loaded once for ``2 * ow`` lanes x pixels (ResNet-18's 7-pixel rows: 9 loads per 14
    instead of 9 per 8 one pixel a tile); 0: one pixel a tile (:func:`lanes_tiles`)."""
    if dot.lanes_row_intrin is None or ow % 2 == 0 or not 3 <= ow <= 7:
        return 0
    return 2


def lanes_chunk(blocks: int, depth: int, ow: int, dot) -> int:
    """Block pairs per chunk of the reduction of a one-pixel tile (odd rows that are not one
    tile: :func:`lanes_row`) whose weights do not fit ``dot.split_odd_bytes``
    (:func:`odd_split_chunk` for one output block); 0: no chunks."""
    if ow % 2 == 0 or not dot.split_odd_chunks:
        return 0
    return odd_split_chunk(blocks, depth, 1, dot)


def schedule_conv_lanes(sch, dot, tune: bool = False, tiles=None) -> None:
    """The lanes form (:func:`lanes_form`): per output lane and pixel, one ``smull`` +
    ``smlal2`` + ``sadalp`` per 16 input channels into 4 partial sums (the reduction factored
    over them with ``rfactor``), added once per pixel after the reduction; the epilogue at the
    register tile, as the split form's (:func:`_sum_split`)."""
    conv = sch.get_sblock(CONV_BLOCK)
    b, o, y, x, ol, rc, ry, rx, rj = sch.get_loops(conv)
    ow = _sch.extent(sch, x)
    lanes = lanes_row(ow, dot)
    if lanes:
        _schedule_lanes_row(sch, dot, lanes, (b, o, y, x, ol, rc, ry, rx, rj), ow)
        return
    depth = 1  # the reduction's bytes
    for loop in (rc, ry, rx, rj):
        depth *= _sch.extent(sch, loop)
    blocks = _sch.extent(sch, rc)
    t_o, t_w = tiles or lanes_tiles(ow)
    o_o, o_i = _sch.tile(sch, o, t_o, tune, max_inner=8)
    x_o, x_i = _sch.tile(sch, x, t_w, tune, max_inner=16)
    jh, part, jl = sch.split(rj, [2, 4, 2])
    sch.reorder(b, o_o, y, x_o, rc, ry, rx, o_i, x_i, part, ol, jh, jl)
    rf = sch.rfactor(part, factor_axis=5)  # the partial sums: the conv's output x 4
    b, o_o, y, x_o, rc, ry, rx, o_i, x_i, part = sch.get_loops(rf)[:10]
    sch.parallel(sch.fuse(b, o_o, y))
    first, tile, pixels = rc, x_o, _sch.extent(sch, x_i)
    chunk = lanes_chunk(blocks, depth, ow, dot)  # from the conv alone (a record replays it)
    if chunk:
        first, rc, tile, pixels = _chunk_reduction(sch, rf, rc, x_o, chunk, ow)
    _lanes_rest(sch, dot, rf, tile, first, pixels, tile, (o_i, x_i), part, dot.lanes_intrin)


def _schedule_lanes_row(sch, dot, lanes: int, loops, ow: int) -> None:
    """The lanes form on an odd row of ``ow`` pixels (:func:`lanes_row`; ``loops``: the conv's
    b o y x ol rc ry rx rj): the row's pixels are the register tile, ``lanes`` output lanes a
    pass (passes unrolled: their partial sums stay at fixed places of the row's, and in
    registers through the pass's reduction); the 8 lanes' final sums and the epilogue once per
    row."""
    b, o, y, x, ol, rc, ry, rx, rj = loops
    ol_o, ol_i = sch.split(ol, [None, lanes])
    jh, part, jl = sch.split(rj, [2, 4, 2])
    sch.reorder(b, o, y, ol_o, rc, ry, rx, x, part, ol_i, jh, jl)
    rf = sch.rfactor(part, factor_axis=5)
    b, o, y = sch.get_loops(rf)[:3]
    sch.parallel(sch.fuse(b, o, y))
    row, ol_o, rc, _, _, x, part = sch.get_loops(rf)[:7]
    _lanes_rest(sch, dot, rf, row, rc, ow, ol_o, (ol_o, x), part, dot.lanes_row_intrin)


def _lanes_rest(sch, dot, rf, tile, first, pixels, init_below, unrolled, part, intrin) -> None:
    """What both lanes forms do once the reduction is factored (``rf``, its first reduction
    loop ``first``): the lanes' final sums and the epilogue at ``tile`` (``pixels`` wide), the
    partial sums' init vectorized below ``init_below``, the products tensorized with
    ``intrin`` at ``part``, the ``unrolled`` loops unrolled; then the pad and the pair copy
    (per pixel, the two blocks' 8 bytes as two vectors)."""
    last = sch.get_sblock(CONV_BLOCK)
    lane = _sum_split(sch, last, tile)
    _sch.fuse_epilogue(sch, last, tile, dot, pixels)
    init = sch.decompose_reduction(rf, first)
    _sch.vectorize_inner(sch, init, unroll_rest=True, below=init_below)
    sch.tensorize(lane, dot.lanes_sum)
    for loop in unrolled:
        sch.unroll(loop)
    sch.tensorize(part, intrin)
    _sch.schedule_pad(sch, PAD_BLOCK)
    copy = sch.get_sblock(PAIR_COPY)
    n, c, yy, xx, j = sch.get_loops(copy)
    half, byte = sch.split(j, [2, None])
    sch.vectorize(byte)
    sch.unroll(half)
    sch.parallel(sch.fuse(n, c, yy))


def amx_conv(block, dot) -> bool:
    """Whether the conv ``block`` takes AMX tiles: ``dot`` has them, the activations are uint8
    in whole channel blocks of 16 (four quads: a tile row's 16 bytes per window column) or a
    single quad (the RGB image: its 4 bytes per column, the window row folded into a tile row),
    the weights int8 and its rows split into tiles of 2 to 16 pixels (:func:`amx_rows`); or
    the classifier (a 1x1 conv on one pixel, :func:`amx_dense`).  The others keep ``dot``'s
    vector form: a 1x1 conv on the RGB image (one 4-byte step per tile).  Thin 1x1 convs (one
    or two input blocks: one or two ``tdpbusd`` per tile) run faster on tiles too, given the
    register tile's 4 accumulators (MobileNet-V2's 1.5x the VNNI kernel's time with one
    accumulator, 0.7-0.9x with four); a 1x1 conv's tile rows take up to 4 input blocks
    (:func:`amx_channels`)."""
    if not (dot is not None and dot.amx):
        return False
    a_dtype, b_dtype = _sch.operand_dtypes(block)
    if (a_dtype, b_dtype) != ("uint8", "int8"):
        return False
    if amx_dense(block):
        return True
    ext = [int(iv.dom.extent) for iv in block.iter_vars]  # b o y x ol rc ry rx rq rk
    ow, kw = ext[3], ext[7]
    cb = _sch.activation_block(block)
    dilation = int(block.annotations[pk.CONV_COLUMNS][1])
    fold = amx_fold(kw, dilation, cb)
    return bool(amx_rows(ow)) and (cb == 16 or (cb == 4 and fold == kw > 1))


def amx_dense(block) -> int:
    """Input blocks per tile row when the conv ``block`` is a classifier on AMX (a 1x1 conv on
    one pixel of whole 16-channel blocks, 2 or 4 of which divide its input), else 0.

    Its tile is one row: the pixel's input blocks, adjacent in the layout, 64 bytes of them
    per ``tdpbusd`` (K = 64; their weights are adjacent too: 16 rows of 64 bytes), one
    accumulator per output block.  1 x 16 x 64 MACs per instruction, 1/16 of a tile's; the
    kernel streams its weights once either way (0.5 MB on ResNet-18)."""
    ext = [int(iv.dom.extent) for iv in block.iter_vars]  # b o y x ol rc ry rx rq rk
    shape = _sch.activation_shape(block)  # (1, C/16, 1, 1, 16): the blocks 16 bytes apart
    if ext[2:4] != [1, 1] or ext[6:8] != [1, 1] or shape[2:] != (1, 1, 16):
        return 0  # (a strided 1x1 conv down to one pixel reads blocks H * W * 16 bytes apart)
    return next((f for f in (4, 2) if ext[5] % f == 0), 0)


def amx_rows(ow: int) -> list[int]:
    """The AMX tile heights (pixels per tile) for a row of ``ow`` pixels: its divisors from 2
    to 16 (a tile has at most 16 rows; one row would waste the tile)."""
    return [d for d in _divisors(ow) if 2 <= d <= amx.MAX_ROWS]


def amx_tiles(oh: int) -> list[int]:
    """Accumulator tiles (output rows sharing each weight tile) for ``oh`` output rows: its
    divisors up to 4."""
    return [d for d in _divisors(oh) if d <= amx.MAX_TILES]


def amx_blocks(ob: int, tiles: int) -> list[int]:
    """Output blocks sharing each activation tile, for ``ob`` output blocks and ``tiles``
    output rows: the divisors of ``ob`` that keep the accumulators (rows x blocks) within 4."""
    return [d for d in _divisors(ob) if d * tiles <= amx.MAX_TILES]


def amx_fold(kw: int, dilation: int, block: int = 16) -> int:
    """Window columns per AMX tile row: the whole window where its columns are adjacent and fit
    a tile row's 64 bytes (a 3x3 conv: K = 48 per ``tdpbusd``), else one per step."""
    return kw if dilation == 1 and kw * block <= amx.MAX_BYTES else 1


def amx_channels(kh: int, kw: int, block: int, ib: int) -> int:
    """Input blocks per AMX tile row of a 1x1 conv on ``ib`` 16-channel blocks, read from a
    pixel-major copy of its activations (:func:`_pixel_major`): the most from 4 down to 2
    that divide ``ib`` (K = 64, 48 or 32 per ``tdpbusd`` instead of the layout's 16); 1 for
    any other conv, or where none divides (5 or 7 blocks: one per tile row, no copy)."""
    if (kh, kw, block) != (1, 1, 16):
        return 1
    return next((f for f in (4, 3, 2) if ib % f == 0), 1)


def default_amx_channels(fold: int, ob: int, rows: int, stride: int) -> int:
    """Whether a 1x1 conv folds its input blocks into tile rows by default: ``fold`` (from
    :func:`amx_channels`) where the pixel-major copy costs less than the dots it saves, else 1.

    Per input byte the copy takes about 1/16 cycle (16 bytes a cycle: measured on Zen 4), and
    the conv does ``m = ob * 16 / stride**2`` MACs, ``m / (rows * 256)`` one-block ``tdpbusd``
    of 16 cycles each (Intel's throughput, whatever K), of which folding saves ``1 - 1/fold``:
    the copy pays where ``m * (1 - 1/fold) > rows``.  So MobileNet-V2's 2-block 1x1 convs on
    56x56 maps fold (3 of their 6 or 9 input blocks a row), its 1-block 112x112 one does not
    (the copy would cost twice what it saves); a tuning record decides per conv."""
    if fold > 1 and ob * 16 * (1 - 1 / fold) / (stride * stride) > rows:
        return fold
    return 1


def default_amx_tile(oh: int, ow: int, ob: int = 1) -> tuple[int, int, int]:
    """(output rows, pixels, output blocks) of the register tile: the most rows sharing a
    weight tile, the widest tile, then as many output blocks as keep 4 accumulators (a 14x14
    map: 2 rows x 2 blocks; 7x7: 1 x 4), so no ``tdpbusd`` waits for the one before it."""
    t = max(amx_tiles(oh))
    return t, max(amx_rows(ow)), max(amx_blocks(ob, t))


def schedule_conv_amx(sch, dot=None, tune: bool = False, tiles=None) -> None:
    """A conv on AMX tiles (:mod:`schedules.intrin_amx`): register tiles of ``t`` output rows
    x ``rows`` pixels x ``blocks`` output blocks (``t * blocks`` accumulators: the rows share
    each weight tile, the blocks each activation tile), kept in tile registers over the input
    blocks and window rows (and columns, unless folded into the tile rows), stored once per
    register tile and requantized there (narrowed with ``dot``'s packs where the tile's rows
    allow: :func:`_sch.fuse_epilogue`).  ``tiles``: ``(t, rows, blocks)`` from a tuning record
    (``(t, rows)``: one block), else (or if they do not fit: a record of another form)
    :func:`default_amx_tile`; tuning samples them from :func:`amx_tiles`, :func:`amx_rows` and
    :func:`amx_blocks` (categorical decisions: a perfect-tile sample could pick 1 row).

    A 1x1 conv has a fourth decision (a record's fourth value; ours where a record has three):
    its input blocks per tile row, :func:`amx_channels` (read from a pixel-major copy of its
    activations, :func:`_pixel_major`) or 1 (the layout's 16 bytes, no copy); ours:
    :func:`default_amx_channels`."""
    conv = sch.get_sblock(CONV_BLOCK)
    dense = amx_dense(sch.get(conv))  # the classifier: input blocks per tile row
    if dense:
        _schedule_dense_amx(sch, conv, dot, dense)
        return
    b, o, y, x, ol, rc, ry, rx, rq, rk = sch.get_loops(conv)
    ob, oh, ow = _sch.extent(sch, o), _sch.extent(sch, y), _sch.extent(sch, x)
    kh, kw = _sch.extent(sch, ry), _sch.extent(sch, rx)
    block = sch.get(conv)
    stride, dilation = (int(v) for v in block.annotations[pk.CONV_COLUMNS])
    ystride = int(block.annotations[pk.CONV_ROWS][0])
    cb = _sch.activation_block(block)
    t, rows, blocks = default_amx_tile(oh, ow, ob)
    most = amx_channels(kh, kw, cb, _sch.extent(sch, rc))  # a 1x1 conv's input blocks a row
    channels = None  # (ours for the rows picked)
    if tiles and len(tiles) in (2, 3, 4):  # else a record of another schedule (a VNNI build's)
        rt, rr, rb, rf = (*tiles, 1, None)[:4] if len(tiles) == 2 else (*tiles, None)[:4]
        if (rt in amx_tiles(oh) and rr in amx_rows(ow) and rb in amx_blocks(ob, rt)
                and rf in (None, 1, most)):
            t, rows, blocks, channels = rt, rr, rb, rf
    picked = []
    for value, choices in ((t, amx_tiles(oh)), (rows, amx_rows(ow))):
        picked.append(sch.sample_categorical(choices, [1.0 / len(choices)] * len(choices),
                                             decision=None if tune else choices.index(value)))
    y_o, y_i = sch.split(y, factors=[None, picked[0]])
    x_o, x_i = sch.split(x, factors=[None, picked[1]])
    t, rows = _sch.extent(sch, y_i), _sch.extent(sch, x_i)  # the sampled ones when tuning
    choices = amx_blocks(ob, t)  # (those that fit the rows sampled)
    blocks = blocks if blocks in choices else max(choices)
    pick = sch.sample_categorical(choices, [1.0 / len(choices)] * len(choices),
                                  decision=None if tune else choices.index(blocks))
    o_o, o_i = sch.split(o, factors=[None, pick])
    blocks = _sch.extent(sch, o_i)
    ci = None
    if most > 1:  # a 1x1 conv: its input blocks a tile row from a pixel-major copy, or one
        if channels is None:
            channels = default_amx_channels(most, ob, rows, stride)
        choices = [most, 1]
        pick = sch.sample_categorical(choices, [0.5, 0.5],
                                      decision=None if tune else choices.index(channels))
        rc, ci = sch.split(rc, factors=[None, pick])
    channels = _sch.extent(sch, ci) if ci is not None else 1
    fold = channels if channels > 1 else amx_fold(kw, dilation, cb)
    quads = [rq] if cb > 4 else []
    if not quads:  # one quad: no loop of extent 1 (the intrinsic binds its quad to 0)
        rk = sch.fuse(rq, rk)
    # the register tile's blocks, then rows; a loop of extent 1 outside both (the intrinsics'
    # loops have none)
    tile_loops = [o_i, y_i] if t > 1 else [y_i, o_i]
    if channels > 1:
        sch.reorder(b, o_o, y_o, x_o, rc, ry, rx, *tile_loops, x_i, ol, ci, *quads, rk)
    elif ci is not None:  # (one block a tile row: the split's inner loop of extent 1)
        sch.reorder(b, o_o, y_o, x_o, rc, ci, ry, rx, *tile_loops, x_i, ol, *quads, rk)
    elif fold > 1:
        sch.reorder(b, o_o, y_o, x_o, rc, ry, *tile_loops, x_i, ol, rx, *quads, rk)
    else:
        sch.reorder(b, o_o, y_o, x_o, rc, ry, rx, *tile_loops, x_i, ol, *quads, rk)
    zero, dot_step, store = amx.intrinsics(amx.Tile(t, rows, fold, stride, cb, ystride,
                                                    blocks, channels > 1))
    # the accumulators (a stand-in for the tile registers) and their store to the conv's output
    out = sch.cache_write(conv, 0, "global")
    sch.reverse_compute_at(out, x_o, preserve_unit_loops=True)
    if t == 1:  # its loops follow the buffer's axes (block, row, pixel, lane): row outside
        blk, row = sch.get_loops(out)[-4:-2]
        sch.reorder(row, blk)
    sch.parallel(sch.fuse(b, o_o, y_o))
    if channels > 1:
        _pixel_major(sch, conv)
    _sch.fuse_epilogue(sch, out, x_o, dot, rows)
    init = sch.decompose_reduction(conv, rc)
    # the loops a step's intrinsic covers: [blocks,] [rows,] pixels, lanes
    inner = 2 + (t > 1) + (blocks > 1)
    sch.tensorize(sch.get_loops(init)[-inner], zero)
    sch.tensorize(o_i if blocks > 1 else y_i if t > 1 else x_i, dot_step)
    sch.tensorize(sch.get_loops(out)[-inner], store)
    _sch.schedule_pad(sch, PAD_BLOCK)


# the annotation of a pixel-major copy's block (:func:`_pixel_major`)
PIXEL_MAJOR = "f8tvm.pixel_major"


def _pixel_major(sch, conv) -> None:
    """The activations of a 1x1 conv on AMX, copied pixel-major (``(N, H, W, C/16, 16)``: a
    pixel's input blocks adjacent, so several make one tile row) before the conv, once (every
    output block's tiles read the copy): :func:`pixel_major`."""
    act = _sch.activation_buffer(sch.get(conv))
    index = next(i for i, r in enumerate(sch.get(conv).reads)
                 if _tvm.region_tensor(r).same_as(act))
    pixel_major(sch, sch.cache_read(conv, index, "local"))


def pixel_major(sch, copy, parallel_bytes: int = 96 << 10) -> None:
    """The block ``copy`` (a copy of a ``(N, C/16, H, W, 16)`` tensor, its loops in that order)
    writes pixel-major, a pixel's blocks in turn, 16 bytes at a time, its rows in parallel
    from ``parallel_bytes`` up (measured on a 2-core Zen 4, each copy alone: 2 threads take
    0.55x one's time on 441 KiB, 0.88x on 110 KiB, 1.4x on 46 KiB); annotated
    :data:`PIXEL_MAJOR`."""
    sch.transform_layout(copy, ("write", 0), lambda n, c, h, w, lane: (n, h, w, c, lane))
    n, c, h, w, lane = sch.get_loops(copy)
    sch.reorder(n, h, w, c, lane)
    rows = sch.fuse(n, h)
    if _sch.plane_bytes(_tvm.region_tensor(sch.get(copy).reads[0])) * _sch.extent(
            sch, c) >= parallel_bytes:
        sch.parallel(rows)
    sch.vectorize(lane)
    sch.annotate(copy, PIXEL_MAJOR, 1)


def _schedule_dense_amx(sch, conv, dot, fold: int) -> None:
    """The classifier on AMX (:func:`amx_dense`): per output block (in parallel) one
    accumulator over the input blocks, ``fold`` of them per ``tdpbusd``; no tuning decisions."""
    b, o, y, x, ol, rc, ry, rx, rq, rk = sch.get_loops(conv)
    rc_o, rc_i = sch.split(rc, factors=[None, fold])
    sch.reorder(b, o, y, x, rc_o, ry, rx, ol, rc_i, rq, rk)
    zero, dot_step, store = amx.intrinsics(amx.Tile(1, 1, fold, 1))
    out = sch.cache_write(conv, 0, "global")
    sch.reverse_compute_at(out, x, preserve_unit_loops=True)
    sch.parallel(sch.fuse(b, o))
    _sch.fuse_epilogue(sch, out, x, dot, 1)
    init = sch.decompose_reduction(conv, rc_o)
    sch.tensorize(sch.get_loops(init)[-1], zero)
    sch.tensorize(ol, dot_step)
    sch.tensorize(sch.get_loops(out)[-1], store)


def _split_accumulators(sch, conv, loops):
    """Factor the pair form's reduction over a quad's bytes in two (``rfactor``): the returned
    block (and its loops down to the quad's) accumulates two partial sums per output lane,
    bytes 0-1 and 2-3 of each quad (``dot.pair_split``); the conv block, now after it, adds
    each lane's two."""
    b, o_o, y, x_o, rc, ry, rx, o_i, x_i, rq, ol, rk = loops
    half, byte = sch.split(rk, [2, 2])
    sch.reorder(b, o_o, y, x_o, rc, ry, rx, o_i, x_i, rq, ol, half, byte)
    # the partial sums' buffer: the conv's output with the half innermost (after its lanes)
    rf = sch.rfactor(half, factor_axis=5)
    return rf, sch.get_loops(rf)[:10]


def _sum_split(sch, block, tile):
    """The lanes' final sums (``block``, after :func:`_split_accumulators`) at the register
    tile, once per output pixel; returns the loop of a pixel's 8 lanes (to tensorize with
    ``dot.split_sum`` once the epilogue is in place: tensorizing replaces the block)."""
    sch.reverse_compute_at(block, tile, preserve_unit_loops=True)
    loops = sch.get_loops(block)
    half = loops[-6]  # reverse_compute_at keeps the block's iterators' order: the half first
    sch.reorder(*loops[-5:], half)
    lane = sch.get_loops(block)[-2]
    init = sch.decompose_reduction(block, lane)
    _sch.vectorize_inner(sch, init, unroll_rest=True, below=tile)
    for lp in sch.get_loops(block)[_sch._below(sch, sch.get_loops(block), tile):-2]:
        sch.unroll(lp)
    return lane


def schedule_depthwise(sch, dot, tune: bool = False, tiles=None) -> None:
    """Depthwise conv: vectors over the channel block, ``ow_tile`` pixels per step.  The tap-pair
    form (``depthwise_pairs_nchwc``) is tensorized with ``dot``'s pair intrinsic: one 2-deep dot
    per pair of window columns."""
    dw = sch.get_sblock(DEPTHWISE_BLOCK)
    loops = sch.get_loops(dw)
    pairs = len(loops) == 8
    if pairs:
        b, c, y, x, cl, ry, rp, rk = loops
    else:
        b, c, y, x, cl, ry, rx = loops
    ow = _sch.extent(sch, x)
    limit = dot.dw_tile if dot is not None else 8
    if dot is not None and dot.dw_tile_wide and _sch.extent(sch, ry) >= 5:
        # a 5x5 window's weights (40 vectors for a tile of 2 pixels on sdot) do not fit the
        # registers: reloaded per tile, they are shared by more pixels in a wider one
        # (EfficientNet-Lite0 on arm-dotprod: its 5x5 kernels on 28-pixel rows and at stride
        # 2, 2.57 -> 2.16 M instructions; 3x3 windows got longer with 4 pixels: MobileNet-V2
        # 37.34 -> 37.53 M)
        limit = dot.dw_tile_wide
    widened = _sch._block_or_none(sch, PAIR_BLOCK) if pairs else None
    # a dot that reads groups in place (sdot's tbl form) also has one for rewritten groups
    grouped = (dot.dw_grouped_signed if widened is not None and dot is not None
               and dot.dw_grouped_signed else None)
    if grouped:
        # its 5x5 weights (20 vectors for 8 channels) stay in registers: wider tiles, and the
        # window's rows left a loop (LLVM unrolls it with a base address per row, so a tile's
        # loads are paired; unrolled in TIR, their offsets outgrow ldp's immediate).
        # EfficientNet-Lite0 on arm-dotprod, its 5x5 kernels on 14- and 7-pixel rows and at
        # stride 2: 5.86 M instructions in the tbl form; rewritten, tiles of at most 4 pixels:
        # 5.27; of 7: 5.13; of 7 with the rows a loop: 4.94 (and 0.29 M more in the runtime,
        # allocating the groups' workspace)
        limit = dot.dw_grouped_tile
    t_w = tiles[0] if tiles else _sch.widest_divisor(ow, limit)
    x_o, x_i = _sch.tile(sch, x, t_w, tune, max_inner=16)
    y_i = None
    if (pairs and dot is not None and dot.dw_rows > 1 and _sch.extent(sch, ry) <= 3
            and _sch.extent(sch, y) % dot.dw_rows == 0 and widened is None):
        # output rows in pairs: the tap groups of the input rows both read are gathered once
        # (LLVM merges the identical loads and ``tbl``s of the unrolled rows)
        y, y_i = sch.split(y, [None, dot.dw_rows])
        sch.reorder(b, c, y, x_o, ry, rp, y_i, x_i, cl, rk)
    elif pairs:
        sch.reorder(b, c, y, x_o, ry, rp, x_i, cl, rk)
    else:
        sch.reorder(b, c, y, x_o, ry, rx, x_i, cl)
    plane = sch.fuse(b, c)
    task = plane  # a parallel task: one plane, or several planes whose workspaces it shares
    k = _planes_per_task(sch, widened, _sch.extent(sch, plane)) if grouped else 1
    if k > 1:
        task, plane = sch.split(plane, [None, k])
    sch.parallel(task)
    _sch.fuse_epilogue(sch, dw, x_o, dot, _sch.extent(sch, x_i))
    # the tap-pair form reads one padded plane per channel block: pad it there, from cache (and
    # make its column groups there too, a band of rows at a time)
    if widened is not None:
        # a band of output rows at a time (``depthwise_pairs_nchwc``'s bands): its groups right
        # before its rows, from the plane's padded copy
        bands = int(_tvm.region_tensor(sch.get(widened).writes[0]).shape[2])
        at = sch.split(y, [bands, None])[0] if bands > 1 else task
        sch.compute_at(widened, at, preserve_unit_loops=True)
    pad_done = pairs and _sch.compute_pad_at(sch, PAD_BLOCK, task)
    if widened is not None:
        _interleave(sch, dot, widened)
    if pairs:
        init = sch.decompose_reduction(dw, ry)
        _sch.vectorize_inner(sch, init, unroll_rest=True, below=x_o)
        sch.tensorize(cl, grouped or dot.intrin_for(sch.get(dw), depthwise=True))
        if y_i is not None:
            sch.unroll(y_i)
        sch.unroll(x_i)
        sch.unroll(rp)
        if not grouped:
            sch.unroll(ry)
    else:
        sch.vectorize(cl)  # before decomposing: a vector loop needs a complete reduction block
        sch.unroll(x_i)
        sch.unroll(rx)
        sch.unroll(ry)
        init = sch.decompose_reduction(dw, ry)
        _sch.vectorize_inner(sch, init, unroll_rest=True, below=x_o)
    if not pad_done:
        _sch.schedule_pad(sch, PAD_BLOCK)


def _planes_per_task(sch, widened, planes: int, most: int = 4) -> int:
    """Channel blocks per parallel task of a depthwise conv on rewritten groups: their padded
    planes and groups are two workspaces, allocated (by the runtime, a few hundred instructions
    each way) once per task, so a task of small planes takes several, as many as divide
    ``planes`` (up to ``most``, leaving tasks for every core) with their workspaces within a
    band's budget.  Only where the whole plane is one band (the groups made at the task).
    EfficientNet-Lite0 on arm-dotprod: 46.82 -> 46.50 M instructions an inference, the
    runtime's share 0.80 -> 0.53 M (4 blocks a task for every depthwise conv: 46.47 M, the
    runtime's 0.39 M, but the 3x3 kernels longer: a pad of 4 planes is a loop, not unrolled)."""
    groups = _tvm.region_tensor(sch.get(widened).writes[0])
    pad = _tvm.region_tensor(sch.get(widened).reads[0])
    if int(groups.shape[2]) > 1:
        return 1
    per_plane = sum(_sch.plane_bytes(t) for t in (groups, pad))
    fits = [k for k in range(most, 1, -1)
            if planes % k == 0 and planes >= 4 * k and k * per_plane <= pk.BAND_BYTES]
    return fits[0] if fits else 1


def _interleave(sch, dot, blk) -> None:
    """The widened column pairs of a plane (``rewrite``): one interleave-and-widen intrinsic
    per pair of columns."""
    a_dtype = _tvm.region_tensor(sch.get(blk).reads[0]).dtype  # the padded plane's
    sch.tensorize(sch.get_loops(blk)[-2],
                  dot.pair_interleave_signed if a_dtype == "int8" else dot.pair_interleave)
