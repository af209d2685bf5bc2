"""``python -m tools.bench`` on tiny configurations, and the ``requantize="multiplier"`` build.

Kept small (ResNet-18 at 32x32, one round of two runs): the timings mean nothing, the tests check
what the bench reports.  The peers are optional extras: a missing onnxruntime or torch FX shows up
as a skipped row, which the tests accept.  The RPC test runs on the emulated aarch64 board
(``tests/test_arm.py`` explains its requirements).
"""

import importlib.util
import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from conftest import lower_program, make_small_net, relax_main

import f8tvm
from f8tvm import pipeline
from f8tvm.core.errors import AuditError, InputError
from f8tvm.reference import run_reference
from f8tvm.targets import TARGETS, get_target
from f8tvm.targets.cpu import INT8_FLAGS, read_cpuinfo
from tools import bench, peak

HAVE_MPL = importlib.util.find_spec("matplotlib") is not None
TINY = ["--models", "resnet18", "--input-size", "32", "--threads", "1", "--rounds", "1",
        "--runs", "2", "--warmup", "1"]
ROW_FIELDS = {"model", "size", "threads", "system", "median_ms", "p10_ms", "p90_ms", "runs",
              "vs_best_peer", "vs_best_peer_paired", "vs_best_peer_paired_p10",
              "vs_best_peer_paired_p90", "peak_bound_ms", "compile_s", "where", "emulated", "note",
              "target", "fast_path", "fast_path_ok", "isa"}


def _check_rows(doc, systems, model="resnet18", size=32):
    rows = {r["system"]: r for r in doc["rows"]}
    skipped = {s["system"] for s in doc["skipped"]}
    for s in systems:
        assert s in rows or (s in bench.PEERS and s in skipped), f"{s} neither ran nor skipped"
    for r in rows.values():
        assert ROW_FIELDS <= set(r), ROW_FIELDS - set(r)
        assert r["runs"] == 2 and r["p10_ms"] <= r["median_ms"] <= r["p90_ms"]
        assert r["model"] == model and r["size"] == size and r["threads"] == 1
    return rows


# ----------------------------------------------------------------------------- requantize=mul
@pytest.fixture(scope="module")
def small_builds(tmp_path_factory):
    torch.manual_seed(0)
    net = make_small_net()
    calib = [torch.randn(2, 3, 16, 16) for _ in range(2)]
    shift = f8tvm.compile(net, torch.zeros(1, 3, 16, 16), target="x86", calib=calib)
    mul = f8tvm.compile(net, torch.zeros(1, 3, 16, 16), target="x86", plan=shift.plan,
                        requantize="multiplier")
    out = tmp_path_factory.mktemp("mul32")
    return shift, mul, mul.export(str(out / "mul32.so"))[1]


def test_mul32_is_bit_exact_with_shift_build_and_reference(small_builds):
    shift, mul, _ = small_builds
    rng = np.random.default_rng(3)
    lo, hi, dtype = (-127, 127, "int8") if shift.plan.input_signed else (0, 255, "uint8")
    for _ in range(3):
        q = rng.integers(lo, hi + 1, (1, 3, 16, 16)).astype(dtype)
        got, fl = mul.run_int(q)
        want, want_fl = shift.run_int(q)
        assert fl == want_fl and got.dtype == np.int32
        assert np.array_equal(got, want)
        assert np.array_equal(got, run_reference(shift.graph, shift.plan, q.astype(np.int64)))


