"""Bad or unusual input gets an f8tvm error that names it, before any work; the caller's objects
come back as they were given."""

import numpy as np
import pytest
import torch
from conftest import make_small_net

import f8tvm
from f8tvm import build, run, runtime
from f8tvm.core.errors import F8TVMError, InputError
from f8tvm.frontend.torch_import import export_program
from f8tvm.targets import get_target

SIZE = 16


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    torch.manual_seed(0)
    cm = f8tvm.compile(make_small_net(), torch.zeros(1, 3, SIZE, SIZE), target="x86",
                       calib=[torch.randn(2, 3, SIZE, SIZE)])
    so, _ = cm.export(str(tmp_path_factory.mktemp("small") / "small.so"))
    return cm, so


@pytest.mark.host
def test_run_refuses_nan_and_inf_unless_told(small):
    cm, so = small
    m = runtime.load(so)
    x = np.random.default_rng(0).standard_normal((1, 3, SIZE, SIZE)).astype("float32")
    x[0, 0, 0, :2] = np.nan
    x[0, 1, 0, 0] = np.inf
    for run_ in (m.run, cm.run):
        with pytest.raises(InputError, match="2 NaN and 1 infinite value"):
            run_(x)
    # told: NaN reads as 0, +inf as the largest value (clamped to the 8-bit range)
    same = x.copy()
    same[0, 0, 0, :2] = 0
    same[0, 1, 0, 0] = 3e38
    assert np.array_equal(m.run(x, allow_nonfinite=True), m.run(same))
    assert np.array_equal(cm.run(x, allow_nonfinite=True), m.run(same))


@pytest.mark.host
def test_run_cli_refuses_a_top_below_one(small, capsys):
    _, so = small
    for top in ("0", "-3"):
        with pytest.raises(SystemExit) as e:
            run.main([so, "--top", top])
        assert e.value.code == 2
        assert f"--top must be >= 1, got {top}" in capsys.readouterr().err


@pytest.mark.unit
def test_build_cli_refuses_an_input_size_below_one(capsys, tmp_path):
    for size in ("0", "-224"):
        with pytest.raises(SystemExit) as e:
            build.main(["--model", "resnet18", "--input-size", size,
                        "--output-dir", str(tmp_path / "out")])
        assert e.value.code == 2
        assert f"--input-size must be >= 1, got {size}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.unit
def test_an_unknown_target_is_an_f8tvm_error():
    with pytest.raises(F8TVMError, match="unknown target 'x86-future'; available: host, x86"):
        get_target("x86-future")
    with pytest.raises(InputError, match="unknown target 'riscv'"):
        f8tvm.compile(make_small_net(), torch.zeros(1, 3, SIZE, SIZE), target="riscv")


@pytest.mark.unit
def test_import_gives_back_the_callers_training_modes():
    net = make_small_net().train()
    net.bn1.eval()  # a mix, as a fine-tuning loop may leave it
    before = {name: m.training for name, m in net.named_modules()}
    export_program(net, torch.zeros(1, 3, SIZE, SIZE))
    assert {name: m.training for name, m in net.named_modules()} == before
    assert before[""] and not before["bn1"]
