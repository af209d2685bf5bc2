"""Side-by-side latency benchmark: ``python -m tools.bench``.

One process per thread count (TVM sizes its thread pool once per process), and in it interleaved
rounds (every system runs once per round, in turn, so that a noisy neighbour slows all of them
alike), batch 1, float input to float output for every system:

* ``f8tvm-int8``: f8tvm with the default schedules for ``--target`` (the first of a comma list;
  each further target adds a row ``f8tvm-int8@TARGET``); ``f8tvm-int8-tuned`` with a tuning
  database (``--tuning-db``; its row says how many kernels the database tuned);
* ``f8tvm-int8-mul32``: the comparison build ``requantize="multiplier"``, bit-exact with
  ``f8tvm-int8`` but requantizing with int32 fixed-point multiplies (int64 products) instead of
  F8Net's shift, to show what the shift buys; it is *not* an 8-bit-only program (its row says how
  many wide multiplies its audit found);
* the peers, each set up the way its own documentation says and checked to have run its integer
  fast path (:mod:`tools.bench_peers`): ONNX Runtime int8 static quantization in QDQ and
  QOperator formats, and FP32; PyTorch int8 through PT2E (torchao's ``X86InductorQuantizer``,
  ``torch.compile``) and FX (``x86``), and FP32 eager.  A peer that fails its check is flagged
  in the table, the JSON and the plot.

Prints a table (median, p10/p90, ratio to the best peer, peak bound, the fast-path check with
the instruction set each system used, compile time) under a line naming this machine's CPU and
its int8 flags, and writes JSON and a PNG plot.  The "peak bound" of an f8tvm row is the model's
8-bit MACs divided by the measured MAC rate of its target's dot-product instruction on this
machine (:mod:`tools.peak`); the JSON and the table also give the bound of every int8
instruction this CPU has (AMX included), whichever system uses it.  Peers are optional (``pip
install .[bench]``); a missing one is reported and skipped.

``--rpc HOST:PORT`` times the f8tvm modules on a board's TVM RPC server instead: built for
``--target`` (e.g. ``arm``, ``arm-dotprod``), exported, uploaded, and timed by the board's own time
evaluator (``f8tvm.runtime.load(path, remote=...)``), the board's thread pool set to each
``--threads`` count.  The peers run only here, so they are skipped, and so is the peak bound (a
measurement of this machine).  When the board says it is emulated, the table and the JSON say the
timings are an emulator's and meaningless.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from importlib import metadata

import numpy as np
import torch

from f8tvm import api, runtime
from f8tvm.models import get_model
from f8tvm.runtime import missing_cpu_flags
from f8tvm.targets import get_target, host_target_name, read_cpuinfo

from . import bench_peers, peak
from .bench_peers import FastPath

F8TVM_SYSTEMS = ("f8tvm-int8", "f8tvm-int8-mul32", "f8tvm-int8-tuned")
PEERS = bench_peers.PEERS
SYSTEMS = F8TVM_SYSTEMS + PEERS
EMULATED_NOTE = ("EMULATED board ({}): these are an emulator's timings, meaningless for the real "
                 "board (only the results are exact)")
# the int8 instructions whose bound the bench reports, by the ISA name reports use
BOUND_ISAS = {"vpmaddwd": "AVX2", "vpdpbusd.ymm": "AVX-VNNI", "vpdpbusd": "AVX-512 VNNI",
              peak.AMX: "AMX"}


@dataclass
class System:
    name: str
    run: object  # callable(x: np.ndarray) -> np.ndarray
    set_threads: object  # callable(n)
    compile_s: float = 0.0
    note: str = ""
    fast_path: FastPath | None = None
    target: str | None = None  # f8tvm rows: the target preset
    times: dict = field(default_factory=dict)  # threads -> [ms]
    rounds: dict = field(default_factory=dict)  # threads -> [median ms of each round]
    timer: object = None  # callable(runs) -> [ms], for systems that time themselves (RPC)
    info: dict = field(default_factory=dict)  # extra JSON fields of the system's rows


def _peer_system(name, run, set_threads, compile_s, note, fast_path):
    return System(name, run, set_threads, compile_s, note, fast_path)


# ----------------------------------------------------------------------------- thread control
def _tvm_threads(n):
    # fixed for the process by TVM_NUM_THREADS (see main); checked, not changed, here
    if int(os.environ.get("TVM_NUM_THREADS", "0")) != n:
        raise RuntimeError("tools.bench: TVM_NUM_THREADS must be set before TVM starts")


def _board_threads(board):
    """Size the board's TVM thread pool (``runtime.config_threadpool``, big cores) when it does
    not have ``n`` threads already."""

    def set_threads(n):
        if int(board.session.get_function("runtime.NumThreads")()) != n:
            board.session.get_function("runtime.config_threadpool")(1, n)

    return set_threads


# ----------------------------------------------------------------------------- machine
def machine_info(cpu=None) -> dict:
    """This machine, for every output: CPU model, logical cores, the int8 flags and a class name
    (``x86-amx-2vcpu``) that names the benchmarks/ file of its results."""
    cpu = cpu or read_cpuinfo()
    if cpu is None:
        return dict(cpu=platform.machine(), cores=os.cpu_count(), flags={}, cls=platform.machine(),
                    describe=platform.machine())
    flags = cpu.int8_flags()
    best = next((name for flag, name in (("amx_int8", "amx"), ("avx512_vnni", "avx512vnni"),
                                         ("avx_vnni", "avxvnni"), ("avx2", "avx2"))
                 if flags.get(flag)), None)
    arch = "x86" if cpu.flags else platform.machine()
    cls = "-".join(filter(None, [arch, best, f"{cpu.cores}vcpu"]))
    return dict(cpu=cpu.model, cores=cpu.cores, flags=flags, cls=cls, describe=cpu.describe())


def _versions() -> dict:
    out = {}
    for dist in ("apache-tvm", "onnxruntime", "onnx", "torch", "torchao"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ----------------------------------------------------------------------------- systems
def f8tvm_system(name, model, x, calib, target, tuning_db=None, requantize="shift",
                 board=None, tmp=None):
    """Compile ``model`` with f8tvm; returns ``(System, CompiledModel)``.  With ``board`` (an
    open :class:`f8tvm.runtime.RemoteBoard`) the module is exported into ``tmp``, uploaded and
    timed on the board."""
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
    isa = cm.target.isa
    if audit.ok:
        check = FastPath(True, isa, f"audit of the emitted kernels: {audit.macs_8bit / 1e9:.2f} "
                         "G 8-bit MACs, 0 wide multiplies", "f8tvm audit")
    else:  # the comparison build: its requantize multiplies are int32 x int32 by design
        check = FastPath(None, isa, f"audit: {audit.wide_multiplies} wide multiply site(s) "
                         "(the int32-multiplier comparison build)", "f8tvm audit")
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
    common = dict(compile_s=dt, note="; ".join(notes), fast_path=check, target=cm.target.name,
                  info=info)
    if board is None:
        m = cm._runtime()
        return System(name, m.run, _tvm_threads, **common), cm
    so, _ = cm.export(os.path.join(tmp, f"{name}.so"))
    m = runtime.load(so, remote=board)

    def timer(runs):  # the board's time evaluator: one sample per run, no network in it
        return m.benchmark(number=1, repeat=runs)["samples_ms"]

    return System(name, m.run, _board_threads(board), timer=timer, **common), cm


def peer_systems(model, x, calib, tmp, wanted, out, name):
    """Build the wanted peers (quietly: their warnings and exporter chatter are shown only if one
    fails); a peer that cannot be built is recorded in ``out["skipped"]`` with the reason."""
    systems = []
    ort = [p for p in wanted if p.startswith("ort-")]
    if ort:
        try:
            with bench_peers.quiet():
                systems += bench_peers.onnx_systems(model, x, calib, tmp, ort, _peer_system)
        except Exception as e:  # noqa: BLE001  an optional peer that is missing or fails
            _skip(out, name, ort, f"{type(e).__name__}: {str(e)[:200]}")
    pt = [p for p in wanted if p.startswith("torch-")]
    if pt:
        try:
            with bench_peers.quiet():
                made, failed = bench_peers.torch_systems(model, x, calib, pt, _peer_system)
            systems += made
            for p, why in failed.items():
                _skip(out, name, [p], why)
        except Exception as e:  # noqa: BLE001
            _skip(out, name, pt, f"{type(e).__name__}: {str(e)[:200]}")
    return [s for p in PEERS for s in systems if s.name == p]


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
        cpu = read_cpuinfo()
        _PEAKS[key] = peak.peak_macs(instruction, threads, cpu.flags if cpu else None)
    return _PEAKS[key]


def _skip(out, model, systems, reason):
    for s in systems:
        print(f"  ({s} skipped: {reason})", flush=True)
        out["skipped"].append(dict(model=model, system=s, reason=reason))


def _time(systems, x, args, threads):
    for sy in systems:
        sy.set_threads(threads)
        for _ in range(args.warmup):
            sy.run(x)
    for _ in range(args.rounds):
        for sy in systems:
            ts = sy.times.setdefault(threads, [])
            # let the previous system's worker threads go idle (ORT, OpenMP and TVM pools spin
            # after a run and would take the cores from this one), then one untimed run to
            # bring this system's threads and data back
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


def bench_model(name, args, out, board=None):
    """Build and time every selected system on ``name``; appends to ``out["rows"]``,
    ``out["bounds"]`` and ``out["skipped"]``.  ``board``: an open RemoteBoard (``--rpc``)."""
    model, spec = get_model(name, seed=0)
    model.eval()
    size = args.input_size or spec.input_size
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1, 3, size, size)).astype("float32")
    calib = [rng.standard_normal((4, 3, size, size)).astype("float32")]
    where = "board" if board is not None else "local"
    print(f"\n== {name} {size}x{size}: building ...", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        xt = torch.from_numpy(x)
        common = dict(board=board, tmp=tmp)
        primary, *others = args.targets
        s, cm = f8tvm_system("f8tvm-int8", model, xt, calib, primary, **common)
        systems = [s]
        for t in others:
            systems.append(f8tvm_system(f"f8tvm-int8@{t}", model, xt, calib, t, **common)[0])
        if "f8tvm-int8-tuned" in args.systems:
            if args.tuning_db:
                systems.append(f8tvm_system("f8tvm-int8-tuned", model, xt, calib, primary,
                                            args.tuning_db, **common)[0])
            elif args.systems_given:
                _skip(out, name, ["f8tvm-int8-tuned"], "no --tuning-db")
        if "f8tvm-int8-mul32" in args.systems:
            systems.append(f8tvm_system("f8tvm-int8-mul32", model, xt, calib, primary,
                                        requantize="multiplier", **common)[0])
        peers = [p for p in PEERS if p in args.systems]
        if board is not None:
            if peers:
                _skip(out, name, peers, f"runs on this machine only, not on the board at "
                      f"{board.address}")
            peers = []
        if peers:
            print(f"   peers: {', '.join(peers)} ...", flush=True)
            systems += peer_systems(model, x, calib, tmp, peers, out, name)
        for threads in args.threads:
            _time(systems, x, args, threads)
    macs = cm.audit.macs_8bit
    emulated = bool(board is not None and board.emulated)
    for threads in args.threads:
        # the bounds are a measurement of this machine: only for local timings
        bounds = {} if board is not None else {
            i: macs / r * 1e3 for i in BOUND_ISAS if (r := _peak(i, threads))}
        for i, ms in bounds.items():
            out["bounds"].append(dict(model=name, size=size, threads=threads, instruction=i,
                                      isa=BOUND_ISAS[i], macs_8bit=int(macs), bound_ms=ms))
        rows = {sy.name: _stats(sy.times[threads]) for sy in systems}
        peers = [sy for sy in systems if sy.name in PEERS]
        best = min(peers, key=lambda sy: rows[sy.name]["median_ms"]) if peers else None
        best_peer = rows[best.name]["median_ms"] if best else None
        for sy in systems:
            r = rows[sy.name]
            instr = get_target(sy.target).dot_instruction if sy.target else None
            bound = bounds.get(instr) if instr in bounds else (
                macs / p * 1e3 if board is None and sy.target and (p := _peak(instr, threads))
                else None)
            fp = sy.fast_path
            out["rows"].append(dict(
                model=name, size=size, threads=threads, system=sy.name, target=sy.target, **r,
                vs_best_peer=(r["median_ms"] / best_peer) if best_peer else None,
                **_paired(sy.rounds[threads], best.rounds[threads] if best else None),
                peak_bound_ms=bound, compile_s=round(sy.compile_s, 1), where=where,
                emulated=emulated, note=sy.note,
                fast_path=fp.as_json() if fp else None,
                fast_path_ok=fp.ok if fp else None, isa=fp.isa if fp else None, **sy.info))


def _fmt(v, spec):
    return format(v, spec) if v is not None else "-"


def _check_label(r):
    fp = r.get("fast_path")
    return FastPath(**fp).label() if fp else "-"


def print_table(rows, board=None, machine=None, bounds=()):
    head = (f"{'model':<18} {'thr':>3} {'system':<24} {'median ms':>10} {'p10':>8} {'p90':>8} "
            f"{'x best peer':>11} {'paired':>6} {'peak bound':>10} {'check':<22} "
            f"{'compile s':>9}")
    emulated = board.get("emulated") if board else None
    if machine and not board:
        print(f"\nmachine: {machine['describe']}")
    if board:
        print(f"\ntimed on the board at {board['address']} ({board.get('machine') or '?'})")
    if emulated:
        print("!! " + EMULATED_NOTE.format(emulated))
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r['model']:<18} {r['threads']:>3} {r['system']:<24} {r['median_ms']:>10.2f} "
              f"{r['p10_ms']:>8.2f} {r['p90_ms']:>8.2f} {_fmt(r['vs_best_peer'], '.2f'):>11} "
              f"{_fmt(r.get('vs_best_peer_paired'), '.2f'):>6} "
              f"{_fmt(r['peak_bound_ms'], '.2f'):>10} {_check_label(r):<22} "
              f"{r['compile_s']:>9}")
    if bounds:
        print("\npeak bounds (the model's 8-bit MACs at this machine's measured rate of each "
              "instruction), ms:")
        keys = dict.fromkeys((b["model"], b["threads"]) for b in bounds)
        for m, t in keys:
            these = [b for b in bounds if (b["model"], b["threads"]) == (m, t)]
            print(f"  {m:<18} {t:>3} thr: " + ", ".join(
                f"{b['isa']} ({b['instruction']}) {b['bound_ms']:.2f}" for b in these))
    notes = dict.fromkeys(f"  {r['system']} ({r['model']}): {r['note']}" for r in rows
                          if r["note"])
    if notes:
        print("\n".join(["", "notes:", *notes]))
    checks = dict.fromkeys(
        f"  {r['system']} ({r['model']}, {r['threads']} thr): {_check_label(r)}: "
        f"{r['fast_path']['detail']}" for r in rows
        if r.get("fast_path") and r["system"] in PEERS)
    if checks:
        print("\n".join(["", "fast-path checks of the peers:", *checks]))
    flagged = [r for r in rows if r.get("fast_path_ok") is False]
    for r in flagged:
        print(f"!! {r['system']} ({r['model']}, {r['threads']} thr) FAILED its fast-path check: "
              f"its time is not that of its integer kernels ({r['fast_path']['detail']})")
    if emulated:
        print("!! " + EMULATED_NOTE.format(emulated))


def plot(rows, path, title=""):
    try:
        import matplotlib  # lazy: optional ([bench] extra); the table and JSON need no plot

        matplotlib.use("Agg")
        # lazy: optional ([bench] extra); the table and JSON need no plot
        import matplotlib.pyplot as plt
    except ImportError:
        print("(no plot: matplotlib is not installed; pip install .[bench])")
        return
    keys = sorted({(r["model"], r["threads"]) for r in rows})
    systems = list(dict.fromkeys(r["system"] for r in rows))
    fig, ax = plt.subplots(figsize=(max(7, 2.2 * len(keys)), 5))
    width = 0.8 / len(systems)
    by = {(r["model"], r["threads"], r["system"]): r for r in rows}
    failed_label = "FAILED its fast-path check"
    colors = [*plt.cm.tab10.colors, *plt.cm.Dark2.colors]  # one per system, more than ten
    for i, s in enumerate(systems):
        xs, med, lo, hi, ratios, failed = [], [], [], [], [], []
        for k, key in enumerate(keys):
            r = by.get((*key, s))
            if r is None:
                continue
            xs.append(k + i * width)
            med.append(r["median_ms"])
            lo.append(r["median_ms"] - r["p10_ms"])
            hi.append(r["p90_ms"] - r["median_ms"])
            ratios.append(r["vs_best_peer"])
            failed.append(r.get("fast_path_ok") is False)
        # the instruction sets its kernels used (the main one of each row)
        isas = dict.fromkeys(r["isa"].split("+")[0] for r in rows
                             if r["system"] == s and r.get("isa"))
        ax.bar(xs, med, width, yerr=[lo, hi], capsize=2, color=colors[i % len(colors)],
               label=s + (f" [{' / '.join(isas)}]" if isas else ""))
        for xx, m, bad in zip(xs, med, failed):  # a flagged row: its bar hatched in red
            if bad:
                ax.bar([xx], [m], width, fill=False, hatch="xx", edgecolor="red",
                       label=failed_label)
                failed_label = None
        if s.startswith("f8tvm"):
            for xx, m, h, q in zip(xs, med, hi, ratios):
                if q:
                    ax.annotate(f"{q:.2f}x", (xx, m + h), ha="center", va="bottom", fontsize=6)
    bound_label = "peak bound of f8tvm-int8's instruction"
    for k, key in enumerate(keys):
        b = next((r["peak_bound_ms"] for r in rows if (r["model"], r["threads"]) == key
                  and r["system"] == "f8tvm-int8" and r["peak_bound_ms"]), None)
        if b:
            ax.hlines(b, k - width / 2, k + 0.8 - width / 2, colors="k", linestyles="--",
                      label=bound_label)
            bound_label = None
    ax.set_xticks(np.arange(len(keys)) + 0.4 - width / 2)
    ax.set_xticklabels([f"{m}\n{t} thr" for m, t in keys])
    ax.set_ylabel("median latency (ms), batch 1; whiskers p10-p90")
    ax.set_title(title + ("\n" if title else "") + "labels: f8tvm median / best peer median",
                 fontsize=8)
    ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def _board_json(board):
    if board is None:
        return None
    return dict(address=board.address, machine=board.info.get("machine"),
                python=board.info.get("python"), emulated=board.emulated)


def _result(a, res, board, argv):
    """The JSON document of a whole run."""
    emulated = board.get("emulated") if board else None
    machine = {k: v for k, v in machine_info().items() if k != "describe"}
    return dict(
        target=a.targets[0], targets=a.targets, python=sys.version.split()[0],
        command=" ".join(["python -m tools.bench", *argv]),
        date=time.strftime("%Y-%m-%d"), machine=machine, versions=_versions(),
        where="board" if board else "local", board=board,
        timings=EMULATED_NOTE.format(emulated) if emulated else (
            "timed on the board by its TVM time evaluator" if board else "timed on this machine"),
        timings_meaningful=not emulated,
        peak_bound=("this machine's measured MAC rate of the row's dot instruction; 'bounds' "
                    "has every int8 instruction this CPU has" if not board else
                    "not applicable: the timings are the board's, the peak a local measurement"),
        flagged=[dict(model=r["model"], threads=r["threads"], system=r["system"],
                      detail=r["fast_path"]["detail"]) for r in res["rows"]
                 if r.get("fast_path_ok") is False],
        skipped=res["skipped"], bounds=res["bounds"], rows=res["rows"])


def _finish(a, res, board, argv):
    machine = machine_info()
    print_table(res["rows"], board, machine, res["bounds"])
    with open(a.output, "w") as f:
        json.dump(_result(a, res, board, argv), f, indent=1)
    print(f"wrote {a.output}")
    title = f"f8tvm bench, target {', '.join(a.targets)}" + (
        f", on the board at {board['address']}" if board else f"\n{machine['describe']}")
    if board and board.get("emulated"):
        title += f"\nEMULATED ({board['emulated']}): timings meaningless"
    if any(r.get("fast_path_ok") is False for r in res["rows"]):
        title += "\nhatched: FAILED its fast-path check (not its integer kernels)"
    plot(res["rows"], os.path.splitext(a.output)[0] + ".png", title)


def _run_part(a):
    """This process's thread count: every model; returns ({rows, bounds, skipped}, board)."""
    out = dict(rows=[], bounds=[], skipped=[])
    board = None
    if a.rpc:
        board = runtime.connect(a.rpc)
        print(f"board: {board.describe()}", flush=True)
        for t in a.targets:
            _check_board_target(board, t)
    try:
        for name in a.models.split(","):
            bench_model(name, a, out, board)
        return out, _board_json(board)
    finally:
        if board is not None:
            board.close()


