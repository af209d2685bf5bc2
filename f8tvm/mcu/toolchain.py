"""Compile, link and inspect a microcontroller build with the target's cross compiler.

The image checks are what the build promises, read from the machine code rather than trusted:
no library multiply (``__mulsi3``, ``__muldi3``, ``__aeabi_lmul``) linked into the default build,
and the sizes a summary reports (flash: code + constants; SRAM: the arena and other data).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from f8tvm.core.errors import AuditError, ToolchainError
from f8tvm.targets.mcu import CFLAGS


def tool(target, name: str) -> str:
    """The cross toolchain's ``name`` (``gcc``, ``nm``, ``size``, ``objdump``), found on PATH."""
    prefix = target.cross_compiler.rsplit("-", 1)[0]
    path = shutil.which(f"{prefix}-{name}")
    if path is None:
        raise ToolchainError(f"target {target.name!r} needs {prefix}-{name}, which is not on "
                             f"PATH; install it with: apt-get install {target.compiler_package}")
    return path


def run_tool(cmd: list, what: str) -> str:
    """Run a toolchain command; its standard output, or :class:`ToolchainError` with its
    messages."""
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"{what} failed ({' '.join(cmd[:1])} exit {proc.returncode}):\n"
                             f"{proc.stderr.strip()[-2000:]}")
    return proc.stdout


def compile_c(target, source: str, obj: str, defines: dict | None = None,
              include: str | None = None, extra: tuple = ()) -> str:
    """``source`` compiled to the object ``obj`` for ``target``; ``defines``: ``-D`` macros."""
    cmd = [tool(target, "gcc"), *target.mcu.cflags, *CFLAGS, *extra, "-c", source, "-o", obj]
    cmd += [f"-D{k}={v}" for k, v in (defines or {}).items()]
    if include:
        cmd.append(f"-I{include}")
    run_tool(cmd, f"compiling {os.path.basename(source)}")
    return obj


def link(target, objects: list, elf: str, extra_flags: tuple = ()) -> str:
    """A static, freestanding executable of ``objects`` (libgcc last: what it supplies is what
    the code asked for, checked by :func:`check_image`)."""
    cmd = [tool(target, "gcc"), *target.mcu.cflags, "-nostdlib", "-nostartfiles", "-static",
           "-Wl,--gc-sections", *extra_flags, *objects, "-lgcc", "-o", elf]
    run_tool(cmd, f"linking {os.path.basename(elf)}")
    return elf


def stack_frames(su_path: str) -> dict:
    """``{function: bytes}`` from GCC's ``-fstack-usage`` file (``file:line:col:name<TAB>bytes
    <TAB>static``); a function whose frame is not static counts as what GCC could bound."""
    frames = {}
    with open(su_path) as f:
        for line in f:
            parts = line.rstrip("\n").split("\t")
            if len(parts) >= 2 and parts[1].isdigit():
                frames[parts[0].rsplit(":", 1)[-1]] = int(parts[1])
    return frames


MODEL_SOURCES = ("model.c", "kernels.c")  # the exported folder's C files

# what GCC may call on its own in freestanding code (block copies and fills); every emulator
# harness links them, since there is no C library
FREESTANDING_C = r"""
#include <stdint.h>
void *memset(void *d, int c, unsigned long n) {
  uint8_t *p = d; while (n--) *p++ = (uint8_t)c; return d;
}
void *memcpy(void *d, const void *s, unsigned long n) {
  uint8_t *p = d; const uint8_t *q = s; while (n--) *p++ = *q++; return d;
}
"""


def model_objects(target, folder: str, work: str, defines: dict | None = None,
                  extra: tuple = ()) -> list:
    """The objects of the exported folder's C files, compiled into ``work``."""
    return [compile_c(target, os.path.join(folder, src), os.path.join(work, src[:-2] + ".o"),
                      defines, include=folder, extra=extra) for src in MODEL_SOURCES]


