"""AArch64 dot-product tensor intrinsics (8 output lanes x 4-deep, int8 x int8).

ARM multiplies s8 x s8 (or u8 x u8), so ARM programs carry int8 activations (unsigned ones are
offset by -128 exactly, ``relay_passes/offset_activations.py``).  The packed layout is NCHW8c: an
8-lane int32 accumulator is two NEON registers.

* Armv8.2 dot product ``sdot``: each instruction is 4 int32 lanes x a 4-deep dot (16 MACs); the
  4 activation bytes are broadcast to every lane (two ``sdot`` per intrinsic).  The pair form
  (``SDOT_8x8_LANE``) covers a whole 8-channel block: its 8 activation bytes are loaded once and
  each quad is taken by element (``sdot v.4s, v.16b, v.4b[i]``, four per intrinsic), so a pixel
  costs one load per block instead of one broadcast per quad.
* Armv8.0 NEON ``smull``: 8 products of 8-bit lanes into 16 bits (exact: |p| <= 2**14), then
  ``saddlp`` (pairwise add into int32) and ``addp``: four ``smull .8b`` per intrinsic.  TVM 0.27
  ships a 4x4 variant of the same idea (``dot_4x4_i8i8s32_neon``); ours covers 8 lanes and reads
  its operands in one expression per instruction, so the multiplication audit sees 8-bit types.
  The pair form (``NEON_8x8``) adds the block's second quad into the first's int16 products
  (``smlal``) before widening: 16 instructions per 64 MACs instead of 24.  Exact because F8Net's
  weights are in [-127, 127] (``targets``: ``weight_min``, checked when weights are packed).
  In a tile of 2 pixels (or of 1 pixel on an odd row) it accumulates into split accumulators
  (``NEON_8x8_SPLIT``: two int32 partial sums per lane, ``sadalp``; 12 instructions per 64
  MACs), summed once per pixel after the reduction (``NEON_SPLIT_SUM``, ``addp``).  Each quad
  is ``dup``'d by element from its pixel's one 8-byte load.  A conv on an even number of
  input blocks reads block pairs instead (``NEON_8x16_LANES``: per output lane ``smull`` +
  ``smlal2`` of a pixel's 16 channels and the lane's 16 weights, both plain 16-byte loads, and
  ``sadalp`` into 4 partial sums; no ``dup``), summed by ``NEON_LANES_SUM``; on an odd row of
  3 to 7 pixels the whole row is the register tile, 2 lanes a pass (``NEON_2x16_LANES``).
* Depthwise convs: on ``arm`` two window columns per step (``NEON_DW_8x2``: ``smull`` +
  ``smlal``, exact for weights >= -127); on ``arm-dotprod`` four (``SDOT_DW_8x4``: each
  channel's 4 taps gathered by ``tbl``, one ``sdot`` lane per channel); windows of 5 columns
  or more read a plane rewritten once as its column quads (``SDOT_QUADS``, then
  ``SDOT_DW_QUADS``: the same ``sdot`` on plain loads).
* Both pair forms also come for a window's column pair (suffix :data:`COLUMNS`, ``A`` int8[2, 4]):
  the first conv's input is one quad per pixel, so two adjacent pixels stand for the two quads
  (``conv2d_nchwc(..., column_pairs=kw)``).

Semantics (both):  ``C[i] += sum_k int32(A[k]) * int32(B[i, k])`` for ``i < 8, k < 4`` with
``A`` int8[4] (one activation quad), ``B`` int8[8, 4], ``C`` int32[8].
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .intrin_x86 import (
    NARROW_FORMS,
    _dot_desc,
    _dw_pair_desc,
    _narrow_desc,
    _narrow_impl,
    _pairs_desc,
)

SDOT_8x4 = "f8tvm_sdot_8x4_i8i8i32"
SDOT_8x8_LANE = "f8tvm_sdot_8x8_lane_i8i8i32"
SDOT_8x8_LANE_2PX = "f8tvm_sdot_8x8_lane_2px_i8i8i32"  # the same for two adjacent pixels
NEON_8x4 = "f8tvm_neon_8x4_i8i8i32"
NEON_8x8 = "f8tvm_neon_8x8_i8i8i32"
NEON_8x8_SPLIT = "f8tvm_neon_8x8_split_i8i8i32"  # the pair form into split accumulators
NEON_SPLIT_SUM = "f8tvm_neon_split_sum_8"  # their final sum: 8 lanes from 16 partial sums
NEON_DW_8x2 = "f8tvm_neon_dw_8x2_i8i8i32"  # depthwise: 8 channels x 2 taps (column pairs)
SDOT_DW_8x4 = "f8tvm_sdot_dw_8x4_i8i8i32"  # depthwise: 8 channels x 4 taps (sdot per channel)
SDOT_DW_QUADS = "f8tvm_sdot_dw_quads_8x4_i8i8i32"  # the same on the plane's rewritten quads
SDOT_QUADS = "f8tvm_sdot_quads_8x4_i8"  # the quads themselves
NEON_8x16_LANES = "f8tvm_neon_8x16_lanes_i8i8i32"  # block pairs, lane-major (smull + smlal2)
NEON_LANES_SUM = "f8tvm_neon_lanes_sum_8"  # their final sum: 8 lanes from 32 partial sums
NEON_2x16_LANES = "f8tvm_neon_2x16_lanes_i8i8i32"  # the same for 2 lanes (a whole odd row)
NEON_NARROW = "f8tvm_neon_narrow_4x8"  # + NARROW_FORMS' suffix: the clamp it implements
NEON_NARROW_2PX = "f8tvm_neon_narrow_2x8"  # the same for a tile of 2 pixels
NEON_NARROW_1PX = "f8tvm_neon_narrow_1x8"  # and of 1 pixel (tiles of an odd width)
# the same three with the requantize's right shift (per channel) inside the narrowing
NEON_SHIFT_NARROW = "f8tvm_neon_shift_narrow_4x8"
NEON_SHIFT_NARROW_2PX = "f8tvm_neon_shift_narrow_2x8"
NEON_SHIFT_NARROW_1PX = "f8tvm_neon_shift_narrow_1x8"
# and for a tile of 3, 5 or 7 pixels: NEON_SHIFT_NARROW + "_{pixels}px" + the clamp's suffix
SHIFT_NARROW_ODD = (3, 5, 7)
COLUMNS = "_columns"  # the pair intrinsics' column-pair forms (A int8[2, 4])


# The impls repeat their statement for lanes 0-3 and 4-7 instead of looping: the multiplication
# audit counts the instructions of a tensorized block once per block iteration.  The helpers
# below build expressions (TVMScript evaluates them while parsing), one per instruction.


def _at(A, start):
    """The index of byte ``start`` of ``A``: int8[8] (a channel block's two quads) or
    int8[2, 4] (two pixels' quads: a column pair, contiguous)."""
    return [start] if len(A.shape) == 1 else [start // 4, start % 4]


def _byte(A, q, k):
    """Byte ``k`` of quad ``q`` of ``A`` (int8[8] or int8[2, 4], see :func:`_at`), as a load a
    description indexes with its block iterators."""
    return A[q * 4 + k] if len(A.shape) == 1 else A[q, k]


def _all(A):
    """The region of all of ``A`` (a reads annotation)."""
    return A[tuple(slice(0, int(n)) for n in A.shape)]


def _quad(A, copies, start=0):
    """The 4 activation bytes ``A[start:start+4]`` repeated ``copies`` times (int8 x 4*copies)."""
    return T.reinterpret(T.broadcast(T.reinterpret(A.vload(_at(A, start), "int8x4"),
                                                   dtype="int32"), copies),
                         dtype=f"int8x{4 * copies}")


def _quad_lane(A, q):
    """Quad ``q`` of the 8 activation bytes twice (int8x8), taken from the register they were
    loaded into (``dup`` by element): one load per pixel and block."""
    quads = T.reinterpret(A.vload(_at(A, 0), "int8x8"), dtype="int32x2")
    return T.reinterpret(T.Shuffle([quads], [q, q]), dtype="int8x8")


def _sdot(A, B, C, lane):
    """``sdot``: lanes ``lane .. lane+3`` of ``C`` plus their 4-deep dots with the quad."""
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
        C.vload([lane], dtype="int32x4"), _quad(A, 4), B.vload([lane, 0], dtype="int8x16"),
        dtype="int32x4")


def _pair_desc(a_shape):
    """Two quads at once: ``C[i] += sum_{q<2, k<4} A[q, k] * B[q, i, k]``.  ``A``: int8[8], one
    channel block of an NCHW8c pixel (``A[4q + k]``), or int8[2, 4], the quads of two adjacent
    pixels of an NCHW4c image (a window's column pair, ``conv2d_nchwc(column_pairs=...)``);
    ``B`` int8[2, 8, 4], the two weight tiles."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer(a_shape, "int8", offset_factor=1),
        B: T.Buffer((2, 8, 4), "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], _all(A), B[0:2, 0:8, 0:4])
            T.writes(C[0:8])
            for q, i, k in T.grid(2, 8, 4):
                with T.sblock("update"):
                    # the conv block's own order of iterators: lane, quad, byte
                    vi = T.axis.spatial(8, i)
                    vq = T.axis.reduce(2, q)
                    vk = T.axis.reduce(4, k)
                    C[vi] = C[vi] + T.cast(_byte(A, vq, vk), "int32") * T.cast(B[vq, vi, vk],
                                                                             "int32")
    return desc


def _sdot_element(acc, weights, quads, i):
    """``sdot`` by element: ``acc`` (int32x4) plus the 4-deep dots of ``weights`` (int8x16)
    with quad ``i`` of ``quads`` (the activations' register as int32 lanes).  The broadcast
    quad is the intrinsic's last operand: LLVM selects the by-element form only there (else a
    ``dup`` per quad)."""
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"), acc, weights,
        T.reinterpret(T.Shuffle([quads, quads], [i] * 4), dtype="int8x16"), dtype="int32x4")


def _sdot_lane(A, B, C, q, lane, acc):
    """Lanes ``lane .. lane+3`` plus their dots with quad ``q`` of the 8 activation bytes,
    taken from the register they were loaded into (``acc``: the running sum so far, an
    expression)."""
    quads = T.reinterpret(A.vload(_at(A, 0), "int8x8"), dtype="int32x2")
    return _sdot_element(acc, B.vload([q, lane, 0], dtype="int8x16"), quads, q)


def _halves_impl(a_shape, b_shape, half):
    """An intrinsic's implementation as two statements: ``half(A, B, C, lane)`` is the new
    value of lanes ``lane .. lane+3`` of ``C`` (an int32x4 expression)."""
    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer(a_shape, "int8", offset_factor=1),
        B: T.Buffer(b_shape, "int8", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], _all(A), _all(B))
            T.writes(C[0:8])
            C[T.ramp(T.int32(0), 1, 4)] = half(A, B, C, 0)
            C[T.ramp(T.int32(4), 1, 4)] = half(A, B, C, 4)
    return impl


def _sdot_half(A, B, C, lane):
    """Both quads by element into lanes ``lane .. lane+3``: two ``sdot``."""
    return _sdot_lane(A, B, C, 1, lane,
                      _sdot_lane(A, B, C, 0, lane, C.vload([lane], dtype="int32x4")))


def _smull(a, b):
    """``smull``: 8 products of 8-bit lanes into 16 bits (int8x8 x int8x8 -> int16x8)."""
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v8i16"),
                                   a, b, dtype="int16x8")


def _saddlp(x):
    """``saddlp``: int16x8 -> int32x4, adjacent lanes added."""
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.saddlp.v4i32.v8i16"), x, dtype="int32x4")


def _addp(a, b):
    """``addp``: the pairwise sums of two int32x4 vectors, ``a``'s then ``b``'s."""
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.addp.v4i32"),
                                   a, b, dtype="int32x4")


def _smull_pairs(A, B, row):
    """``saddlp(smull(quad x2, B[row:row+2]))``: [l0 k01, l0 k23, l1 k01, l1 k23] (int32x4)."""
    return _saddlp(_smull(_quad(A, 2), B.vload([row, 0], dtype="int8x8")))


def _addp_half(sums):
    """``half`` for :func:`_halves_impl`: lanes ``lane .. lane+3`` plus the ``addp`` of
    ``sums(A, B, lane)`` and ``sums(A, B, lane + 2)`` (pair sums of two lanes each)."""
    def half(A, B, C, lane):
        return C.vload([lane], dtype="int32x4") + _addp(sums(A, B, lane), sums(A, B, lane + 2))
    return half


def _smull_quads(A, B, row):
    """``saddlp(smull(quad 0 x2, B[0, row:row+2]) + smull(quad 1 x2, B[1, row:row+2]))`` (the
    add is ``smlal``): [l0 k01, l0 k23, l1 k01, l1 k23] over both quads (int32x4).  Each int16
    lane is two products, exact: operands are in [-128, 127] and weights in [-127, 127]
    (``core.fixedpoint`` never uses -128), so ``|sum| <= 2 * 128 * 127 < 2**15``."""
    def product(q):
        return _smull(_quad_lane(A, q), B.vload([q, row, 0], dtype="int8x8"))

    return _saddlp(product(0) + product(1))


# the pair forms, each for a channel block's two quads and for a column pair (suffix COLUMNS)
for _shape, _suffix in (((8,), ""), ((2, 4), COLUMNS)):
    TensorIntrin.register(SDOT_8x8_LANE + _suffix, _pair_desc(_shape),
                          _halves_impl(_shape, (2, 8, 4), _sdot_half), override=True)
    TensorIntrin.register(NEON_8x8 + _suffix, _pair_desc(_shape),
                          _halves_impl(_shape, (2, 8, 4), _addp_half(_smull_quads)),
                          override=True)


def _pair_2px_desc():
    """:func:`_pair_desc` for two adjacent pixels of an NCHW8c row at once: ``A`` int8[2, 8]
    (their channel blocks, 16 contiguous bytes), ``C`` int32[2, 8]."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((2, 8), "int8", offset_factor=1),
        B: T.Buffer((2, 8, 4), "int8", offset_factor=1),
        C: T.Buffer((2, 8), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:2, 0:8], A[0:2, 0:8], B[0:2, 0:8, 0:4])
            T.writes(C[0:2, 0:8])
            for p, q, i, k in T.grid(2, 2, 8, 4):
                with T.sblock("update"):
                    vp = T.axis.spatial(2, p)
                    vi = T.axis.spatial(8, i)
                    vq = T.axis.reduce(2, q)
                    vk = T.axis.reduce(4, k)
                    C[vp, vi] = C[vp, vi] + T.cast(A[vp, vq * 4 + vk], "int32") * T.cast(
                        B[vq, vi, vk], "int32")
    return desc


def _sdot_2px(A, B, C, p, lane):
    """Lanes ``lane .. lane+3`` of pixel ``p`` plus both quads' dots, the quads taken by
    element from the one 16-byte register the two pixels were loaded into (their 4 quads):
    one load per two pixels, where a pixel each is two paired 8-byte loads per four."""
    quads = T.reinterpret(A.vload([0, 0], "int8x16"), dtype="int32x4")
    acc = C.vload([p, lane], dtype="int32x4")
    for q in range(2):
        acc = _sdot_element(acc, B.vload([q, lane, 0], dtype="int8x16"), quads, 2 * p + q)
    return acc


@T.prim_func(s_tir=True)
def _pair_2px_impl(
    A: T.Buffer((2, 8), "int8", offset_factor=1),
    B: T.Buffer((2, 8, 4), "int8", offset_factor=1),
    C: T.Buffer((2, 8), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:2, 0:8], A[0:2, 0:8], B[0:2, 0:8, 0:4])
        T.writes(C[0:2, 0:8])
        C[0, T.ramp(T.int32(0), 1, 4)] = _sdot_2px(A, B, C, 0, 0)
        C[0, T.ramp(T.int32(4), 1, 4)] = _sdot_2px(A, B, C, 0, 4)
        C[1, T.ramp(T.int32(0), 1, 4)] = _sdot_2px(A, B, C, 1, 0)
        C[1, T.ramp(T.int32(4), 1, 4)] = _sdot_2px(A, B, C, 1, 4)


TensorIntrin.register(SDOT_8x8_LANE_2PX, _pair_2px_desc(), _pair_2px_impl, override=True)


# Split accumulators (``schedules.cpu``: the conv's reduction over a quad's bytes is factored
# in two, ``rfactor``): each output lane keeps two int32 partial sums, bytes 0-1 and bytes 2-3
# of every quad, which is what ``saddlp`` of a ``smull`` row pair makes.  So the pair form adds
# its products into the accumulators with one ``sadalp`` each (12 instructions per 64 MACs
# instead of 16: no ``addp`` and no ``add`` per step), and the two partial sums of a lane are
# added once per output pixel, after the whole reduction (``addp``: two per 8 lanes).
def _split_desc(a_shape):
    """``C[i, h] += sum_{q<2, k<2} A[q, 2h + k] * B[q, i, 2h + k]`` (``A`` as in
    :func:`_pair_desc`; ``C`` int32[8, 2]: lane ``i``'s partial sum over bytes ``2h, 2h+1``)."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer(a_shape, "int8", offset_factor=1),
        B: T.Buffer((2, 8, 4), "int8", offset_factor=1),
        C: T.Buffer((8, 2), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8, 0:2], _all(A), B[0:2, 0:8, 0:4])
            T.writes(C[0:8, 0:2])
            for q, i, h, k in T.grid(2, 8, 2, 2):
                with T.sblock("update"):
                    # the rfactor block's order of iterators: the factored half first
                    vh = T.axis.spatial(2, h)
                    vi = T.axis.spatial(8, i)
                    vq = T.axis.reduce(2, q)
                    vk = T.axis.reduce(2, k)
                    C[vi, vh] = C[vi, vh] + T.cast(_byte(A, vq, vh * 2 + vk), "int32") * T.cast(
                        B[vq, vi, vh * 2 + vk], "int32")
    return desc


def _split_impl(a_shape):
    """Four ``smull`` + ``smlal`` + ``sadalp``, each into a register of two lanes' partial
    sums (``C[row:row+2, 0:2]`` is ``saddlp``'s order: lane ``row`` bytes 0-1, 2-3, then lane
    ``row + 1``)."""
    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer(a_shape, "int8", offset_factor=1),
        B: T.Buffer((2, 8, 4), "int8", offset_factor=1),
        C: T.Buffer((8, 2), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8, 0:2], _all(A), _all(B))
            T.writes(C[0:8, 0:2])
            C[0, T.ramp(T.int32(0), 1, 4)] = C.vload([0, 0], "int32x4") + _smull_quads(A, B, 0)
            C[2, T.ramp(T.int32(0), 1, 4)] = C.vload([2, 0], "int32x4") + _smull_quads(A, B, 2)
            C[4, T.ramp(T.int32(0), 1, 4)] = C.vload([4, 0], "int32x4") + _smull_quads(A, B, 4)
            C[6, T.ramp(T.int32(0), 1, 4)] = C.vload([6, 0], "int32x4") + _smull_quads(A, B, 6)
    return impl


def _partial_sum_desc(parts: int):
    """``C[i] += sum_h R[i, h]``: 8 lanes' ``parts`` partial sums each (the rfactor block
    after the reduction: the factored axis is its first iterator)."""
    @T.prim_func(s_tir=True)
    def desc(
        R: T.Buffer((8, parts), "int32", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], R[0:8, 0:parts])
            T.writes(C[0:8])
            for i, h in T.grid(8, parts):
                with T.sblock("update"):
                    vh = T.axis.reduce(parts, h)
                    vi = T.axis.spatial(8, i)
                    C[vi] = C[vi] + R[vi, vh]
    return desc


def _split_sum(R, row):
    """Lanes ``row .. row+3``: ``addp`` of their partial sums (two registers)."""
    return _addp(R.vload([row, 0], dtype="int32x4"), R.vload([row + 2, 0], dtype="int32x4"))


def _partial_sum_impl(parts: int, sums):
    """:func:`_partial_sum_desc`'s implementation: ``sums(R, row)`` is the sum of lanes
    ``row .. row+3``'s partial sums (an int32x4 expression)."""
    @T.prim_func(s_tir=True)
    def impl(
        R: T.Buffer((8, parts), "int32", offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], R[0:8, 0:parts])
            T.writes(C[0:8])
            C[T.ramp(T.int32(0), 1, 4)] = C.vload([0], dtype="int32x4") + sums(R, 0)
            C[T.ramp(T.int32(4), 1, 4)] = C.vload([4], dtype="int32x4") + sums(R, 4)
    return impl


