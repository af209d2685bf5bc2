"""x86 dot-product tensor intrinsics.

* AVX-512 VNNI ``vpdpbusd``: 16 int32 lanes, each a 4-deep u8 x s8 dot (64 MACs / instruction).
* AVX-VNNI ``{vex} vpdpbusd``: the same on 8 int32 lanes of a ymm register (32 MACs), for the
  AVX2-class CPUs that have it without AVX-512 (Alder Lake and later cores, Zen 5 client parts).
* AVX-512 depthwise convs: ``vpdpbusd`` with a channel's 4 window columns in each lane (the
  plane rewritten once as column quads, ``VNNI_DW_16x4``, ``VNNI_QUADS``).
* AVX2 ``vpmaddwd``: 8 int32 lanes, each a 2-deep dot of 8-bit values widened to 16 bits
  (16 MACs / instruction).  It is exact for any u8 x s8 input; ``vpmaddubsw`` (32 MACs) is not:
  it saturates its 16-bit pair sums (255 * 127 * 2 > 2**15), so we do not use it.

TVM 0.27 ships ``dot_16x4_vnni``, but calls ``llvm.x86.avx512.vpdpbusd.512`` with ``<16 x i32>``
operands; LLVM 22 (the one in the 0.27 wheel) declares it with ``<64 x i8>`` operands, so every
tensorized kernel fails LLVM verification.  We register our own correct intrinsic under our own
name; our schedules (and so our tuning space) use it.

We do not import ``tvm.s_tir.tensor_intrin`` here: its package import parses every target's
intrinsics (CUDA, ROCm, ...), which takes minutes in a process that has PyTorch loaded.

AVX2 forms: activations uint8 / int8 (a pair broadcast and widened in registers) or int16 (the
conv's widened copy of its input: a pair is one broadcast load), weights int8 (widened in
registers) or int16 (stored widened: the dot's memory operand).

Semantics (all):  ``C[i] += sum_k int32(A[k]) * int32(B[i, k])``, ``A`` one activation group
(broadcast), ``B`` the weight tile, ``C`` int32 accumulators: VNNI ``i < 16, k < 4``, AVX2
``i < 8, k < 2``, AVX-VNNI ``i < 8, k < 4``.
"""

from __future__ import annotations

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

VNNI_16x4 = "f8tvm_vnni_16x4_u8i8i32"  # 512-bit: 16 output lanes x 4-deep dot
AVXVNNI_8x4 = "f8tvm_avxvnni_8x4_u8i8i32"  # 256-bit (VEX): 8 output lanes x 4-deep dot
AVX2_8x2 = "f8tvm_avx2_8x2_u8i8i32"  # 256-bit: 8 output lanes x 2-deep dot
AVX2_8x2_W16 = "f8tvm_avx2_8x2_u8w16i32"  # the same, weights stored widened (int16)
AVX2_8x2_A16 = "f8tvm_avx2_8x2_a16i8i32"  # activations stored widened (int16 copies of 8 bits)
AVX2_8x2_A16W16 = "f8tvm_avx2_8x2_a16w16i32"  # activations and weights stored widened
AVX2_DW_8x2 = "f8tvm_avx2_dw_8x2_u8i8i32"  # depthwise: 8 channels x 2 taps (pairs of columns)
AVX2_DW_8x2_WIDE = "f8tvm_avx2_dw_8x2_a16w16i32"  # depthwise on widened pairs, int16 weights
AVX2_PAIRS = "f8tvm_avx2_pairs_u8"  # interleave two columns of 8 channels, widen to int16


def _dot_desc(lanes: int, depth: int, a_dtype: str, b_dtype: str = "int8"):
    """What every dot intrinsic computes: ``C[i] += sum_k int32(A[k]) * int32(B[i, k])``."""

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((depth,), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, depth), b_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:depth], B[0:lanes, 0:depth])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, depth):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(A[vk], "int32") * T.cast(B[vi, vk], "int32")

    return desc


