"""Run a microcontroller image on Unicorn and count its work: instructions, and Cortex-M0+ cycles
from the core's instruction timings.

The image is the model's objects linked at a fixed layout (``targets/mcu.py``'s
``LINKER_SCRIPT``, which the exported folder holds as ``f8tvm.ld``: flash at 0,
SRAM at ``0x20000000``) with buffers for one input and one output; the runner calls
``f8_model_run(in, out)`` directly, with a return address that stops the emulator.  A block hook
adds up each executed block's instructions (from the image's disassembly) and attributes them to
the kernel they run in (a library routine a kernel calls counts for that kernel).

Cortex-M0+ cycles (Arm's Cortex-M0+ Technical Reference Manual, instruction timings, single-cycle
multiplier): data processing and ``muls`` 1; loads and stores 2; ``ldm``/``stm``/``push`` 1+N;
``pop`` 1+N, 3+N with ``pc``; ``b`` 2; a conditional branch 2 taken, 1 not; ``bl`` 3; ``bx``/
``blx`` 2.  Zero wait-state memory.  RV32 counts instructions only.

Unicorn executes ARMv7-M instructions even as a Cortex-M0, so an image is checked statically
first (:func:`f8tvm.mcu.toolchain.thumb_v6m_violations`).
"""

from __future__ import annotations

import bisect
import os
import struct
from dataclasses import dataclass, field

import numpy as np

from f8tvm.core.errors import AuditError, ToolchainError
from f8tvm.targets.mcu import LINKER_SCRIPT

from . import toolchain

FLASH, RAM, SIZE = 0x00000000, 0x20000000, 16 * 2**20
STOP = 0x3F000000  # the return address: a mapped page whose first instruction ends the run


BUFFERS_C = """\
#include <stdint.h>
#include "model.h"
uint8_t f8_in[F8_INPUT_BYTES] __attribute__((aligned(8)));
int32_t f8_out[F8_OUTPUT_ELEMENTS];
"""


def build_image(target, folder: str, elf: str, defines: dict | None = None,
                objects: list | None = None) -> str:
    """The Unicorn image of the C build in ``folder``."""
    return toolchain.build_image(
        target, folder, elf, {"f8_buffers.c": BUFFERS_C, "f8_emulator.ld": LINKER_SCRIPT},
        defines, ("-Wl,--no-relax", "-Wl,-u,f8_in", "-Wl,-u,f8_out"), objects)


# ----------------------------------------------------------------------------- disassembly
@dataclass(frozen=True)
class Insn:
    size: int
    mnemonic: str
    cycles: int  # Cortex-M0+ base cycles (a taken conditional branch adds 1)
    conditional: bool


_COND = ("eq", "ne", "cs", "cc", "hs", "lo", "mi", "pl", "vs", "vc", "hi", "ls", "ge", "lt",
         "gt", "le")


def m0plus_cycles(mnemonic: str, operands: str) -> tuple[int, bool]:
    """(base cycles, conditional branch) of one ARMv6-M instruction."""
    m = mnemonic.split(".")[0]
    if m == "bl":
        return 3, False
    if m in ("bx", "blx"):
        return 2, False
    if m == "b":
        return 2, False
    if m.startswith("b") and m[1:] in _COND:
        return 1, True
    if m.startswith(("ldr", "str")):
        return 2, False
    if m in ("ldm", "ldmia", "stm", "stmia", "push", "pop"):
        regs = operands[operands.find("{") + 1:operands.find("}")]
        n = sum(_reg_count(r) for r in regs.split(",") if r.strip())
        return (3 + n if m == "pop" and "pc" in regs else 1 + n), False
    if m in ("mov", "add") and operands.split(",")[0].strip() == "pc":
        return 2, False
    return 1, False


def _reg_count(r: str) -> int:
    r = r.strip()
    if "-" in r:
        a, b = (int(x.strip()[1:]) for x in r.split("-"))
        return b - a + 1
    return 1