for _shape, _suffix in (((8,), ""), ((2, 4), COLUMNS)):
    TensorIntrin.register(NEON_8x8_SPLIT + _suffix, _split_desc(_shape), _split_impl(_shape),
                          override=True)
TensorIntrin.register(NEON_SPLIT_SUM, _partial_sum_desc(2), _partial_sum_impl(2, _split_sum),
                      override=True)
# one quad per intrinsic: an input block of one quad that is not taken in column pairs
TensorIntrin.register(SDOT_8x4, _dot_desc(8, 4, "int8"), _halves_impl((4,), (8, 4), _sdot),
                      override=True)
TensorIntrin.register(NEON_8x4, _dot_desc(8, 4, "int8"),
                      _halves_impl((4,), (8, 4), _addp_half(_smull_pairs)), override=True)


# Block pairs with lane-major weights (``conv2d_nchwc(..., block_pairs=True)``): a pixel's 16
# input channels are one 16-byte vector ``A``, and each output lane's 16 weights another
# (``B[i]``).  Per lane, ``smull`` of the low halves and ``smlal2`` of the high halves put the
# 16 products in 8 int16 lanes (two products each: exact, as the pair form), and ``sadalp``
# adds them into the lane's 4 int32 partial sums: 3 instructions per 16 MACs with no
# broadcast of the activations at all, and one load per pixel for 16 channels.  Partial sum
# ``p`` of lane ``i`` holds bytes ``2p, 2p+1, 8+2p, 9+2p`` (``saddlp``'s pairs); the schedule
# factors the reduction over them (``rfactor``) and adds a lane's four after the reduction
# (``NEON_LANES_SUM``: six ``addp`` per 8 lanes).  ``NEON_2x16_LANES`` is the same for 2
# lanes: a whole odd row of pixels is then the register tile, 2 lanes at a time (``cpu``).
def _lanes_desc(lanes: int):
    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((16,), "int8", offset_factor=1),
        B: T.Buffer((lanes, 16), "int8", offset_factor=1),
        C: T.Buffer((lanes, 4), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes, 0:4], A[0:16], B[0:lanes, 0:16])
            T.writes(C[0:lanes, 0:4])
            for p, i, h, k in T.grid(4, lanes, 2, 2):
                with T.sblock("update"):
                    # the rfactor block's order of iterators: the factored partial sum first
                    vp = T.axis.spatial(4, p)
                    vi = T.axis.spatial(lanes, i)
                    vh = T.axis.reduce(2, h)
                    vk = T.axis.reduce(2, k)
                    C[vi, vp] = C[vi, vp] + T.cast(A[vh * 8 + vp * 2 + vk], "int32") * T.cast(
                        B[vi, vh * 8 + vp * 2 + vk], "int32")
    return desc


