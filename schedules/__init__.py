"""How kernels run fast: packed layouts' dot-product intrinsics and the schedules that use them.

Nothing here changes what a kernel computes (that is ``relay_passes``); a schedule only reorders,
tiles, vectorizes and tensorizes.  :func:`schedules.tuning.apply_database` gives every PrimFunc
of a fused module its schedule: a tuned record from a MetaSchedule database when there is one,
else :func:`default_schedule`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from f8tvm.core._tvm import schedule_of
from f8tvm.passes.packed_kernels import CONV_BLOCK, DEPTHWISE_BLOCK
from f8tvm.targets import DotSpec

from . import _sch, cpu
from . import intrin_arm as a
from . import intrin_x86 as x
from ._sch import operand_dtypes


@dataclass(frozen=True)
class DotIntrin:
    """A dot-product instruction as a tensor intrinsic: ``C[i] += sum_k A[k] * B[i, k]``."""

    instruction: str  # the machine instruction it lowers to (checked in the asm by tests)
    intrin: str | None  # registered TensorIntrin name for uint8 activations (None: no such form)
    block: tuple  # (lanes, depth): the block its intrinsics are written for
    accumulators: int  # vector registers available for the register tile
    intrin_signed: str | None = None  # for int8 activations, if the instruction has one
    a_cost: float = 1.0  # instructions to broadcast one activation group (shared by oc tiles)
    b_cost: float = 1.0  # instructions to load one weight tile (shared by the pixels of a row)
    # depthwise convs in the tap-pair form (``depthwise_pairs_nchwc``), for uint8 / int8
    # activations; None: the plain form, vectorized over the channel block
    dw_pair: str | None = None
    dw_pair_signed: str | None = None
    # convs whose weights are stored widened to int16 (uint8 / int8 activations); None: the
    # target keeps int8 weights everywhere
    wide_intrin: str | None = None
    wide_intrin_signed: str | None = None
    # convs whose (padded) input is copied widened to int16 first, with int8 / int16 weights;
    # None: activations stay 8-bit
    wide_data_intrin: str | None = None
    wide_data_wide_intrin: str | None = None
    wide_data_a_cost: float = 0.5  # a widened pair is a broadcast load: no ALU instruction
    # depthwise convs on a plane rewritten as its column groups (``depthwise_pairs_nchwc(...,
    # rewrite=True)``): the dot on AVX2's widened pairs (with ``wide_data``), and the intrinsic
    # that makes the groups (uint8 / int8 input: AVX2's pairs, AVX-512's quads, sdot's quads)
    dw_pair_wide: str | None = None
    # the dot on rewritten 8-bit groups where the intrinsic above reads them in place
    # (``dw_pair_signed``: sdot's ``tbl`` form; the spec's ``tap_rewrite_wide``), and its
    # register tile: at most this many pixels, the window's rows a loop of its own
    dw_grouped_signed: str | None = None
    dw_grouped_tile: int = 0
    pair_interleave: str | None = None
    pair_interleave_signed: str | None = None
    # the epilogue's int32 -> 8-bit narrowing of 4 pixels x ``lanes`` channels at once:
    # ``((dtype, lo, hi), intrinsic)`` per clamp it implements; none: LLVM narrows each vector
    narrow: tuple = ()
    # the same for 2 pixels (tiles of 2 pixels: the split accumulators')
    narrow_2px: tuple = ()
    # and for 1 pixel (tiles of an odd width: 7 of a 14- or 7-pixel row)
    narrow_1px: tuple = ()
    # the same three with the requantize's right shift by a per-channel constant inside
    # (``dtype(clamp(x >> S, lo, hi))``, ``intrin_arm.NEON_SHIFT_NARROW``); none: the shift
    # stays in the int32 stage
    narrow_shift: tuple = ()
    narrow_shift_2px: tuple = ()
    narrow_shift_1px: tuple = ()
    # and for a whole odd tile at once (``((pixels, forms), ...)``: 3, 5 or 7 pixels), where
    # the shift goes into the narrowing
    narrow_shift_odd: tuple = ()
    # two quads of one channel block per intrinsic, the activations loaded once for both and
    # each quad taken by element (int8 activations); None: one quad per intrinsic
    pair_intrin: str | None = None
    # the same for two adjacent pixels at once (tiles of an even width, stride 1): their
    # activations one 16-byte load; None: a pixel per intrinsic
    pair_intrin_2px: str | None = None
    # the pair form for a window's column pair (``conv2d_nchwc(..., column_pairs=kw)``: the
    # input block is one quad, two adjacent pixels stand for the two quads)
    pair_intrin_columns: str | None = None
    # the pair form into split accumulators (two int32 partial sums per lane, the quads'
    # bytes 0-1 and 2-3: the schedule factors the conv's reduction with ``rfactor``), for a
    # channel block's quads and for a column pair, and the intrinsic that adds each lane's
    # two partial sums after the reduction; None: the pair form sums into 8 lanes every step
    pair_split: str | None = None
    pair_split_columns: str | None = None
    split_sum: str | None = None
    # the split form's default register tile: at most this many accumulators (output blocks x
    # pixels; each holds 16 partial sums); convs whose row has no such tile width (even
    # widths: 2) keep the 8-lane form
    split_tile: int = 0
    # a row with no such width (an odd one: 7 pixels) takes the split form in tiles of one
    # pixel and ``split_odd_blocks`` output blocks when their weights (blocks x 8 x the
    # reduction's bytes) fit in this many bytes, read again for every pixel from L1; 0: it
    # keeps the 8-lane form
    split_odd_bytes: int = 0
    split_odd_blocks: int = 1
    # where they do not fit, the odd row still takes the split form, its reduction in chunks
    # of input blocks whose weights do (``cpu.odd_split_chunk``); False: the 8-lane form
    split_odd_chunks: bool = False
    # convs on block pairs with lane-major weights (``conv2d_nchwc(..., block_pairs=True)``):
    # the intrinsic of 8 lanes x 16 bytes into 4 partial sums per lane, and their final sum
    lanes_intrin: str | None = None
    lanes_sum: str | None = None
    # the same intrinsic for 2 lanes: an odd row of 3 to 7 pixels is then one register tile
    # (``cpu.lanes_row``); None: one pixel a tile there
    lanes_row_intrin: str | None = None
    # registers the pair form's tile may use for accumulators, activations and one weight tile
    pair_registers: int = 0
    # or instead: at most this many accumulators (output blocks x pixels) in the pair form's
    # tile, except a whole short row (at most twice as many pixels, one output block)
    pair_tile: int = 0
    # a weight tile when the register tile spans several output blocks (they are a block's
    # weights apart, too far for one paired load): instructions per tile
    b_cost_far: float | None = None
    # ``((depth, accumulators), ...)``, shallowest first: a reduction at most ``depth`` bytes
    # deep (channels x window taps) takes at most ``accumulators`` (the first that applies);
    # empty: no such limit.  A register tile's epilogue (bias, rounding shift, narrowing)
    # needs registers of its own: with ``accumulators`` of them it spills, which a short
    # reduction does not amortize
    short_tiles: tuple = ()
    # ``(depth, output blocks, pixels)``: a reduction deeper than ``depth`` bytes may take this
    # one register tile beyond its ``short_tiles`` limit (None: none may)
    short_wide: tuple | None = None
    # a one-pixel conv (the classifier) takes at most this many output blocks per tile; 0: no
    # such limit
    dense_blocks: int = 0
    # the bias add in the accumulators' init (``schedules/bias.py``): one add fewer per
    # output vector of the epilogue, but the bias vectors stay live across the reduction
    bias_init: bool = True
    # unroll the window's columns in the conv's loop body (shared pixel loads)
    unroll_window: bool = False
    # a 1x1 conv's loop over its input blocks unrolled whole (the pair form) when there are
    # at most this many of them (and more than 2: LLVM unrolls those itself)
    unroll_blocks: int = 0
    # and its rows (at most 3 of them): one loop step per input block instead of one per
    # window row (ResNet-18's 3x3 convs on sdot: 3.5-6% fewer instructions)
    unroll_rows: bool = False
    # window columns per step of the depthwise tap form (``dw_pair``; the spec's ``tap_group``)
    dw_taps: int = 2
    # the depthwise register tile: at most this many pixels
    dw_tile: int = 8
    # the same for windows of 5 rows or more (0: ``dw_tile``)
    dw_tile_wide: int = 0
    # output rows per depthwise register tile, for windows of at most 3 rows: two rows share
    # two of their three input rows, whose tap groups are then gathered once (sdot: 10
    # instead of 12 ``tbl`` per 32 outputs of a 3x3 window, stride 1; 5x5 windows measured
    # longer, their weights already spill)
    dw_rows: int = 1
    # convs with whole 16-channel input blocks on AMX tiles (``cpu.schedule_conv_amx``); the
    # others (and depthwise convs) take this entry's vector intrinsics
    amx: bool = False
    # the conv's next output tile's weights prefetched while a tile runs (``cpu.prefetch_
    # weights``): a model's weights do not stay in the caches from one run to the next, and a
    # tile reads its weights from memory in its first row of pixels.  Its kernels keep their
    # accumulator tile on the stack (the preset's ``stack_buffer_bytes``): a heap buffer may
    # alias the weights for LLVM, which then stores the accumulators at every prefetch (3x
    # slower, ResNet-18's 28x28 convs at 4x4 tiles)
    prefetch_weights: bool = False
    # the target's spec (find_dot): the layout PackChannelBlocks built for these intrinsics
    spec: DotSpec | None = None

    @property
    def wide_data(self) -> bool:
        return self.spec.wide_data

    @property
    def lanes(self) -> int:
        return self.block[0]

    @property
    def depth(self) -> int:
        return self.block[1]

    @property
    def pair_taps(self) -> bool:
        return self.spec.pair_taps

    def narrow_width(self, pixels: int) -> int | None:
        """The pixels per narrowing intrinsic for a register tile ``pixels`` wide: 4 where it
        divides the tile, else 2 where the target has that form; None: no narrowing intrinsic."""
        if not pixels:
            return None
        if self.narrow and pixels % 4 == 0:
            return 4
        if self.narrow_2px and pixels % 2 == 0:
            return 2
        if self.narrow_1px:
            return 1
        return None

    def narrow_for(self, dtype: str, lo: int, hi: int, pixels: int = 4,
                   shift: bool = False) -> str | None:
        """The narrowing intrinsic of ``pixels`` for a ``dtype(clamp(x, lo, hi))`` epilogue
        (with ``shift``: of ``dtype(clamp(x >> S, lo, hi))``, ``S`` per channel), if there is
        one."""
        if pixels not in (1, 2, 4):
            return dict(dict(self.narrow_shift_odd).get(pixels, ())).get((dtype, lo, hi)) \
                if shift else None
        forms = ({4: self.narrow_shift, 2: self.narrow_shift_2px, 1: self.narrow_shift_1px}
                 if shift else {4: self.narrow, 2: self.narrow_2px, 1: self.narrow_1px})[pixels]
        return dict(forms).get((dtype, lo, hi))

    def intrin_for(self, block, depthwise: bool = False) -> str:
        """The intrinsic matching the activation (and weight) dtypes read by ``block`` (a conv
        block, or with ``depthwise`` a tap-pair depthwise block)."""
        a_dtype, b_dtype = operand_dtypes(block)
        signed = a_dtype == "int8"
        if depthwise:
            name = self.dw_pair_wide if a_dtype == "int16" else (
                self.dw_pair_signed if signed else self.dw_pair)
        elif a_dtype == "int16":
            name = self.wide_data_wide_intrin if b_dtype == "int16" else self.wide_data_intrin
        elif b_dtype == "int16":
            name = self.wide_intrin_signed if signed else self.wide_intrin
        else:
            name = self.intrin_signed if signed else self.intrin
        if name is None:
            kind = "int8" if signed else "uint8"
            raise ValueError(f"{self.instruction} has no form for {kind} activations")
        return name


def _narrow(name: str) -> tuple:
    """``DotIntrin.narrow``'s entries for the narrowing intrinsics registered as ``name`` + a
    clamp's suffix (``intrin_x86.NARROW_FORMS``)."""
    return tuple((form, name + suffix) for form, suffix in x.NARROW_FORMS.items())


