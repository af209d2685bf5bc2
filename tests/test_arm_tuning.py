"""Tuning over RPC against the emulated aarch64 board: ``f8tvm.tune --rpc-tracker`` measures
on a board registered with a tracker, says that the board is emulated, and the build applies the
record (functional only: an emulator's latencies mean nothing).

A separate module from ``test_arm.py``: the board started here registers with a tracker, and
one board folder runs one server at a time.
"""

import shutil

import numpy as np
import pytest
import torch

import f8tvm
from f8tvm import runtime
from f8tvm.models import get_model
from f8tvm.reference import run_reference
from f8tvm.targets import TARGETS

SIZE = 32
KEY = "f8tvm-emulated"

pytestmark = [
    pytest.mark.tuning,
    pytest.mark.arm_emulated,
    pytest.mark.skipif(shutil.which("qemu-aarch64-static") is None,
                       reason="qemu-aarch64-static is not installed (apt-get install "
                              "qemu-user-static)"),
    pytest.mark.skipif(shutil.which(TARGETS["arm-dotprod"].cross_compiler) is None,
                       reason="aarch64-linux-gnu-g++ is not installed (apt-get install "
                              "g++-aarch64-linux-gnu)"),
]


def test_tune_on_emulated_board_via_tracker_then_build_applies_it(rpc_tracker, tmp_path,
                                                                  capsys):
    from f8tvm import tune
    from f8tvm.schedules.tuning import anchor_index, open_database
    from tools.emulated_board import EmulatedBoard

    db = str(tmp_path / "db")
    with EmulatedBoard(tracker=rpc_tracker.address, key=KEY):
        rpc_tracker.wait(KEY, 1)
        rc = tune.main(["--model", "resnet18", "--target", "arm-dotprod", "--trials", "2",
                        "--max-kernels", "1", "--input-size", str(SIZE), "--db", db,
                        "--rpc-tracker", rpc_tracker.address, "--device-key", KEY])
        out = capsys.readouterr().out
        assert rc == 0, out
        assert "EMULATED" in out and "meaningless" in out, out
        assert "measurements failed" not in out, out
        # a measured (valid) record of the one kernel, made on the board
        assert len(anchor_index(open_database(db))) == 1

        torch.manual_seed(0)
        model, _ = get_model("resnet18", randomize_bn=True)
        example = torch.zeros(1, 3, SIZE, SIZE)
        cm = f8tvm.compile(model, example, target="arm-dotprod",
                           calib=[torch.randn(2, 3, SIZE, SIZE)], tuning_db=db)
        info = cm.extra_meta["tuning"]
        assert info["tuned"] >= 1 and info["tuned"] == info["exact"] + info["by_anchor"]
        assert cm.audit.wide_multiplies == 0
        so = cm.export(str(tmp_path / "tuned-arm.so"))[0]
        rng = np.random.default_rng(3)
        lo, hi, dtype = (-127, 127, "int8") if cm.plan.input_signed else (0, 255, "uint8")
        q = rng.integers(lo, hi + 1, (1, 3, SIZE, SIZE)).astype(dtype)
        with runtime.load(so, remote=runtime.connect(rpc_tracker.address, 600, key=KEY)) as m:
            assert m.board.emulated
            got, _ = m.run_int(q)
        assert np.array_equal(got, run_reference(cm.graph, cm.plan, q.astype(np.int64)))
