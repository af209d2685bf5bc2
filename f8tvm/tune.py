"""``python -m f8tvm.tune``: tune a model's int8 kernels with MetaSchedule into a database.

    python -m f8tvm.tune --model resnet18 --target x86 --trials 32 --db tuning/x86
    python -m f8tvm.build --model resnet18 --target x86 --tuning-db tuning/x86

The search space of each kernel is f8tvm's own schedule (``schedules/``) with its register-tile
splits as decisions; MetaSchedule's evolutionary search with the XGBoost cost model explores
them and measures candidates here, or on boards behind a TVM RPC tracker
(``--rpc-tracker host:port --device-key KEY``; every board registered under the key measures in
parallel).  Records accumulate in ``--db``: running again resumes from the best ones.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import time

import numpy as np
import torch
from tqdm import tqdm

from f8tvm.core.errors import F8TVMError
from f8tvm.schedules import find_dot
from f8tvm.schedules.tuning import (
    best_latency,
    extract_tasks,
    kernel_macs,
    make_builder,
    make_runner,
    open_database,
    progress_callback,
    tracker_boards,
    tune,
)
from f8tvm.targets import TARGETS, get_target, host_target_name

from . import api
from .models import available_models, get_model


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m f8tvm.tune", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, choices=available_models())
    p.add_argument("--target", default="host", choices=["host", *TARGETS])
    p.add_argument("--trials", type=int, default=32,
                   help="measured candidates per kernel (0: only report what --db holds)")
    p.add_argument("--db", required=True, help="tuning database directory (created if needed)")
    p.add_argument("--input-size", type=int, default=None)
    p.add_argument("--max-kernels", type=int, default=None,
                   help="tune only the N kernels with the most MACs x calls")
    p.add_argument("--rpc-tracker", help="host:port of a TVM RPC tracker to measure on boards")
    p.add_argument("--device-key", help="the boards' key at the tracker")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verbose", action="store_true", help="MetaSchedule's own log")
    a = p.parse_args(argv)
    if a.trials < 0:
        p.error("--trials must be >= 0")
    if bool(a.rpc_tracker) != bool(a.device_key):
        p.error("--rpc-tracker and --device-key go together")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)

    target_name = host_target_name() if a.target == "host" else a.target
    print(f"f8tvm tune: {a.model} for {target_name}, {a.trials} trials per kernel, db {a.db}"
          + (f", measuring on '{a.device_key}' boards via {a.rpc_tracker}" if a.rpc_tracker
             else ", measuring on this machine"))
    if not a.verbose:
        logging.getLogger("tvm.s_tir.meta_schedule").setLevel(logging.WARNING)
    try:
        preset = get_target(target_name)
        dot = find_dot(preset.dot)
        if dot is None:
            raise F8TVMError(f"target {target_name}: no tunable kernels yet (its dot "
                             f"instruction {preset.dot_instruction!r} has no f8tvm schedule)")
        model, spec = get_model(a.model, seed=a.seed)
        shape = spec.example_shape(a.input_size)
        rng = np.random.default_rng(a.seed)
        # kernels do not depend on the calibration data (the build matches them by anchor)
        calib = [rng.standard_normal(shape).astype("float32")]
        t0 = time.time()
        fused, _ = api.fuse(model, torch.zeros(shape), target_name, calib)
        tasks = extract_tasks(fused)
        tasks.sort(key=lambda t: -kernel_macs(t.mod["main"]) * t.weight)
        if a.max_kernels:
            tasks = tasks[:a.max_kernels]
        print(f"  {len(tasks)} kernels to tune ({time.time() - t0:.0f}s to extract)")
        target = preset.tvm()
        emulated = None
        if a.rpc_tracker:
            free, info = tracker_boards(a.rpc_tracker, a.device_key)
            emulated = info.get("emulator")
            machine = info.get("machine", "unknown machine")
            print(f"  boards '{a.device_key}': {free} free ({machine})"
                  + (f"; EMULATED by {emulated}: measured latencies are the emulator's, "
                     "meaningless for a real board (use this to check the setup only)"
                     if emulated else ""))
        if a.trials:
            bar = tqdm(total=a.trials * len(tasks), desc="  tuning", unit="trial")
            cb, best, errors = progress_callback(bar)
            db = tune(tasks, target, dot, a.db, a.trials,
                      runner=make_runner(a.rpc_tracker, a.device_key),
                      builder=make_builder(preset.cross_compiler), callbacks=[cb], seed=a.seed)
            bar.close()
            if errors:
                print(f"  {len(errors)} of {a.trials * len(tasks)} measurements failed; the "
                      f"first error:\n    " + errors[0].strip()[-1500:].replace("\n", "\n    "))
        else:
            db = open_database(a.db)
        print(f"\n  {'#':>2} {'kernel':60s} {'calls':>5} {'best (us)':>10}"
              + ("  (emulated: meaningless)" if emulated else ""))
        for i, t in enumerate(tasks):
            lat = best_latency(db, t, target)
            shown = f"{lat * 1e6:10.1f}" if lat is not None else f"{'-':>10}"
            print(f"  {i:>2} {t.name[:60]:60s} {t.weight:>5} {shown}")
        print(f"\n  database: {os.path.abspath(a.db)} ({time.time() - t0:.0f}s)")
        print(f"  build with: python -m f8tvm.build --model {a.model} --target {target_name} "
              f"--tuning-db {a.db}")
    except (F8TVMError, FileNotFoundError, ValueError, ConnectionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