def _x86():
    # vpdpbusd takes the broadcast and the weight tile as memory operands; depthwise convs
    # take a channel's 4 window columns per lane, from the plane rewritten as column quads
    # convs at most 1024 bytes deep take 12 accumulators, not 24 (measured on Zen 4, kernels
    # alone: MobileNet-V2's 2.23 -> 2.06 ms, EfficientNet-Lite0's 2.76 -> 2.61; its 24->144
    # expand conv 0.168 -> 0.083 ms; 8 or 16 of them, or a limit of 256 bytes, were slower;
    # ResNet-18's deeper convs lose 1% at 12); those at most 48 bytes deep (the expands of
    # 24-48 channels, the 3x3 stems on RGB) 4, the 16-deep expands 8: every tile of the depthwise
    # nets' convs timed alone on Zen 4, the 32- and 48-deep expands took 0.79-0.88x the time of
    # 12 accumulators' tile at 4 (1x4), the 16-deep 0.89-0.93x at 8 (2x4), the stems 0.97x.
    # The classifier 7 output blocks a tile, not 21 (9 for ResNet-18's): 0.50x the time
    # (0.85x); 3 blocks were as fast as 7.
    # Beyond the 12, a reduction deeper than 48 bytes may take 2 output blocks x 7 pixels (14
    # accumulators): on Zen 5 (two vpdpbusd a cycle, like the Xeons; Zen 4 issues one), each
    # affected conv timed alone against its 12-limit tile, interleaved: ResNet-18's 0.82-0.96x
    # (its 56x56 3x3 convs' 2x4 tiles 0.89x; 1.50 -> 1.35 ms summed), MobileNet-V2's 0.66-0.92x
    # (0.505 -> 0.434 ms; the 6x2 tiles it replaces on 14x14 rows 1.01-1.05x), EfficientNet-
    # Lite0's 0.76-0.92x; the other 14-tiles the limit would admit, 7x2 and 1x14, took
    # 1.06-1.28x
    vnni = DotIntrin("vpdpbusd", x.VNNI_16x4, (16, 4), 24, None, 0.5, 1.0,
                     dw_pair=x.VNNI_DW_16x4, dw_taps=4, pair_interleave=x.VNNI_QUADS,
                     narrow=_narrow(x.AVX512_NARROW),
                     narrow_2px=_narrow(x.AVX512_NARROW_2PX),
                     short_tiles=((16, 8), (48, 4), (1024, 12)), short_wide=(48, 2, 7),
                     dense_blocks=8, prefetch_weights=True)
    return {
        "vpdpbusd": vnni,
        # AMX-INT8: convs on tiles (intrin_amx), on VNNI's layout; the rest on VNNI
        # (its VNNI convs without the prefetch: x86-amx keeps TVM's workspace buffers)
        "tdpbusd": replace(vnni, instruction="tdpbusd", amx=True, prefetch_weights=False),
        # AVX-VNNI: the same dot on ymm registers (16 of them: 12 hold accumulators);
        # depthwise convs take window columns in pairs for AVX2's vpmaddwd, on 8-bit pairs
        "vpdpbusd.ymm": DotIntrin("vpdpbusd", x.AVXVNNI_8x4, (8, 4), 12, None, 0.5, 1.0,
                                  x.AVX2_DW_8x2, x.AVX2_DW_8x2 + "_s8",
                                  narrow=_narrow(x.AVX2_NARROW), prefetch_weights=True),
        # AVX2: vpbroadcastw + vpmovzxbw per 8-bit activation pair (a widened pair: one
        # broadcast load), vpmovsxbw per int8 weight tile
        "vpmaddwd": DotIntrin("vpmaddwd", x.AVX2_8x2, (8, 2), 12, x.AVX2_8x2 + "_s8", 2.0, 1.0,
                              x.AVX2_DW_8x2, x.AVX2_DW_8x2 + "_s8",
                              x.AVX2_8x2_W16, x.AVX2_8x2_W16 + "_s8",
                              wide_data_intrin=x.AVX2_8x2_A16,
                              wide_data_wide_intrin=x.AVX2_8x2_A16W16,
                              dw_pair_wide=x.AVX2_DW_8x2_WIDE,
                              pair_interleave=x.AVX2_PAIRS,
                              pair_interleave_signed=x.AVX2_PAIRS + "_s8",
                              narrow=_narrow(x.AVX2_NARROW)),
    }