def _check_board_target(board, target):
    machine = board.info.get("machine")
    triple = get_target(target).tvm_target.get("mtriple", "")
    if machine == "aarch64" and "aarch64" not in triple:
        raise SystemExit(f"tools.bench: the board is {machine} but --target {target} does not "
                         "build for it; use --target arm or arm-dotprod")


def _systems(p, given):
    """The rows asked for by ``--systems`` (aliases expanded), f8tvm-int8 always."""
    chosen = []
    for s in (given or ",".join(SYSTEMS)).split(","):
        if s:
            chosen += bench_peers.ALIASES.get(s, (s,))
    unknown = [s for s in chosen if s not in SYSTEMS]
    if unknown:
        p.error(f"unknown system(s) {', '.join(unknown)}; choose from {', '.join(SYSTEMS)} "
                f"(or {', '.join(bench_peers.ALIASES)})")
    return set(chosen) | {"f8tvm-int8"}


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.split("\n")[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2,efficientnet_lite0")
    p.add_argument("--target", default="host",
                   help="f8tvm's target preset, or a comma list: the first is f8tvm-int8, each "
                        "other adds a row f8tvm-int8@TARGET (default: host)")
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
                        f"(default: all of {', '.join(SYSTEMS[1:])}; ort-int8 and torch-int8 "
                        "stand for both of their int8 rows)")
    p.add_argument("--rpc", metavar="HOST:PORT", default=None,
                   help="time the f8tvm modules on the board whose TVM RPC server listens there "
                        "(build for its --target); the peers are skipped")
    p.add_argument("--output", default=None,
                   help="JSON file (the plot goes beside it as .png); default: "
                        "bench-<machine class>.json, e.g. bench-x86-amx-2vcpu.json")
    p.add_argument("--part", action="store_true", help=argparse.SUPPRESS)  # a child process
    a = p.parse_args(argv)
    argv = list(argv if argv is not None else sys.argv[1:])
    threads = [int(t) for t in a.threads.split(",")]
    a.targets = [host_target_name() if t == "host" else t for t in a.target.split(",") if t]
    for t in a.targets:
        try:
            preset = get_target(t)
        except ValueError as e:
            p.error(str(e))
        missing = missing_cpu_flags(preset.cpu_flags) if a.rpc is None else []
        if missing:  # timed here: this CPU must run the build
            p.error(f"the f8tvm build for target {t!r} needs CPU features this CPU lacks: "
                    f"{', '.join(missing)}; bench a build for this CPU (--target host), or time "
                    "it on a board that has them (--rpc)")
    a.target = a.targets[0]
    a.output = a.output or f"bench-{machine_info()['cls']}.json"
    a.systems_given = a.systems is not None
    a.systems = _systems(p, a.systems)
    if a.part or (len(threads) == 1 and os.environ.get("TVM_NUM_THREADS") == str(threads[0])):
        a.threads = threads
        res, board = _run_part(a)
        if a.part:
            with open(a.output, "w") as f:
                json.dump(dict(res=res, board=board), f)
        else:
            _finish(a, res, board, argv)
        return
    # one child process per thread count: each sizes TVM's, PyTorch's and ORT's pools alike
    res, board = dict(rows=[], bounds=[], skipped=[]), None
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this f8tvm's project
    with tempfile.TemporaryDirectory() as tmp:
        for t in threads:
            part = os.path.join(tmp, f"t{t}.json")
            env = dict(os.environ, TVM_NUM_THREADS=str(t), OMP_NUM_THREADS=str(t),
                       PYTHONPATH=os.pathsep.join([root, *filter(None, [
                           os.environ.get("PYTHONPATH")])]))
            cmd = [sys.executable, "-m", "tools.bench", *argv, "--threads", str(t),
                   "--output", part, "--target", ",".join(a.targets), "--part"]
            print(f"\n#### {t} thread(s)", flush=True)
            if subprocess.run(cmd, env=env).returncode:
                raise SystemExit(f"tools.bench: the {t}-thread run failed")
            with open(part) as f:
                got = json.load(f)
            res["rows"] += got["res"]["rows"]
            res["bounds"] += got["res"]["bounds"]
            res["skipped"] += [s for s in got["res"]["skipped"] if s not in res["skipped"]]
            board = board or got["board"]
    _finish(a, res, board, argv)


if __name__ == "__main__":
    main()
