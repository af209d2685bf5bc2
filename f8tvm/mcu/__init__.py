"""Microcontroller builds: C sources over a static arena, run on emulators.

``f8tvm.compile(model, x, target="rv32i")`` (or ``cortex-m0plus``, ``rv32im``) goes through the
same phases as every build up to ``fuse``; then the kernels get scalar schedules
(:mod:`f8tvm.schedules.mcu`), the audit proves every product 8-bit, and code generation writes
C (:mod:`f8tvm.mcu.emit`) instead of a ``.so``.  :mod:`f8tvm.mcu.toolchain` compiles and links
it with the target's cross compiler and checks the image; :mod:`f8tvm.mcu.emulate` and
:mod:`f8tvm.mcu.cycles` run it; :mod:`f8tvm.mcu.runner` runs an exported folder.

The package imports nothing itself: ``emit`` needs TVM's compiler (the pipeline's codegen
phase), the others only NumPy and the cross tools (``f8tvm.run`` uses them without TVM).
"""
