"""Tuning with MetaSchedule (AutoTVM's successor): our schedules are the search space.

A *task* is one fused kernel that holds a packed conv or depthwise block.  Its search space is
our own schedule (``schedules.cpu``) with the register-tile splits left as sampled decisions;
MetaSchedule's evolutionary search, guided by its XGBoost cost model, mutates them and measures
candidates (locally, or on remote boards through an RPC tracker).  Records go to a JSON
database in a directory; re-running continues from it (the search starts from the best records).

Applying a database is explicit: each kernel of the build is looked up by the same
``IRModule({"main": kernel})`` it was tuned as; failing that, by its *anchor* (the conv block's
loop extents and buffer shapes), whose best record's split decisions are replayed through our
schedule.  The anchor matters because scalar requantization constants (shift amounts) are part
of a fused kernel, so a model calibrated differently has structurally different kernels with
the same conv.  The build reports how many kernels got a record and how.  (MetaSchedule's own
``compile_relax`` fuses differently from the tuning entry points, so its lookups can silently
miss; we never rely on that path.)
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from dataclasses import dataclass

import numpy as np
from tvm import rpc
from tvm.driver import build
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from f8tvm.core._tvm import cc, primfuncs, region_tensor, tvm
from f8tvm.core.bindings import copy_module
from f8tvm.core.errors import InputError
from f8tvm.passes.audit_multiplies import call_counts
from f8tvm.targets.cpu import enable_amx

from . import DotIntrin, cpu, default_schedule, kernel_block, kernel_kind


@dataclass
class Task:
    name: str  # kernel name in the fused module
    kind: str  # 'conv' | 'depthwise'
    mod: object  # IRModule({"main": kernel}): the workload key
    weight: int  # how many times the model calls it


def task_module(prim_func):
    """The workload form of a kernel (also its database key)."""
    func = prim_func.without_attr("tirx.is_scheduled") if prim_func.attrs and \
        "tirx.is_scheduled" in prim_func.attrs else prim_func
    return tvm.IRModule({"main": func.with_attr("global_symbol", "main")})


def extract_tasks(fused_mod) -> list[Task]:
    """The tunable kernels of a fused module (convs and depthwise convs), with call counts."""
    calls = call_counts(fused_mod)
    tasks = []
    for name, func in primfuncs(fused_mod):
        kind = kernel_kind(func)
        if kind in ("conv", "depthwise"):
            tasks.append(Task(name, kind, task_module(func), calls.get(name, 1)))
    return tasks


def _space(kind, dot):
    def sch_fn(sch):
        if kind == "conv":
            cpu.schedule_conv(sch, dot, tune=True)
        else:
            cpu.schedule_depthwise(sch, dot, tune=True)

    return sch_fn


def check_database(db_dir: str) -> None:
    """A MetaSchedule database folder: its workload file there, and every line of its two
    JSON-lines files JSON (TVM's own reader stops on a bad line with a C++ traceback)."""
    wl = os.path.join(db_dir, "database_workload.json")
    if not os.path.isfile(wl):
        raise FileNotFoundError(f"no tuning database in {db_dir} (make one with python -m "
                                f"f8tvm.tune --db {db_dir})")
    for path in (wl, os.path.join(db_dir, "database_tuning_record.json")):
        if not os.path.isfile(path):
            continue
        with open(path) as f:
            for i, line in enumerate(f, 1):
                try:
                    if line.strip():
                        json.loads(line)
                except json.JSONDecodeError as err:
                    raise InputError(f"{path} line {i} is not JSON ({err.msg}); the database is "
                                     "damaged: tune again into a fresh folder") from None


def open_database(db_dir: str, create: bool = False):
    """The database in ``db_dir`` (checked, :func:`check_database`); ``create``: a new one
    where there is none."""
    if not create or os.path.exists(os.path.join(db_dir, "database_workload.json")):
        check_database(db_dir)
    os.makedirs(db_dir, exist_ok=True)
    return ms.database.JSONDatabase(work_dir=db_dir, allow_missing=True)


def _build_kernel(mod, target, _params):
    # MetaSchedule's default build first imports tvm.s_tir.tensor_intrin, which parses every
    # target's intrinsics (about a minute per worker); our candidates arrive already
    # tensorized, so plain code generation is all they need.

    return build(mod, target=target)


def make_builder(cross_compiler: str | None = None, timeout_sec: float = 120.0):
    """A local builder (parallel LLVM builds); ``cross_compiler`` links for a remote board."""
    f_export = None
    if cross_compiler:
        def f_export(rt_mod, cxx=cross_compiler):
            path = os.path.join(tempfile.mkdtemp(), "kernel.so")
            rt_mod.export_library(path, fcompile=cc.cross_compiler(cxx))
            return path

    return ms.builder.LocalBuilder(timeout_sec=timeout_sec, f_build=_build_kernel,
                                   f_export=f_export)


def alloc_from_host(session, device, args_info, alloc_repeat):
    """MetaSchedule's argument allocator for boards: random inputs made here with NumPy and
    copied over RPC.  MetaSchedule's default asks the board for
    ``tvm.contrib.random.random_fill_for_measure``, which the runtime-only TVM of a board (the
    apache-tvm wheel with ``TVM_USE_RUNTIME_LIB=1``, f8tvm's emulated board) does not have."""
    rng = np.random.default_rng(0)
    repeated = []
    for _ in range(alloc_repeat):
        args = []
        for kind, dtype, shape in args_info:
            if kind != "TENSOR":
                raise NotImplementedError(f"argument kind {kind!r}")
            if dtype.startswith(("int", "uint")):
                info = np.iinfo(dtype)
                lo, hi = max(int(info.min), -128), min(int(info.max), 127)
                arr = rng.integers(lo, hi + 1, size=shape).astype(dtype)
            else:
                arr = rng.standard_normal(size=shape).astype(dtype)
            args.append(tvm.runtime.tensor(arr, device))
        repeated.append(args)
    return repeated


def make_runner(tracker: str | None = None, device_key: str | None = None,
                evaluator=None, timeout_sec: int = 60, amx: bool = False):
    """Where candidates are measured: this machine, or boards registered to an RPC tracker
    (``host:port``) under ``device_key`` -- several boards measure in parallel.  ``amx``: the
    candidates use AMX tiles, so each local worker process first asks Linux for them
    (:func:`f8tvm.runtime.enable_amx`; without it the first tile instruction kills the worker).
    A board's RPC server asks for them itself when it loads an f8tvm module, not for MetaSchedule's
    kernels: tuning AMX kernels over RPC is not supported."""
    evaluator = evaluator or ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=20,
                                                       enable_cpu_cache_flush=False)
    if not tracker:
        return ms.runner.LocalRunner(evaluator_config=evaluator,
                                     initializer=enable_amx if amx else None)
    if amx:
        raise ValueError("tuning AMX kernels over RPC is not supported (a board's server does "
                         "not ask Linux for AMX tiles); tune on the AMX machine itself")
    if not device_key:
        raise ValueError(f"--device-key is needed with --rpc-tracker {tracker}")
    host, port = _tracker_address(tracker)
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port,
                                 tracker_key=device_key, session_timeout_sec=timeout_sec)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator,
                               f_alloc_argument=alloc_from_host)