def disassemble(target, elf: str) -> dict:
    """``{address: Insn}`` of the image's code."""
    out = toolchain.run_tool([toolchain.tool(target, "objdump"), "-d", elf], "objdump")
    thumb = target.mcu.emulator == "unicorn-thumb"
    table = {}
    for addr, size, mnemonic, operands in toolchain.instructions(out):
        cycles, cond = m0plus_cycles(mnemonic, operands) if thumb else (1, False)
        table[addr] = Insn(size, mnemonic, cycles, cond)
    return table


def function_ranges(target, elf: str) -> list:
    """``[(start, end, name)]`` of the image's functions, sorted."""
    out = toolchain.run_tool([toolchain.tool(target, "nm"), "-S", "--defined-only", elf], "nm")
    ranges = []
    for ln in out.splitlines():
        parts = ln.split()
        if len(parts) == 4 and parts[2].lower() == "t":
            start = int(parts[0], 16) & ~1
            ranges.append((start, start + int(parts[1], 16), parts[3]))
    return sorted(ranges)


def symbol_address(target, elf: str, name: str) -> int:
    out = toolchain.run_tool([toolchain.tool(target, "nm"), "--defined-only", elf], "nm")
    for ln in out.splitlines():
        parts = ln.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise ToolchainError(f"{os.path.basename(elf)} has no symbol {name}")


# ----------------------------------------------------------------------------- the run
@dataclass
class Counts:
    instructions: int = 0
    cycles: int = 0  # Cortex-M0+ only (0 on RV32)
    by_function: dict = field(default_factory=dict)  # kernel -> [instructions, cycles]
    # one entry per kernel call of f8_model_run, in order: [kernel, instructions, cycles]
    by_call: list = field(default_factory=list)


def _load_segments(uc, elf: str) -> None:
    with open(elf, "rb") as f:
        data = f.read()
    if data[:4] != b"\x7fELF" or data[4] != 1:
        raise ToolchainError(f"{elf} is not a 32-bit ELF image")
    phoff, = struct.unpack_from("<I", data, 28)
    phentsize, phnum = struct.unpack_from("<HH", data, 42)
    for i in range(phnum):
        p_type, off, vaddr, _paddr, filesz, memsz = struct.unpack_from(
            "<IIIIII", data, phoff + i * phentsize)
        if p_type == 1 and filesz:  # PT_LOAD
            uc.mem_write(vaddr, data[off:off + filesz])