@pytest.mark.parametrize("shift", [[-2, 0, 1, 5], 3])
def test_multiplier_requantize_equals_shift_on_ties_and_extremes(shift):
    """emit_requantize with and without RequantizeWithMultiplier, on accumulators that include
    exact ties (odd multiples of 2**(r-1)), negatives and the int32 extremes."""
    from f8tvm.core._tvm import compile_relax, relax, tvm
    from f8tvm.passes.quantize_to_integer import emit_requantize
    from f8tvm.passes.requantize_multiplier import RequantizeWithMultiplier

    shift = np.asarray(shift)
    shape = (1, 4, 8, 8)
    per_channel = shift.reshape(1, -1, 1, 1) if shift.ndim else shift

    def build(signed):
        return relax_main(shape, "int32",
                          lambda bb, t: emit_requantize(bb, t, per_channel, signed, "rq"))

    rng = np.random.default_rng(0)
    r = np.maximum(np.broadcast_to(shift, (4,)), 0).reshape(1, -1, 1, 1)
    half = np.left_shift(1, np.maximum(r - 1, 0))
    ties = (2 * rng.integers(-300, 300, shape) + 1) * half  # exact ties where r > 0
    small = rng.integers(-(1 << 12), 1 << 12, shape)
    t = np.where(np.indices(shape).sum(axis=0) % 2 == 0, ties, small)
    # the int32 extremes the shift build's rounding add cannot overflow (r <= 5), on channels
    # that shift right (a left shift of them overflows in both builds alike)
    right = [c for c in range(4) if np.broadcast_to(shift, (4,))[c] >= 0]
    t[0, right, 0, 0] = 2**31 - 2**5
    t[0, right, 0, 1] = -(2**31)
    t[0, right, 0, 2] = -(2**31) + 2**4  # a tie for r = 5
    t = t.astype("int32")
    target = tvm.target.Target("llvm")
    for signed in (True, False):
        mod = build(signed)
        info = {}
        mul_mod = RequantizeWithMultiplier(info)(mod)
        assert info["rewritten"] == int(bool((np.asarray(shift) > 0).any()))
        assert "R.multiply" in mul_mod.script() and "R.multiply" not in mod.script()
        outs = []
        for m in (mod, mul_mod):
            vm = relax.VirtualMachine(compile_relax(m, target), tvm.cpu())
            res = vm["main"](tvm.runtime.tensor(t))
            outs.append((res[0] if not hasattr(res, "numpy") else res).numpy())
        assert np.array_equal(outs[0], outs[1])


def test_mul32_audit_reports_wide_multiplies_default_has_none(small_builds):
    shift, mul, meta_path = small_builds
    assert shift.audit.ok and shift.audit.wide_multiplies == 0
    assert "requantize" not in shift.extra_meta  # the default build's metadata is unchanged
    assert mul.audit.wide_multiplies > 0 and not mul.audit.ok
    assert all(v["dtype"] == "int64" for v in mul.audit.violations)  # the requantize products
    assert mul.audit.macs_8bit == shift.audit.macs_8bit  # the convs themselves are the same
    meta = json.load(open(meta_path))
    assert meta["requantize"]["mode"] == "multiplier"
    assert meta["requantize"]["int8_only"] is False and "NOT" in meta["requantize"]["note"]
    assert meta["requantize"]["rewritten"] > 0
    assert meta["audit"]["wide_multiplies"] == mul.audit.wide_multiplies


def test_mul32_program_fails_the_default_audit(small_builds):
    """The audit still guards the default path: the same multiplier program, lowered strictly,
    is refused."""
    shift, _, _ = small_builds
    preset = get_target("x86")
    program = pipeline.pack(shift.int_mod, preset, requantize="multiplier")
    with pytest.raises(AuditError, match="wide multiply"):
        lower_program(program, preset.name)
    with pytest.raises(InputError, match="requantize"):
        f8tvm.compile(make_small_net(), torch.zeros(1, 3, 16, 16), requantize="float")


# ----------------------------------------------------------------------------- the bench
def _with_small_net(monkeypatch):
    """``--models smallnet``: conftest's SmallNet (16x16) besides the zoo, so the local bench
    test builds its two f8tvm systems in seconds, not the minute of two ResNet-18 builds."""
    real = bench.get_model

    def get_model(name, **kw):
        if name == "smallnet":
            return make_small_net(), SimpleNamespace(input_size=16)
        return real(name, **kw)

    monkeypatch.setattr(bench, "get_model", get_model)


