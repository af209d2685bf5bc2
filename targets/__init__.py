"""Target presets: where a build runs.  One file per family; ``TARGETS`` is the registry.

Each preset names its TVM target (a JSON dict, TVM 0.27 style), the cross compiler used to link
the ``.so`` (None = the host's) and the dot-product instruction it relies on (whose packed
layout :class:`DotSpec` describes); a microcontroller preset (``targets/mcu.py``) builds C
sources instead (:class:`McuSpec`).
"""

from __future__ import annotations

from f8tvm.core.errors import InputError

from .arm import PRESETS as _ARM
from .base import DotSpec, McuSpec, TargetPreset
from .cpu import CPUInfo, read_cpuinfo
from .mcu import PRESETS as _MCU
from .x86 import PRESETS as _X86

TARGETS: dict[str, TargetPreset] = {p.name: p for p in [*_X86, *_ARM, *_MCU]}


def host_target_name() -> str:
    """The x86 preset that matches this CPU: ``x86-amx`` with AMX-INT8 (and AVX-512 VNNI),
    ``x86-avx512`` with AVX-512 VNNI, ``x86-avxvnni`` with AVX-VNNI (and no AVX-512), else
    ``x86``."""
    cpu = read_cpuinfo()
    flags = cpu.flags if cpu else frozenset()
    if set(TARGETS["x86-amx"].cpu_flags) <= flags:
        return "x86-amx"
    if "avx512_vnni" in flags:
        return "x86-avx512"
    return "x86-avxvnni" if "avx_vnni" in flags else "x86"


def get_target(name: str) -> TargetPreset:
    if name == "host":
        name = host_target_name()
    if name not in TARGETS:
        raise InputError(f"unknown target {name!r}; available: host, {', '.join(TARGETS)}")
    return TARGETS[name]


__all__ = ["TARGETS", "CPUInfo", "DotSpec", "McuSpec", "TargetPreset", "get_target",
           "host_target_name", "read_cpuinfo"]
