"""Side-by-side latency benchmark: ``python -m f8tvm.bench``.

One process per thread count (TVM sizes its thread pool once per process), and in it interleaved
rounds (every system runs once per round, in turn, so that a noisy neighbour slows all of them
alike), batch 1, float input to float output for every system:

* ``f8tvm-int8``: f8tvm with the default schedules; ``f8tvm-int8-tuned`` with a tuning database
  (``--tuning-db``; its row says how many kernels the database tuned);
* ``f8tvm-int8-mul32``: the comparison build ``requantize="multiplier"``, bit-exact with
  ``f8tvm-int8`` but requantizing with int32 fixed-point multiplies (int64 products) instead of
  F8Net's shift, to show what the shift buys; it is *not* an 8-bit-only program (its row says how
  many wide multiplies its audit found);
* ONNX Runtime int8 (static QDQ, uint8 activations x int8 per-channel weights) and FP32;
* PyTorch int8 (FX graph mode, x86 backend) and FP32 eager.

Prints a table (median, p10/p90, ratio to the best peer, peak bound, compile time) and writes JSON
and a PNG plot.  The "peak bound" is the model's 8-bit MACs divided by the measured MAC rate of
the target's dot-product instruction (a register-only loop of it on every thread, on this
machine).  Peers are optional (``pip install .[bench]``); a missing one is reported and skipped.

``--rpc HOST:PORT`` times the f8tvm modules on a board's TVM RPC server instead: built for
``--target`` (e.g. ``arm``, ``arm-dotprod``), exported, uploaded, and timed by the board's own time
evaluator (``f8tvm.runtime.load(path, remote=...)``), the board's thread pool set to each
``--threads`` count.  The peers run only here, so they are skipped, and so is the peak bound (a
measurement of this machine).  When the board says it is emulated, the table and the JSON say the
timings are an emulator's and meaningless.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field

import numpy as np

F8TVM_SYSTEMS = ("f8tvm-int8", "f8tvm-int8-mul32", "f8tvm-int8-tuned")
PEERS = ("ort-int8", "ort-fp32", "torch-int8", "torch-fp32")
SYSTEMS = F8TVM_SYSTEMS + PEERS
EMULATED_NOTE = ("EMULATED board ({}): these are an emulator's timings, meaningless for the real "
                 "board (only the results are exact)")


@dataclass
class System:
    name: str
    run: object  # callable(x: np.ndarray) -> np.ndarray
    set_threads: object  # callable(n)
    compile_s: float = 0.0
    note: str = ""
    times: dict = field(default_factory=dict)  # threads -> [ms]
    rounds: dict = field(default_factory=dict)  # threads -> [median ms of each round]
    timer: object = None  # callable(runs) -> [ms], for systems that time themselves (RPC)
    info: dict = field(default_factory=dict)  # extra JSON fields of the system's rows


# ----------------------------------------------------------------------------- thread control
def _tvm_threads(n):
    # fixed for the process by TVM_NUM_THREADS (see main); checked, not changed, here
    if int(os.environ.get("TVM_NUM_THREADS", "0")) != n:
        raise RuntimeError("f8tvm.bench: TVM_NUM_THREADS must be set before TVM starts")


def _torch_threads(n):
    import torch

    torch.set_num_threads(n)


def _board_threads(board):
    """Size the board's TVM thread pool (``runtime.config_threadpool``, big cores) when it does
    not have ``n`` threads already."""

    def set_threads(n):
        if int(board.session.get_function("runtime.NumThreads")()) != n:
            board.session.get_function("runtime.config_threadpool")(1, n)

    return set_threads


# ----------------------------------------------------------------------------- systems
def f8tvm_system(name, model, x, calib, target, tuning_db=None, requantize="shift",
                 board=None, tmp=None):
    """Compile ``model`` with f8tvm; returns ``(System, CompiledModel)``.  With ``board`` (an
    open :class:`f8tvm.runtime.RemoteBoard`) the module is exported into ``tmp``, uploaded and
    timed on the board."""
    from . import api, runtime

    t0 = time.perf_counter()
    kwargs = dict(tuning_db=tuning_db) if tuning_db else {}
    if requantize != "shift":
        kwargs["requantize"] = requantize
    cm = api.compile(model, x, target=target, calib=calib, **kwargs)
    dt = time.perf_counter() - t0
    audit = cm.audit
    info = dict(macs_8bit=int(audit.macs_8bit), wide_multiplies=int(audit.wide_multiplies),
                int8_only=bool(audit.ok), requantize=requantize)
    notes = [f"{audit.macs_8bit / 1e9:.2f} G 8-bit MACs"]
    if tuning_db:
        t = cm.extra_meta.get("tuning", {})
        info.update(tuned_kernels=int(t.get("tuned", 0)), tunable_kernels=int(t.get("tunable", 0)))
        notes.append(f"{t.get('tuned', 0)}/{t.get('tunable', 0)} kernels tuned from "
                     f"{tuning_db} ({t.get('exact', 0)} exact, {t.get('by_anchor', 0)} by "
                     "anchor)")
    if requantize == "multiplier":
        rq = cm.extra_meta["requantize"]
        info.update(requantize_multiplies=int(rq["rewritten"]))
        notes.append(f"NOT 8-bit only: {rq['rewritten']} requantizes by int32 multiplier, audit: "
                     f"{audit.wide_multiplies} wide multiply site(s)")
    if board is None:
        m = cm._runtime()
        return System(name, m.run, _tvm_threads, dt, "; ".join(notes), info=info), cm
    so, _ = cm.export(os.path.join(tmp, f"{name}.so"))
    m = runtime.load(so, remote=board)

    def timer(runs):  # the board's time evaluator: one sample per run, no network in it
        return m.benchmark(number=1, repeat=runs)["samples_ms"]

    return System(name, m.run, _board_threads(board), dt, "; ".join(notes), timer=timer,
                  info=info), cm


@contextlib.contextmanager
def _quiet_peers():
    """Build the peers without their screens of deprecation warnings and per-tensor log lines
    (torch's FX quantization, the ONNX exporter, ORT's quantizer); errors still show."""
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        import onnxruntime

        onnxruntime.set_default_logger_severity(3)
    except ImportError:
        pass
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        root.setLevel(level)


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
            so.log_severity_level = 3  # errors only: ORT warns about every unused initializer
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            holder["s"] = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])

        def run(xx, holder=holder):
            return holder["s"].run(None, {"x": xx})[0]

        set_threads(1)
        out.append(System(name, run, set_threads, dt, f"onnxruntime {ort.__version__}"))
    return out


def torch_systems(model, x, calib, int8=True):
    import torch
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    def fp32(xx):
        with torch.no_grad():
            return model(torch.from_numpy(xx)).numpy()

    out = [System("torch-fp32", fp32, _torch_threads, 0.0, f"torch {torch.__version__} eager")]
    if not int8:
        return out
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
        time.sleep(1.0)  # measured after the timed rounds: let their worker threads go idle
        for _ in range(5):  # shared cores: keep the best of five
            procs = [subprocess.Popen([exe], stdout=subprocess.PIPE, text=True)
                     for _ in range(threads)]
            best = max(best, sum(float(p.communicate()[0].split()[0]) for p in procs))
    return best


# ----------------------------------------------------------------------------- main
def _stats(ts):
    t = np.asarray(ts)
    return dict(median_ms=float(np.median(t)), p10_ms=float(np.percentile(t, 10)),
                p90_ms=float(np.percentile(t, 90)), runs=int(t.size))


def _paired(mine, peer):
    """The ratio to the best peer taken round by round (both systems' medians of one round, run
    back to back) — the VM's slow drifts cancel in it — as its median and p10/p90 over rounds."""
    if not peer:
        return dict(vs_best_peer_paired=None, vs_best_peer_paired_p10=None,
                    vs_best_peer_paired_p90=None)
    r = np.asarray(mine) / np.asarray(peer)
    return dict(vs_best_peer_paired=float(np.median(r)),
                vs_best_peer_paired_p10=float(np.percentile(r, 10)),
                vs_best_peer_paired_p90=float(np.percentile(r, 90)))


