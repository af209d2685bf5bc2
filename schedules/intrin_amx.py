"""AMX-INT8 tensor intrinsics: ``tdpbusd`` (u8 x s8 -> s32) on tile registers.

One AMX tile multiply ``C += A . B`` takes ``A``: M rows of K bytes (u8), ``B``: K/4 rows of 64
bytes (s8, each row 16 lanes x 4 bytes) and ``C``: M rows of 16 int32: ``C[m, n] += sum_k
A[m, k] * B[k // 4, 4 n + k % 4]`` -- 8-bit x 8-bit products into int32 accumulators, like
``vpdpbusd``, M x 16 x K MACs per instruction (up to 16 x 16 x 64).

On the channel-blocked layout (``NCHW16c`` activations, ``(O/16, I/16, KH, KW, 4, 16, 4)``
weights, ``relay_passes.packed_kernels``) a conv maps onto it directly:

* ``A``: M output pixels of one input row, each row of the tile the 16 channels of one input
  block at the pixel's window column -- and, for a window ``kx <= 4`` columns wide (dilation 1),
  the ``kx`` columns of the window at once: they are adjacent in the layout, so a tile row is
  ``16 kx`` contiguous bytes (K = 48 for a 3x3 conv), rows ``16 * stride`` bytes apart
  (overlapping rows are fine for ``tileloadd``);
* ``B``: the packed weights of one output block, input block and window row: ``4 kx`` rows of
  64 bytes, contiguous as packed (no repacking);
* ``C``: the M pixels' 16 output channels, int32.

The accumulator stays in tile register 0 over the whole reduction (input blocks, window rows),
so a register tile is three intrinsics (:func:`intrinsics`): *zero* (load the tile configuration
where the one in force differs, zero the accumulator), *dot* (load ``A`` into tile 1 and ``B``
into tile 2, ``tdpbusd``) per reduction step, and *store* (store the accumulator to the int32
buffer the epilogue reads).  The accumulator buffer the schedule names (``C``) is only a
stand-in for tile register 0: the instructions never touch it.

TVM 0.27 reaches AMX through LLVM's register-numbered intrinsics (``llvm.x86.ldtilecfg``,
``tileloadd64``, ``tdpbusd``, ``tilestored64``, ``tilezero``, ``tilerelease``), whose register
operands must be immediates; the ``.internal`` forms that name tile values cannot be written
in TIR (it has no ``x86_amx`` type).

**Described** intrinsics (:func:`described`): the same three steps as plain TIR loops over the
accumulator buffer, i.e. the tile operation's definition.  Built with them, an AMX schedule runs
on any CPU, so the schedule (tilings, the window fold, the epilogue) is tested bit-exact where
no AMX exists; the instruction itself is tested natively where the CPU has ``amx_int8``.
"""

from __future__ import annotations

import contextlib
import threading

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

LANES = 16  # output channels per tile row (one output block)
BLOCK = 16  # input channels per block (one tile row's bytes per window column)
MAX_ROWS = 16  # tile rows: output pixels per register tile
MAX_FOLD = 4  # window columns per tile row: 64 bytes
_ACC, _A, _B = 0, 1, 2  # tile registers: the accumulator, the activations, the weights

_state = threading.local()


@contextlib.contextmanager
def described():
    """Within this block, AMX schedules tensorize with the intrinsics' plain-TIR descriptions
    instead of the AMX instructions (the program then runs on any CPU)."""
    before = getattr(_state, "described", False)
    _state.described = True
    try:
        yield
    finally:
        _state.described = before


def is_described() -> bool:
    return getattr(_state, "described", False)


def _iid(name):
    return T.llvm_lookup_intrinsic_id(name)


def _rows_a(rows: int, fold: int, stride: int) -> int:
    """Input columns an ``A`` tile spans: ``rows`` pixels ``stride`` apart, ``fold`` columns
    each."""
    return (rows - 1) * stride + fold


def _zero_desc(rows: int):
    @T.prim_func(s_tir=True)
    def desc(C: T.Buffer((rows, LANES), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:rows, 0:LANES])
            for m, n in T.grid(rows, LANES):
                with T.sblock("zero"):
                    vm, vn = T.axis.remap("SS", [m, n])
                    C[vm, vn] = 0

    return desc


