"""Run a module's inferences between instruction-count markers (on the board).

Runs on the emulated board's Python, under ``tools.arm_count``'s counting emulator: one warm-up
inference, then the marker syscall with tag 1, one inference, tag 2, ``runs`` inferences, tag 3.
The counting plugin writes the running instruction total at each marker, so start-up, module
load and the warm-up fall outside the count, and the difference of the two segments divided by
``runs - 1`` is one inference without the loop's and the markers' own instructions.

An f8tvm ``.so`` (beside its ``.json``) runs on the TVM runtime; an ``.onnx`` model on ONNX
Runtime with one thread, its optimized graph written to ``OPTIMIZED`` (so the host can check
what ran).

Usage (on the board): ``python count_inference.py MODULE.so|MODEL.onnx RUNS [OPTIMIZED]``
"""

from __future__ import annotations

import ctypes
import gc
import json
import sys

import numpy as np

MARKER = 0x4242  # the plugin's marker syscall number (tools/qemu_plugins/count.c)


def _tvm_runner(so):
    import tvm  # lazy: the ONNX Runtime counts run without TVM
    from tvm.runtime.vm import VirtualMachine  # lazy: as above

    with open(so[:-3] + ".json") as f:
        inp = json.load(f)["input"]
    x = np.random.default_rng(0).integers(0, 100, inp["shape"]).astype(inp["dtype"])
    vm = VirtualMachine(tvm.runtime.load_module(so), tvm.cpu())
    arg = tvm.runtime.tensor(x, tvm.cpu())
    return lambda: vm["main"](arg)


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
    path, runs = argv[0], int(argv[1])
    run = (_ort_runner(path, argv[2] if len(argv) > 2 else None) if path.endswith(".onnx")
           else _tvm_runner(path))
    run()  # warm-up: first-call allocations stay out of the count
    syscall = ctypes.CDLL(None).syscall
    gc.disable()  # a collection inside one segment only would be counted as inference work
    for tag, n in ((1, 1), (2, runs)):
        syscall(MARKER, tag)
        for _ in range(n):
            run()
    syscall(MARKER, 3)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