def _vpdpbusd_impl(lanes: int):
    """``vpdpbusd`` on ``lanes`` int32 lanes: 16 (zmm, AVX-512 VNNI) or 8 (ymm; VEX-encoded,
    AVX-VNNI, on a target that has it and no AVX-512)."""
    name = f"llvm.x86.avx512.vpdpbusd.{32 * lanes}"
    acc, data = f"int32x{lanes}", f"int8x{4 * lanes}"

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((4,), "uint8", offset_factor=1),
        B: T.Buffer((lanes, 4), "int8", offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:4], B[0:lanes, 0:4])
            T.writes(C[0:lanes])
            # written as one expression (no local names): the multiplication audit reads the
            # operands' 8-bit types straight off the call
            C[T.ramp(T.int32(0), 1, lanes)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id(name),
                C.vload([0], dtype=acc),
                T.reinterpret(T.broadcast(T.reinterpret(A.vload([0], "uint8x4"), dtype="int32"),
                                          lanes), dtype=data),
                B.vload([0, 0], dtype=data),
                dtype=acc)

    return impl


TensorIntrin.register(VNNI_16x4, _dot_desc(16, 4, "uint8"), _vpdpbusd_impl(16), override=True)
TensorIntrin.register(AVXVNNI_8x4, _dot_desc(8, 4, "uint8"), _vpdpbusd_impl(8), override=True)



def _pmadd_acc(C, a, b):
    """``C[0:8] + vpmaddwd(a, b)``: the accumulate step of every AVX2 intrinsic; ``a`` and ``b``
    are 16-lane int16 expressions of 8-bit values."""
    return C.vload([0], dtype="int32x8") + T.call_llvm_pure_intrin(
        T.llvm_lookup_intrinsic_id("llvm.x86.avx2.pmadd.wd"), a, b, dtype="int32x8")


def _weight_tile(B, b_dtype):
    """The ``(8, 2)`` weight tile as 16 int16 lanes: int8 weights widened (``vpmovsxbw``), int16
    ones (8-bit values, checked by the audit on the constants) loaded as they are, so the tile
    is ``vpmaddwd``'s memory operand."""
    if b_dtype == "int16":
        return B.vload([0, 0], dtype="int16x16")
    return T.Cast("int16x16", B.vload([0, 0], dtype="int8x16"))


def _act_pair(A, a_dtype):
    """The activation pair broadcast to 16 int16 lanes (2i, 2i+1 = A[0], A[1]).  8-bit pairs:
    broadcast as one 16-bit word (vpbroadcastw), each byte widened (vpmovzxbw / vpmovsxbw).
    A widened (int16) pair is one 32-bit word: a broadcast load (vpbroadcastd), no ALU work."""
    if a_dtype == "int16":
        return T.reinterpret(
            T.broadcast(T.reinterpret(A.vload([0], "int16x2"), dtype="int32"), 8),
            dtype="int16x16")
    return T.Cast("int16x16", T.reinterpret(
        T.broadcast(T.reinterpret(A.vload([0], a_dtype + "x2"), dtype="uint16"), 8),
        dtype=a_dtype + "x16"))


def _impl_avx2(a_dtype, b_dtype="int8"):
    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((2,), a_dtype, offset_factor=1),
        B: T.Buffer((8, 2), b_dtype, offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:2], B[0:8, 0:2])
            T.writes(C[0:8])
            # one expression, so the audit sees the operand types
            C[T.ramp(T.int32(0), 1, 8)] = _pmadd_acc(C, _act_pair(A, a_dtype),
                                                     _weight_tile(B, b_dtype))

    return impl


for _a, _suffix in (("uint8", ""), ("int8", "_s8")):
    TensorIntrin.register(AVX2_8x2 + _suffix, _dot_desc(8, 2, _a), _impl_avx2(_a),
                          override=True)
    TensorIntrin.register(AVX2_8x2_W16 + _suffix, _dot_desc(8, 2, _a, "int16"),
                          _impl_avx2(_a, "int16"), override=True)