def _arm():
    narrow = _narrow(a.NEON_NARROW)
    narrow_2px = _narrow(a.NEON_NARROW_2PX)
    narrow_1px = _narrow(a.NEON_NARROW_1PX)
    shifts = dict(narrow_shift=_narrow(a.NEON_SHIFT_NARROW),
                  narrow_shift_2px=_narrow(a.NEON_SHIFT_NARROW_2PX),
                  narrow_shift_1px=_narrow(a.NEON_SHIFT_NARROW_1PX))
    # sdot's odd tiles narrowed whole (EfficientNet-Lite0: 46.24 -> 45.97 M instructions,
    # MobileNet-V2 36.64 -> 36.46); on `arm` its depthwise kernels' 7-pixel tiles spilled
    # (EfficientNet-Lite0 111.23 -> 113.95 M)
    odd = tuple((p, _narrow(f"{a.NEON_SHIFT_NARROW}_{p}px")) for p in a.SHIFT_NARROW_ODD)
    return {
        # int8 activations only (ARM presets offset unsigned ones); 8 lanes = 2 NEON registers,
        # so 12 register tiles of the 32 vector registers hold accumulators
        # the pair form: one 8-byte load per pixel and channel block, sdot by element; 30 of
        # the 32 registers for the tile (LLVM keeps two for addresses of spills' sake)
        "sdot": DotIntrin("sdot", None, (8, 4), 12, a.SDOT_8x4, 1.0, 1.0,
                          dw_pair_signed=a.SDOT_DW_8x4, dw_taps=4, dw_tile=2, dw_tile_wide=4,
                          dw_rows=2, dw_grouped_signed=a.SDOT_DW_QUADS, dw_grouped_tile=7,
                          pair_interleave_signed=a.SDOT_QUADS,
                          pair_intrin=a.SDOT_8x8_LANE, pair_intrin_2px=a.SDOT_8x8_LANE_2PX,
                          pair_intrin_columns=a.SDOT_8x8_LANE + a.COLUMNS,
                          pair_registers=30, b_cost_far=2.0, unroll_window=True, unroll_rows=True,
                          unroll_blocks=6,
                          narrow=narrow, narrow_2px=narrow_2px, narrow_1px=narrow_1px,
                          narrow_shift_odd=odd, **shifts),
        # smull + saddlp + addp: temporaries need registers too.  Odd rows (7 pixels) of
        # convs whose weights are small (at most 16 KiB for two output blocks: the 1x1 convs
        # of MobileNet-V2 and EfficientNet-Lite0, not ResNet-18's 3x3) take the split form
        # one pixel at a time: MobileNet-V2 108.8 -> 107.8 M instructions.  The pair form (smull +
        # smlal, two quads per int16 product) keeps its products' temporaries live across
        # the tile: 4 accumulators at most (measured on ResNet-18: 1x4 beats 2x4 and 1x8 by
        # 7-8%, a whole 7-pixel row beats 1 pixel by 10%); a far block's weight tile is
        # eight 8-byte loads instead of four paired ones.  Depthwise convs: tap pairs (sdot:
        # tap quads).  No bias in the accumulators' init: the convs that could take it (the
        # split form's cannot) got longer with it, the bias vectors live across the tile
        # (emulated counts: MobileNet-V2 115.1 -> 115.3 M, ResNet-18's 7-pixel convs +2%)
        "smull": DotIntrin("smull", None, (8, 4), 8, a.NEON_8x4, 1.0, 2.0,
                           dw_pair_signed=a.NEON_DW_8x2, pair_intrin=a.NEON_8x8,
                           pair_intrin_columns=a.NEON_8x8 + a.COLUMNS,
                           pair_split=a.NEON_8x8_SPLIT,
                           pair_split_columns=a.NEON_8x8_SPLIT + a.COLUMNS,
                           split_sum=a.NEON_SPLIT_SUM, split_tile=2, pair_tile=4,
                           split_odd_bytes=16384, split_odd_blocks=2, split_odd_chunks=True,
                           b_cost_far=4.0, narrow=narrow, narrow_2px=narrow_2px,
                           narrow_1px=narrow_1px, bias_init=False,
                           lanes_intrin=a.NEON_8x16_LANES, lanes_sum=a.NEON_LANES_SUM,
                           lanes_row_intrin=a.NEON_2x16_LANES, **shifts),
    }