def _tracker_address(tracker: str) -> tuple[str, int]:
    host, _, port = tracker.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--rpc-tracker must be HOST:PORT, got {tracker!r}")
    return host, int(port)


def tracker_boards(tracker: str, device_key: str, timeout: float = 60) -> tuple[int, dict]:
    """``(free boards under device_key, what one of them says about itself)`` -- asked before
    tuning, so that a wrong key or a dead tracker is an error up front and an emulated board
    (``info["emulator"]``: its timings are meaningless) is said so."""
    host, port = _tracker_address(tracker)
    try:
        tr = rpc.connect_tracker(host, port)
        queue = tr.summary().get("queue_info", {})
    except (OSError, RuntimeError) as err:
        raise ConnectionError(f"cannot reach the RPC tracker at {tracker}: {err}") from None
    free = int(queue.get(device_key, {}).get("free", 0))
    if device_key not in queue:
        known = ", ".join(sorted(queue)) or "none"
        raise ConnectionError(f"no board is registered under the key {device_key!r} at the "
                              f"tracker {tracker} (keys there: {known})")
    session = tr.request(device_key, session_timeout=timeout)
    try:
        info = json.loads(session.get_function("f8tvm.board.info")())
    except (AttributeError, RuntimeError, ValueError):  # a stock TVM RPC server
        info = {}
    del session
    gc.collect()  # ends the session: the board serves the tuner next
    return free, info


