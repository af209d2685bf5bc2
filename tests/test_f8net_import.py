"""F8Net checkpoint import: compiled modules reproduce the official integer-only model exactly.

Checkpoints are seeded, F8Net-format state_dicts from :func:`make_checkpoint` at reduced widths;
the oracle is the independent NumPy model in ``f8net_int_model.py``.
"""

import json

import numpy as np
import pytest
import torch
from f8net_checkpoints import make_checkpoint
from f8net_int_model import OfficialIntModel

import f8tvm
from f8tvm import runtime
from f8tvm.core.errors import InputError
from f8tvm.fakequant import FakeQuantModel
from f8tvm.frontend.f8net import CheckpointError, load_checkpoint, read_state_dict
from f8tvm.reference import run_reference

# the tests run official-mode models at reduced sizes on purpose
pytestmark = pytest.mark.filterwarnings("ignore:F8Net official avgpool")

WIDTH = {"resnet18": 0.125, "resnet50": 0.125, "mobilenet_v1": 0.125, "mobilenet_v2": 0.25}
FAMILY = {"resnet18": "resnet", "resnet50": "resnet", "mobilenet_v1": "mobilenet_v1",
          "mobilenet_v2": "mobilenet_v2"}
CLASSES = 10

# (arch, config, avgpool, input size) compiled for the host; 96 gives a 3x3 final map, so the
# corrected pool factor (8/9) differs from the official 64/49 fold.
COMPILED = [
    ("resnet18", "conventional", "official", 64),
    ("resnet18", "tiny", "corrected", 96),
    ("mobilenet_v2", "conventional", "official", 64),
]  # mobilenet_v1 conventional is compiled by the CLI test


def _checkpoint(arch, config, size, seed=11, **kw):
    return make_checkpoint(arch, seed=seed, config=config, num_classes=CLASSES,
                           width=WIDTH[arch], input_size=size, **kw)