def _half(v, high):
    return T.Shuffle([v], list(range(8, 16) if high else range(8)))


def _lane_products(A, B, i):
    """``saddlp(smull(A.lo, B[i].lo) + smull(A.hi, B[i].hi))`` (the add: ``smlal2``)."""
    a, b = A.vload([0], "int8x16"), B.vload([i, 0], "int8x16")
    return _saddlp(_smull(_half(a, False), _half(b, False)) + _smull(_half(a, True),
                                                                     _half(b, True)))


def _lanes_impl(lanes: int):
    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((16,), "int8", offset_factor=1),
        B: T.Buffer((lanes, 16), "int8", offset_factor=1),
        C: T.Buffer((lanes, 4), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes, 0:4], A[0:16], B[0:lanes, 0:16])
            T.writes(C[0:lanes, 0:4])
            for i in T.unroll(lanes):  # one statement per lane once unrolled
                C[i, T.ramp(T.int32(0), 1, 4)] = C.vload([i, 0], "int32x4") + _lane_products(
                    A, B, i)
    return impl


def _four_lanes(R, row):
    """Lanes ``row .. row+3``: their 16 partial sums added by ``addp`` (three)."""
    return _addp(_addp(R.vload([row, 0], "int32x4"), R.vload([row + 1, 0], "int32x4")),
                 _addp(R.vload([row + 2, 0], "int32x4"), R.vload([row + 3, 0], "int32x4")))


