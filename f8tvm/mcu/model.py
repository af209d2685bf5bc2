"""The result of compiling for a microcontroller: C sources to export, and emulator runs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from f8tvm.api import CompiledModel, check_output_dir
from f8tvm.core.errors import InputError

from . import emulate, toolchain
from .runner import METADATA, run_folder_inputs


@dataclass
class Footprint:
    """What the library (``model.o`` + ``kernels.o``) takes on the device, in bytes."""

    flash: int  # code + weights + tables
    sram: int  # the arena + other data + the deepest stack of one inference
    arena: int
    weights: int
    stack: int  # f8_model_run's frame + the largest kernel frame (GCC's -fstack-usage)

    def to_json(self) -> dict:
        return dict(flash_bytes=self.flash, sram_bytes=self.sram, arena_bytes=self.arena,
                    weight_bytes=self.weights, stack_bytes=self.stack)


class McuModel(CompiledModel):
    """:func:`f8tvm.compile` on a microcontroller target: ``program`` (the
    :class:`~f8tvm.mcu.emit.CProgram`) is exported as a folder and runs on the target's
    emulator."""

    @property
    def program(self):
        return self.executable

    def metadata(self) -> dict:
        meta = super().metadata()
        meta["target"] = dict(name=self.target.name, isa=self.target.isa,
                              cross_compiler=self.target.cross_compiler,
                              cflags=list(self.target.mcu.cflags),
                              products=self.target.mcu.products)
        meta["input"].pop("kernel", None)
        meta["input"].pop("finite_flag", None)
        meta["files"] = sorted(self.program.files)
        return meta

    def footprint(self) -> Footprint:
        """Sizes of the compiled library (compiled in a temporary folder)."""
        work = tempfile.mkdtemp(prefix="f8tvm-mcu-")
        try:
            self._write_sources(work)
            return self._measure(self._objects(work, work))
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def _objects(self, folder: str, work: str) -> list:
        """The library's objects (with GCC's stack usage files beside them)."""
        return toolchain.model_objects(self.target, folder, work, extra=("-fstack-usage",))

    def _measure(self, objects: list) -> Footprint:
        total = [0, 0, 0]
        frames = {}
        for obj in objects:
            s = toolchain.sizes(self.target, obj)
            total = [total[0] + s.text, total[1] + s.data, total[2] + s.bss]
            frames.update(toolchain.stack_frames(obj[:-2] + ".su"))
        kernels = [b for name, b in frames.items() if name.startswith("f8k_")]
        stack = frames.get("f8_model_run", 0) + max(kernels, default=0)
        sizes = toolchain.Sizes(*total)
        return Footprint(sizes.flash, sizes.sram + stack, self.program.arena_bytes,
                         self.program.weight_bytes, stack)

    def _write_sources(self, folder: str) -> None:
        for name, text in self.program.files.items():
            with open(os.path.join(folder, name), "w") as f:
                f.write(text)

    def export(self, path: str, ram_limit: int | None = None) -> tuple[str, ...]:
        """Write the folder ``path`` (sources, ``model.h``, ``Makefile``, ``model.json``)
        atomically; ``ram_limit`` (bytes): refuse, writing nothing, a build whose SRAM exceeds
        it.  The image the emulator runs is linked and checked first: no library multiply."""
        path = os.path.abspath(path.rstrip(os.sep))
        parent = os.path.dirname(path)
        check_output_dir(parent, need_bytes=16 * 2**20)
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=".f8tvm-", dir=parent)
        try:
            self._write_sources(tmp)
            scratch = tempfile.mkdtemp(dir=tmp)  # objects and the image: not exported
            objects = self._objects(tmp, scratch)
            fp = self._measure(objects)
            if ram_limit is not None and fp.sram > ram_limit:
                raise InputError(
                    f"{self.target.name} build needs {fp.sram:,} bytes of SRAM (arena "
                    f"{fp.arena:,}, stack {fp.stack:,}), more than --ram {ram_limit // 1024} "
                    f"KiB = {ram_limit:,} bytes; nothing was written")
            image = emulate.build_image(self.target, tmp, os.path.join(scratch, "emulator.elf"),
                                        objects=objects)
            toolchain.check_image(self.target, image)
            shutil.rmtree(scratch)
            meta = dict(self.metadata(), footprint=fp.to_json())
            with open(os.path.join(tmp, METADATA), "w") as f:
                json.dump(meta, f, indent=1)
            os.chmod(tmp, 0o755)  # mkdtemp's 0700 is for the temporary folder only
            if os.path.isdir(path):
                shutil.rmtree(path)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        return tuple(os.path.join(path, f) for f in [*sorted(self.program.files), METADATA])

    def run_int(self, q):
        """Run the integer program on the 8-bit input ``q`` (the model's input shape) on the
        target's emulator; returns ``(int32 output, output FL)``, as
        :meth:`CompiledModel.run_int` does."""
        out = self.run_int_many(np.asarray(q)[None])[0]
        return out, self.plan.output_format(self.graph)[0]

    def run_int_many(self, qs):
        """The int32 outputs of a stack of 8-bit inputs (N x the input shape), in one emulator
        run."""
        qs = np.asarray(qs)
        inp = self.program.input
        if tuple(qs.shape[1:]) != tuple(inp.shape):
            raise InputError(f"inputs of shape {qs.shape}: expected N x {tuple(inp.shape)}")
        lo, hi = (-128, 127) if inp.dtype == "int8" else (0, 255)
        if qs.size and (qs.min() < lo or qs.max() > hi):
            raise InputError(f"input values must lie in [{lo}, {hi}] for {inp.dtype}, got "
                             f"[{qs.min()}, {qs.max()}]")
        out = run_folder_inputs(self.target, self._write_tmp(), qs.astype(inp.dtype),
                                int(np.prod(self.program.output.shape)), cleanup=True)
        return out.reshape((len(qs), *self.program.output.shape))

    def _write_tmp(self) -> str:
        work = tempfile.mkdtemp(prefix="f8tvm-mcu-")
        self._write_sources(work)
        return work

    def run(self, x, allow_nonfinite: bool = False):
        raise InputError("a microcontroller build takes 8-bit input: quantize it (value * "
                         "2^input_fl, rounded, clipped) and call run_int")
