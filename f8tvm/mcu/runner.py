"""Run an exported microcontroller build (a folder of C sources) on its target's emulator.

Needs the target's cross compiler and emulator, NumPy; not TVM (``f8tvm.run`` uses it).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np

from f8tvm.core.errors import InputError
from f8tvm.targets import get_target

from . import cycles, emulate, microbit

METADATA = "model.json"


def run_folder_inputs(target, folder: str, inputs: np.ndarray, out_elements: int,
                      defines: dict | None = None, cleanup: bool = False) -> np.ndarray:
    """Build the emulator image of the sources in ``folder`` and run ``inputs`` on it."""
    try:
        elf = emulate.build_image(target, folder, os.path.join(folder, "emulator.elf"),
                                  defines)
        return emulate.run_image(target, elf, inputs, out_elements)
    finally:
        if cleanup:
            shutil.rmtree(folder, ignore_errors=True)


def load_folder(folder: str) -> dict:
    """The metadata of an exported microcontroller build (``model.json``)."""
    path = os.path.join(folder, METADATA)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{folder} is not a microcontroller build: no {METADATA}")
    with open(path) as f:
        meta = json.load(f)
    missing = [n for n in meta.get("files", []) if not os.path.isfile(os.path.join(folder, n))]
    if missing:
        raise FileNotFoundError(f"{folder}: missing {', '.join(missing)}")
    return meta


def run_folder(folder: str, q: np.ndarray, count: bool = False, machine: str | None = None):
    """Run the exported build in ``folder`` on the 8-bit input ``q`` on its target's emulator:
    ``(int32 logits, counts or None)``; ``count``: on Unicorn, with instruction (and
    Cortex-M0+ cycle) counts per kernel; ``machine="microbit"``: a Cortex-M0+ build on QEMU's
    micro:bit (a Cortex-M0 with 16 KiB of SRAM) instead."""
    meta = load_folder(folder)
    target = get_target(meta["target"]["name"])
    if target.mcu is None:
        raise InputError(f"{folder} was built for {target.name}, not a microcontroller")
    if machine not in (None, "microbit"):
        raise InputError(f"unknown machine {machine!r}; the one there is: microbit")
    if machine and count:
        raise InputError("--count counts on Unicorn; the micro:bit runs without counting")
    work = tempfile.mkdtemp(prefix="f8tvm-mcu-")
    try:
        for name in meta["files"]:
            shutil.copy(os.path.join(folder, name), work)
        n_out = int(np.prod(meta["output"]["shape"]))
        q = np.asarray(q, meta["input"]["dtype"]).reshape(meta["input"]["shape"])
        if machine == "microbit":
            elf = microbit.build_image(target, work, q, os.path.join(work, "microbit.elf"))
            return microbit.run(target, elf, n_out), None
        if not count:
            return run_folder_inputs(target, work, q[None], n_out)[0], None
        elf = cycles.build_image(target, work, os.path.join(work, "count.elf"))
        return cycles.Runner(target, elf, q.nbytes, n_out).run(q)
    finally:
        shutil.rmtree(work, ignore_errors=True)