TensorIntrin.register(NEON_8x16_LANES, _lanes_desc(8), _lanes_impl(8), override=True)
TensorIntrin.register(NEON_2x16_LANES, _lanes_desc(2), _lanes_impl(2), override=True)
TensorIntrin.register(NEON_LANES_SUM, _partial_sum_desc(4), _partial_sum_impl(4, _four_lanes),
                      override=True)


# Depthwise tap pairs (``depthwise_pairs_nchwc``): ``C[i] += sum_k A[k, i] * B[i, k]``, 8
# channels x two window columns (the x86 tap-pair description).  The two columns' activations
# are two 8-byte vectors; the weights ``B[i, 0:2]`` are de-interleaved into one vector per
# column (loop-invariant: hoisted out of the pixel loop).  ``smull`` + ``smlal`` add both
# columns' products in int16 (exact, as the conv pair form) and ``saddw``/``saddw2`` widen the
# sums into the accumulator: 4 instructions per 16 MACs instead of 6.
def _dw_column(B, k):
    return T.Shuffle([B.vload([0, 0], dtype="int8x16")], list(range(k, 16, 2)))


def _dw_product(A, B, k):
    return _smull(A.vload([k, 0], dtype="int8x8"), _dw_column(B, k))


@T.prim_func(s_tir=True)
def _neon_dw_8x2_impl(
    A: T.Buffer((2, 8), "int8", offset_factor=1),
    B: T.Buffer((8, 2), "int8", offset_factor=1),
    C: T.Buffer((8,), "int32", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(C[0:8], A[0:2, 0:8], B[0:8, 0:2])
        T.writes(C[0:8])
        # one expression per product (the audit counts each once); the widening add of the
        # int16 sums is saddw + saddw2
        C[T.ramp(T.int32(0), 1, 8)] = C.vload([0], dtype="int32x8") + T.Cast(
            "int32x8", _dw_product(A, B, 0) + _dw_product(A, B, 1))


TensorIntrin.register(NEON_DW_8x2, _dw_pair_desc("int8"), _neon_dw_8x2_impl, override=True)


# Depthwise tap quads (``depthwise_pairs_nchwc`` with groups of 4, ``arm-dotprod``):
# ``C[i] += sum_k A[k, i] * B[i, k]``, 8 channels x 4 window columns.  The 4 columns'
# activations are 32 contiguous bytes (4 pixels x 8 channels); two ``tbl`` put each channel's
# 4 taps together (lanes 4i .. 4i+3), and two ``sdot`` (not by element: each lane its own
# weights, ``B[i, 0:4]``, loop-invariant) add them: 5 instructions per 32 MACs with the loads,
# instead of 12 in tap pairs.
def _taps_of(A, first):
    """Channels ``first .. first+3``, each one's 4 taps in a row (int8x16)."""
    return T.Shuffle([A.vload([0, 0], dtype="int8x32")],
                     [t * 8 + ch for ch in range(first, first + 4) for t in range(4)])


def _sdot_taps(A, B, C, lane):
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
        C.vload([lane], dtype="int32x4"), _taps_of(A, lane), B.vload([lane, 0], dtype="int8x16"),
        dtype="int32x4")


TensorIntrin.register(SDOT_DW_8x4, _dw_pair_desc("int8", taps=4),
                      _halves_impl((4, 8), (8, 4), _sdot_taps), override=True)


# The same 8 channels x 4 taps on a plane rewritten once as its column quads
# (``depthwise_pairs_nchwc(..., rewrite=True)``): ``A[i, k]`` is channel ``i`` at column ``k``,
# each channel's 4 taps already together, so the dot reads them with one load per 4 channels
# (a paired load for 8) and no ``tbl``.  The rewrite (``SDOT_QUADS``) is the same two ``tbl``
# per 4 columns of 8 channels, done once per column instead of once per use.
def _sdot_quad(A, B, C, lane):
    return T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8"),
        C.vload([lane], dtype="int32x4"), A.vload([lane, 0], dtype="int8x16"),
        B.vload([lane, 0], dtype="int8x16"), dtype="int32x4")