class Runner:
    """An image loaded once, run on any number of inputs."""

    def __init__(self, target, elf: str, input_bytes: int, output_elements: int):
        try:
            import unicorn  # lazy: an optional package (the [mcu] and [test] extras)
        except ImportError:
            raise ToolchainError("running a microcontroller image needs Unicorn: pip install "
                                 "'unicorn>=2.1,<2.2' (the [test] extra has it)") from None
        self.uc_mod = unicorn
        self.target, self.elf = target, elf
        self.thumb = target.mcu.emulator == "unicorn-thumb"
        if self.thumb:
            bad = toolchain.thumb_v6m_violations(target, elf)
            if bad:
                raise AuditError(f"{os.path.basename(elf)} has instructions ARMv6-M lacks, e.g. "
                                 f"{bad[0][1]!r} at {bad[0][0]}")
        self.insns = disassemble(target, elf)
        self.ranges = function_ranges(target, elf)
        self.starts = [r[0] for r in self.ranges]
        self.f8_in = symbol_address(target, elf, "f8_in")
        self.f8_out = symbol_address(target, elf, "f8_out")
        self.entry = symbol_address(target, elf, "f8_model_run")
        self.input_bytes, self.output_elements = input_bytes, output_elements
        self._blocks: dict = {}
        self.uc = self._machine()

    def _machine(self):
        u = self.uc_mod
        if self.thumb:
            uc = u.Uc(u.UC_ARCH_ARM, u.UC_MODE_THUMB | u.UC_MODE_MCLASS)
        else:
            uc = u.Uc(u.UC_ARCH_RISCV, u.UC_MODE_RISCV32)
        uc.mem_map(FLASH, SIZE)
        uc.mem_map(RAM, SIZE)
        uc.mem_map(STOP, 0x1000)
        _load_segments(uc, self.elf)
        self._image = bytes(uc.mem_read(RAM, SIZE))  # .data as loaded, restored per run
        uc.hook_add(u.UC_HOOK_BLOCK, self._on_block)
        return uc

    def _function(self, addr: int) -> str | None:
        i = bisect.bisect_right(self.starts, addr) - 1
        if i >= 0 and addr < self.ranges[i][1]:
            return self.ranges[i][2]
        return None

    def _summary(self, address: int, size: int) -> tuple:
        """(instructions, cycles, end of its last instruction, last is a conditional branch,
        the kernel it counts for or None) of a block, computed once per block."""
        n, cyc, a, last = 0, 0, address, (address, False)
        while a < address + size:
            ins = self.insns.get(a)
            if ins is None:
                break
            n += 1
            cyc += ins.cycles
            last = (a + ins.size, ins.conditional)
            a += ins.size
        fn = self._function(address)
        owner = fn if fn is not None and (fn.startswith("f8k_") or fn == "f8_model_run") else None
        out = (n, cyc, last[0], last[1], owner)
        self._blocks[address] = out
        return out

    def _on_block(self, uc, address, size, _user):
        n, cyc, end, cond, owner = self._blocks.get(address) or self._summary(address, size)
        c = self.counts
        if self._cond and address != self._end:
            cyc += 1  # the previous block's conditional branch was taken
        if owner is not None and owner != self._owner:
            if self._owner == "f8_model_run":  # a new call of the model's sequence
                c.by_call.append([owner, 0, 0])
            self._owner = owner
            self._per = c.by_function.setdefault(owner, [0, 0])
        c.instructions += n
        c.cycles += cyc
        per = self._per
        per[0] += n
        per[1] += cyc
        if owner != "f8_model_run" and self._owner != "f8_model_run" and c.by_call:
            call = c.by_call[-1]
            call[1] += n
            call[2] += cyc
        self._end, self._cond = end, cond

    def run(self, q: np.ndarray) -> tuple[np.ndarray, Counts]:
        """One inference: the int32 outputs and the counts."""
        u = self.uc_mod
        uc = self.uc
        uc.mem_write(RAM, self._image)
        raw = np.ascontiguousarray(q).tobytes()
        if len(raw) != self.input_bytes:
            raise ValueError(f"input of {len(raw)} bytes, the model takes {self.input_bytes}")
        uc.mem_write(self.f8_in, raw)
        self.counts, self._end, self._cond = Counts(), 0, False
        self._owner = "f8_model_run"
        self._per = self.counts.by_function.setdefault(self._owner, [0, 0])
        sp = RAM + SIZE - 16
        if self.thumb:
            uc.reg_write(u.arm_const.UC_ARM_REG_SP, sp)
            uc.reg_write(u.arm_const.UC_ARM_REG_R0, self.f8_in)
            uc.reg_write(u.arm_const.UC_ARM_REG_R1, self.f8_out)
            uc.reg_write(u.arm_const.UC_ARM_REG_LR, STOP | 1)
            uc.emu_start(self.entry | 1, STOP)
        else:
            rc = u.riscv_const
            uc.reg_write(rc.UC_RISCV_REG_SP, sp)
            uc.reg_write(rc.UC_RISCV_REG_A0, self.f8_in)
            uc.reg_write(rc.UC_RISCV_REG_A1, self.f8_out)
            uc.reg_write(rc.UC_RISCV_REG_RA, STOP)
            uc.emu_start(self.entry, STOP)
        out = np.frombuffer(bytes(uc.mem_read(self.f8_out, 4 * self.output_elements)), "<i4")
        return out.copy(), self.counts