_PEAKS: dict = {}  # (instruction, threads) -> MAC/s, measured once per process


def _peak(instruction, threads):
    key = (instruction, threads)
    if key not in _PEAKS:
        _PEAKS[key] = measure_peak(instruction, threads)
    return _PEAKS[key]


def _skip(out, model, systems, reason):
    for s in systems:
        print(f"  ({s} skipped: {reason})", flush=True)
        out["skipped"].append(dict(model=model, system=s, reason=reason))


def bench_model(name, args, out, board=None):
    """Build and time every selected system on ``name``; appends to ``out["rows"]`` and
    ``out["skipped"]``.  ``board``: an open RemoteBoard (``--rpc``), else None."""
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
    where = "board" if board is not None else "local"
    print(f"\n== {name} {size}x{size}: building ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        xt = torch.from_numpy(x)
        common = dict(board=board, tmp=tmp)
        s, cm = f8tvm_system("f8tvm-int8", model, xt, calib, args.target, **common)
        systems = [s]
        if "f8tvm-int8-tuned" in args.systems:
            if args.tuning_db:
                systems.append(f8tvm_system("f8tvm-int8-tuned", model, xt, calib, args.target,
                                            args.tuning_db, **common)[0])
            elif args.systems_given:
                _skip(out, name, ["f8tvm-int8-tuned"], "no --tuning-db")
        if "f8tvm-int8-mul32" in args.systems:
            systems.append(f8tvm_system("f8tvm-int8-mul32", model, xt, calib, args.target,
                                        requantize="multiplier", **common)[0])
        peers = [p for p in PEERS if p in args.systems]
        if board is not None:
            if peers:
                _skip(out, name, peers, f"runs on this machine only, not on the board at "
                      f"{board.address}")
            peers = []
        makers = ((("ort-int8", "ort-fp32"), lambda: onnx_systems(model, x, calib, tmp)),
                  (("torch-int8", "torch-fp32"),
                   lambda: torch_systems(model, x, calib, int8="torch-int8" in peers)))
        for group, make in makers:
            wanted = [p for p in group if p in peers]
            if not wanted:
                continue
            try:
                with _quiet_peers():
                    made = [sy for sy in make() if sy.name in wanted]
            except Exception as e:  # an optional peer that is missing or fails: say so
                _skip(out, name, wanted, f"{type(e).__name__}: {str(e)[:200]}")
                continue
            _skip(out, name, [p for p in wanted if p not in {sy.name for sy in made}],
                  "the peer could not build this model (see above)")
            systems += made
        for threads in args.threads:
            for sy in systems:
                sy.set_threads(threads)
                for _ in range(args.warmup):
                    sy.run(x)
            for _ in range(args.rounds):
                for sy in systems:
                    ts = sy.times.setdefault(threads, [])
                    # let the previous system's worker threads go idle (ORT, OpenMP and TVM
                    # pools spin after a run and would take the cores from this one), then one
                    # untimed run to bring this system's threads and data back
                    time.sleep(args.settle)
                    sy.run(x)
                    if sy.timer is not None:
                        this = list(sy.timer(args.runs))
                    else:
                        this = []
                        for _ in range(args.runs):
                            t0 = time.perf_counter()
                            sy.run(x)
                            this.append((time.perf_counter() - t0) * 1e3)
                    ts += this
                    sy.rounds.setdefault(threads, []).append(float(np.median(this)))
    macs = cm.audit.macs_8bit
    emulated = bool(board is not None and board.emulated)
    for threads in args.threads:
        # the peak bound is a measurement of this machine: only for local timings
        peak = _peak(preset.dot_instruction, threads) if board is None else None
        bound = macs / peak * 1e3 if peak else None
        rows = {sy.name: _stats(sy.times[threads]) for sy in systems}
        peers = [sy for sy in systems if sy.name in PEERS]
        best = min(peers, key=lambda sy: rows[sy.name]["median_ms"]) if peers else None
        best_peer = rows[best.name]["median_ms"] if best else None
        for sy in systems:
            r = rows[sy.name]
            out["rows"].append(dict(
                model=name, size=size, threads=threads, system=sy.name, **r,
                vs_best_peer=(r["median_ms"] / best_peer) if best_peer else None,
                **_paired(sy.rounds[threads], best.rounds[threads] if best else None),
                peak_bound_ms=bound, compile_s=round(sy.compile_s, 1), where=where,
                emulated=emulated, note=sy.note, **sy.info))


def _fmt(v, spec):
    return format(v, spec) if v is not None else "-"


def print_table(rows, board=None):
    head = (f"{'model':<18} {'thr':>3} {'system':<18} {'median ms':>10} {'p10':>8} {'p90':>8} "
            f"{'x best peer':>11} {'paired':>6} {'peak bound':>10} {'compile s':>9}")
    emulated = board.get("emulated") if board else None
    if board:
        print(f"\ntimed on the board at {board['address']} ({board.get('machine') or '?'})")
    if emulated:
        print("!! " + EMULATED_NOTE.format(emulated))
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['model']:<18} {r['threads']:>3} {r['system']:<18} {r['median_ms']:>10.2f} "
              f"{r['p10_ms']:>8.2f} {r['p90_ms']:>8.2f} {_fmt(r['vs_best_peer'], '.2f'):>11} "
              f"{_fmt(r.get('vs_best_peer_paired'), '.2f'):>6} "
              f"{_fmt(r['peak_bound_ms'], '.2f'):>10} {r['compile_s']:>9}")
    notes = dict.fromkeys(f"  {r['system']} ({r['model']}): {r['note']}" for r in rows
                          if r["note"])
    if notes:
        print("\n".join(["", "notes:", *notes]))
    if emulated:
        print("!! " + EMULATED_NOTE.format(emulated))


