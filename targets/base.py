"""The preset record shared by all target families."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from f8tvm.core.errors import ToolchainError


@dataclass(frozen=True)
class DotSpec:
    """What a dot-product instruction wants the program to look like: the channel-blocked
    layout PackChannelBlocks builds for it (the schedules' intrinsics then fill it in)."""

    lanes: int  # output channels per block (the instruction's output lanes)
    depth: int  # input channels reduced per lane per instruction
    unsigned_only: bool = False  # uint8 activations only: int8 ones are offset by +128
    pair_taps: bool = False  # depthwise convs in the tap-pair form
    wide_weights: bool = False  # int16 weights where they pay
    wide_data: bool = False  # conv inputs copied widened to int16


@dataclass(frozen=True)
class TargetPreset:
    name: str
    tvm_target: dict  # TVM 0.27 JSON-dict target
    cross_compiler: str | None  # executable name, None = host compiler
    dot_instruction: str | None  # e.g. 'vpdpbusd', 'sdot'
    isa: str  # the instruction set of that dot product, as reports name it: 'AVX-512 VNNI'
    description: str = ""
    compiler_package: str | None = None  # Debian package that provides cross_compiler
    # dtype of the 8-bit activations fed to conv/dense.  x86 VNNI multiplies u8 x s8, so F8Net's
    # unsigned activations go in as they are; ARM's sdot (and smull) want s8 x s8, so on ARM the
    # compiler offsets them into int8 (relay_passes/offset_activations.py).
    activation_dtype: str = "uint8"
    # Linux /proc/cpuinfo flags the generated code needs; the runtime checks them when it loads
    # a module on this machine (instead of dying on an illegal instruction)
    cpu_flags: tuple = ()

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
