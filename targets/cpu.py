"""What this machine's CPU is: its model name and Linux feature flags, read once from
``/proc/cpuinfo`` (the one place the file is parsed); and the one permission Linux wants before
a process may use a CPU feature, AMX tiles (:func:`enable_amx`)."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

from f8tvm.core.errors import UnsupportedCPUError

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


# Linux's permission for AMX tile data (arch/x86/include/uapi/asm/prctl.h): a process asks once
# before its first tile instruction, else that instruction faults (SIGILL)
_SYS_ARCH_PRCTL = 158  # x86-64
_ARCH_REQ_XCOMP_PERM = 0x1023
_XFEATURE_XTILEDATA = 18
_amx_enabled = False


def enable_amx() -> None:
    """Ask Linux for this process's permission to use AMX tiles (once per process; later calls
    return at once).  Raises :class:`f8tvm.core.errors.UnsupportedCPUError` naming the reason
    when it is refused (Linux before 5.16, or a CPU without AMX)."""
    global _amx_enabled
    if _amx_enabled:
        return
    import ctypes  # lazy: only AMX modules need it

    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        raise UnsupportedCPUError("AMX modules run on x86-64 Linux only (they need "
                                  "arch_prctl(ARCH_REQ_XCOMP_PERM))")
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.syscall(_SYS_ARCH_PRCTL, _ARCH_REQ_XCOMP_PERM, _XFEATURE_XTILEDATA) != 0:
        err = ctypes.get_errno()
        raise UnsupportedCPUError(
            f"Linux refused this process the AMX tile registers: arch_prctl(ARCH_REQ_XCOMP_PERM,"
            f" XFEATURE_XTILEDATA) failed with {os.strerror(err)} (errno {err}); AMX needs "
            "Linux 5.16 or newer on a CPU with amx_tile; rebuild for another target (e.g. "
            "--target x86-avx512)")
    _amx_enabled = True