@T.prim_func(s_tir=True)
def _sdot_quads_impl(
    D: T.Buffer((4, 8), "int8", offset_factor=1),
    Q: T.Buffer((8, 4), "int8", offset_factor=1),
) -> None:
    with T.sblock("root"):
        T.reads(D[0:4, 0:8])
        T.writes(Q[0:8, 0:4])
        Q.vstore([0, 0], T.Shuffle([D.vload([0, 0], dtype="int8x32")],
                                   [k * 8 + i for i in range(8) for k in range(4)]))


TensorIntrin.register(SDOT_DW_QUADS, _dw_pair_desc("int8", taps=4, grouped=True),
                      _halves_impl((8, 4), (8, 4), _sdot_quad), override=True)
TensorIntrin.register(SDOT_QUADS, _pairs_desc("int8", "int8", taps=4, lanes=8),
                      _sdot_quads_impl, override=True)


# The epilogue's clamp-and-cast of 4, 2 or 1 pixels x 8 channels (the x86 narrowing
# description): saturating narrows do the clamp, int32 -> int16 (``sqxtn``, or ``sqxtun`` to
# unsigned) then -> 8 bits (``sqxtn`` / ``uqxtn``), 12 instructions for 4 pixels, 3 for one,
# instead of a max, a min and a narrowing per vector (LLVM's clamp: 6 for one pixel).  The
# symmetric int8 clamp [-127, 127] adds one ``smax`` per 16 (or 8) bytes.
def _narrow_call(name, x, dtype):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), x, dtype=dtype)