def test_bench_local_json_png_and_table(tmp_path, monkeypatch, capsys):
    # one thread, in this process (TVM_NUM_THREADS matches --threads): no child process
    monkeypatch.setenv("TVM_NUM_THREADS", "1")
    _with_small_net(monkeypatch)
    out = tmp_path / "bench.json"
    tiny = [a if a != "resnet18" else "smallnet" for a in TINY[:2]] + TINY[4:]
    # an empty tuning database: the tuned row is built and says 0 of its kernels were tuned
    # (real records need MetaSchedule minutes; tests/test_schedules.py covers those)
    db = tmp_path / "db"
    db.mkdir()
    for f in ("database_workload.json", "database_tuning_record.json"):
        (db / f).write_text("")
    bench.main(tiny + ["--tuning-db", str(db), "--output", str(out)])  # every system
    doc = json.loads(out.read_text())
    assert doc["where"] == "local" and doc["timings_meaningful"] is True and doc["board"] is None
    rows = _check_rows(doc, bench.SYSTEMS, "smallnet", 16)
    tuned = rows["f8tvm-int8-tuned"]
    assert tuned["tuned_kernels"] == 0 and tuned["tunable_kernels"] > 0
    assert f"0/{tuned['tunable_kernels']} kernels tuned from {db}" in tuned["note"]
    assert tuned["int8_only"] is True
    base, mul = rows["f8tvm-int8"], rows["f8tvm-int8-mul32"]
    assert base["int8_only"] is True and base["wide_multiplies"] == 0
    assert mul["int8_only"] is False and mul["wide_multiplies"] > 0 and "NOT 8-bit" in mul["note"]
    assert base["compile_s"] > 0 and mul["compile_s"] > 0
    # the machine, in the JSON: the CPU and the flags that decide its int8 instructions
    cpu = read_cpuinfo()
    assert doc["machine"]["cpu"] == cpu.model and doc["machine"]["cores"] == cpu.cores
    assert doc["machine"]["flags"] == {f: f in cpu.flags for f in INT8_FLAGS}
    assert doc["versions"]["apache-tvm"] and doc["date"]
    # every row's check: f8tvm's is its audit; each peer that ran, its fast path
    preset = TARGETS[doc["target"]]
    assert base["fast_path_ok"] is True and base["isa"] == preset.isa
    assert base["fast_path"]["method"] == "f8tvm audit"
    assert mul["fast_path_ok"] is None  # the comparison build is not 8-bit only, by design
    for r in rows.values():
        fp = r["fast_path"]
        assert set(fp) == {"ok", "isa", "detail", "method"} and fp["ok"] == r["fast_path_ok"]
        if r["system"] in ("ort-int8-qdq", "ort-int8-qop"):
            assert fp["ok"] is True and "QLinearConv" in fp["detail"], fp
        elif r["system"] in ("torch-int8-pt2e", "torch-int8-fx"):
            assert fp["ok"] in (True, None) and "oneDNN verbose" in fp["method"], fp
        elif r["system"] in ("ort-fp32", "torch-fp32"):
            assert fp["ok"] is None
    assert doc["flagged"] == []
    if peak.NEEDS.get(preset.dot_instruction) in cpu.flags and shutil.which("gcc"):
        assert base["peak_bound_ms"] > 0
        bounds = {b["instruction"] for b in doc["bounds"]}
        assert preset.dot_instruction in bounds
        assert bounds == {i for i, f in peak.NEEDS.items() if f in cpu.flags}
    peers = [r for r in rows.values() if r["system"] in bench.PEERS]
    if peers:  # ratios to the best peer (1.0 for the best one itself)
        assert min(r["vs_best_peer"] for r in peers) == pytest.approx(1.0)
        assert base["vs_best_peer"] > 0
        best = min(peers, key=lambda r: r["vs_best_peer"])
        assert best["vs_best_peer_paired"] == best["vs_best_peer_paired_p90"] == 1.0
        assert 0 < base["vs_best_peer_paired_p10"] <= base["vs_best_peer_paired"] \
            <= base["vs_best_peer_paired_p90"]
    else:
        assert base["vs_best_peer_paired"] is None
    if HAVE_MPL:  # the plot is an optional extra too
        assert (tmp_path / "bench.png").stat().st_size > 0
    printed = capsys.readouterr().out
    assert "f8tvm-int8-mul32" in printed and "x best peer" in printed
    assert f"machine: {cpu.describe()}" in printed and "check" in printed
    assert "FutureWarning" not in printed