TensorIntrin.register(AVX2_8x2_A16, _dot_desc(8, 2, "int16"), _impl_avx2("int16"), override=True)
TensorIntrin.register(AVX2_8x2_A16W16, _dot_desc(8, 2, "int16", "int16"),
                      _impl_avx2("int16", "int16"), override=True)


# Depthwise tap pairs (``depthwise_pairs_nchwc``): ``C[i] += sum_k A[k, i] * B[i, k]`` -- 8
# channels, two window columns.  The activations of the two columns are adjacent in the blocked
# layout (``[k, i]``, 16 bytes); one byte shuffle interleaves them so that ``vpmaddwd`` multiplies
# lane pair (2i, 2i+1) = channel i at both columns by its two weights ``B[i, 0:2]`` and adds them.
# On widened pairs (``depthwise_pairs_nchwc(..., rewrite=True)``) the input was rewritten once
# as int16 column pairs ``A[i, k]``, so a tap pair of 8 channels is one 32-byte load, and the
# weights are int16 too: ``vpmaddwd``'s memory operand.
_INTERLEAVE = [j for i in range(8) for j in (i, i + 8)]


def _grouped(a_dtype, grouped=None) -> bool:
    """Whether a tap group's activations come channel by channel (``[i, k]``: a plane
    rewritten as its column groups, by default the widened int16 pairs) or column by column
    (``[k, i]``: adjacent columns of the blocked layout)."""
    return a_dtype == "int16" if grouped is None else grouped


def _pair_shape(a_dtype, taps=2, lanes=8, grouped=None):
    return (lanes, taps) if _grouped(a_dtype, grouped) else (taps, lanes)


def _tap(A, grouped, i, k):
    """Channel ``i`` at column ``k`` of a tap group ``A`` (its layout: :func:`_pair_shape`)."""
    return A[i, k] if grouped else A[k, i]


def _tap_pair(A, a_dtype):
    """The tap pair as 16 int16 lanes, lane pair (2i, 2i+1) = channel i at both columns."""
    if a_dtype == "int16":
        return A.vload([0, 0], dtype="int16x16")
    return T.Cast("int16x16", T.Shuffle([A.vload([0, 0], dtype=a_dtype + "x16")], _INTERLEAVE))


def _dw_pair_desc(a_dtype: str, b_dtype: str = "int8", taps: int = 2, lanes: int = 8,
                  grouped=None):
    """``C[i] += sum_k A[k, i] * B[i, k]`` over ``taps`` window columns (2: a tap pair; 4: the
    ARM ``sdot`` and AVX-512 ``vpdpbusd`` tap quads) of ``lanes`` channels; ``A[i, k]`` where
    the plane was rewritten as its column groups (:func:`_grouped`)."""
    grouped = _grouped(a_dtype, grouped)
    sa, sb = _pair_shape(a_dtype, taps, lanes, grouped)

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((sa, sb), a_dtype, offset_factor=1),
        B: T.Buffer((lanes, taps), b_dtype, offset_factor=1),
        C: T.Buffer((lanes,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:sa, 0:sb], B[0:lanes, 0:taps])
            T.writes(C[0:lanes])
            for i in T.serial(0, lanes):
                for k in T.serial(0, taps):
                    with T.sblock("update"):
                        vi, vk = T.axis.remap("SR", [i, k])
                        C[vi] = C[vi] + T.cast(_tap(A, grouped, vi, vk), "int32") * T.cast(
                            B[vi, vk], "int32")

    return desc


def _dw_pair_impl(a_dtype: str, b_dtype: str = "int8"):
    sa, sb = _pair_shape(a_dtype)

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((sa, sb), a_dtype, offset_factor=1),
        B: T.Buffer((8, 2), b_dtype, offset_factor=1),
        C: T.Buffer((8,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:8], A[0:sa, 0:sb], B[0:8, 0:2])
            T.writes(C[0:8])
            C[T.ramp(T.int32(0), 1, 8)] = _pmadd_acc(C, _tap_pair(A, a_dtype),
                                                     _weight_tile(B, b_dtype))

    return impl