def _table() -> dict:
    return {**_x86(), **_arm()}


def find_dot(spec: DotSpec | None) -> DotIntrin | None:
    """The tensor intrinsics of a target's dot instruction (its preset's ``dot``), checked
    against the layout the spec asks for; None for a target without one (generic layout and
    schedules)."""
    if spec is None:
        return None
    table = _table()
    if spec.instruction not in table:
        raise ValueError(f"no tensor intrinsic for {spec.instruction!r}; known: "
                         f"{', '.join(table)}")
    dot = table[spec.instruction]
    checks = ((f"a {dot.lanes}x{dot.depth} block", (spec.lanes, spec.depth) != dot.block, False),
              ("tap pairs", spec.pair_taps, (dot.dw_pair or dot.dw_pair_signed) is not None),
              (f"depthwise taps in groups of {spec.tap_group}", spec.pair_taps,
               spec.tap_group == dot.dw_taps),
              ("int16 weights", spec.wide_weights, dot.wide_intrin is not None),
              ("int16 activations", spec.wide_data, dot.wide_data_intrin is not None),
              ("column pairs", spec.column_pairs, dot.pair_intrin_columns is not None),
              ("rewritten tap groups", spec.tap_rewrite_wide > 0,
               dot.dw_grouped_signed is not None))
    missing = [form for form, wanted, have in checks if wanted and not have]
    if missing:
        raise ValueError(f"{spec.instruction}: the spec {spec} asks for forms its intrinsics "
                         f"do not have ({', '.join(missing)})")
    return replace(dot, spec=spec)


