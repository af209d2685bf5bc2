"""Side-by-side latency benchmark: ``python -m f8tvm.bench``.

One process per thread count (TVM sizes its thread pool once per process), and in it interleaved
rounds (every system runs once per round, in turn, so that a noisy neighbour slows all of them
alike), batch 1, float input to float output for every system:

* f8tvm int8 with the default schedules, and with a tuning database (``--tuning-db``);
* ONNX Runtime int8 (static QDQ, uint8 activations x int8 per-channel weights) and FP32;
* PyTorch int8 (FX graph mode, x86 backend) and FP32 eager.

Prints a table (median, p10/p90, ratio to the best peer) and writes JSON and a PNG plot.  The
"peak bound" is the model's 8-bit MACs divided by the measured MAC rate of the target's
dot-product instruction (a register-only loop of it on every thread).  Peers are optional
(``pip install .[bench]``); a missing one is reported and skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

PEERS = ("ort-int8", "ort-fp32", "torch-int8", "torch-fp32")


@dataclass
class System:
    name: str
    run: object  # callable(x: np.ndarray) -> np.ndarray
    set_threads: object  # callable(n)
    compile_s: float = 0.0
    note: str = ""
    times: dict = field(default_factory=dict)  # threads -> [ms]


# ----------------------------------------------------------------------------- thread control
def _tvm_threads(n):
    # fixed for the process by TVM_NUM_THREADS (see main); checked, not changed, here
    if int(os.environ.get("TVM_NUM_THREADS", "0")) != n:
        raise RuntimeError("f8tvm.bench: TVM_NUM_THREADS must be set before TVM starts")


def _torch_threads(n):
    import torch

    torch.set_num_threads(n)


# ----------------------------------------------------------------------------- systems
def f8tvm_system(name, model, x, calib, target, tuning_db=None):
    from . import api

    t0 = time.perf_counter()
    kwargs = dict(tuning_db=tuning_db) if tuning_db else {}
    cm = api.compile(model, x, target=target, calib=calib, **kwargs)
    dt = time.perf_counter() - t0
    m = cm._runtime()
    return System(name, m.run, _tvm_threads, dt,
                  f"{cm.audit.macs_8bit / 1e9:.2f} G 8-bit MACs, "
                  f"{cm.extra_meta.get('tuning', {}).get('tuned', 0)} tuned kernels"), cm


def onnx_systems(model, x, calib, tmp):
    import onnxruntime as ort
    import torch
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    fp32 = os.path.join(tmp, "model.onnx")
    t0 = time.perf_counter()
    torch.onnx.export(model, (torch.from_numpy(x),), fp32, input_names=["x"],
                      output_names=["y"], opset_version=17, dynamo=False)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter([{"x": b[i:i + 1]} for b in calib for i in range(len(b))])

        def get_next(self):
            return next(self.it, None)

    int8 = os.path.join(tmp, "model.int8.onnx")
    quantize_static(fp32, int8, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    dt = time.perf_counter() - t0
    out = []
    for name, path in (("ort-int8", int8), ("ort-fp32", fp32)):
        holder = {}

        def set_threads(n, path=path, holder=holder):
            so = ort.SessionOptions()
            so.intra_op_num_threads = n
            so.inter_op_num_threads = 1
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            holder["s"] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

        def run(xx, holder=holder):
            return holder["s"].run(None, {"x": xx})[0]

        set_threads(1)
        out.append(System(name, run, set_threads, dt, f"onnxruntime {ort.__version__}"))
    return out


def torch_systems(model, x, calib):
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    def fp32(xx):
        with torch.no_grad():
            return model(torch.from_numpy(xx)).numpy()

    out = [System("torch-fp32", fp32, _torch_threads, 0.0, f"torch {torch.__version__} eager")]
    t0 = time.perf_counter()
    torch.backends.quantized.engine = "x86"
    import copy

    try:
        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                              (torch.from_numpy(x),))
        with torch.no_grad():
            for b in calib:
                prepared(torch.from_numpy(b))
        q = convert_fx(prepared)
    except Exception as e:  # FX cannot trace every model: keep the fp32 row
        print(f"  (torch-int8 skipped: {type(e).__name__}: {str(e)[:160]})")
        return out
    dt = time.perf_counter() - t0

    def int8(xx):
        with torch.no_grad():
            return q(torch.from_numpy(xx)).numpy()

    out.insert(0, System("torch-int8", int8, _torch_threads, dt, "FX graph mode, x86 backend"))
    return out


# ----------------------------------------------------------------------------- peak
_PEAK_C = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
/* 6 independent vpmaddwd + vpaddd chains on distinct operands (no common subexpression) */
int main(void) {
  __m256i a0 = _mm256_set1_epi16(1), a1 = _mm256_set1_epi16(2), a2 = _mm256_set1_epi16(3);
  __m256i a3 = _mm256_set1_epi16(4), a4 = _mm256_set1_epi16(5), a5 = _mm256_set1_epi16(6);
  __m256i b = _mm256_set1_epi16(7);
  __m256i c0 = _mm256_setzero_si256(), c1 = c0, c2 = c0, c3 = c0, c4 = c0, c5 = c0;
  long n = 50000000;
  struct timespec t0, t1;
  clock_gettime(CLOCK_MONOTONIC, &t0);
  for (long k = 0; k < n; k++) {
    c0 = _mm256_add_epi32(c0, _mm256_madd_epi16(a0, b));
    c1 = _mm256_add_epi32(c1, _mm256_madd_epi16(a1, b));
    c2 = _mm256_add_epi32(c2, _mm256_madd_epi16(a2, b));
    c3 = _mm256_add_epi32(c3, _mm256_madd_epi16(a3, b));
    c4 = _mm256_add_epi32(c4, _mm256_madd_epi16(a4, b));
    c5 = _mm256_add_epi32(c5, _mm256_madd_epi16(a5, b));
    __asm__ volatile("" : "+x"(a0), "+x"(a1), "+x"(a2), "+x"(a3), "+x"(a4), "+x"(a5), "+x"(b));
  }
  clock_gettime(CLOCK_MONOTONIC, &t1);
  __m256i s = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(c0, c1), c2),
                               _mm256_add_epi32(_mm256_add_epi32(c3, c4), c5));
  double dt = (t1.tv_sec - t0.tv_sec) + 1e-9 * (t1.tv_nsec - t0.tv_nsec);
  printf("%f %d\n", n * 6.0 * 16 / dt, _mm256_extract_epi32(s, 0));
  return 0;
}
"""


