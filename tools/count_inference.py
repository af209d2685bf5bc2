"""Run a module's inferences between instruction-count markers (on the board).

Runs on the emulated board's Python, under ``tools.arm_count``'s counting emulator: after the
module is loaded, (with ``--regions``) the kernels' address ranges go to the plugin (tag 4), the
cache models start (tag 0), one warm-up inference runs (it fills the caches and keeps
first-call allocations out), then the marker syscall with tag 1, one inference, tag 2, ``runs``
inferences, tag 3.  The counting plugin writes its running totals at each marker, so start-up,
module load and the warm-up fall outside the count, and the difference of the two segments
divided by ``runs - 1`` is one inference without the loop's and the markers' own work.

An f8tvm ``.so`` (beside its ``.json``) runs on the TVM runtime; an ``.onnx`` model on ONNX
Runtime with one thread, its optimized graph written to ``OPTIMIZED`` (so the host can check
what ran).

``stream:BYTES`` instead of a module reads an array of that many bytes per run (the cache models'
self-check).

Usage (on the board): ``python count_inference.py MODULE.so|MODEL.onnx|stream:BYTES RUNS
[--optimized PATH] [--regions SYMBOLS OUT]``: ``SYMBOLS`` lists ``start end bucket``
(hexadecimal offsets in the ``.so``, from the host); the board adds the address the ``.so`` was
loaded at and writes the plugin's regions file ``OUT``.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import json
import os
import sys

import numpy as np

MARKER = 0x4242  # the plugin's marker syscall number (tools/qemu_plugins/count.c)
START, REGIONS = 0, 4  # the plugin's tags: start the cache models; load the regions file


def load_base(path):
    """The address the dynamic loader mapped ``path`` at (its mapping of file offset 0)."""
    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        for line in f:
            fields = line.split()
            if len(fields) >= 6 and fields[5] == real and int(fields[2], 16) == 0:
                return int(fields[0].split("-")[0], 16)
    raise RuntimeError(f"{real} is not mapped in this process")


def write_regions(so, symbols, out):
    """The plugin's regions file: the host's symbol offsets plus the ``.so``'s load address."""
    base = load_base(so)
    with open(symbols) as f, open(out, "w") as g:
        for line in f:
            start, end, bucket = line.split()
            g.write(f"{base + int(start, 16):x} {base + int(end, 16):x} {bucket}\n")


def _tvm_runner(so):
    import tvm  # lazy: the ONNX Runtime counts run without TVM
    from tvm.runtime.vm import VirtualMachine  # lazy: as above

    with open(so[:-3] + ".json") as f:
        inp = json.load(f)["input"]
    x = np.random.default_rng(0).integers(0, 100, inp["shape"]).astype(inp["dtype"])
    vm = VirtualMachine(tvm.runtime.load_module(so), tvm.cpu())
    arg = tvm.runtime.tensor(x, tvm.cpu())
    return lambda: vm["main"](arg)


def _stream_runner(nbytes):
    """Reads an array of ``nbytes`` once per run (checks the cache models: one pass over more
    than a cache's size misses once per 64-byte line)."""
    a = np.ones(nbytes, np.uint8)
    return lambda: int(np.bitwise_or.reduce(a))


def _ort_runner(path, optimized):
    import onnxruntime as ort  # lazy: installed only beside the counter (tools.arm_count)

    so = ort.SessionOptions()
    so.intra_op_num_threads = so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if optimized:
        so.optimized_model_filepath = optimized
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    inp = sess.get_inputs()[0]
    x = np.random.default_rng(0).standard_normal(inp.shape).astype(np.float32)
    return lambda: sess.run(None, {inp.name: x})


def main(argv) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("module")
    ap.add_argument("runs", type=int)
    ap.add_argument("--optimized")
    ap.add_argument("--regions", nargs=2, metavar=("SYMBOLS", "OUT"))
    a = ap.parse_args(argv)
    path = a.module
    if path.startswith("stream:"):
        run = _stream_runner(int(path[len("stream:"):]))
    elif path.endswith(".onnx"):
        run = _ort_runner(path, a.optimized)
    else:
        run = _tvm_runner(path)
    syscall = ctypes.CDLL(None).syscall
    if a.regions:
        write_regions(path, *a.regions)
        syscall(MARKER, REGIONS)
    syscall(MARKER, START)
    run()  # warm-up: fills the caches; first-call allocations stay out of the count
    gc.disable()  # a collection inside one segment only would be counted as inference work
    for tag, n in ((1, 1), (2, a.runs)):
        syscall(MARKER, tag)
        for _ in range(n):
            run()
    syscall(MARKER, 3)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
