"""What this machine's CPU is: its model name and Linux feature flags, read once from
``/proc/cpuinfo`` (the one place the file is parsed)."""

from __future__ import annotations

import platform
from dataclasses import dataclass

# The flags that decide which int8 dot instruction a CPU has, in the order the bench and the
# README print them.
INT8_FLAGS = ("avx2", "avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CPUInfo:
    model: str  # "Intel(R) Xeon(R) ...", or the machine name where cpuinfo gives none
    flags: frozenset  # empty on a non-x86 machine (its cpuinfo has no "flags" line)
    cores: int  # logical processors listed

    def int8_flags(self) -> dict:
        """``{flag: bool}`` for :data:`INT8_FLAGS`."""
        return {f: f in self.flags for f in INT8_FLAGS}

    def describe(self) -> str:
        """One line: model, core count and the int8 flags it has, e.g. ``Intel(R) Xeon(R)
        Processor, 2 cores: avx2 avx512_vnni avx_vnni amx_int8``."""
        have = [f for f in INT8_FLAGS if f in self.flags]
        return (f"{self.model}, {self.cores} core{'s' if self.cores != 1 else ''}: "
                + (" ".join(have) if have else "none of " + "/".join(INT8_FLAGS)))


def read_cpuinfo(path: str = "/proc/cpuinfo") -> CPUInfo | None:
    """This CPU (None where ``path`` cannot be read: not Linux)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return None
    model, flags, cores = None, set(), 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "processor":
            cores += 1
        elif key == "model name" and model is None:
            model = value.strip()
        elif key == "flags":
            flags.update(value.split())
    return CPUInfo(model or platform.machine() or "unknown CPU", frozenset(flags), cores)
