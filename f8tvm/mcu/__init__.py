"""Microcontroller builds: C sources over a static arena, run on emulators.

``f8tvm.compile(model, x, target="rv32i")`` (or ``cortex-m0plus``, ``rv32im``) goes through the
same phases as every build up to ``fuse``; then the kernels get scalar schedules
(:mod:`f8tvm.schedules.mcu`), the audit proves every product 8-bit, and code generation writes
C (:mod:`f8tvm.mcu.emit`) instead of a ``.so``.  :mod:`f8tvm.mcu.toolchain` compiles and links
it with the target's cross compiler and checks the image; :mod:`f8tvm.mcu.emulate` runs it.
"""

from .emit import CProgram, emit_c

__all__ = ["CProgram", "emit_c"]
