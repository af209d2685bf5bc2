"""Small schedule helpers shared by the kernel schedules (TVM ``s_tir.Schedule`` primitives)."""

from __future__ import annotations

import math

from f8tvm.core._tvm import (
    expr_dtype,
    load_source,
    node_kind,
    post_order_visit,
    region_tensor,
    same_expr,
    tvm,
)
from f8tvm.passes.packed_kernels import PAD_INTERIOR, PAD_STREAM


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


def widest_divisor(n: int, cap: int) -> int:
    """The largest divisor of ``n`` that is at most ``cap`` (a loop's widest even split)."""
    return max(d for d in divisors(n) if d <= cap)


def extent(sch, loop) -> int:
    return int(sch.get(loop).extent)


def tile(sch, loop, inner: int, tune: bool, max_inner: int = 16):
    """Split ``loop`` in two.  Tuning samples the split (a decision MetaSchedule mutates); the
    default build uses ``inner``.  The sampling instruction is recorded either way, so a
    schedule's trace always lists its split decisions in program order."""
    n = extent(sch, loop)
    decision = None if tune else [n // inner, inner]
    factors = sch.sample_perfect_tile(loop, n=2, max_innermost_factor=max(max_inner, inner),
                                      decision=decision)
    return sch.split(loop, factors=factors)


def consumers_chain(sch, block):
    """All blocks after ``block`` in its PrimFunc, in program order."""
    out, frontier, seen = [], [block], set()
    while frontier:
        nxt = []
        for blk in frontier:
            for c in sch.get_consumers(blk):
                key = sch.get(c).name_hint
                if key not in seen:
                    seen.add(key)
                    out.append(c)
                    nxt.append(c)
        frontier = nxt
    return out


def _try_inline(sch, blk) -> bool:
    """Inline ``blk`` into its consumers; False when it cannot be (it writes an output buffer,
    or it is a reduction)."""
    try:
        sch.compute_inline(blk)
    except Exception:  # TVM raises a ScheduleError subclass per reason
        return False
    return True


def _inline_side_inputs(sch, blk, chain: set) -> None:
    """Inline the elementwise blocks that feed ``blk`` from outside the kernel's chain (``chain``:
    the names of the kernel block, the blocks it reads and its consumers), their own side
    inputs first: e.g. a residual's alignment shift, of a ReLU, of a function input.  Left as
    loop nests of their own, they would keep the epilogue away from the register tile."""
    for p in sch.get_producers(blk):
        if sch.get(p).name_hint in chain:
            continue
        _inline_side_inputs(sch, p, chain)
        _try_inline(sch, p)  # not elementwise: stays a block


def inline_epilogue(sch, block, keep=None):
    """Inline every elementwise block after ``block`` (and the elementwise blocks feeding them
    from function inputs) into its consumer, where possible, except the block named ``keep``;
    returns the blocks that remain (those writing the function's outputs, and ``keep``)."""
    remaining = []
    after = consumers_chain(sch, block)
    chain = {sch.get(b).name_hint for b in [block, *sch.get_producers(block), *after]}
    for blk in after:
        _inline_side_inputs(sch, blk, chain)
        if sch.get(blk).name_hint == keep or not _try_inline(sch, blk):
            remaining.append(blk)  # an output (or the kept block): stays a block
    return remaining


def _narrowing(sch, block, dot, width, keep_block=False, shift_only=False):
    """``(name of x's block, intrinsic)`` when the kernel after ``block`` ends with
    ``dtype(clamp(x, lo, hi))`` and ``dot`` has an intrinsic that narrows that clamp, ``width``
    pixels at a time, else None.  Kept as a block of its own (the int32 stage of the tile),
    ``x`` feeds the narrowing; ``x`` is made by a block after ``block`` (``keep_block``: or by
    ``block`` itself).  ``shift_only``: None unless the clamp's per-channel shift goes into
    the narrowing too."""
    if width is None:  # no dot, or no narrowing intrinsic for the tile
        return None
    after = consumers_chain(sch, block)
    outs = [b for b in after if not sch.get_consumers(b)]
    if len(outs) != 1:
        return None
    out = sch.get(outs[0])
    value = out.body.value
    if node_kind(value) != "Cast" or node_kind(value.value) not in ("BufferLoad", "TensorLoad"):
        return None
    clip = sch.get_producers(outs[0])
    if len(clip) != 1:
        return None
    v = sch.get(clip[0]).body.value
    if not (node_kind(v) == "Max" and node_kind(v.a) == "Min"
            and node_kind(v.b) == "IntImm" and node_kind(v.a.b) == "IntImm"):
        return None
    form = (expr_dtype(value), int(v.b.value), int(v.a.b.value), width)
    intrin, with_shift = dot.narrow_for(*form), dot.narrow_for(*form, shift=True)
    src = sch.get_producers(clip[0])
    names = {sch.get(b).name_hint for b in (after + [block] if keep_block else after)}
    if (intrin is None and with_shift is None) or len(src) != 1 \
            or sch.get(src[0]).name_hint not in names:
        return None
    shifted = _shift_by_channel(sch, src[0], dot.lanes) if with_shift else None
    if shifted in names:
        return shifted, with_shift  # the shift goes into the narrowing
    if shift_only or intrin is None:  # (an odd tile's width has the shift form only)
        return None
    return sch.get(src[0]).name_hint, intrin


def _shift_by_channel(sch, block, lanes):
    """The name of the block whose result ``block`` shifts right by a per-channel constant
    (``x[..., c] >> S[0, cb, 0, 0, c]``, ``S`` a function input of ``lanes``-channel blocks),
    else None."""
    value = sch.get(block).body.value
    if node_kind(value) != "RShift":  # 0.27's ``>>`` node
        return None
    x, s = value.a, value.b
    x_buf, s_buf = load_source(x), load_source(s)
    if x_buf is None or s_buf is None:
        return None
    producers = sch.get_producers(block)
    if len(producers) != 1:  # S is read from an input, x from the one producer
        return None
    written = [region_tensor(w) for w in sch.get(producers[0]).writes]
    shape = [int(n) for n in s_buf.shape]
    if not (len(written) == 1 and written[0].same_as(x_buf) and len(x.indices) == 5
            and shape[-1] == lanes and len(shape) == 5
            and shape[0] == shape[2] == shape[3] == 1):
        return None
    # (the unit dimensions' indices can only be 0)
    if not (same_expr(s.indices[1], x.indices[1]) and same_expr(s.indices[4], x.indices[4])):
        return None
    return sch.get(producers[0]).name_hint


def fuse_epilogue(sch, block, loop, dot=None, pixels=0):
    """Compute the elementwise blocks after ``block`` at ``loop`` (its register tile), so no
    intermediate reaches memory.  A block that cannot move there (it also needs data computed
    elsewhere in the kernel) stays a separate parallel loop nest.

    With ``dot``'s narrowing intrinsic for the kernel's final clamp-and-cast, and ``pixels`` (the
    tile's width) a multiple of its width (``dot.narrow_width``): the int32 result stays a
    block on the tile and the narrowing to 8 bits is tensorized, 4 (or 2) pixels at a time
    (``intrin_x86.AVX2_NARROW``, ``intrin_arm.NEON_NARROW``)."""
    width = dot.narrow_width(pixels) if dot is not None else None
    narrowing = None
    if dot is not None and pixels in dict(dot.narrow_shift_odd):
        # an odd tile narrowed whole where the shift goes in (else a pixel at a time)
        narrowing = _narrowing(sch, block, dot, pixels)
        width = pixels if narrowing else width
    narrowing = narrowing or _narrowing(sch, block, dot, width)
    keep, intrin = narrowing or (None, None)
    kept = None
    for blk in inline_epilogue(sch, block, keep):
        try:
            sch.reverse_compute_at(blk, loop, preserve_unit_loops=True)
        except Exception:  # producers outside the tile: schedule it on its own
            _schedule_root_block(sch, blk)
            continue
        loops = sch.get_loops(blk)
        if sch.get(blk).name_hint == keep:
            kept = blk  # placed with the narrowing (below), or vectorized on its own
        elif intrin is not None and kept is not None and len(loops) >= 2 \
                and extent(sch, loops[-1]) == dot.lanes and extent(sch, loops[-2]) % width == 0:
            _tensorize_narrowing(sch, blk, loop, intrin, width, kept)
            kept = None
        else:
            vectorize_inner(sch, blk, unroll_rest=True, below=loop)
    if kept is not None:
        vectorize_inner(sch, kept, unroll_rest=True, below=loop)


def _tensorize_narrowing(sch, blk, below, intrin, width, kept):
    """The output block's (pixel, lane) loops, ``width`` pixels per narrowing intrinsic; the
    loops between ``below`` and them unrolled.  ``kept`` (the int32 stage the narrowing reads)
    is computed right before each narrowing, ``width`` pixels at a time: its vectors stay in
    registers (computed for the whole tile first, they would go through the stack)."""
    px = sch.get_loops(blk)[-2]
    px_o = px if width == 1 else sch.split(px, [extent(sch, px) // width, width])[0]
    sch.compute_at(kept, px_o, preserve_unit_loops=True)
    vectorize_inner(sch, kept, unroll_rest=True, below=below)
    loops = sch.get_loops(blk)
    inner = 1 if width == 1 else 2  # one pixel's intrinsic covers its lanes only
    for lp in loops[_below(sch, loops, below):-inner]:
        sch.unroll(lp)
    sch.tensorize(loops[-inner], intrin)


def _below(sch, loops, loop) -> int:
    """The index in ``loops`` (a block's, outermost first) of the first loop inside ``loop``."""
    outer = sch.get(loop)
    return next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(outer)) + 1


def vectorize_inner(sch, block, unroll_rest: bool = False, max_lanes: int = 64, below=None):
    """Vectorize ``block``'s innermost loop; ``unroll_rest``: unroll the loops around it (those
    at most 16 long), only the ones nested inside ``below`` when given (a register tile's
    loops: unrolling the loops outside the tile only multiplies the code, which then misses
    the instruction cache)."""
    loops = sch.get_loops(block)
    if not loops:
        return
    inner = loops[-1]
    if extent(sch, inner) <= max_lanes:
        sch.vectorize(inner)
    if unroll_rest:
        start = 0 if below is None else _below(sch, loops, below)
        for lp in loops[start:-1]:
            if extent(sch, lp) <= 16:
                sch.unroll(lp)


def _block_or_none(sch, name):
    try:
        return sch.get_sblock(name)
    except Exception:  # no such block (an unpadded conv has no pad block)
        return None


PAD_CHUNK_BYTES = 256  # the interior copy's vectors: whole chunks of a row, at most this long


def _partition_pad(sch, pad, x, y=None):
    """Split the padding copy's columns ``x`` (and rows ``y``) where the input begins and ends
    (the block's :data:`PAD_INTERIOR` or :data:`PAD_STREAM` annotation): each part then knows
    whether it is inside, so the interior is a plain copy instead of a bounds test per
    element.  A row's columns and channel blocks are one loop (a row of a plane is contiguous
    in both tensors), each part of it one vector, the interior in chunks of at most
    :data:`PAD_CHUNK_BYTES`: 16 or 32 bytes a load and a store instead of one channel block (8
    bytes on ARM, a quarter of a zmm on x86).  Returns the loop of the interior rows where it
    split ``y``, else None."""
    notes = sch.get(pad).annotations
    where = notes.get(PAD_INTERIOR, notes.get(PAD_STREAM))
    lane = sch.get_loops(pad)[-1]
    if where is None:
        sch.vectorize(lane)
        return None
    top, h, left, w = (int(v) for v in where)
    # a byte stream's row is one column of bytes, its borders counted in bytes
    block = 1 if PAD_STREAM in notes else extent(sch, lane)
    chunk = max(1, PAD_CHUNK_BYTES // (_dtype_bytes(sch, pad) * block)) * block
    row = sch.fuse(x, lane)
    inside = [min(chunk, w * block - k) for k in range(0, w * block, chunk)]
    for part in _split_at(sch, row, [left * block, *inside]):
        sch.vectorize(part)
    if y is not None:
        rows = _split_at(sch, y, [top, h])
        return rows[1 if top else 0]
    return None


def _split_at(sch, loop, sizes):
    """``loop`` partitioned into consecutive parts of ``sizes`` and the rest: the parts' loops
    (``[loop]`` when one part is all of it)."""
    rest = extent(sch, loop) - sum(sizes)
    # the parts' sizes but the last (loop_partition makes the remainder the last part)
    factors = [f for f in (*sizes, rest) if f > 0][:-1]
    return sch.loop_partition(loop, factors) if factors else [loop]


def _dtype_bytes(sch, blk) -> int:
    return tvm.runtime.DataType(expr_dtype(sch.get(blk).body.value)).bits // 8


def plane_bytes(buf) -> int:
    """Bytes of one channel block (axis 1) of a blocked buffer."""
    elems = math.prod(int(v) for v in buf.shape) // int(buf.shape[1])
    return elems * tvm.runtime.DataType(str(buf.dtype)).bits // 8


def schedule_pad(sch, name):
    """The padding copy: parallel over (n, c) planes, each plane's rows and columns split at
    the input's borders (:func:`_partition_pad`: a row's interior is then a plain vector copy;
    with the rows unsplit, every element would test its row and LLVM loads it byte by byte).
    One plane (the RGB image's single quad block): parallel over its interior rows instead
    (MobileNet-V2's stem kernel alone at 2 threads on Zen 4: 40.6 -> 37.8 us)."""
    pad = _block_or_none(sch, name)
    if pad is None:
        return
    loops = sch.get_loops(pad)
    interior = _partition_pad(sch, pad, loops[3], loops[2])
    planes = sch.fuse(*loops[:2])
    if extent(sch, planes) > 1 or interior is None:
        sch.parallel(planes)
    else:
        sch.parallel(interior)


def compute_pad_at(sch, name, loop) -> bool:
    """Pad the input of one iteration of ``loop`` (a channel-block plane) right before it is
    read, so the padded copy is consumed from cache instead of making a round trip through
    memory; its rows and columns split at the input's borders (:func:`_partition_pad`).
    False when the kernel has no pad block."""
    pad = _block_or_none(sch, name)
    if pad is None:
        return False
    sch.compute_at(pad, loop, preserve_unit_loops=True)
    loops = sch.get_loops(pad)
    _partition_pad(sch, pad, loops[-2], loops[-3])
    return True


def schedule_injective(sch) -> None:
    """Elementwise/pool/reduce PrimFuncs: every elementwise block inlined into its consumer (a
    fused requantize is one pass over its input, not one pass and one intermediate tensor per
    op), then each remaining root block parallel over its outer loops and vectorized over the
    innermost one."""
    root = sch.get_sblock("root")
    for blk in sch.get_child_blocks(root):
        _try_inline(sch, blk)  # an output or a reduction stays a loop nest
    for blk in sch.get_child_blocks(root):
        _schedule_root_block(sch, blk)


def schedule_requantize(sch, dot) -> bool:
    """A kernel that is only a requantize of a channel-blocked int32 tensor ``(1, CB, H, W,
    lanes)`` (a residual sum that two layers read, so its conv kernel writes it in int32 and
    this kernel makes the next layer's 8-bit input) takes ``dot``'s narrowing with the shift
    inside (``intrin_arm.NEON_SHIFT_NARROW``) as the conv epilogues do: parallel over rows,
    the int32 stage computed ``width`` pixels at a time right before each narrowing.  Only on
    targets with such a narrowing; returns False, ``sch`` untouched, where it does not apply
    (then :func:`schedule_injective`)."""
    if dot is None or not dot.narrow_shift:
        return False
    blocks = sch.get_child_blocks(sch.get_sblock("root"))
    outs = [b for b in blocks if not sch.get_consumers(b)]
    if len(outs) != 1:
        return False
    loops = sch.get_loops(outs[0])
    if len(loops) != 5 or extent(sch, loops[-1]) != dot.lanes or extent(sch, loops[0]) != 1:
        return False
    width = _requantize_width(dot, extent(sch, loops[-2]))
    found = _narrowing(sch, blocks[0], dot, width, keep_block=True, shift_only=True)
    if found is None:
        return False  # (the generic schedule then)
    keep, intrin = found
    out_name = sch.get(outs[0]).name_hint
    inline_epilogue(sch, blocks[0], keep)
    if sch.get(blocks[0]).name_hint != keep:
        _try_inline(sch, blocks[0])
    out, kept = sch.get_sblock(out_name), sch.get_sblock(keep)
    _, c, y, x, _ = sch.get_loops(out)
    row = sch.fuse(c, y)
    sch.parallel(row)
    x_o = x if width == 1 else sch.split(x, [None, width])[0]
    sch.compute_at(kept, x_o, preserve_unit_loops=True)
    vectorize_inner(sch, kept, unroll_rest=True, below=x_o)
    sch.tensorize(sch.get_loops(out)[-1 if width == 1 else -2], intrin)
    return True


def _requantize_width(dot, pixels: int) -> int | None:
    """The pixels per narrowing of a requantize kernel's ``pixels``-wide rows: the whole row
    where ``dot`` narrows an odd tile of that width (a 7-pixel row: EfficientNet-Lite0's such
    kernel 0.068 -> 0.049 M instructions on arm-dotprod; 14-pixel rows as two 7-pixel tiles
    got longer), else :meth:`DotIntrin.narrow_width`."""
    return pixels if pixels in dict(dot.narrow_shift_odd) else dot.narrow_width(pixels)


def _schedule_root_block(sch, blk) -> None:
    """One root-level loop nest: parallel over its outer spatial loops (a channel-blocked
    tensor's rows), vector inner loop."""
    loops = sch.get_loops(blk)
    if not loops:
        return
    kinds = [int(iv.iter_type) for iv in sch.get(blk).iter_vars]
    if len(kinds) != len(loops):  # loops already transformed: leave as is
        return
    if any(kinds):  # a reduction (pools): lanes of the channel block innermost, as a vector
        n_spatial = kinds.index(next(k for k in kinds if k))
        if n_spatial and all(kinds[n_spatial:]):
            spatial, reduce = loops[:n_spatial], loops[n_spatial:]
            if extent(sch, spatial[-1]) in (4, 8, 16, 32, 64):
                lane = spatial.pop()
                sch.reorder(*spatial, *reduce, lane)
                sch.vectorize(lane)
                if len(spatial) == 4:  # blocked: parallel over rows (see below)
                    spatial = spatial[:3]
            if spatial:
                sch.parallel(sch.fuse(*spatial) if len(spatial) > 1 else spatial[0])
        return
    inner = loops[-1]
    if len(loops) == 5 and extent(sch, inner) in (1, 2, 3, 5, 6, 7):
        # a tensor blocked by a few channels (the RGB image's one block of 3): parallel over
        # rows, the channels unrolled in a serial loop over the row's pixels, which LLVM
        # vectorizes as interleaved stores (one loop over all the elements, parallel, took
        # each apart by divisions: 59 us on a 224x224 image, 2.6 us this way)
        sch.unroll(inner)
        sch.parallel(sch.fuse(*loops[:3]))
        return
    if extent(sch, inner) in (4, 8, 16, 32, 64):
        sch.vectorize(inner)
        loops = loops[:-1]
        if len(loops) == 4:
            # a channel-blocked tensor (n, c, h, w, lanes): parallel over rows, the columns a
            # loop of their own, so the per-channel constants are loaded once per row, not
            # once per pixel (with every index taken apart again by divisions)
            loops = loops[:3]
    if loops:
        sch.parallel(sch.fuse(*loops) if len(loops) > 1 else loops[0])


def _operand_loads(block):
    """The loads of the activation and the weight a packed kernel block multiplies: the operands
    of its product (``packed_kernels`` writes ``data * weight``)."""
    found = []

    def load(e):
        while node_kind(e) == "Cast":
            e = e.value
        return e if node_kind(e) in ("BufferLoad", "TensorLoad") else None

    def visit(e):
        if node_kind(e) == "Mul":
            a, b = load(e.a), load(e.b)
            if a is not None and b is not None:  # not index arithmetic
                found.append((a, b))

    post_order_visit(block.body, visit)
    if not found:
        raise ValueError(f"block {block.name_hint} multiplies no tensor data")
    return found[0]


def operand_dtypes(block) -> tuple[str, str]:
    """Dtypes of the activation and the weight a packed kernel block multiplies."""
    return tuple(expr_dtype(e) for e in _operand_loads(block))


def activation_buffer(block):
    """The activation buffer a packed kernel block reads."""
    return region_tensor(_operand_loads(block)[0])


def weight_buffer(block):
    """The weight buffer a packed kernel block reads."""
    return region_tensor(_operand_loads(block)[1])


def activation_block(block) -> int:
    """The channel block of the activation a packed kernel block reads (its innermost axis)."""
    return int(activation_buffer(block).shape[-1])


def activation_shape(block) -> tuple[int, ...]:
    """The shape of the activation a packed kernel block reads (``(N, C/b, H, W, b)``)."""
    return tuple(int(d) for d in activation_buffer(block).shape)