def _concat(a, b, lanes):
    return T.Shuffle([a, b], list(range(2 * lanes)))


def _neon_narrowed(A, dtype: str, lo: int):
    first, second = (("llvm.aarch64.neon.sqxtun.v4i16", "llvm.aarch64.neon.uqxtn.v8i8")
                     if dtype == "uint8" else
                     ("llvm.aarch64.neon.sqxtn.v4i16", "llvm.aarch64.neon.sqxtn.v8i8"))
    half = "uint16" if dtype == "uint8" else "int16"

    def pixel(p):  # 8 int32 lanes -> 8 int16 lanes
        return _concat(_narrow_call(first, A.vload([p, 0], "int32x4"), half + "x4"),
                       _narrow_call(first, A.vload([p, 4], "int32x4"), half + "x4"), 4)

    def two(p):  # two pixels -> 16 bytes
        return _concat(_narrow_call(second, pixel(p), dtype + "x8"),
                       _narrow_call(second, pixel(p + 1), dtype + "x8"), 8)

    if len(A.shape) == 1:  # one pixel (an odd tile's)
        pixels = 1
        out = _narrow_call(second, _concat(
            _narrow_call(first, A.vload([0], "int32x4"), half + "x4"),
            _narrow_call(first, A.vload([4], "int32x4"), half + "x4"), 4), dtype + "x8")
    else:
        pixels = int(A.shape[0])  # 4, or 2 (a split-accumulator tile)
        out = _concat(two(0), two(2), 16) if pixels == 4 else two(0)
    if dtype == "int8" and lo > -128:
        return T.max(out, T.broadcast(T.int8(lo), 8 * pixels))
    return out