def test_paired_ratio_cancels_a_drift():
    # the machine slows down 4x over three rounds; each round, f8tvm takes half the peer's time
    got = bench._paired([10.0, 20.0, 40.0], [20.0, 40.0, 80.0])
    assert got == dict(vs_best_peer_paired=0.5, vs_best_peer_paired_p10=0.5,
                       vs_best_peer_paired_p90=0.5)
    # a slow round of one system shows in the spread, not in the median
    got = bench._paired([10.0, 30.0, 10.0], [20.0, 20.0, 20.0])
    assert got["vs_best_peer_paired"] == 0.5 and got["vs_best_peer_paired_p90"] > 1.0


def test_bench_rejects_unknown_system(tmp_path):
    with pytest.raises(SystemExit):
        bench.main(TINY + ["--systems", "tflite", "--output", str(tmp_path / "b.json")])


def test_bench_refuses_a_target_this_cpu_cannot_run(tmp_path, monkeypatch, capsys):
    import dataclasses

    # a preset needing a flag no CPU has: refused before any build, the flag named
    fake = dataclasses.replace(TARGETS["x86"], name="x86-future", cpu_flags=("avx2", "f8_fut"))
    monkeypatch.setitem(TARGETS, "x86-future", fake)
    out = tmp_path / "b.json"
    with pytest.raises(SystemExit) as exc:
        bench.main(TINY + ["--target", "x86-future", "--output", str(out)])
    assert exc.value.code == 2 and not out.exists()
    assert "f8_fut" in capsys.readouterr().err


@pytest.mark.arm_emulated
@pytest.mark.skipif(shutil.which("qemu-aarch64-static") is None,
                    reason="qemu-aarch64-static is not installed "
                           "(apt-get install qemu-user-static)")
@pytest.mark.skipif(shutil.which(TARGETS["arm"].cross_compiler) is None,
                    reason="aarch64-linux-gnu-g++ is not installed "
                           "(apt-get install g++-aarch64-linux-gnu)")
def test_bench_rpc_on_emulated_board_says_emulated(tmp_path, monkeypatch, capfd):
    from tools.emulated_board import EmulatedBoard

    monkeypatch.setenv("TVM_NUM_THREADS", "1")  # in this process (the board has its own pool)
    out = tmp_path / "rpc.json"
    with EmulatedBoard() as board:
        bench.main(TINY + ["--target", "arm-dotprod", "--rpc", board.address,
                           "--systems", "ort-int8,torch-fp32", "--output", str(out)])
    doc = json.loads(out.read_text())
    assert doc["where"] == "board" and doc["board"]["machine"] == "aarch64"
    assert doc["board"]["emulated"] and doc["timings_meaningful"] is False
    assert "meaningless" in doc["timings"] and doc["target"] == "arm-dotprod"
    rows = _check_rows(doc, ["f8tvm-int8"])
    assert set(rows) == {"f8tvm-int8"}  # the peers cannot run on the board
    assert {s["system"] for s in doc["skipped"]} == {"ort-int8-qdq", "ort-int8-qop", "torch-fp32"}
    r = rows["f8tvm-int8"]
    assert r["where"] == "board" and r["emulated"] is True and r["peak_bound_ms"] is None
    assert r["vs_best_peer"] is None and r["median_ms"] > 0
    if HAVE_MPL:
        assert os.path.getsize(tmp_path / "rpc.png") > 0
    printed = capfd.readouterr().out
    assert "EMULATED" in printed and "meaningless" in printed and "skipped" in printed