def dot_intrin(spec: DotSpec) -> DotIntrin:
    """:func:`find_dot` for a target that has a dot instruction."""
    if spec is None:
        raise ValueError("this target has no dot instruction")
    return find_dot(spec)


def kernel_sblock(sch):
    """``(kind, block RV)`` of the packed kernel block in ``sch``'s PrimFunc: kind 'conv' or
    'depthwise', or ``('other', None)``."""
    for name, kind in ((CONV_BLOCK, "conv"), (DEPTHWISE_BLOCK, "depthwise")):
        try:
            return kind, sch.get_sblock(name)
        except Exception:  # no such block in this kernel
            continue
    return "other", None


def kernel_block(prim_func):
    """``(kind, block)`` of the packed kernel block a fused PrimFunc holds (see
    :func:`kernel_sblock`)."""
    sch = schedule_of(prim_func)
    kind, rv = kernel_sblock(sch)
    return kind, (sch.get(rv) if rv is not None else None)


def kernel_kind(prim_func) -> str:
    """'conv', 'depthwise' or 'other' (see :func:`kernel_block`)."""
    return kernel_block(prim_func)[0]


def default_schedule(prim_func, dot: DotIntrin | None, tiles=None):
    """Our schedule of one fused PrimFunc (``tiles``: tuned split decisions, else defaults)."""
    kind = kernel_kind(prim_func)
    sch = schedule_of(prim_func)
    if kind == "conv" and dot is not None:
        cpu.schedule_conv(sch, dot, tiles=tiles)
        return cpu.prefetch_weights(sch.mod["main"]).with_attr("tirx.is_scheduled", True)
    elif kind == "depthwise":
        cpu.schedule_depthwise(sch, dot, tiles=tiles)
    elif not _sch.schedule_requantize(sch, dot):
        _sch.schedule_injective(sch)
    return sch.mod["main"].with_attr("tirx.is_scheduled", True)

