"""Opt-in tier (``pytest tests -m optin``): the bench's three models at their real input size on
this CPU's best target, the full benchmark with every peer, and a real tuning run.

CI runs the same code paths at small sizes (test_e2e, test_bench, test_schedules); these are
the sizes users ship, and they take minutes each.
"""

import json
import shutil

import numpy as np
import pytest
import torch

import f8tvm
from f8tvm.models import get_model
from f8tvm.reference import quantize_input, run_reference
from f8tvm.targets import host_target_name

MODELS = ["resnet18", "mobilenet_v2", "efficientnet_lite0"]


@pytest.mark.parametrize("name", MODELS)
def test_zoo_model_at_224_is_bit_exact_and_tracks_the_float_model(name):
    model, spec = get_model(name, seed=0, randomize_bn=True)
    rng = np.random.default_rng(0)
    size = spec.input_size
    calib = [rng.standard_normal((2, 3, size, size)).astype("float32") for _ in range(2)]
    cm = f8tvm.compile(model, torch.zeros(1, 3, size, size), target="host", calib=calib)
    assert cm.audit.wide_multiplies == 0
    x = rng.standard_normal((1, 3, size, size)).astype("float32")
    q = quantize_input(x, cm.plan)
    acc, fl = cm.run_int(q.astype("int8" if cm.plan.input_signed else "uint8"))
    assert np.array_equal(acc, run_reference(cm.graph, cm.plan, q))
    want = model(torch.from_numpy(x)).detach().numpy().ravel()
    got = cm.run(x).ravel()
    assert np.corrcoef(got, want)[0, 1] > 0.95


def test_full_benchmark_runs_every_peer_on_its_fast_path(tmp_path, capsys):
    """MobileNet-V2 at 224x224, one thread, every system: the table is written and no peer's
    fast-path check fails (a peer that fell back to float would be flagged)."""
    pytest.importorskip("onnxruntime", reason="the peers: pip install -e '.[bench]'")
    pytest.importorskip("torchao", reason="the peers: pip install -e '.[bench]'")
    from tools import bench

    out = tmp_path / "bench.json"
    bench.main(["--models", "mobilenet_v2", "--threads", "1", "--rounds", "2", "--runs", "3",
                "--output", str(out)])
    result = json.loads(out.read_text())
    assert result["flagged"] == []
    checked = {r["system"]: r["fast_path"]["ok"] for r in result["rows"]}
    int8_peers = [s for s in bench.PEERS if "int8" in s]
    assert set(int8_peers) <= set(checked)
    assert all(checked[s] for s in int8_peers)
    assert checked["f8tvm-int8"]
    assert "mobilenet_v2" in capsys.readouterr().out


@pytest.mark.tuning
def test_tuning_at_224_gives_a_database_the_build_applies(tmp_path):
    """``python -m f8tvm.tune`` with a real trial budget on MobileNet-V2's four heaviest
    kernels, then a build that finds them in the database."""
    if shutil.which("gcc") is None:
        pytest.skip("no C compiler for the tuning builder")
    from f8tvm import build, tune

    db = tmp_path / "db"
    assert tune.main(["--model", "mobilenet_v2", "--trials", "16", "--max-kernels", "4",
                      "--db", str(db)]) == 0
    assert build.main(["--model", "mobilenet_v2", "--tuning-db", str(db), "--output-dir",
                       str(tmp_path / "out"), "--calib", "random", "--calib-count", "2"]) == 0
    meta = json.loads((tmp_path / "out" / f"mobilenet_v2-{host_target_name()}.json").read_text())
    tuning = meta["tuning"]
    assert 4 <= tuning["tuned"] <= tuning["tunable"]  # the tuned kernels (and their twins)