def _zero_loops(rows: int):
    @T.prim_func(s_tir=True)
    def impl(C: T.Buffer((rows, LANES), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:rows, 0:LANES])
            for m, n in T.grid(rows, LANES):
                C[m, n] = 0

    return impl


def _config_words(rows: int, fold: int) -> dict:
    """The tile configuration as 64 bytes (palette 1; bytes 16 + 2t: tile t's row bytes, byte
    48 + t: its rows), and the 32-bit words of it that name our three tiles (0, 4, 5 and 12;
    int32: TIR narrows 64-bit constants it takes for indices)."""
    cfg = bytearray(64)
    cfg[0] = 1
    for tile, nrows, nbytes in ((_ACC, rows, 4 * LANES), (_A, rows, BLOCK * fold),
                                (_B, 4 * fold, 4 * LANES)):
        cfg[16 + 2 * tile] = nbytes
        cfg[48 + tile] = nrows
    words = {i: int.from_bytes(cfg[4 * i:4 * i + 4], "little", signed=True)
             for i in (0, 4, 5, 12)}
    return bytes(cfg), words


def _zero_tiles(rows: int, fold: int):
    """Zero the accumulator, after loading the tile configuration if the one in force differs.

    ``ldtilecfg`` costs about 70 ns (measured on a Sapphire Rapids-class Xeon: more than a
    1x1 conv's whole tile), ``sttilecfg`` and a compare next to nothing; so every tile reads
    the configuration in force and loads its own only where it differs (a thread's first tile
    of a kernel, or after another kernel's).  The tiles stay configured after the kernel (no
    ``tilerelease``: the next kernel's first tile would pay the reload)."""
    cfg_bytes, words = _config_words(rows, fold)
    w0, w4, w5, w12 = words[0], words[4], words[5], words[12]
    nonzero = [(i, v) for i, v in enumerate(cfg_bytes) if v]
    assert [i for i, _ in nonzero] == [0, 16, 18, 20, 48, 49, 50], nonzero
    (_, v0), (_, c0), (_, c1), (_, c2), (_, r0), (_, r1), (_, r2) = nonzero

    @T.prim_func(s_tir=True)
    def impl(C: T.Buffer((rows, LANES), "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads()
            T.writes(C[0:rows, 0:LANES])
            now = T.alloc_buffer((16,), "int32")
            cfg = T.alloc_buffer((64,), "uint8")
            T.evaluate(T.call_llvm_intrin(_iid("llvm.x86.sttilecfg"), now.access_ptr("w"),
                                          dtype="int32"))
            if now[0] != w0 or now[4] != w4 or now[5] != w5 or now[12] != w12:
                for i in T.serial(64):
                    cfg[i] = T.uint8(0)
                cfg[0] = T.uint8(v0)
                cfg[16] = T.uint8(c0)
                cfg[18] = T.uint8(c1)
                cfg[20] = T.uint8(c2)
                cfg[48] = T.uint8(r0)
                cfg[49] = T.uint8(r1)
                cfg[50] = T.uint8(r2)
                T.evaluate(T.call_llvm_intrin(_iid("llvm.x86.ldtilecfg"), cfg.access_ptr("r"),
                                              dtype="int32"))
            T.evaluate(T.call_llvm_intrin(_iid("llvm.x86.tilezero"), T.int8(_ACC),
                                          dtype="int32"))

    return impl


def _dot_desc(rows: int, fold: int, stride: int):
    """``C[m, n] += sum_{x, q, k} A[m * stride + x, 4 q + k] * B[x, q, n, k]``: ``rows`` pixels,
    ``fold`` window columns (1: one column per step, the window loop outside)."""
    ra = _rows_a(rows, fold, stride)

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((ra, BLOCK), "uint8", offset_factor=1),
        B: T.Buffer((fold, 4, LANES, 4), "int8", offset_factor=1),
        C: T.Buffer((rows, LANES), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:LANES], A[0:ra, 0:BLOCK], B[0:fold, 0:4, 0:LANES, 0:4])
            T.writes(C[0:rows, 0:LANES])
            for m, n, x, q, k in T.grid(rows, LANES, fold, 4, 4):
                with T.sblock("update"):
                    vm, vn, vx, vq, vk = T.axis.remap("SSRRR", [m, n, x, q, k])
                    C[vm, vn] = C[vm, vn] + T.cast(A[vm * stride + vx, vq * 4 + vk], "int32") \
                        * T.cast(B[vx, vq, vn, vk], "int32")

    return desc


def _dot_desc_one(rows: int, stride: int):
    """:func:`_dot_desc` for one window column per step (no ``x`` loop to match)."""
    ra = _rows_a(rows, 1, stride)

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer((ra, BLOCK), "uint8", offset_factor=1),
        B: T.Buffer((4, LANES, 4), "int8", offset_factor=1),
        C: T.Buffer((rows, LANES), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:LANES], A[0:ra, 0:BLOCK], B[0:4, 0:LANES, 0:4])
            T.writes(C[0:rows, 0:LANES])
            for m, n, q, k in T.grid(rows, LANES, 4, 4):
                with T.sblock("update"):
                    vm, vn, vq, vk = T.axis.remap("SSRR", [m, n, q, k])
                    C[vm, vn] = C[vm, vn] + T.cast(A[vm * stride, vq * 4 + vk], "int32") \
                        * T.cast(B[vq, vn, vk], "int32")

    return desc


