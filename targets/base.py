"""The preset record shared by all target families."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from f8tvm.core.errors import ToolchainError


@dataclass(frozen=True)
class DotSpec:
    """A target's dot-product instruction and the program it wants: the channel-blocked layout
    PackChannelBlocks builds for it (the schedules' intrinsics then fill it in)."""

    instruction: str  # e.g. 'vpdpbusd', 'sdot' (the schedules' intrinsic table is keyed by it)
    lanes: int  # output channels per block (the instruction's output lanes)
    depth: int  # input channels reduced per lane per instruction
    pair_taps: bool = False  # depthwise convs in the tap-pair form
    # window columns per step of that form: 2 (a 2-deep dot: vpmaddwd, smull + smlal) or 4
    # (a 4-deep dot over one channel's taps: sdot, vpdpbusd)
    tap_group: int = 2
    # the depthwise conv's padded plane rewritten once as its tap groups (each group of a
    # channel block one load for the dot), instead of regrouped at every use
    tap_rewrite: bool = False
    # stride-1 depthwise convs on maps of an even width take output pixels in pairs that read
    # the same tap groups, each pixel with its own copy of the weights shifted by its column
    # parity (``depthwise_pairs_nchwc`` with a parity kernel): a group is regrouped once for
    # two pixels
    tap_parity: bool = False
    # windows of 5 columns or more take the rewritten tap groups instead (their weights, 20
    # vectors for 8 channels, then stay in registers; the parity form's two copies spill),
    # except stride-1 convs on rows wider than this many pixels, where rewriting the plane
    # costs more than the spills (0: no such windows)
    tap_rewrite_wide: int = 0
    # a conv's bias (folded into its accumulators' init) repeated along the output row, so the
    # init is a paired load per two vectors rather than a register copy per vector
    # (``relay_passes/bias_rows.py``)
    bias_rows: bool = False
    wide_weights: bool = False  # int16 weights where they pay
    wide_data: bool = False  # conv inputs copied widened to int16
    # convs on an input of one quad per channel block (the RGB image) take the window's
    # columns in pairs (``conv2d_nchwc(..., column_pairs=kw)``), for a two-quad pair intrinsic
    column_pairs: bool = False
    # the smallest weight its kernels take exactly: NEON's pair form adds two products in
    # int16 (``smull`` + ``smlal``), exact for weights in [-127, 127] (F8Net's, whose
    # fixed-point grid never uses -128) times activations in [-128, 127]
    weight_min: int = -128
    # convs on an even number of input blocks read a copy of their (padded) input made of
    # block pairs (two blocks' channels in 16 bytes) with lane-major weights: one 16-byte load
    # of a pixel is both halves of a ``smull`` + ``smlal2`` pair per output lane
    # (``conv2d_nchwc(..., block_pairs=True)``)
    block_pairs: bool = False
    # a conv of an NCHW image with fewer channels than ``depth`` (the RGB image) reads it as a
    # byte stream: a window row's pixels, all their channels, ``depth`` bytes a step
    # (``conv2d_stream``), instead of the image padded with zero channels to ``depth``
    pixel_stream: bool = False


@dataclass(frozen=True)
class McuSpec:
    """A bare-metal microcontroller target: no operating system, no TVM runtime.  The build is
    C sources (plain C-ABI kernels, a generated ``model.c`` over one static arena, the weights as
    ``const`` arrays) for the cross compiler ``cflags`` name; ``products`` says how the 8-bit x
    8-bit products are computed: ``"multiply"`` (the core's 32-bit multiply on 8-bit operands)
    or ``"table"`` (exact quarter squares from a table: for cores without any multiplier)."""

    cflags: tuple  # the cross compiler's architecture flags
    products: str  # "multiply" or "table"
    # the emulator that runs a build (f8tvm.mcu): "qemu-riscv32" (user mode) or "unicorn-thumb"
    emulator: str
    # QEMU's -cpu for it (RV32I: the M extension off, so a multiply instruction traps)
    qemu_cpu: str | None = None
    # what the products may not call: library multiplies (checked in the linked image)
    forbidden_symbols: tuple = ("__mulsi3", "__muldi3", "__aeabi_lmul")


PRODUCTS = ("multiply", "table")


# the 8-bit activations a target's multiplies take (TargetPreset.activations)
ACTIVATIONS = ("uint8", "int8", "any")


@dataclass(frozen=True)
class TargetPreset:
    name: str
    tvm_target: dict  # TVM 0.27 JSON-dict target
    cross_compiler: str | None  # executable name, None = host compiler
    dot: DotSpec | None  # its dot-product instruction; None: generic layout and loops
    isa: str  # the instruction set of that dot product, as reports name it: 'AVX-512 VNNI'
    description: str = ""
    compiler_package: str | None = None  # Debian package that provides cross_compiler
    # The 8-bit activations its multiplies take, the one fact both offsets follow (both exact):
    # 'uint8' (x86 VNNI: u8 x s8): int8 ones are offset by +128 when packed
    # (relay_passes/pack_channel_blocks.py); 'int8' (ARM sdot, smull: s8 x s8): F8Net's unsigned
    # ones are offset by -128 (relay_passes/offset_activations.py); 'any' (AVX2 vpmaddwd).
    activations: str = "uint8"
    # Linux /proc/cpuinfo flags the generated code needs; the runtime checks them when it loads
    # a module on this machine (instead of dying on an illegal instruction)
    cpu_flags: tuple = ()
    # the ties-to-even shift's parity bit read by a vector bit test (relay_passes/
    # parity_by_test.py): AArch64's cmtst makes it one instruction shorter; on x86 it is not
    parity_test: bool = False
    # a microcontroller: C sources over a static arena instead of a .so (f8tvm.mcu)
    mcu: McuSpec | None = None
    # kernel scratch buffers (a depthwise task's padded plane) up to this many bytes go on the
    # stack instead of through the runtime's workspace calls (f8tvm.core._tvm.stack_buffers);
    # 0: TVM's own rule (under 1 KiB)
    stack_buffer_bytes: int = 0

    def __post_init__(self):
        if self.activations not in ACTIVATIONS:
            raise ValueError(f"target {self.name}: activations {self.activations!r} is not one "
                             f"of {', '.join(ACTIVATIONS)}")
        if self.mcu is not None and self.mcu.products not in PRODUCTS:
            raise ValueError(f"target {self.name}: products {self.mcu.products!r} is not one of "
                             f"{', '.join(PRODUCTS)}")

    @property
    def dot_instruction(self) -> str | None:
        return self.dot.instruction if self.dot is not None else None

    def tvm(self):
        from f8tvm.core import _tvm  # lazy: the runtime reads presets without the TVM compiler

        return _tvm.make_target(self.tvm_target)

    def check_toolchain(self) -> None:
        """Raise :class:`f8tvm.core.errors.ToolchainError` if the cross compiler is not installed.

        Called before a build starts, so a missing compiler costs seconds, not a whole build.
        """
        if self.cross_compiler and shutil.which(self.cross_compiler) is None:
            pkg = self.compiler_package or "the package that provides it"
            raise ToolchainError(
                f"target {self.name!r} links with the cross compiler {self.cross_compiler!r}, "
                f"which is not on PATH; install it with: apt-get install {pkg}")