def plot(rows, path, title=""):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install .[bench])")
        return
    keys = sorted({(r["model"], r["threads"]) for r in rows})
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(6, 1.8 * len(keys)), 4.5))
    width = 0.8 / len(systems)
    by = {(r["model"], r["threads"], r["system"]): r for r in rows}
    for i, s in enumerate(systems):
        xs, med, lo, hi, ratios = [], [], [], [], []
        for k, key in enumerate(keys):
            r = by.get((*key, s))
            if r is None:
                continue
            xs.append(k + i * width)
            med.append(r["median_ms"])
            lo.append(r["median_ms"] - r["p10_ms"])
            hi.append(r["p90_ms"] - r["median_ms"])
            ratios.append(r["vs_best_peer"])
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, label=s)
        if s in F8TVM_SYSTEMS:
            for xx, m, h, q in zip(xs, med, hi, ratios):
                if q:
                    ax.annotate(f"{q:.2f}x", (xx, m + h), ha="center", va="bottom", fontsize=6)
    bound_label = "peak bound"
    for k, key in enumerate(keys):
        b = next((r["peak_bound_ms"] for r in rows if (r["model"], r["threads"]) == key
                  and r["peak_bound_ms"]), None)
        if b:
            ax.hlines(b, k - width / 2, k + 0.8 - width / 2, colors="k", linestyles="--",
                      label=bound_label)
            bound_label = None
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{m}\n{t} thr" for m, t in keys])
    ax.set_ylabel("median latency (ms), batch 1; whiskers p10-p90")
    ax.set_title(title + ("\n" if title else "") + "labels: f8tvm median / best peer median",
                 fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def _board_json(board):
    if board is None:
        return None
    return dict(address=board.address, machine=board.info.get("machine"),
                python=board.info.get("python"), emulated=board.emulated)


def _result(a, rows, skipped, board, argv):
    """The JSON document of a whole run."""
    emulated = board.get("emulated") if board else None
    return dict(
        target=a.target, python=sys.version.split()[0],
        command=" ".join(["python -m f8tvm.bench", *argv]),
        where="board" if board else "local", board=board,
        timings=EMULATED_NOTE.format(emulated) if emulated else (
            "timed on the board by its TVM time evaluator" if board else "timed on this machine"),
        timings_meaningful=not emulated,
        peak_bound=("this machine's measured dot-instruction MAC rate" if not board else
                    "not applicable: the timings are the board's, the peak a local measurement"),
        skipped=skipped, rows=rows)


def _finish(a, rows, skipped, board, argv):
    print_table(rows, board)
    with open(a.output, "w") as f:
        json.dump(_result(a, rows, skipped, board, argv), f, indent=1)
    print(f"wrote {a.output}")
    title = f"f8tvm.bench, target {a.target}" + (
        f", on the board at {board['address']}" if board else "")
    if board and board.get("emulated"):
        title += f"\nEMULATED ({board['emulated']}): timings meaningless"
    plot(rows, os.path.splitext(a.output)[0] + ".png", title)


def _run_part(a):
    """This process's thread count: every model; returns (rows, skipped, board json)."""
    out = dict(rows=[], skipped=[])
    board = None
    if a.rpc:
        from . import runtime

        board = runtime.connect(a.rpc)
        print(f"board: {board.describe()}", flush=True)
        _check_board_target(board, a.target)
    try:
        for name in a.models.split(","):
            bench_model(name, a, out, board)
        return out["rows"], out["skipped"], _board_json(board)
    finally:
        if board is not None:
            board.close()


def _check_board_target(board, target):
    from targets import get_target

    machine = board.info.get("machine")
    triple = get_target(target).tvm_target.get("mtriple", "")
    if machine == "aarch64" and "aarch64" not in triple:
        raise SystemExit(f"f8tvm.bench: the board is {machine} but --target {target} does not "
                         "build for it; use --target arm or arm-dotprod")


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
    p.add_argument("--settle", type=float, default=0.3,
                   help="seconds of idle before each system's turn in a round, so that the "
                        "spinning worker threads of the one before do not compete (default 0.3)")
    p.add_argument("--tuning-db", default=None,
                   help="adds the f8tvm-int8-tuned row, built with this tuning database")
    p.add_argument("--systems", default=None,
                   help=f"comma list of the rows to run besides f8tvm-int8, which always runs "
                        f"(default: all of {', '.join(SYSTEMS[1:])})")
    p.add_argument("--rpc", metavar="HOST:PORT", default=None,
                   help="time the f8tvm modules on the board whose TVM RPC server listens there "
                        "(build for its --target); the peers are skipped")
    p.add_argument("--output", default="bench.json")
    p.add_argument("--part", action="store_true", help=argparse.SUPPRESS)  # a child process
    a = p.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    threads = [int(t) for t in a.threads.split(",")]
    if a.target == "host":
        a.target = host_target_name()
    if a.rpc is None:  # timed here: this CPU must run the build
        from targets import get_target

        from .runtime import missing_cpu_flags

        missing = missing_cpu_flags(get_target(a.target).cpu_flags)
        if missing:
            p.error(f"the f8tvm build for target {a.target!r} needs CPU features this CPU lacks: "
                    f"{', '.join(missing)}; bench a build for this CPU (--target host), or time "
                    "it on a board that has them (--rpc)")
    a.systems_given = a.systems is not None
    chosen = [s for s in (a.systems or ",".join(SYSTEMS)).split(",") if s]
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)}")
    a.systems = set(chosen) | {"f8tvm-int8"}
    if a.part or (len(threads) == 1 and os.environ.get("TVM_NUM_THREADS") == str(threads[0])):
        a.threads = threads
        rows, skipped, board = _run_part(a)
        if a.part:
            with open(a.output, "w") as f:
                json.dump(dict(rows=rows, skipped=skipped, board=board), f)
        else:
            _finish(a, rows, skipped, board, argv)
        return
    # one child process per thread count: each sizes TVM's, PyTorch's and ORT's pools alike
    rows, skipped, board = [], [], None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this f8tvm's project
    with tempfile.TemporaryDirectory() as tmp:
        for t in threads:
            part = os.path.join(tmp, f"t{t}.json")
            env = dict(os.environ, TVM_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t),
                       PYTHONPATH=os.pathsep.join([root, *filter(None, [
                           os.environ.get("PYTHONPATH")])]))
            cmd = [sys.executable, "-m", "f8tvm.bench", *argv, "--threads", str(t),
                   "--output", part, "--target", a.target, "--part"]
            print(f"\n#### {t} thread(s)", flush=True)
            if subprocess.run(cmd, env=env).returncode:
                raise SystemExit(f"f8tvm.bench: the {t}-thread run failed")
            with open(part) as f:
                res = json.load(f)
            rows += res["rows"]
            skipped += [s for s in res["skipped"] if s not in skipped]
            board = board or res["board"]
    _finish(a, rows, skipped, board, argv)


if __name__ == "__main__":
    main()