def _dot_loops(rows: int, fold: int, stride: int):
    ra = _rows_a(rows, fold, stride)

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((ra, BLOCK), "uint8", offset_factor=1),
        B: T.Buffer((fold, 4, LANES, 4), "int8", offset_factor=1),
        C: T.Buffer((rows, LANES), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:LANES], A[0:ra, 0:BLOCK], B[0:fold, 0:4, 0:LANES, 0:4])
            T.writes(C[0:rows, 0:LANES])
            for m, n, x, q, k in T.grid(rows, LANES, fold, 4, 4):
                C[m, n] = C[m, n] + T.cast(A[m * stride + x, q * 4 + k], "int32") \
                    * T.cast(B[x, q, n, k], "int32")

    return impl


def _dot_loops_one(rows: int, stride: int):
    ra = _rows_a(rows, 1, stride)

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((ra, BLOCK), "uint8", offset_factor=1),
        B: T.Buffer((4, LANES, 4), "int8", offset_factor=1),
        C: T.Buffer((rows, LANES), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:LANES], A[0:ra, 0:BLOCK], B[0:4, 0:LANES, 0:4])
            T.writes(C[0:rows, 0:LANES])
            for m, n, q, k in T.grid(rows, LANES, 4, 4):
                C[m, n] = C[m, n] + T.cast(A[m * stride, q * 4 + k], "int32") \
                    * T.cast(B[q, n, k], "int32")

    return impl


def _load(tile, buf, stride_bytes):
    """``tileloadd`` tile register ``tile`` from ``buf`` (rows ``stride_bytes`` apart)."""
    return T.call_llvm_intrin(_iid("llvm.x86.tileloadd64"), T.int8(tile), buf.access_ptr("r"),
                              T.int64(stride_bytes), dtype="int32")


def _tdpbusd():
    return T.call_llvm_intrin(_iid("llvm.x86.tdpbusd"), T.int8(_ACC), T.int8(_A), T.int8(_B),
                              dtype="int32")