def measure_peak(instruction: str, threads: int) -> float | None:
    """8-bit MACs per second of ``instruction`` on ``threads`` threads (None if unknown)."""
    if instruction != "vpmaddwd":
        return None  # only the AVX2 kernel has a microbenchmark here
    with tempfile.TemporaryDirectory() as d:
        src, exe = os.path.join(d, "peak.c"), os.path.join(d, "peak")
        with open(src, "w") as f:
            f.write(_PEAK_C)
        if subprocess.run(["gcc", "-O2", "-mavx2", src, "-o", exe]).returncode:
            return None
        best = 0.0
        for _ in range(3):  # shared cores: keep the best of three
            procs = [subprocess.Popen([exe], stdout=subprocess.PIPE, text=True)
                     for _ in range(threads)]
            best = max(best, sum(float(p.communicate()[0].split()[0]) for p in procs))
    return best


# ----------------------------------------------------------------------------- main
def _stats(ts):
    t = np.asarray(ts)
    return dict(median_ms=float(np.median(t)), p10_ms=float(np.percentile(t, 10)),
                p90_ms=float(np.percentile(t, 90)), runs=int(t.size))


def bench_model(name, args, out_rows):
    import torch

    from targets import get_target

    from .models import get_model

    model, spec = get_model(name, seed=0)
    model.eval()
    size = args.input_size or spec.input_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, size, size)).astype("float32")
    calib = [rng.standard_normal((4, 3, size, size)).astype("float32")]
    preset = get_target(args.target)
    systems = []
    print(f"\n== {name} {size}x{size}: building ...", flush=True)
    s, cm = f8tvm_system("f8tvm-int8", model, torch.from_numpy(x), calib, args.target)
    systems.append(s)
    if args.tuning_db:
        systems.append(f8tvm_system("f8tvm-int8-tuned", model, torch.from_numpy(x), calib,
                                    args.target, args.tuning_db)[0])
    with tempfile.TemporaryDirectory() as tmp:
        for make in (lambda: onnx_systems(model, x, calib, tmp),
                     lambda: torch_systems(model, x, calib)):
            try:
                systems += make()
            except Exception as e:  # an optional peer that is missing or fails: say so
                print(f"  (peer skipped: {type(e).__name__}: {str(e)[:200]})")
        for threads in args.threads:
            for sy in systems:
                sy.set_threads(threads)
                for _ in range(args.warmup):
                    sy.run(x)
            for _ in range(args.rounds):
                for sy in systems:
                    ts = sy.times.setdefault(threads, [])
                    for _ in range(args.runs):
                        t0 = time.perf_counter()
                        sy.run(x)
                        ts.append((time.perf_counter() - t0) * 1e3)
    macs = cm.audit.macs_8bit
    for threads in args.threads:
        peak = measure_peak(preset.dot_instruction, threads)
        bound = macs / peak * 1e3 if peak else None
        rows = {sy.name: _stats(sy.times[threads]) for sy in systems}
        peers = [r["median_ms"] for n, r in rows.items() if not n.startswith("f8tvm")]
        best_peer = min(peers) if peers else None
        for sy in systems:
            r = rows[sy.name]
            out_rows.append(dict(
                model=name, size=size, threads=threads, system=sy.name, **r,
                vs_best_peer=(r["median_ms"] / best_peer) if best_peer else None,
                peak_bound_ms=bound, compile_s=round(sy.compile_s, 1), note=sy.note))


