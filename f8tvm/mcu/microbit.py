"""Run a Cortex-M0+ build on QEMU's BBC micro:bit: a real Cortex-M0 machine (nRF51, 256 KiB flash,
16 KiB SRAM) whose CPU model refuses every instruction ARMv6-M lacks.

The image is the model with a start-up file of ours: a vector table, a reset handler that copies
``.data`` and zeroes ``.bss``, one call of ``f8_model_run`` on an input compiled into flash, and
the logits printed through semihosting (``SYS_WRITE0``) before ``SYS_EXIT``.  So a model runs on
it only when arena, stack and data fit 16 KiB: small models.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np

from f8tvm.core.errors import InputError, ToolchainError

from . import toolchain

QEMU = "qemu-system-arm"
RAM_BYTES = 16 * 1024

LINKER_SCRIPT = """\
MEMORY { FLASH (rx) : ORIGIN = 0x00000000, LENGTH = 256K
         RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 16K }
ENTRY(f8_reset)
SECTIONS {
  .vectors : { KEEP(*(.f8_vectors)) } > FLASH
  .text : { *(.text*) *(.rodata*) } > FLASH
  .data : { f8_data_start = .; *(.data*) f8_data_end = .; } > RAM AT > FLASH
  f8_data_load = LOADADDR(.data);
  .bss (NOLOAD) : { f8_bss_start = .; *(.bss*) *(COMMON) f8_bss_end = .; } > RAM
  /DISCARD/ : { *(.ARM.exidx*) *(.ARM.extab*) *(.comment) }
}
"""

STARTUP_C = r"""
#include <stdint.h>
#include "model.h"
#include "f8_input.h"

extern uint32_t f8_data_start, f8_data_end, f8_data_load, f8_bss_start, f8_bss_end;
void f8_reset(void);
__attribute__((section(".f8_vectors"), used))
static const uint32_t f8_vectors[2] = {0x20000000u + 16u * 1024u, (uint32_t)f8_reset};

static int32_t f8_out[F8_OUTPUT_ELEMENTS];
static char f8_line[24];

static int f8_semihost(int op, const void *arg) {
  register int r0 __asm__("r0") = op;
  register const void *r1 __asm__("r1") = arg;
  __asm__ volatile("bkpt 0xab" : "+r"(r0) : "r"(r1) : "memory");
  return r0;
}

static void f8_print_int(int32_t v) {
  char *p = f8_line + sizeof(f8_line) - 1;
  uint32_t u = v < 0 ? 0u - (uint32_t)v : (uint32_t)v;
  *p = 0;
  *--p = '\n';
  do { *--p = (char)('0' + u % 10u); u /= 10u; } while (u);
  if (v < 0) *--p = '-';
  f8_semihost(0x04, p);  /* SYS_WRITE0 */
}


void f8_reset(void) {
  uint32_t *src = &f8_data_load, *dst = &f8_data_start;
  while (dst < &f8_data_end) *dst++ = *src++;
  for (dst = &f8_bss_start; dst < &f8_bss_end; ) *dst++ = 0;
  f8_model_run(f8_input, f8_out);
  f8_semihost(0x04, "F8OUT\n");
  for (int i = 0; i < F8_OUTPUT_ELEMENTS; ++i) f8_print_int(f8_out[i]);
  static const uint32_t stop[2] = {0x20026u, 0u};  /* ADP_Stopped_ApplicationExit */
  f8_semihost(0x20, stop);  /* SYS_EXIT_EXTENDED */
  for (;;) f8_semihost(0x18, (const void *)0x20026u);  /* SYS_EXIT */
}
"""


def qemu() -> str:
    path = shutil.which(QEMU)
    if path is None:
        raise ToolchainError(f"the micro:bit machine needs {QEMU}; install it with: apt-get "
                             "install qemu-system-arm")
    return path


def build_image(target, folder: str, q: np.ndarray, elf: str) -> str:
    """The micro:bit image of the C build in ``folder`` with the input ``q`` in flash."""
    if target.mcu.emulator != "unicorn-thumb":
        raise InputError(f"the micro:bit runs Cortex-M0+ builds, not {target.name}")
    ctype = "int8_t" if q.dtype == np.int8 else "uint8_t"
    values = ", ".join(str(int(v)) for v in q.reshape(-1))
    toolchain.build_image(target, folder, elf, {
        "f8_input.h": f"#include <stdint.h>\nstatic const {ctype} f8_input[] = {{{values}}};\n",
        "f8_startup.c": STARTUP_C, "f8_microbit.ld": LINKER_SCRIPT})
    used = toolchain.sizes(target, elf)
    if used.data + used.bss > RAM_BYTES - 1024:  # leave the stack 1 KiB
        raise InputError(f"the model needs {used.data + used.bss:,} bytes of SRAM beside its "
                         f"stack; the micro:bit has {RAM_BYTES:,}")
    return elf


def run(target, elf: str, output_elements: int, timeout: float = 300) -> np.ndarray:
    """Boot the image on QEMU's micro:bit; the int32 logits it prints."""
    cmd = [qemu(), "-M", "microbit", "-nographic", "-monitor", "none", "-serial", "none",
           "-semihosting-config", "enable=on,target=native", "-kernel", elf]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ToolchainError(f"{os.path.basename(elf)} on the micro:bit printed no result "
                             f"within {timeout:g} s (a fault locks the core up)") from None
    lines = (proc.stdout + proc.stderr).split("F8OUT\n", 1)  # semihosting writes to stderr
    if len(lines) != 2:
        raise ToolchainError(f"{os.path.basename(elf)} on the micro:bit printed no result "
                             f"(exit {proc.returncode}): {proc.stderr[-500:]}")
    values = [int(v) for v in lines[1].split()[:output_elements]]
    if len(values) != output_elements:
        raise ToolchainError(f"expected {output_elements} logits, got {len(values)}")
    return np.array(values, np.int32)