def build_image(target, folder: str, elf: str, harness: dict, defines: dict | None = None,
                link_flags: tuple = (), objects: list | None = None) -> str:
    """An image of the C build in ``folder`` and an emulator's ``harness`` (``{file name:
    text}``, written beside ``elf``: ``.c`` files compiled with the freestanding shims, ``.ld``
    the linker script, others included).  ``objects``: the folder's objects, already compiled
    (else compiled here with ``defines``)."""
    work = os.path.dirname(os.path.abspath(elf))
    harness = {**harness, "f8_freestanding.c": FREESTANDING_C}
    for name, text in harness.items():
        with open(os.path.join(work, name), "w") as f:
            f.write(text)
    if objects is None:
        objects = model_objects(target, folder, work, defines)
    objs = list(objects) + [
        compile_c(target, os.path.join(work, name), os.path.join(work, name[:-2] + ".o"),
                  defines, include=folder, extra=(f"-I{work}",))
        for name in harness if name.endswith(".c")]
    scripts = [f"-T{os.path.join(work, name)}" for name in harness if name.endswith(".ld")]
    return link(target, objs, elf, (*scripts, *link_flags))


@dataclass(frozen=True)
class Sizes:
    text: int  # code and read-only data (the weights): flash
    data: int  # initialized data: flash and SRAM
    bss: int  # zeroed data (the arena): SRAM

    @property
    def flash(self) -> int:
        return self.text + self.data

    @property
    def sram(self) -> int:
        return self.data + self.bss


def sizes(target, path: str) -> Sizes:
    """Berkeley sizes of an object or image (``size``)."""
    out = run_tool([tool(target, "size"), path], "size").splitlines()
    text, data, bss = (int(v) for v in out[1].split()[:3])
    return Sizes(text, data, bss)


def defined_symbols(target, path: str) -> set:
    out = run_tool([tool(target, "nm"), path], "nm")
    return {ln.split()[-1] for ln in out.splitlines() if len(ln.split()) == 3}


def library_multiplies(target, path: str) -> list:
    """The library multiplies (``McuSpec.forbidden_symbols``) linked into the image ``path``."""
    return sorted(defined_symbols(target, path) & set(target.mcu.forbidden_symbols))


def check_image(target, path: str) -> None:
    """Raise :class:`AuditError` if the image calls a library multiply."""
    found = library_multiplies(target, path)
    if found:
        raise AuditError(f"{os.path.basename(path)} links {', '.join(found)}: a library "
                         "multiply, which the 8-bit-only build must not need")


# 32-bit Thumb-2 encodings ARMv6-M has (everything else is ARMv7-M or later)
_V6M_WIDE = {"bl", "mrs", "msr", "dmb", "dsb", "isb", "udf"}


def instructions(objdump_text: str):
    """``(address, bytes, mnemonic, operands)`` of each instruction an ``objdump -d`` listing
    shows (its lines are ``address:<TAB>encoding<TAB>mnemonic<TAB>operands``; data words such
    as literal pools, ``.word``, are skipped)."""
    for line in objdump_text.splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or not parts[0].strip().endswith(":"):
            continue
        try:
            addr = int(parts[0].strip()[:-1], 16)
        except ValueError:
            continue
        mnemonic = parts[2].strip()
        if not mnemonic or mnemonic.startswith("."):
            continue
        size = sum(len(w) for w in parts[1].split()) // 2
        yield addr, size, mnemonic, parts[3].strip() if len(parts) > 3 else ""


def thumb_v6m_violations(target, path: str) -> list:
    """Instructions of ``path`` (an ARM object or image) outside ARMv6-M: a 32-bit encoding
    other than ``bl``/``mrs``/``msr``/barriers, e.g. ``smull``.  ``(address, text)`` pairs.

    Unicorn runs ARMv7-M instructions even as a Cortex-M0, so the ISA is checked statically on
    the disassembly (for ARMv7-M, so that a wide instruction shows as itself)."""
    out = run_tool([tool(target, "objdump"), "-d", "-M", "force-thumb", path], "objdump")
    return [(f"{addr:#x}", f"{mnemonic} {operands}".strip())
            for addr, size, mnemonic, operands in instructions(out)
            if size == 4 and mnemonic.split(".")[0] not in _V6M_WIDE]