def print_table(rows):
    head = (f"{'model':<18} {'thr':>3} {'system':<18} {'median ms':>10} {'p10':>8} {'p90':>8} "
            f"{'x best peer':>11} {'peak bound':>10} {'compile s':>9}")
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        ratio = f"{r['vs_best_peer']:.2f}" if r["vs_best_peer"] else "-"
        bound = f"{r['peak_bound_ms']:.2f}" if r["peak_bound_ms"] else "-"
        print(f"{r['model']:<18} {r['threads']:>3} {r['system']:<18} {r['median_ms']:>10.2f} "
              f"{r['p10_ms']:>8.2f} {r['p90_ms']:>8.2f} {ratio:>11} {bound:>10} "
              f"{r['compile_s']:>9}")


def plot(rows, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install .[bench])")
        return
    keys = sorted({(r["model"], r["threads"]) for r in rows})
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(keys)), 4))
    width = 0.8 / len(systems)
    for i, s in enumerate(systems):
        vals = [next((r["median_ms"] for r in rows if (r["model"], r["threads"]) == k
                      and r["system"] == s), 0) for k in keys]
        ax.bar(np.arange(len(keys)) + i * width, vals, width, label=s)
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{m}\n{t} thr" for m, t in keys])
    ax.set_ylabel("median latency (ms), batch 1")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def main(argv=None):
    from targets import host_target_name

    p = argparse.ArgumentParser(prog="python -m f8tvm.bench", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,efficientnet_lite0")
    p.add_argument("--target", default="host")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--runs", type=int, default=10, help="timed runs per system per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--tuning-db", default=None)
    p.add_argument("--output", default="bench.json")
    a = p.parse_args(argv)
    threads = [int(t) for t in a.threads.split(",")]
    if a.target == "host":
        a.target = host_target_name()
    if len(threads) == 1 and os.environ.get("TVM_NUM_THREADS") == str(threads[0]):
        a.threads = threads
        rows = []
        for name in a.models.split(","):
            bench_model(name, a, rows)
            print_table(rows)
        with open(a.output, "w") as f:
            json.dump(dict(target=a.target, rows=rows), f, indent=1)
        return
    # one child process per thread count: each sizes TVM's, PyTorch's and ORT's pools alike
    rows = []
    argv = list(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory() as tmp:
        for t in threads:
            part = os.path.join(tmp, f"t{t}.json")
            env = dict(os.environ, TVM_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t))
            cmd = [sys.executable, "-m", "f8tvm.bench", *argv, "--threads", str(t),
                   "--output", part, "--target", a.target]
            print(f"\n#### {t} thread(s)", flush=True)
            if subprocess.run(cmd, env=env).returncode:
                raise SystemExit(f"f8tvm.bench: the {t}-thread run failed")
            with open(part) as f:
                rows += json.load(f)["rows"]
    print_table(rows)
    with open(a.output, "w") as f:
        json.dump(dict(target=a.target, python=sys.version.split()[0], command=" ".join(
            ["python -m f8tvm.bench"] + (argv or [])), rows=rows), f, indent=1)
    print(f"wrote {a.output}")
    plot(rows, os.path.splitext(a.output)[0] + ".png")


if __name__ == "__main__":
    main()