def tune(tasks, target, dot: DotIntrin, db_dir: str, trials: int, runner=None,
         builder=None, callbacks=(), seed: int = 0, trials_per_iter: int = 16):
    """Tune ``tasks`` for ``trials`` measured candidates each; records go to ``db_dir``.

    The runner's worker processes are shut down at the end (a MetaSchedule runner keeps its
    worker pool alive, and the workers outlive this process otherwise): make a new runner for
    another call."""
    database = open_database(db_dir, create=True)
    builder = builder or make_builder()
    runner = runner or make_runner(amx=dot.amx)
    contexts = []
    for t in tasks:
        space = ms.space_generator.ScheduleFn(
            _space(t.kind, dot), sch_rules=[], postprocs=[],
            mutator_probs={ms.mutator.MutateTileSize(): 1.0})
        contexts.append(ms.TuneContext(
            mod=t.mod, target=target, space_generator=space,
            # our spaces are small (a few split decisions): a small population suffices, and
            # every candidate costs a Python replay of the schedule
            search_strategy=ms.search_strategy.EvolutionarySearch(
                population_size=64, init_min_unmeasured=16, genetic_num_iters=2,
                genetic_max_fail_count=4),
            task_name=t.name,
            rand_state=seed, num_threads="physical"))
    try:
        ms.tune.tune_tasks(
            tasks=contexts, task_weights=[float(t.weight) for t in tasks],
            work_dir=db_dir, max_trials_global=trials * len(tasks), max_trials_per_task=trials,
            num_trials_per_iter=min(trials_per_iter, trials), builder=builder, runner=runner,
            database=database, cost_model=ms.cost_model.XGBModel(),
            measure_callbacks=ms.measure_callback.MeasureCallback.create("default")
            + list(callbacks))
    finally:
        for obj in (runner, builder):
            pool = getattr(obj, "pool", None)
            if pool is not None:
                pool.shutdown(wait=False)
    return database


def best_latency(database, task: Task, target) -> float | None:
    """Best measured latency (seconds) of ``task`` in ``database``, None if it has no record."""
    if not database.has_workload(task.mod):
        return None
    wl = database.commit_workload(task.mod)
    top = database.get_top_k(wl, 1)
    if not top:
        return None
    secs = [float(s) for s in top[0].run_secs]
    return sum(secs) / len(secs)


def anchor_key(prim_func) -> str | None:
    """What a tuned schedule depends on: the packed conv block's loop extents and buffers."""
    _, block = kernel_block(prim_func)
    if block is None:
        return None
    ext = [int(iv.dom.extent) for iv in block.iter_vars]
    bufs = [(str(region_tensor(r).dtype), [int(d) for d in region_tensor(r).shape])
            for r in list(block.reads) + list(block.writes)]
    return f"{block.name_hint}:{ext}:{bufs}"