for _a, _suffix in (("uint8", ""), ("int8", "_s8")):
    TensorIntrin.register(AVX2_DW_8x2 + _suffix, _dw_pair_desc(_a), _dw_pair_impl(_a),
                          override=True)
TensorIntrin.register(AVX2_DW_8x2_WIDE, _dw_pair_desc("int16", "int16"),
                      _dw_pair_impl("int16", "int16"), override=True)


def _as(value, from_dtype, dtype):
    """``value`` (of ``from_dtype``) cast to ``dtype``; as it is where the types agree (the
    rewrite then copies)."""
    return value if from_dtype == dtype else T.Cast(dtype, value)


# The pairs themselves: ``P[i, k] = int16(D[k, i])`` for two adjacent columns ``D`` (16 bytes:
# column 0's 8 channels, then column 1's) -- one byte shuffle and one widening per pair.  With
# ``taps`` and ``lanes`` the same transposition makes AVX-512's quads (4 x 16, no widening).
def _pairs_desc(a_dtype: str, p_dtype: str = "int16", taps: int = 2, lanes: int = 8):
    @T.prim_func(s_tir=True)
    def desc(
        D: T.Buffer((taps, lanes), a_dtype, offset_factor=1),
        P: T.Buffer((lanes, taps), p_dtype, offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(D[0:taps, 0:lanes])
            T.writes(P[0:lanes, 0:taps])
            for i in T.serial(0, lanes):
                for k in T.serial(0, taps):
                    with T.sblock("pair"):
                        vi, vk = T.axis.remap("SS", [i, k])
                        P[vi, vk] = _as(D[vk, vi], a_dtype, p_dtype)

    return desc


def _pairs_impl(a_dtype: str):
    @T.prim_func(s_tir=True)
    def impl(
        D: T.Buffer((2, 8), a_dtype, offset_factor=1),
        P: T.Buffer((8, 2), "int16", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(D[0:2, 0:8])
            T.writes(P[0:8, 0:2])
            P.vstore([0, 0], _tap_pair(D, a_dtype))  # the shuffle a tap pair of bytes needs

    return impl


for _a, _suffix in (("uint8", ""), ("int8", "_s8")):
    TensorIntrin.register(AVX2_PAIRS + _suffix, _pairs_desc(_a), _pairs_impl(_a), override=True)


# AVX-512 depthwise tap quads (``depthwise_pairs_nchwc`` with 4-column groups, rewritten): the
# padded plane is first rewritten as its column quads, ``Q[j][i][k]`` = column ``j + k`` of
# channel ``i`` (64 bytes of 4 columns x 16 channels transposed, see below), so
# that one ``vpdpbusd`` lane takes a channel's 4 taps: ``C[i] += sum_k Q[i, k] * B[i, k]``, 16
# channels x 4 window columns (a 3-column window has a zero-weight phantom fourth).
VNNI_DW_16x4 = "f8tvm_vnni_dw_16x4_u8i8i32"
VNNI_QUADS = "f8tvm_vnni_quads_16x4_u8"  # the quads themselves
# a quad's 64 bytes (4 columns x 16 channels) transposed in two single-uop shuffles (LLVM's own
# lowering of the byte shuffle is 11 unpacks and inserts, all on one port): ``vpermd`` brings
# the 4 columns' dwords of channels 4j..4j+3 into 128-bit lane j, then ``vpshufb`` transposes
# each lane's 4 x 4 bytes
_LANE_DWORDS = [k * 4 + j for j in range(4) for k in range(4)]
_LANE_BYTES = [k * 4 + i for _ in range(4) for i in range(4) for k in range(4)]


def _dw_quads_impl():
    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((16, 4), "uint8", offset_factor=1),
        B: T.Buffer((16, 4), "int8", offset_factor=1),
        C: T.Buffer((16,), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:16], A[0:16, 0:4], B[0:16, 0:4])
            T.writes(C[0:16])
            C[T.ramp(T.int32(0), 1, 16)] = T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.vpdpbusd.512"),
                C.vload([0], dtype="int32x16"),
                T.reinterpret(A.vload([0, 0], dtype="uint8x64"), dtype="int8x64"),
                B.vload([0, 0], dtype="int8x64"),
                dtype="int32x16")

    return impl


def _quads_impl():
    @T.prim_func(s_tir=True)
    def impl(
        D: T.Buffer((4, 16), "uint8", offset_factor=1),
        Q: T.Buffer((16, 4), "uint8", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(D[0:4, 0:16])
            T.writes(Q[0:16, 0:4])
            Q.vstore([0, 0], T.reinterpret(T.call_llvm_pure_intrin(
                T.llvm_lookup_intrinsic_id("llvm.x86.avx512.pshuf.b.512"),
                T.reinterpret(T.call_llvm_pure_intrin(
                    T.llvm_lookup_intrinsic_id("llvm.x86.avx512.permvar.si.512"),
                    T.reinterpret(D.vload([0, 0], dtype="uint8x64"), dtype="int32x16"),
                    T.Shuffle([T.ramp(T.int32(0), 1, 16)], _LANE_DWORDS), dtype="int32x16"),
                    dtype="int8x64"),
                T.Shuffle([T.ramp(T.int8(0), 1, 64)], _LANE_BYTES), dtype="int8x64"),
                dtype="uint8x64"))

    return impl


TensorIntrin.register(VNNI_DW_16x4, _dw_pair_desc("uint8", taps=4, lanes=16, grouped=True),
                      _dw_quads_impl(), override=True)
TensorIntrin.register(VNNI_QUADS, _pairs_desc("uint8", "uint8", taps=4, lanes=16),
                      _quads_impl(), override=True)


# Narrowing the epilogue's result: ``C[p, i] = dtype(clamp(A[p, i], lo, hi))`` for 4 pixels x 8
# channels (int32 -> 8 bits, 32 contiguous output bytes).  The saturating packs clamp for free:
# two ``vpackssdw`` (int32 -> int16) and one ``vpackuswb`` / ``vpacksswb`` (-> 8 bits) turn 4
# vectors into one, whose dwords come out in 128-bit-lane order (pixel 0's channels 0-3, pixel
# 1's 0-3, ..., then the channels 4-7), put back by one ``vpermd``; a [-127, 127] clamp (F8Net's
# symmetric int8) adds one ``vpmaxsb``.  Narrowed one vector at a time, as LLVM does it, each
# vector costs a ``vextracti128`` and a ``vpackssdw``, every two a ``vpackuswb`` and a store.
AVX2_NARROW = "f8tvm_avx2_narrow_4x8"  # + "_u8" (clamp [0, 255]) / "_s8" ([-128, 127]) / "_s8sym"
NARROW_FORMS = {("uint8", 0, 255): "_u8", ("int8", -128, 127): "_s8",
                ("int8", -127, 127): "_s8sym"}
_PERMUTE_DWORDS = [0, 4, 1, 5, 2, 6, 3, 7]
# the same for 4 pixels x 16 channels on AVX-512 (ZMM packs work in four 128-bit lanes): one
# ``vpmovusdb`` (``vpmovsdb``) per vector, each 2 micro-ops, and a ``vpmaxsd`` for the unsigned
# clamp's low edge, become three packs and a ``vpermd`` per 4 vectors
AVX512_NARROW = "f8tvm_avx512_narrow_4x16"  # + NARROW_FORMS' suffix
AVX512_NARROW_2PX = "f8tvm_avx512_narrow_2x16"  # the same for 2 pixels (half the packs' result)
_PERMUTE_DWORDS_512 = [4 * (j % 4) + j // 4 for j in range(16)]


def _narrow_desc(dtype: str, lo: int, hi: int, pixels: int = 4, lanes: int = 8):
    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((pixels, lanes), "int32", offset_factor=1),
        C: T.Buffer((pixels, lanes), dtype, offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(A[0:pixels, 0:lanes])
            T.writes(C[0:pixels, 0:lanes])
            for p in T.serial(0, pixels):
                for i in T.serial(0, lanes):
                    with T.sblock("narrow"):
                        vp, vi = T.axis.remap("SS", [p, i])
                        C[vp, vi] = T.Cast(dtype, T.max(T.min(A[vp, vi], hi), lo))

    return desc


def _pack(name, a, b, dtype):
    """A two-operand LLVM intrinsic (the packs, vpermd)."""
    return T.call_llvm_pure_intrin(T.llvm_lookup_intrinsic_id(name), a, b, dtype=dtype)


_PACKS = {  # lanes -> (int32 -> int16 pack, int16 -> 8-bit pack ("u"/"s"), dword permute)
    8: ("llvm.x86.avx2.packssdw", "llvm.x86.avx2.pack{}swb", "llvm.x86.avx2.permd"),
    16: ("llvm.x86.avx512.packssdw.512", "llvm.x86.avx512.pack{}swb.512",
         "llvm.x86.avx512.permvar.si.512"),
}


def _narrowed_by(lanes: int, pixels: int = 4):
    """``narrowed(A, dtype, lo)``: the ``pixels`` x ``lanes`` int32 tile ``A`` as its clamped
    8-bit lanes in memory order, one expression (a local name in the intrinsic would become a
    local buffer).  Two pixels per int32 -> int16 pack, the two packs' results (for 2 pixels:
    the one, twice) packed to 8 bits, then one dword permute puts each 128-bit lane's dwords
    back in pixel order; 2 pixels keep the low half."""
    ssdw, swb, permute = _PACKS[lanes]
    order = _PERMUTE_DWORDS if lanes == 8 else _PERMUTE_DWORDS_512
    out = pixels * lanes  # bytes

    def narrowed(A, dtype: str, lo: int):
        words = [_pack(ssdw, A.vload([2 * j, 0], f"int32x{lanes}"),
                       A.vload([2 * j + 1, 0], f"int32x{lanes}"), f"int16x{2 * lanes}")
                 for j in range(pixels // 2)]
        words = words * (2 // len(words))
        by_lane = _pack(swb.format("u" if dtype == "uint8" else "s"), words[0], words[1],
                        f"int8x{4 * lanes}")
        dwords = _pack(permute, T.reinterpret(by_lane, dtype=f"int32x{lanes}"),
                       T.Shuffle([T.ramp(T.int32(0), 1, lanes)], order), f"int32x{lanes}")
        if out < 4 * lanes:
            dwords = T.Shuffle([dwords], list(range(out // 4)))
        ordered = T.reinterpret(dwords, dtype=f"{dtype}x{out}")
        if dtype == "int8" and lo > -128:
            return T.max(ordered, T.broadcast(T.int8(lo), out))
        return ordered

    return narrowed


_narrowed = _narrowed_by(8)  # AVX2: 4 pixels x 8 channels


def _narrow_impl(dtype: str, lo: int, hi: int, narrowed=_narrowed, pixels: int = 4,
                 lanes: int = 8):
    """The narrowing of a ``pixels`` x ``lanes`` int32 tile: ``narrowed(A, dtype, lo)``, its
    clamped 8-bit lanes in memory order (AVX2's packs of 4 pixels by default)."""
    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((pixels, lanes), "int32", offset_factor=1),
        C: T.Buffer((pixels, lanes), dtype, offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(A[0:pixels, 0:lanes])
            T.writes(C[0:pixels, 0:lanes])
            C.vstore([0, 0], narrowed(A, dtype, lo))

    return impl


for (_dtype, _lo, _hi), _suffix in NARROW_FORMS.items():
    TensorIntrin.register(AVX2_NARROW + _suffix, _narrow_desc(_dtype, _lo, _hi),
                          _narrow_impl(_dtype, _lo, _hi), override=True)
    for _name, _pixels in ((AVX512_NARROW, 4), (AVX512_NARROW_2PX, 2)):
        TensorIntrin.register(_name + _suffix,
                              _narrow_desc(_dtype, _lo, _hi, pixels=_pixels, lanes=16),
                              _narrow_impl(_dtype, _lo, _hi, _narrowed_by(16, _pixels),
                                           pixels=_pixels, lanes=16),
                              override=True)