def _narrow_1px_desc(dtype: str, lo: int, hi: int):
    """The narrowing of one pixel's 8 lanes (the tile's pixel loop stays outside)."""
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((8,), "int32", offset_factor=1),
             C: T.Buffer((8,), dtype, offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(A[0:8])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                with T.sblock("narrow"):
                    vi = T.axis.remap("S", [i])
                    C[vi] = T.Cast(dtype, T.max(T.min(A[vi], hi), lo))
    return desc


def _narrow_1px_impl(dtype: str, lo: int):
    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((8,), "int32", offset_factor=1),
             C: T.Buffer((8,), dtype, offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(A[0:8])
            T.writes(C[0:8])
            C.vstore([0], _neon_narrowed(A, dtype, lo))
    return impl


for (_dtype, _lo, _hi), _suffix in NARROW_FORMS.items():
    for _name, _pixels in ((NEON_NARROW, 4), (NEON_NARROW_2PX, 2)):
        TensorIntrin.register(_name + _suffix, _narrow_desc(_dtype, _lo, _hi, _pixels),
                              _narrow_impl(_dtype, _lo, _hi, _neon_narrowed, _pixels),
                              override=True)
    TensorIntrin.register(NEON_NARROW_1PX + _suffix, _narrow_1px_desc(_dtype, _lo, _hi),
                          _narrow_1px_impl(_dtype, _lo), override=True)


# The narrowing with the requantize's final right shift inside it: ``C = dtype(clamp(A >> S,
# lo, hi))``, ``S`` the shift of each of the 8 channels (0..31, a constant of the program).
# NEON's narrowing shifts take an immediate, one amount for every lane, so the shift used to be
# a ``sshl`` per vector before two saturating narrows (2.5 instructions per vector).  Instead,
# per vector of 4 lanes, ``sqshl`` by ``24 - S`` (saturating; a negative amount shifts right,
# truncating) leaves ``floor(A / 2**S)`` saturated to int8 in each lane's top byte, and one
# ``tbl`` gathers the top bytes of 4 vectors (2 pixels): 1.25 instructions per vector.  Exact:
# for ``S <= 24`` the shift left is exact unless it overflows, where it saturates to a top byte
# of 127 (-128) while ``floor(A / 2**S)`` is at least 128 (below -128); for ``S > 24`` the
# truncating shift right is ``floor(A / 2**(S - 24))``, whose top byte is ``floor(A / 2**S)``
# (floors compose), inside [-128, 127] for any int32 ``A``.  The unsigned form shifts by
# ``16 - S``, takes the top halves (int16, saturated the same way; ``uzp2``) and ``sqxtun``s
# them.  MobileNet-V2 on ``arm-dotprod``: 40.92 -> 39.23 M instructions (``uzp2`` pairs for
# the int8 bytes instead of ``tbl``: 39.84).
def _sqshl(a, amount):
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sqshl.v4i32"),
                                   a, amount, dtype="int32x4")


def _top_halves(a, b):
    """The top int16 halves of the int32 lanes of ``a`` and ``b`` (``uzp2``)."""
    return T.Shuffle([T.reinterpret(a, dtype="int16x8"), T.reinterpret(b, dtype="int16x8")],
                     list(range(1, 16, 2)))


_TOP_BYTES = T.Shuffle([T.ramp(T.int8(3), 4, 16)], list(range(16)))  # each int32's top byte


def _neon_shift_narrowed(A, S, dtype: str, lo: int):
    """The 8-bit result of ``A``'s pixels (1, 2 or 4 of them), one vector."""
    pixels = 1 if len(A.shape) == 1 else int(A.shape[0])
    return _shift_narrowed_parts(A, S, dtype, lo, pixels)[0][1]


def _shift_narrowed_parts(A, S, dtype: str, lo: int, pixels: int):
    """``[(first pixel, 8-bit vector)]`` covering ``pixels`` pixels of ``A``: one vector for
    1, 2 or 4 of them; an odd tile of 3, 5 or 7 in parts of 4, 2 and 1 (two ``tbl`` of 4
    vectors, one of 2, for 7 pixels, instead of 7 of 2 vectors and 3 ``mov`` joining halves)."""
    top = 16 if dtype == "uint8" else 24  # the bit the result's lowest bit is shifted to
    amounts = [T.broadcast(T.int32(top), 4) - S.vload([j], "int32x4") for j in (0, 4)]
    ndim = len(A.shape)

    def lanes(p, j):  # lanes j .. j+3 of pixel p, shifted (int32x4)
        at = [j] if ndim == 1 else [p, j]
        return _sqshl(A.vload(at, "int32x4"), amounts[j // 4])

    def pixel(p):  # 8 int32 lanes -> their top int16 halves
        return _top_halves(lanes(p, 0), lanes(p, 4))

    def shifted(p, j):
        return T.reinterpret(lanes(p, j), dtype="int8x16")

    def bytes_of(p):  # one pixel's 8 lanes, 8 bits
        if dtype == "uint8":
            return _narrow_call("llvm.aarch64.neon.sqxtun.v8i8", pixel(p), "uint8x8")
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.tbl2.v8i8"), shifted(p, 0),
            shifted(p, 4), T.Shuffle([_TOP_BYTES], list(range(8))), dtype="int8x8")

    def two(p):  # two pixels -> 16 bytes
        if dtype == "uint8":
            return _concat(bytes_of(p), bytes_of(p + 1), 8)
        return T.call_llvm_pure_intrin(
            T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.tbl4.v16i8"), shifted(p, 0),
            shifted(p, 4), shifted(p + 1, 0), shifted(p + 1, 4), _TOP_BYTES, dtype="int8x16")

    parts, p = [], 0
    while p < pixels:
        n = 4 if pixels - p >= 4 else 2 if pixels - p >= 2 else 1
        out = {1: lambda: bytes_of(p), 2: lambda: two(p),
               4: lambda: _concat(two(p), two(p + 2), 16)}[n]()
        if dtype == "int8" and lo > -128:
            out = T.max(out, T.broadcast(T.int8(lo), 8 * n))
        parts.append((p, out))
        p += n
    return parts


def _shift_narrow_desc(dtype: str, lo: int, hi: int, pixels: int):
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((pixels, 8), "int32", offset_factor=1),
             S: T.Buffer((8,), "int32", offset_factor=1),
             C: T.Buffer((pixels, 8), dtype, offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(A[0:pixels, 0:8], S[0:8])
            T.writes(C[0:pixels, 0:8])
            for p, i in T.grid(pixels, 8):
                with T.sblock("narrow"):
                    vp, vi = T.axis.remap("SS", [p, i])
                    C[vp, vi] = T.Cast(dtype, T.max(T.min(A[vp, vi] >> S[vi], hi), lo))
    return desc


def _shift_narrow_1px_desc(dtype: str, lo: int, hi: int):
    """One pixel's 8 lanes (the tile's pixel loop stays outside)."""
    @T.prim_func(s_tir=True)
    def desc(A: T.Buffer((8,), "int32", offset_factor=1),
             S: T.Buffer((8,), "int32", offset_factor=1),
             C: T.Buffer((8,), dtype, offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(A[0:8], S[0:8])
            T.writes(C[0:8])
            for i in T.serial(0, 8):
                with T.sblock("narrow"):
                    vi = T.axis.remap("S", [i])
                    C[vi] = T.Cast(dtype, T.max(T.min(A[vi] >> S[vi], hi), lo))
    return desc


def _shift_narrow_impl(dtype: str, lo: int, pixels: int):
    """The narrowing of a tile of ``pixels``: one store per part of
    :func:`_shift_narrowed_parts` (one for 2 and 4 pixels, 2 for 3 and 5, 3 for 7)."""
    def part(A, S, i):
        return _shift_narrowed_parts(A, S, dtype, lo, pixels)[i]

    n = bin(pixels).count("1")  # the parts: 4, 2 and 1 pixels

    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((pixels, 8), "int32", offset_factor=1),
             S: T.Buffer((8,), "int32", offset_factor=1),
             C: T.Buffer((pixels, 8), dtype, offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(A[0:pixels, 0:8], S[0:8])
            T.writes(C[0:pixels, 0:8])
            C.vstore([part(A, S, 0)[0], 0], part(A, S, 0)[1])
            if n > 1:
                C.vstore([part(A, S, 1)[0], 0], part(A, S, 1)[1])
            if n > 2:
                C.vstore([part(A, S, 2)[0], 0], part(A, S, 2)[1])
    return impl


def _shift_narrow_1px_impl(dtype: str, lo: int):
    @T.prim_func(s_tir=True)
    def impl(A: T.Buffer((8,), "int32", offset_factor=1),
             S: T.Buffer((8,), "int32", offset_factor=1),
             C: T.Buffer((8,), dtype, offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads(A[0:8], S[0:8])
            T.writes(C[0:8])
            C.vstore([0], _neon_shift_narrowed(A, S, dtype, lo))
    return impl


for (_dtype, _lo, _hi), _suffix in NARROW_FORMS.items():
    for _name, _pixels in ((NEON_SHIFT_NARROW, 4), (NEON_SHIFT_NARROW_2PX, 2)):
        TensorIntrin.register(_name + _suffix, _shift_narrow_desc(_dtype, _lo, _hi, _pixels),
                              _shift_narrow_impl(_dtype, _lo, _pixels), override=True)
    for _pixels in SHIFT_NARROW_ODD:
        TensorIntrin.register(f"{NEON_SHIFT_NARROW}_{_pixels}px{_suffix}",
                              _shift_narrow_desc(_dtype, _lo, _hi, _pixels),
                              _shift_narrow_impl(_dtype, _lo, _pixels), override=True)
    TensorIntrin.register(NEON_SHIFT_NARROW_1PX + _suffix,
                          _shift_narrow_1px_desc(_dtype, _lo, _hi),
                          _shift_narrow_1px_impl(_dtype, _lo), override=True)