def _inputs(oracle, config, size, n=2, seed=5):
    """Official inputs: raw uint8 pixels, or the normalised image quantized at the head's FL."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        pix = rng.integers(0, 256, (1, 3, size, size))
        if config == "conventional":
            out.append(pix.astype(np.uint8))
            continue
        mean = np.array([0.485, 0.456, 0.406], np.float32).reshape(1, 3, 1, 1)
        std = np.array([0.229, 0.224, 0.225], np.float32).reshape(1, 3, 1, 1)
        x = ((pix / 255).astype(np.float32) - mean) / std
        fl = oracle.in_fl("head.0")
        out.append(np.clip(np.round(x * np.float32(2.0**fl)), -127, 127).astype(np.int8))
    return out


@pytest.fixture(scope="module", params=COMPILED, ids=lambda c: "-".join(map(str, c)))
def built(request):
    arch, config, avgpool, size = request.param
    sd = _checkpoint(arch, config, size)
    ck = load_checkpoint(sd, arch, config=config, avgpool=avgpool, input_size=size)
    cm = f8tvm.compile(ck, target="x86")
    oracle = OfficialIntModel(sd, FAMILY[arch], config, avgpool)
    return request.param, ck, cm, oracle


def test_compiled_module_is_bit_exact_with_official_int_model(built):
    (_, config, _, size), _, cm, oracle = built
    fake = FakeQuantModel(cm.graph, cm.plan)
    for i, q in enumerate(_inputs(oracle, config, size)):
        acc, fl = cm.run_int(q)
        want, want_fl = oracle.forward(q)
        assert acc.dtype == np.int32
        assert np.array_equal(acc, want), np.abs(acc - want).max()
        assert fl == want_fl
        if i == 0:  # the plan's two other consumers (float64 fake-quant is slow: one input)
            assert np.array_equal(acc, run_reference(cm.graph, cm.plan, q.astype(np.int64)))
            stored = fake(q.astype(np.float64) * 2.0**-cm.plan.input_fl, return_stored=True)
            assert np.array_equal(stored.numpy() * 2.0**fl, acc.astype(np.float64))
    assert np.abs(acc).max() > 50  # the seeded model does not collapse to a few levels


def test_module_metadata_and_audit(built):
    (arch, config, avgpool, _), ck, cm, _ = built
    meta = cm.metadata()
    assert meta["input"]["dtype"] == ("int8" if config == "tiny" else "uint8")
    assert meta["input"]["fl"] == (8 if config == "conventional" else cm.plan.input_fl)
    assert ck.plan is cm.plan  # compile built the checkpoint's plan over its one import
    assert meta["plan"]["info"]["f8net"]["avgpool"] == avgpool
    assert meta["f8net"] == {"arch": arch, "config": config, "avgpool": avgpool}
    assert meta["audit"]["wide_multiplies"] == 0


@pytest.mark.parametrize("arch,config", [("resnet50", "conventional"), ("mobilenet_v2", "tiny")])
def test_plan_matches_official_int_model_without_compiling(arch, config):
    """The arch/config pairs not compiled above: the plan, run by the NumPy reference."""
    sd = _checkpoint(arch, config, 64, seed=3)
    ck = load_checkpoint(sd, arch, config=config, input_size=64)
    oracle = OfficialIntModel(sd, FAMILY[arch], config)
    for q in _inputs(oracle, config, 64, n=1):
        want, _ = oracle.forward(q)
        assert np.array_equal(run_reference(ck.graph, ck.plan, q.astype(np.int64)), want)


def test_avgpool_modes():
    """official folds 64/49 into the last block's body[-1] only; corrected folds the true 2**k/HW
    into the classifier (ResNet), so the identity branch is scaled too."""
    sd = _checkpoint("resnet18", "conventional", 96)
    with pytest.warns(UserWarning, match="not 7x7"):
        off = load_checkpoint(sd, "resnet18", input_size=96)
    cor = load_checkpoint(sd, "resnet18", avgpool="corrected", input_size=96)
    assert (off.info["pool_shift"], cor.info["pool_shift"]) == (6, 3)
    assert off.info["pool_factor"] == 64 / 49 and cor.info["pool_factor"] == 8 / 9

    def layer(ck, source):
        return next(ck.plan.layers[n.name] for n in ck.graph.layers()
                    if n.source.startswith(source))

    last = "stage_3_layer_1.body.1.conv"
    assert not np.array_equal(layer(off, last).b_int, layer(cor, last).b_int)
    assert not np.array_equal(layer(off, "classifier.0").w_int,
                              layer(cor, "classifier.0").w_int)
    oracle = OfficialIntModel(sd, "resnet", "conventional", "corrected")
    q = _inputs(oracle, "conventional", 96, n=1)[0]
    assert np.array_equal(run_reference(cor.graph, cor.plan, q.astype(np.int64)),
                          oracle.forward(q)[0])


def test_module_prefix_model_wrapper_and_file(tmp_path):
    bare = _checkpoint("mobilenet_v1", "tiny", 32)
    wrapped = _checkpoint("mobilenet_v1", "tiny", 32, wrap=True)
    assert set(wrapped) == {"model"} and all(k.startswith("module.") for k in wrapped["model"])
    path = tmp_path / "mbv1_fix.pth"
    torch.save(wrapped, path)
    for src in (wrapped, str(path), {"state_dict": bare}):
        sd = read_state_dict(src)
        assert sd.keys() == bare.keys()
        assert all(torch.equal(torch.as_tensor(sd[k]), torch.as_tensor(bare[k])) for k in sd)
    # num_batches_tracked is optional (older torch did not save it); one full import checks both
    trimmed = {k: v for k, v in wrapped["model"].items() if not k.endswith("num_batches_tracked")}
    ck = load_checkpoint({"model": trimmed}, "mobilenet_v1", config="tiny", input_size=32)
    oracle = OfficialIntModel(bare, "mobilenet_v1", "tiny")
    q = _inputs(oracle, "tiny", 32, n=1)[0]
    assert np.array_equal(run_reference(ck.graph, ck.plan, q.astype(np.int64)),
                          oracle.forward(q)[0])


@pytest.fixture(scope="module")
def r18_sd():
    return _checkpoint("resnet18", "conventional", 32)


def test_missing_keys_are_named(r18_sd):
    sd = dict(r18_sd)
    del sd["stage_1_layer_0.shortcut.0.bn.running_var"]
    del sd["classifier.0.alpha"]
    with pytest.raises(CheckpointError, match="missing keys") as err:
        load_checkpoint(sd, "resnet18")
    assert "stage_1_layer_0.shortcut.0.bn.running_var" in str(err.value)
    assert "classifier.0.alpha" in str(err.value)


def test_unexpected_keys_are_named(r18_sd):
    sd = dict(r18_sd, **{"stage_0_layer_0.body.0.conv.bias": torch.zeros(8), "extra": 1.0})
    with pytest.raises(CheckpointError, match="unexpected keys") as err:
        load_checkpoint(sd, "resnet18")
    assert "stage_0_layer_0.body.0.conv.bias" in str(err.value) and "extra" in str(err.value)


def test_wrong_shapes_are_named(r18_sd):
    sd = dict(r18_sd)
    sd["stage_2_layer_1.body.1.conv.weight"] = torch.zeros(32, 32, 1, 1)
    with pytest.raises(CheckpointError, match="wrong shapes") as err:
        load_checkpoint(sd, "resnet18")
    msg = str(err.value)
    assert "stage_2_layer_1.body.1.conv.weight" in msg and "(32, 32, 3, 3)" in msg


def test_checkpoint_of_another_architecture(r18_sd):
    with pytest.raises(CheckpointError, match="resnet50.*missing keys.*body.2"):
        load_checkpoint(r18_sd, "resnet50")


def test_unknown_architecture_config_and_mode(r18_sd):
    with pytest.raises(InputError, match="unknown F8Net architecture 'vgg16'.*resnet18"):
        load_checkpoint(r18_sd, "vgg16")
    with pytest.raises(InputError, match="unknown F8Net config"):
        load_checkpoint(r18_sd, "resnet18", config="int4")
    with pytest.raises(InputError, match="unknown avgpool mode"):
        load_checkpoint(r18_sd, "resnet18", avgpool="mean")


@pytest.mark.host
def test_build_cli_with_checkpoint(tmp_path):
    """``python -m f8tvm.build --model mobilenet_v1 --f8net-checkpoint X`` end to end."""
    from f8tvm.build import main

    sd = _checkpoint("mobilenet_v1", "conventional", 64, seed=2, wrap=True)
    ckpt = tmp_path / "mbv1_fix.pth"
    torch.save(sd, ckpt)
    out = tmp_path / "out"
    # an (empty) tuning database: the checkpoint build takes the one build path, which looks
    # every kernel up in it (this build path used to ignore --tuning-db)
    db = tmp_path / "db"
    db.mkdir()
    for f in ("database_workload.json", "database_tuning_record.json"):
        (db / f).write_text("")
    rc = main(["--model", "mobilenet_v1", "--f8net-checkpoint", str(ckpt), "--target", "x86",
               "--input-size", "64", "--output-dir", str(out), "--tuning-db", str(db)])
    assert rc == 0
    m = runtime.load(str(out / "mobilenet_v1-x86.so"))
    meta = json.loads((out / "mobilenet_v1-x86.json").read_text())
    assert meta["model"] == "mobilenet_v1" and meta["f8net"]["config"] == "conventional"
    assert meta["tuning"]["database"] == str(db) and meta["tuning"]["tunable"] > 0
    assert meta["preprocess"]["size"] == 64
    oracle = OfficialIntModel({k.removeprefix("module."): v for k, v in sd["model"].items()},
                              "mobilenet_v1", "conventional")
    for q in _inputs(oracle, "conventional", 64):
        acc, fl = m.run_int(q)
        want, want_fl = oracle.forward(q)
        assert np.array_equal(acc, want) and fl == want_fl
    # the float boundary: P/256 quantizes back to the same pixels
    x = (q.astype(np.float32) / 256).astype(np.float32)
    assert np.array_equal(m.quantize(x), q)


def test_build_cli_rejects_bad_combinations(tmp_path, capsys):
    from f8tvm.build import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--model", "mobilenet_v1"])
    assert "needs --f8net-checkpoint" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        parse_args(["--model", "resnet18", "--f8net-checkpoint", str(tmp_path / "none.pth")])
    assert "no such file" in capsys.readouterr().err
    ckpt = tmp_path / "res18_fix.pth"
    ckpt.write_bytes(b"")  # only its existence is checked while parsing
    with pytest.raises(SystemExit):
        parse_args(["--model", "resnet18", "--f8net-checkpoint", str(ckpt), "--scheme", "mse",
                    "--calib", "random"])
    err = capsys.readouterr().err
    assert "--scheme, --calib" in err and "replace calibration" in err
    with pytest.raises(SystemExit):
        parse_args(["--model", "resnet18", "--f8net-avgpool", "corrected"])
    assert "only apply with --f8net-checkpoint" in capsys.readouterr().err
