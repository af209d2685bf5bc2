"""Microcontroller presets: bare-metal cores without a wide multiplier.

A build for one of them is C (``f8tvm.mcu``): plain C-ABI kernels from TVM's C code generator, a
generated ``model.c`` that calls them in order over one static arena, and the weights as
``const`` arrays, compiled by the preset's cross compiler.  There is no TVM runtime on the device.

* ``cortex-m0plus`` (ARMv6-M): ``muls`` (32 x 32 -> 32) but no ``smull``/``umull``; the 8-bit
  products use ``muls``, and nothing needs a 64-bit product.
* ``rv32i``: no multiply instruction at all; every 8-bit product is an exact table lookup
  (quarter squares: ``a*b = S[a+b] - S[a-b]``, ``S[i] = floor(i*i/4)``), which only an
  8-bit-only program can afford (the table has 640 entries).
* ``rv32im``: the same core with the M extension, for comparison (``mul`` on 8-bit operands).
"""

from .base import McuSpec, TargetPreset

_C = {"kind": "c"}  # TVM's C code generator; the cross compiler does the rest

# the C flags of every microcontroller build besides the core's architecture flags (the
# generated Makefile and f8tvm.mcu.toolchain use them): no library loops for memset-like
# loops (there may be no C library), a section per function and object (the linker drops what
# the firmware does not call)
CFLAGS = ("-O2", "-ffreestanding", "-fno-tree-loop-distribute-patterns", "-ffunction-sections",
          "-fdata-sections", "-Wall", "-Wno-unused-variable", "-Wno-unused-function")



# the memory map of the emulators (and the exported folder's f8tvm.ld, a starting point for a
# firmware's own): flash at 0, SRAM at 0x20000000, 16 MiB each
LINKER_SCRIPT = """\
/* f8tvm: the emulators' memory map (flash at 0, SRAM at 0x20000000); size MEMORY to your part */
MEMORY { FLASH (rx) : ORIGIN = 0x00000000, LENGTH = 16M
         RAM (rwx) : ORIGIN = 0x20000000, LENGTH = 16M }
ENTRY(f8_model_run)
SECTIONS {
  .text : { *(.text*) } > FLASH
  .rodata : { *(.rodata*) *(.srodata*) } > FLASH
  .data : { *(.data*) *(.sdata*) } > RAM AT > FLASH
  .bss (NOLOAD) : { *(.bss*) *(.sbss*) *(COMMON) } > RAM
  /DISCARD/ : { *(.ARM.exidx*) *(.ARM.extab*) *(.comment) }
}
"""


def _rv32(name, march, isa, products, qemu_cpu, description) -> TargetPreset:
    return TargetPreset(
        name=name, tvm_target=_C, cross_compiler="riscv64-unknown-elf-gcc",
        compiler_package="gcc-riscv64-unknown-elf", dot=None, isa=isa, activations="any",
        description=description,
        mcu=McuSpec(cflags=(f"-march={march}", "-mabi=ilp32"), products=products,
                    emulator="qemu-riscv32", qemu_cpu=qemu_cpu))


PRESETS = [
    TargetPreset(
        name="cortex-m0plus",
        tvm_target=_C,
        cross_compiler="arm-none-eabi-gcc",
        compiler_package="gcc-arm-none-eabi",
        dot=None,
        isa="ARMv6-M (muls, no long multiply)",
        activations="any",
        description="Arm Cortex-M0+ / M0 microcontrollers (bare metal, C sources)",
        mcu=McuSpec(cflags=("-mcpu=cortex-m0plus", "-mthumb", "-mfloat-abi=soft"),
                    products="multiply", emulator="unicorn-thumb"),
    ),
    # RV32I: the M extension off, so QEMU traps a multiply instruction
    _rv32("rv32i", "rv32i", "RV32I (no multiply instruction)", "table", "rv32,m=false",
          "RISC-V RV32I microcontrollers without the M extension (bare metal)"),
    _rv32("rv32im", "rv32im", "RV32IM (mul on 8-bit operands)", "multiply", "rv32",
          "RISC-V RV32IM microcontrollers (bare metal; for comparison with rv32i)"),
]
