"""AMX-INT8 tensor intrinsics: ``tdpbusd`` (u8 x s8 -> s32) on tile registers.

One AMX tile multiply ``C += A . B`` takes ``A``: M rows of K bytes (u8), ``B``: K/4 rows of 64
bytes (s8, each row 16 lanes x 4 bytes) and ``C``: M rows of 16 int32: ``C[m, n] += sum_k
A[m, k] * B[k // 4, 4 n + k % 4]`` -- 8-bit x 8-bit products into int32 accumulators, like
``vpdpbusd``, M x 16 x K MACs per instruction (up to 16 x 16 x 64).

On the channel-blocked layout (``NCHW[b]c`` activations, ``(O/16, I/b, KH, KW, b/4, 16, 4)``
weights, ``relay_passes.packed_kernels``; ``b`` = 16, or 4 for the RGB image) a conv maps onto
it directly:

* ``A``: M output pixels of one input row, each row of the tile the ``b`` channels of one input
  block at the pixel's window column -- and, for a window whose columns fit 64 bytes (dilation
  1), all its columns at once: they are adjacent in the layout, so a tile row is ``b * kw``
  contiguous bytes (K = 48 for a 3x3 conv on 16 channels, 28 for the 7x7 RGB stem), rows
  ``b * stride`` bytes apart (overlapping rows are fine for ``tileloadd``); a 1x1 conv has one
  column, so its tile rows take several input blocks instead (``Tile.channels``), from a
  pixel-major copy of the activations the kernel makes (K = 64 for 4 blocks, not 16);
* ``B``: the packed weights of one output block, input block and window row: ``kw * b / 4`` rows
  of 64 bytes, contiguous as packed (no repacking);
* ``C``: the M pixels' 16 output channels, int32.

A register tile is up to 4 such accumulators (:class:`Tile`: ``tiles`` output rows, which
share each weight tile, times ``blocks`` output blocks, which share each activation tile), kept
in tile registers over the whole reduction (input blocks, window rows), so it is three
intrinsics (:func:`intrinsics`): *zero* (load the tile configuration where the one in force
differs, zero the accumulators), *dot* (per reduction step: the weight tiles and activation
tiles, each loaded once, and a ``tdpbusd`` per accumulator) and *store* (store the accumulators
to the int32 buffer the epilogue reads).  Independent accumulators matter: each ``tdpbusd``
adds into its accumulator, so one accumulator makes every step wait for the previous step's
multiply; a map whose height has no divisor from 2 to 4 (7x7) takes its accumulators from the
output blocks instead.  The accumulator buffer the schedule names (``C``) is only a stand-in
for the tile registers: the instructions never touch it.  Registers: accumulators 0-3,
activations 4 and 5, weights 6 and 7 (each pair in turn, so one load need not wait for the
multiply that reads the previous one).

TVM 0.27 reaches AMX through LLVM's register-numbered intrinsics (``llvm.x86.ldtilecfg``,
``sttilecfg``, ``tileloadd64``, ``tdpbusd``, ``tilestored64``, ``tilezero``), whose register
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
from dataclasses import dataclass

from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from f8tvm.core._tvm import tir

LANES = 16  # output channels per tile row (one output block)
MAX_ROWS = 16  # tile rows: output pixels per accumulator tile
MAX_BYTES = 64  # bytes per tile row
MAX_TILES = 4  # accumulator tiles per register tile
_A_REGS, _B_REGS = (4, 5), (6, 7)  # tile registers of the activations and of the weights

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


@dataclass(frozen=True)
class Tile:
    """One register tile of a conv on AMX: ``tiles`` x ``blocks`` accumulators (``tiles``
    output rows, ``ystride`` input rows apart, of ``blocks`` adjacent output blocks) of
    ``rows`` pixels, ``fold`` window columns per tile row (1: one per step, the window loop
    outside), window ``stride`` (columns), ``block`` input channels per block (16, or 4: the
    RGB image).

    ``channels`` (a 1x1 conv): ``fold`` input blocks per tile row instead of window columns,
    read from a pixel-major copy of the activations (each pixel's input blocks adjacent: a
    tile row of ``16 * fold`` bytes, K = 64 for 4 blocks, where the layout gives 16).

    One row (the classifier, a 1x1 conv on one pixel): ``fold`` input blocks per tile row
    instead (they are adjacent in the layout, as a window's columns are, and so are their
    weights), one accumulator."""

    tiles: int
    rows: int
    fold: int
    stride: int
    block: int = 16
    ystride: int = 1
    blocks: int = 1
    channels: bool = False

    def __post_init__(self):
        one = self.rows == 1 and self.accumulators == 1 and self.fold > 1  # no unit axis
        if not (1 <= self.tiles and 1 <= self.blocks and self.accumulators <= MAX_TILES
                and (2 <= self.rows <= MAX_ROWS or one)
                and self.block in (4, 16) and 1 <= self.fold
                and self.block * self.fold <= MAX_BYTES and self.stride >= 1
                and not (self.channels and (self.rows == 1 or self.fold == 1
                                            or self.block != 16))):
            raise ValueError(f"no AMX tile for {self}")

    @property
    def accumulators(self) -> int:
        """Accumulator tiles (registers 0 to this - 1): output rows x output blocks, row
        major."""
        return self.tiles * self.blocks

    @property
    def a_scope(self) -> str:
        """The activations' storage scope: a pixel-major copy is the kernel's own buffer, in a
        scope of its own (``local``) so that TVM's storage planner never lays it over the int32
        buffer the tiles store to (in ``global`` it does, and the tile pointers' types then
        disagree with the buffer's)."""
        return "local" if self.channels else "global"

    @property
    def quads(self) -> int:
        return self.block // 4

    @property
    def span(self) -> int:
        """Input columns an ``A`` tile spans: ``rows`` pixels ``stride`` apart, ``fold``
        columns each."""
        return (self.rows - 1) * self.stride + (1 if self.channels else self.fold)

    def shapes(self):
        """The (A, B, C) buffer shapes of a reduction step (no loop of extent 1: tensorize
        matches loops, and the schedule leaves none; ``B`` keeps its quads axis)."""
        many = (self.tiles,) if self.tiles > 1 else ()
        if self.rows == 1:  # the input blocks' axis is the layout's, the pixel's (1, 1) after it
            return ((self.fold, 1, 1, self.block), (self.fold, 1, 1, self.quads, LANES, 4),
                    (LANES,))
        a = ((((self.tiles - 1) * self.ystride + 1),) if self.tiles > 1 else ()) + (
            self.span,) + ((self.fold,) if self.channels else ()) + (self.block,)
        if self.blocks == 1 and not self.channels:
            b = ((self.fold,) if self.fold > 1 else ()) + (self.quads, LANES, 4)
            return a, b, many + (self.rows, LANES)
        # the weights' axes (o i kh kw) of extent 1 between the blocks' and the tile's are in
        # the buffer regions, and the outputs' output row; a 1x1 conv's weights: input blocks
        b = ((self.fold, 1, 1) if self.channels else (1, 1, self.fold)) + (self.quads, LANES, 4)
        if self.blocks == 1:
            return a, b, many + (self.rows, LANES)
        return a, (self.blocks,) + b, (self.blocks, self.tiles, self.rows, LANES)

    def axes(self):
        """The step's loops, outermost first: ``(names, extents, kinds)``."""
        names = ((["s"] if self.blocks > 1 else []) + (["t"] if self.tiles > 1 else [])
                 + (["m"] if self.rows > 1 else []) + ["n"] + (["x"] if self.fold > 1 else [])
                 + (["q"] if self.quads > 1 else []) + ["k"])
        size = dict(s=self.blocks, t=self.tiles, m=self.rows, n=LANES, x=self.fold,
                    q=self.quads, k=4)
        return names, [size[a] for a in names], "".join("S" if a in "stmn" else "R"
                                                        for a in names)

    def name(self) -> str:
        return (f"t{self.tiles}_m{self.rows}_x{self.fold}_s{self.stride}"
                + ("" if self.block == 16 else f"_b{self.block}")
                + ("" if self.tiles == 1 or self.ystride == 1 else f"_y{self.ystride}")
                + ("" if self.blocks == 1 else f"_o{self.blocks}")
                + ("_c" if self.channels else ""))


def _index(tile: Tile, vs):
    """``(A, B, C)`` indices of one MAC of the step at loop values ``vs``: ``C[s, t, m, n] +=
    A[t * ystride, m * stride + x, 4 q + k] * B[s, x, q, n, k]``."""
    names, _, _ = tile.axes()
    v = dict(zip(names, vs))
    x, q, t, s = v.get("x", 0), v.get("q", 0), v.get("t"), v.get("s")
    if tile.rows == 1:  # A[x, 0, 0, 4 q + k] * B[x, 0, 0, q, n, k]: x an input block
        return (x, 0, 0, q * 4 + v["k"]), (x, 0, 0, q, v["n"], v["k"]), (v["n"],)
    if tile.channels:  # A[t * ystride, m * stride, x, 4 q + k] * B[s, x, 0, 0, q, n, k]
        a, b = (v["m"] * tile.stride, x, q * 4 + v["k"]), (x, 0, 0, q, v["n"], v["k"])
    else:  # B[[s, 0, 0,] [x,] q, n, k]: the window column's axis where it has a loop or blocks
        a, b = (v["m"] * tile.stride + x, q * 4 + v["k"]), (q, v["n"], v["k"])
        if s is not None:
            b = (0, 0, x) + b
        elif tile.fold > 1:
            b = (x,) + b
    c = (v["m"], v["n"])
    if t is not None:
        a, c = (t * tile.ystride,) + a, (t,) + c
    if s is not None:  # the weights' and outputs' axes of extent 1 too (Tile.shapes)
        return a, (s,) + b, ((s, 0) + c if t is None else (s,) + c)
    return a, b, c


def _axes(ax) -> list:
    """The loop variables of ``T.grid(...)`` as a list (one extent: a single variable)."""
    return [ax] if isinstance(ax, tir.Var) else list(ax)


def _full(shape):
    return tuple(slice(0, d) for d in shape)


def _loops(shape):
    """The extents of a buffer's axes that get a loop (an axis of extent 1 has none)."""
    return [d for d in shape if d > 1]


def _at(shape, vs):
    """The index into a buffer of ``shape`` at the loop values ``vs`` (of :func:`_loops`)."""
    vs = iter(_axes(vs))
    return tuple(next(vs) if d > 1 else 0 for d in shape)


def _strides(prefix, shape):
    """Symbolic strides: a step's buffers are windows of the kernel's (the rows of a tile's
    accumulators are an output row apart, its activation rows an input row apart)."""
    return [tir.Var(f"{prefix}{i}", "int32") for i in range(len(shape))]


def _iid(name):
    return T.llvm_lookup_intrinsic_id(name)


# ----------------------------------------------------------------------------- zero
def _zero_desc(tile: Tile):
    _, _, c_shape = tile.shapes()
    kinds = "S" * len(_loops(c_shape))

    @T.prim_func(s_tir=True)
    def desc(C: T.Buffer(c_shape, "int32", offset_factor=1)) -> None:
        with T.sblock("root"):
            T.reads()
            T.writes(C[_full(c_shape)])
            for ax in T.grid(*_loops(c_shape)):
                with T.sblock("zero"):
                    vs = T.meta_var(T.axis.remap(kinds, _axes(ax)))
                    C[_at(c_shape, vs)] = 0

    return desc


def _zero_loops(tile: Tile):
    _, _, c_shape = tile.shapes()
    sc = _strides("sc", c_shape)

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        C = T.match_buffer(c, c_shape, "int32", offset_factor=1, strides=sc)
        with T.sblock("root"):
            T.reads()
            T.writes(C[_full(c_shape)])
            for ax in T.grid(*_loops(c_shape)):
                C[_at(c_shape, ax)] = 0

    return impl


def config_bytes(tile: Tile) -> bytes:
    """The tile configuration (64 bytes): palette 1; bytes ``16 + 2 r``: register ``r``'s row
    bytes, byte ``48 + r``: its rows."""
    cfg = bytearray(64)
    cfg[0] = 1
    regs = [(r, tile.rows, 4 * LANES) for r in range(tile.accumulators)]
    regs += [(r, tile.rows, tile.block * tile.fold) for r in _A_REGS]
    regs += [(r, tile.quads * tile.fold, 4 * LANES) for r in _B_REGS]
    for r, nrows, nbytes in regs:
        cfg[16 + 2 * r] = nbytes
        cfg[48 + r] = nrows
    return bytes(cfg)


# the 32-bit words of a configuration that can be nonzero: palette, row bytes, rows
CONFIG_WORDS = (0, 4, 5, 6, 7, 12, 13)


def _zero_tiles(tile: Tile):
    """Zero the accumulators, after loading the tile configuration if the one in force
    differs.

    ``ldtilecfg`` costs about 70 ns (measured on a Sapphire Rapids-class Xeon: more than a
    1x1 conv's whole tile), ``sttilecfg`` and a few compares next to nothing; so every tile
    reads the configuration in force and loads its own only where it differs (a thread's first
    tile of a kernel, or after another kernel's).  The tiles stay configured after the kernel
    (no ``tilerelease``: the next kernel's first tile would pay the reload)."""
    _, _, c_shape = tile.shapes()
    sc = _strides("sc", c_shape)
    cfg = config_bytes(tile)
    w = [int.from_bytes(cfg[4 * i:4 * i + 4], "little", signed=True) for i in CONFIG_WORDS]
    i0, i1, i2, i3, i4, i5, i6 = CONFIG_WORDS
    n = tile.accumulators

    @T.prim_func(s_tir=True)
    def impl(c: T.handle) -> None:
        C = T.match_buffer(c, c_shape, "int32", offset_factor=1, strides=sc)
        with T.sblock("root"):
            T.reads()
            T.writes(C[_full(c_shape)])
            now = T.alloc_buffer((16,), "int32")
            want = T.alloc_buffer((16,), "int32")
            T.evaluate(T.call_llvm_intrin(_iid("llvm.x86.sttilecfg"), now.access_ptr("w"),
                                          dtype="int32"))
            if (now[i0] != w[0] or now[i1] != w[1] or now[i2] != w[2] or now[i3] != w[3]
                    or now[i4] != w[4] or now[i5] != w[5] or now[i6] != w[6]):
                for i in T.serial(16):
                    want[i] = 0
                want[i0] = w[0]
                want[i1] = w[1]
                want[i2] = w[2]
                want[i3] = w[3]
                want[i4] = w[4]
                want[i5] = w[5]
                want[i6] = w[6]
                T.evaluate(T.call_llvm_intrin(_iid("llvm.x86.ldtilecfg"), want.access_ptr("r"),
                                              dtype="int32"))
            for r in T.unroll(n):
                T.evaluate(T.call_llvm_intrin(_iid("llvm.x86.tilezero"), T.Cast("int8", r),
                                              dtype="int32"))

    return impl


# ----------------------------------------------------------------------------- dot
def _dot_desc(tile: Tile):
    a_shape, b_shape, c_shape = tile.shapes()
    _, extents, kinds = tile.axes()

    @T.prim_func(s_tir=True)
    def desc(
        A: T.Buffer(a_shape, "uint8", offset_factor=1, scope=tile.a_scope),
        B: T.Buffer(b_shape, "int8", offset_factor=1),
        C: T.Buffer(c_shape, "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[_full(c_shape)], A[_full(a_shape)], B[_full(b_shape)])
            T.writes(C[_full(c_shape)])
            for ax in T.grid(*extents):
                with T.sblock("update"):
                    vs = T.meta_var(T.axis.remap(kinds, _axes(ax)))
                    ia, ib, ic = T.meta_var(_index(tile, vs))
                    C[ic] = C[ic] + T.cast(A[ia], "int32") * T.cast(B[ib], "int32")

    return desc


def _dot_loops(tile: Tile):
    a_shape, b_shape, c_shape = tile.shapes()
    _, extents, _ = tile.axes()
    sa, sb, sc = _strides("sa", a_shape), _strides("sb", b_shape), _strides("sc", c_shape)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, a_shape, "uint8", offset_factor=1, strides=sa,
                           scope=tile.a_scope)
        B = T.match_buffer(b, b_shape, "int8", offset_factor=1, strides=sb)
        C = T.match_buffer(c, c_shape, "int32", offset_factor=1, strides=sc)
        with T.sblock("root"):
            T.reads(C[_full(c_shape)], A[_full(a_shape)], B[_full(b_shape)])
            T.writes(C[_full(c_shape)])
            for ax in T.grid(*extents):
                ia, ib, ic = T.meta_var(_index(tile, ax))
                C[ic] = C[ic] + T.cast(A[ia], "int32") * T.cast(B[ib], "int32")

    return impl


def _load(reg, ptr, stride_bytes):
    """``tileloadd`` tile register ``reg`` from ``ptr`` (rows ``stride_bytes`` apart)."""
    return T.call_llvm_intrin(_iid("llvm.x86.tileloadd64"), T.Cast("int8", reg), ptr,
                              T.Cast("int64", stride_bytes), dtype="int32")


def _tdpbusd(acc, a, b):
    return T.call_llvm_intrin(_iid("llvm.x86.tdpbusd"), T.Cast("int8", acc), T.Cast("int8", a),
                              T.Cast("int8", b), dtype="int32")


def _dot_tiles(tile: Tile):
    """One reduction step: ``tileloadd`` each output block's weights (rows of 64 bytes) and
    each output row's activations (rows ``block * stride`` bytes apart; in a pixel-major copy,
    ``stride`` of its pixels), once each, and a
    ``tdpbusd`` per accumulator (row ``t``, block ``s``: register ``t * blocks + s``).  Up to
    two output blocks: their weights first, in registers 6 and 7, then row by row its
    activations (4 and 5 in turn) and its multiplies.  More (one output row): its activations,
    then block by block its weights (6 and 7 in turn) and its multiply."""
    a_shape, b_shape, c_shape = tile.shapes()
    sa, sb, sc = _strides("sa", a_shape), _strides("sb", b_shape), _strides("sc", c_shape)
    n, many, ystride = tile.tiles, tile.tiles > 1, tile.ystride
    blocks, wide = tile.blocks, tile.blocks > 1
    first = blocks <= len(_B_REGS)  # every block's weights in a register of its own, first
    assert first or n == 1, tile  # (MAX_TILES accumulators)
    a0, a1 = _A_REGS
    b0, b1 = _B_REGS
    channels, stride = tile.channels, tile.stride
    row_bytes = tile.block * stride  # (a pixel-major copy: its pixels' stride instead)

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, a_shape, "uint8", offset_factor=1, strides=sa,
                           scope=tile.a_scope)
        B = T.match_buffer(b, b_shape, "int8", offset_factor=1, strides=sb)
        C = T.match_buffer(c, c_shape, "int32", offset_factor=1, strides=sc)
        with T.sblock("root"):
            T.reads(C[_full(c_shape)], A[_full(a_shape)], B[_full(b_shape)])
            T.writes(C[_full(c_shape)])
            if first:
                for s in T.unroll(blocks):
                    T.evaluate(_load(b0 + s * (b1 - b0),
                                     B.access_ptr("r", offset=s * B.strides[0] if wide else 0),
                                     4 * LANES))
            for r in T.unroll(n):
                T.evaluate(_load(a0 + r % 2 * (a1 - a0),
                                 A.access_ptr("r", offset=r * ystride * A.strides[0]
                                              if many else 0),
                                 A.strides[-3] * stride if channels else row_bytes))
                for s in T.unroll(blocks):
                    if not first:
                        T.evaluate(_load(b0 + s % 2 * (b1 - b0),
                                         B.access_ptr("r", offset=s * B.strides[0]), 4 * LANES))
                    T.evaluate(_tdpbusd(r * blocks + s, a0 + r % 2 * (a1 - a0),
                                        b0 + s % 2 * (b1 - b0)))

    return impl


# ----------------------------------------------------------------------------- store
def _store_desc(tile: Tile):
    _, _, c_shape = tile.shapes()
    kinds = "S" * len(_loops(c_shape))

    @T.prim_func(s_tir=True)
    def desc(
        C: T.Buffer(c_shape, "int32", offset_factor=1),
        D: T.Buffer(c_shape, "int32", offset_factor=1),
    ) -> None:
        with T.sblock("root"):
            T.reads(C[_full(c_shape)])
            T.writes(D[_full(c_shape)])
            for ax in T.grid(*_loops(c_shape)):
                with T.sblock("store"):
                    vs = T.meta_var(T.axis.remap(kinds, _axes(ax)))
                    D[_at(c_shape, vs)] = C[_at(c_shape, vs)]

    return desc


def _store_loops(tile: Tile):
    _, _, c_shape = tile.shapes()
    sc, sd = _strides("sc", c_shape), _strides("sd", c_shape)

    @T.prim_func(s_tir=True)
    def impl(c: T.handle, d: T.handle) -> None:
        C = T.match_buffer(c, c_shape, "int32", offset_factor=1, strides=sc)
        D = T.match_buffer(d, c_shape, "int32", offset_factor=1, strides=sd)
        with T.sblock("root"):
            T.reads(C[_full(c_shape)])
            T.writes(D[_full(c_shape)])
            for ax in T.grid(*_loops(c_shape)):
                D[_at(c_shape, ax)] = C[_at(c_shape, ax)]

    return impl


def _row_bytes(D, axis):
    """Bytes between the rows of an int32 tile stored to ``D`` (its pixels' ``axis``)."""
    return D.strides[axis] * 4 if axis >= 0 else 4 * LANES


def _store_tiles(tile: Tile):
    """``tilestored`` each accumulator into ``D`` (its rows one output pixel apart)."""
    _, _, c_shape = tile.shapes()
    sc, sd = _strides("sc", c_shape), _strides("sd", c_shape)
    n, many = tile.tiles, tile.tiles > 1
    blocks, wide = tile.blocks, tile.blocks > 1
    rows_axis = 1 if wide else 0  # D's axis of the output rows (after the blocks')
    pixels = len(c_shape) - 2  # D's axis of the rows (none for one row: any stride will do)

    @T.prim_func(s_tir=True)
    def impl(c: T.handle, d: T.handle) -> None:
        C = T.match_buffer(c, c_shape, "int32", offset_factor=1, strides=sc)
        D = T.match_buffer(d, c_shape, "int32", offset_factor=1, strides=sd)
        with T.sblock("root"):
            T.reads(C[_full(c_shape)])
            T.writes(D[_full(c_shape)])
            for r in T.unroll(n):
                for s in T.unroll(blocks):
                    T.evaluate(T.call_llvm_intrin(
                        _iid("llvm.x86.tilestored64"), T.Cast("int8", r * blocks + s),
                        D.access_ptr("w", offset=(r * D.strides[rows_axis] if many else 0)
                                     + (s * D.strides[0] if wide else 0)),
                        T.Cast("int64", _row_bytes(D, pixels)), dtype="int32"))

    return impl


_registered: set = set()


def _register(name, desc, impl) -> str:
    if name not in _registered:
        TensorIntrin.register(name, desc, impl, override=True)
        _registered.add(name)
    return name


def intrinsics(tile: Tile) -> tuple[str, str, str]:
    """The (zero, dot, store) intrinsics of ``tile``: the AMX instructions, or their
    descriptions inside :func:`described`.  Registered on first use."""
    real = not is_described()
    kind = "f8tvm_amx" if real else "f8tvm_amx_described"
    key = tile.name()
    zero = _register(f"{kind}_zero_{key}", _zero_desc(tile),
                     _zero_tiles(tile) if real else _zero_loops(tile))
    dot = _register(f"{kind}_dot_{key}", _dot_desc(tile),
                    _dot_tiles(tile) if real else _dot_loops(tile))
    store = _register(f"{kind}_store_{key}", _store_desc(tile),
                      _store_tiles(tile) if real else _store_loops(tile))
    return zero, dot, store
