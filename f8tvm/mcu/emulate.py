"""Run a microcontroller build on an emulator: the RV32 cores under QEMU's user mode, the
Cortex-M0+ on Unicorn (:mod:`f8tvm.mcu.cycles`, after a static check of its instruction set).

The image is the model's objects linked with a small harness of ours (no C library): it reads one
input (``F8_INPUT_BYTES``) at a time from standard input, runs ``f8_model_run`` and writes the
int32 logits to standard output, until the input ends.  ``qemu-riscv32 -cpu rv32,m=false``
enforces RV32I: a multiply instruction anywhere in the image would trap.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np

from f8tvm.core.errors import InputError, ToolchainError

from . import cycles, toolchain

QEMU_PACKAGE = "qemu-user-static"

# Linux's RISC-V system calls: read 63, write 64, exit 93
RV32_HARNESS = r"""
#include <stdint.h>
#include "model.h"

static long f8_syscall(long n, long a, long b, long c) {
  register long a0 __asm__("a0") = a;
  register long a1 __asm__("a1") = b;
  register long a2 __asm__("a2") = c;
  register long a7 __asm__("a7") = n;
  __asm__ volatile("ecall" : "+r"(a0) : "r"(a1), "r"(a2), "r"(a7) : "memory");
  return a0;
}

static uint8_t f8_in[F8_INPUT_BYTES];
static int32_t f8_out[F8_OUTPUT_ELEMENTS];

static void f8_exit(long code) { for (;;) f8_syscall(93, code, 0, 0); }


void _start(void) {
  for (;;) {
    long got = 0;
    while (got < F8_INPUT_BYTES) {
      long n = f8_syscall(63, 0, (long)(f8_in + got), F8_INPUT_BYTES - got);
      if (n <= 0) break;
      got += n;
    }
    if (got == 0) f8_exit(0);
    if (got != F8_INPUT_BYTES) f8_exit(3);
    f8_model_run((const void *)f8_in, f8_out);
    long put = 0;
    while (put < F8_OUTPUT_BYTES) {
      long n = f8_syscall(64, 1, (long)((uint8_t *)f8_out + put), F8_OUTPUT_BYTES - put);
      if (n <= 0) f8_exit(4);
      put += n;
    }
  }
}
"""


def qemu_binary(target) -> str:
    if target.mcu.emulator != "qemu-riscv32":
        raise InputError(f"target {target.name} does not run under QEMU's user mode")
    for name in ("qemu-riscv32-static", "qemu-riscv32"):
        path = shutil.which(name)
        if path:
            return path
    raise ToolchainError(f"running a {target.name} build needs qemu-riscv32; install it with: "
                         f"apt-get install {QEMU_PACKAGE}")


def build_image(target, folder: str, elf: str, defines: dict | None = None,
                objects: list | None = None) -> str:
    """The emulator image of the C build in ``folder`` (``model.c``, ``kernels.c``,
    ``model.h``), linked with the harness; ``defines``: ``-D`` macros (``F8_PRODUCTS``);
    ``objects``: the folder's objects, already compiled."""
    if target.mcu.emulator != "qemu-riscv32":
        return cycles.build_image(target, folder, elf, defines, objects)
    # no linker relaxation: nothing sets up gp, so gp-relative accesses must not appear
    return toolchain.build_image(target, folder, elf, {"f8_harness.c": RV32_HARNESS}, defines,
                                 ("-Wl,--no-relax",), objects)


def run_image(target, elf: str, inputs: np.ndarray, output_elements: int,
              timeout: float = 600) -> np.ndarray:
    """Run the image on every input of ``inputs`` (N x F8_INPUT_BYTES as int8/uint8):
    the int32 outputs, N x ``output_elements``."""
    if target.mcu.emulator != "qemu-riscv32":
        runner = cycles.Runner(target, elf, int(inputs[0].nbytes), output_elements)
        return np.stack([runner.run(q)[0] for q in inputs])
    data = np.ascontiguousarray(inputs).tobytes()
    cmd = [qemu_binary(target), "-cpu", target.mcu.qemu_cpu, elf]
    proc = subprocess.run(cmd, input=data, capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise ToolchainError(f"{os.path.basename(elf)} under {os.path.basename(cmd[0])} -cpu "
                             f"{target.mcu.qemu_cpu} exited with {proc.returncode}: "
                             f"{proc.stderr.decode(errors='replace')[-500:]}")
    out = np.frombuffer(proc.stdout, "<i4")
    n = len(inputs)
    if out.size != n * output_elements:
        raise ToolchainError(f"expected {n * output_elements} int32 outputs, got {out.size}")
    return out.reshape(n, output_elements)