def _dot_tiles(rows: int, fold: int, stride: int):
    """One reduction step: ``tileloadd`` the activations (rows ``16 * stride`` bytes apart) and
    the weights (rows of 64 bytes), ``tdpbusd`` into the accumulator."""
    ra = _rows_a(rows, fold, stride)

    @T.prim_func(s_tir=True)
    def impl(
        A: T.Buffer((ra, BLOCK), "uint8", offset_factor=1),
        B: T.Buffer((fold, 4, LANES, 4), "int8", offset_factor=1),
        C: T.Buffer((rows, LANES), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:LANES], A[0:ra, 0:BLOCK], B[0:fold, 0:4, 0:LANES, 0:4])
            T.writes(C[0:rows, 0:LANES])
            T.evaluate(_load(_A, A, BLOCK * stride))
            T.evaluate(_load(_B, B, 4 * LANES))
            T.evaluate(_tdpbusd())

    @T.prim_func(s_tir=True)
    def impl_one(
        A: T.Buffer((ra, BLOCK), "uint8", offset_factor=1),
        B: T.Buffer((4, LANES, 4), "int8", offset_factor=1),
        C: T.Buffer((rows, LANES), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:LANES], A[0:ra, 0:BLOCK], B[0:4, 0:LANES, 0:4])
            T.writes(C[0:rows, 0:LANES])
            T.evaluate(_load(_A, A, BLOCK * stride))
            T.evaluate(_load(_B, B, 4 * LANES))
            T.evaluate(_tdpbusd())

    return impl if fold > 1 else impl_one


def _store_desc(rows: int):
    @T.prim_func(s_tir=True)
    def desc(
        C: T.Buffer((rows, LANES), "int32", offset_factor=1),
        D: T.Buffer((rows, LANES), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:LANES])
            T.writes(D[0:rows, 0:LANES])
            for m, n in T.grid(rows, LANES):
                with T.sblock("store"):
                    vm, vn = T.axis.remap("SS", [m, n])
                    D[vm, vn] = C[vm, vn]

    return desc


def _store_loops(rows: int):
    @T.prim_func(s_tir=True)
    def impl(
        C: T.Buffer((rows, LANES), "int32", offset_factor=1),
        D: T.Buffer((rows, LANES), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:LANES])
            T.writes(D[0:rows, 0:LANES])
            for m, n in T.grid(rows, LANES):
                D[m, n] = C[m, n]

    return impl


def _store_tiles(rows: int):
    """``tilestored`` the accumulator into ``D`` (rows of 64 bytes)."""

    @T.prim_func(s_tir=True)
    def impl(
        C: T.Buffer((rows, LANES), "int32", offset_factor=1),
        D: T.Buffer((rows, LANES), "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[0:rows, 0:LANES])
            T.writes(D[0:rows, 0:LANES])
            T.evaluate(T.call_llvm_intrin(_iid("llvm.x86.tilestored64"), T.int8(_ACC),
                                          D.access_ptr("w"), T.int64(4 * LANES),
                                          dtype="int32"))

    return impl


_registered: set = set()


def _register(name, desc, impl) -> str:
    if name not in _registered:
        TensorIntrin.register(name, desc, impl, override=True)
        _registered.add(name)
    return name


def intrinsics(rows: int, fold: int, stride: int) -> tuple[str, str, str]:
    """The (zero, dot, store) intrinsics of a register tile of ``rows`` pixels (2 to 16),
    ``fold`` window columns per step (at most 4; 1: one column per step) and a window
    ``stride``: the AMX instructions, or their descriptions inside :func:`described`.
    Registered on first use."""
    if not (2 <= rows <= MAX_ROWS and 1 <= fold <= MAX_FOLD and stride >= 1):
        raise ValueError(f"no AMX tile for {rows} rows, {fold} window columns, stride {stride}")
    real = not is_described()
    kind = "amx" if real else "amx_described"
    zero = _register(f"f8tvm_{kind}_zero_m{rows}_x{fold}", _zero_desc(rows),
                     _zero_tiles(rows, fold) if real else _zero_loops(rows))
    if fold > 1:
        desc, loops = _dot_desc(rows, fold, stride), _dot_loops(rows, fold, stride)
    else:
        desc, loops = _dot_desc_one(rows, stride), _dot_loops_one(rows, stride)
    dot = _register(f"f8tvm_{kind}_dot_m{rows}_x{fold}_s{stride}", desc,
                    _dot_tiles(rows, fold, stride) if real else loops)
    store = _register(f"f8tvm_{kind}_store_m{rows}", _store_desc(rows),
                      _store_tiles(rows) if real else _store_loops(rows))
    return zero, dot, store