def kernel_macs(prim_func) -> int:
    """Iterations of the kernel's packed conv block (its MACs per call), 0 for other kernels."""
    _, block = kernel_block(prim_func)
    if block is None:
        return 0
    n = 1
    for iv in block.iter_vars:
        n *= int(iv.dom.extent)
    return n


def _split_decisions(trace) -> list:
    """The trace's tile decisions in program order: the inner factor of each SamplePerfectTile,
    the value picked by each SampleCategorical (an AMX tile's rows)."""
    out = []
    for inst in trace.insts:
        if inst.kind.name == "SamplePerfectTile":
            out.append(int(trace.get_decision(inst)[-1]))
        elif inst.kind.name == "SampleCategorical":
            out.append(int(inst.attrs[0][int(trace.get_decision(inst))]))
    return out


def anchor_index(database) -> dict:
    """anchor key -> (best latency, split decisions) over all records of ``database``."""
    index: dict = {}
    for rec in database.get_all_tuning_records():
        secs = [float(s) for s in rec.run_secs or []]
        if not secs or min(secs) >= 1e9:  # failed candidates are stored with huge times
            continue
        key = anchor_key(rec.workload.mod["main"])
        lat = sum(secs) / len(secs)
        if key and (key not in index or lat < index[key][0]):
            index[key] = (lat, _split_decisions(rec.trace))
    return index


def apply_database(fused_mod, target, dot: DotIntrin | None, db_dir: str | None, progress=None):
    """Schedule every kernel: from the database's best record when it has one (exact workload,
    else same anchor), else ours.  Returns ``(module, info)``; ``info`` says what was tuned."""
    database = open_database(db_dir) if db_dir else None
    index = anchor_index(database) if database is not None else {}
    tuned, transferred, untuned = [], [], []
    funcs = primfuncs(fused_mod)
    fused_mod = copy_module(fused_mod)  # the caller's module stays unscheduled
    for i, (name, func) in enumerate(funcs):
        new = None
        tiles = None
        if database is not None and kernel_kind(func) in ("conv", "depthwise"):
            sch = database.query_schedule(task_module(func), target, workload_name="main")
            if sch is not None:
                # the record's trace replayed; the weights' prefetch the trace only annotates
                # (MetaSchedule times its candidates without it) goes in as in our schedule
                new = cpu.prefetch_weights(sch.mod["main"]).without_attr("global_symbol")
                tuned.append(name)
            elif (key := anchor_key(func)) in index:
                tiles = index[key][1]
                transferred.append(name)
            else:
                untuned.append(name)
        if new is None:
            new = default_schedule(func, dot, tiles)
        fused_mod[name] = new.with_attr("tirx.is_scheduled", True)
        if progress:
            progress(i + 1, len(funcs))
    info = dict(database=os.path.abspath(db_dir) if db_dir else None,
                tuned=len(tuned) + len(transferred), exact=len(tuned),
                by_anchor=len(transferred), tunable=len(tuned) + len(transferred) + len(untuned),
                untuned_kernels=untuned)
    return fused_mod, info


def progress_callback(bar):
    """A MetaSchedule measure callback that advances the tqdm ``bar`` per measured candidate
    and shows the best latency per task; returns it with the dicts it fills (task id -> best
    microseconds, and the error messages of failed candidates)."""
    best, errors = {}, []

    @derived_object
    class Progress(ms.measure_callback.PyMeasureCallback):
        def apply(self, task_scheduler, task_id, measure_candidates, builder_results,
                  runner_results):
            for b, r in zip(builder_results, runner_results):
                secs = [float(s) for s in (r.run_secs or [])]
                if r.error_msg is None and secs:
                    lat = sum(secs) / len(secs) * 1e6
                    best[task_id] = min(best.get(task_id, lat), lat)
                else:
                    errors.append(str(b.error_msg or r.error_msg))
            bar.update(len(runner_results))
            bar.set_postfix_str(" ".join(f"#{i}:{best[i]:.0f}us" for i in sorted(best)))

    return Progress(), best, errors
