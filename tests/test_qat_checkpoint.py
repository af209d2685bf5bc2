"""QAT checkpoints (f8tvm.qat.save / load) and ``python -m f8tvm.build --qat-checkpoint``.

The chain a user runs: prepare a zoo model, train it, save it, build the checkpoint with the
CLI, load the ``.so``: its integer logits are the trained fake-quant model's times 2**FL, bit
for bit, and equal those of ``f8tvm.compile(qat.source(q))`` on the model that was saved.
"""

import glob
import os

import numpy as np
import pytest
import torch
from test_qat import MobileBlockNet, _data, _randomize_bn

import f8tvm
from f8tvm import build, qat, runtime
from f8tvm.core.errors import F8TVMError
from f8tvm.models import get_model
from tools.accuracy import TinyResNet

ZOO_SHAPE = (2, 3, 32, 32)


@pytest.fixture(scope="module")
def zoo_ckpt(tmp_path_factory):
    """resnet18 (10 classes) at 32x32, signed input, trained one step on random data, saved."""
    torch.manual_seed(0)
    model, _ = get_model("resnet18", pretrained=False, randomize_bn=True, num_classes=10)
    g = torch.Generator().manual_seed(0)
    calib = [torch.randn(ZOO_SHAPE, generator=g).numpy()]
    q = qat.prepare(model, torch.zeros(ZOO_SHAPE), qat.QATConfig(), calib=calib)
    before = {k: v.clone() for k, v in q.state_dict().items()}
    batch = (torch.randn(ZOO_SHAPE, generator=g), torch.randint(0, 10, (2,), generator=g))
    qat.train(q, [batch], "conventional", steps=1, lr=0.01)
    moved = {k for k, v in q.state_dict().items() if not torch.equal(v, before[k])}
    path = qat.save(q, tmp_path_factory.mktemp("ckpt") / "r18.pt", model_name="resnet18")
    return q.eval(), path, moved


@pytest.fixture(scope="module")
def small_ckpt(tmp_path_factory):
    """The signed-input ReLU6 net (no zoo name), trained two steps, saved; and its float twin."""
    shape = (4, 3, 16, 16)
    torch.manual_seed(0)
    model = _randomize_bn(MobileBlockNet())
    q = qat.prepare(model, torch.zeros(shape), qat.QATConfig(per_channel=True, strict=False),
                    calib=[_data(shape, True, 0).numpy()])
    qat.train(q, [(_data(shape, True, 1), torch.randint(0, 5, (4,)))], steps=2, lr=0.01)
    folder = tmp_path_factory.mktemp("small")
    return q.eval(), qat.save(q, folder / "small.pt"), model, shape


def _rewrite(src, dst, **changes):
    """A copy of checkpoint ``src`` with some fields (or state_dict entries) changed."""
    ck = torch.load(src, weights_only=True)
    sd = ck["state_dict"]
    for k in changes.pop("drop", ()):
        del sd[k]
    sd.update(changes.pop("tensors", {}))
    ck.update(changes)
    torch.save(ck, dst)
    return dst


def _build(argv, capsys):
    """``f8tvm.build.main`` -> (return code, stdout, stderr); argparse errors exit with 2."""
    try:
        rc = build.main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    out = capsys.readouterr()
    return rc, out.out, out.err


# ----------------------------------------------------------------------------- the chain
def test_training_moved_the_quantization_state(zoo_ckpt):
    _, _, moved = zoo_ckpt
    assert any(k.endswith("input_fraclen") for k in moved)  # FL EMA buffers
    assert any(k.startswith("f8_streams.alphas") for k in moved)  # PACT clipping levels
    assert any(k.endswith("bn.running_mean") for k in moved)  # BN statistics
    assert any(k.endswith("inner.weight") for k in moved)  # weights


def test_cli_builds_checkpoint_bit_exact_with_qat_model(zoo_ckpt, tmp_path, capsys):
    q, path, _ = zoo_ckpt
    out = tmp_path / "out"
    rc, stdout, err = _build(["--model", "resnet18", "--qat-checkpoint", path, "--target", "host",
                              "--output-dir", out], capsys)
    assert rc == 0, err
    assert "scheme       qat" in stdout and "plan: scheme qat (from the QAT checkpoint" in stdout
    assert "wide multiplies: 0" in stdout
    so = glob.glob(str(out / "resnet18-*.so"))
    assert len(so) == 1 and sorted(os.listdir(out)) == sorted(
        os.path.basename(p) for p in (so[0], so[0][:-3] + ".json"))
    m = runtime.load(so[0])
    assert m.meta["plan"]["scheme"] == "qat" and m.meta["qat"]["checkpoint"] == "r18.pt"
    assert m.meta["preprocess"]["size"] == 32 and m.input_shape == (1, 3, 32, 32)

    cm = f8tvm.compile(qat.source(q, torch.zeros(1, 3, 32, 32)), target="host")  # the saved one
    g = torch.Generator().manual_seed(5)
    for _ in range(2):
        x = torch.randn(1, 3, 32, 32, generator=g).numpy()
        qi = m.quantize(x)
        assert qi.dtype == np.int8  # the saved signedness, not the zero input's
        acc, fl = m.run_int(qi)
        want, want_fl = cm.run_int(qi)
        assert np.array_equal(acc, want) and fl == want_fl
        fq = qat.evaluate(q, [x])
        assert np.array_equal(acc.astype(np.float64), fq * 2.0**fl)


def test_save_load_round_trip_is_exact(small_ckpt):
    q, path, model, shape = small_ckpt
    q2 = qat.load(path, model=model)
    assert not q2.training and q2.f8_qat["input_signed"] is True
    assert q2.f8_qat["config"] == q.f8_qat["config"]
    sd, sd2 = q.state_dict(), q2.state_dict()
    assert sd.keys() == sd2.keys() and all(torch.equal(sd[k], sd2[k]) for k in sd)
    for seed in (20, 21):
        x = _data(shape, True, seed).numpy()
        assert np.array_equal(qat.evaluate(q2, [x]), qat.evaluate(q, [x]))
    assert isinstance(model.stem, torch.nn.Conv2d)  # the caller's float model is untouched


def test_save_is_atomic_and_checks_the_zoo_name(small_ckpt, tmp_path):
    q, *_ = small_ckpt
    qat.save(q, tmp_path / "a.pt")
    with pytest.raises(F8TVMError, match="not the zoo's resnet18"):
        qat.save(q, tmp_path / "b.pt", model_name="resnet18")
    with pytest.raises(F8TVMError, match="'vgg99' is not in the model zoo"):
        qat.save(q, tmp_path / "b.pt", model_name="vgg99")
    with pytest.raises(F8TVMError, match="not a prepared QAT model"):
        qat.save(TinyResNet(4), tmp_path / "b.pt")
    assert os.listdir(tmp_path) == ["a.pt"]  # no temporary or partial file left


# ----------------------------------------------------------------------------- load errors
def test_load_names_missing_unexpected_and_misshapen_keys(small_ckpt, tmp_path):
    q, path, model, _ = small_ckpt
    dropped = "expand.bn.running_var"
    bad = _rewrite(path, tmp_path / "missing.pt", drop=[dropped, "f8_streams.alphas.0"])
    with pytest.raises(F8TVMError, match="missing keys") as e:
        qat.load(bad, model=model)
    assert dropped in str(e.value) and "f8_streams.alphas.0" in str(e.value)
    bad = _rewrite(path, tmp_path / "extra.pt", tensors={"bogus.weight": torch.zeros(2)})
    with pytest.raises(F8TVMError, match=r"unexpected keys \(1\): bogus.weight"):
        qat.load(bad, model=model)
    bad = _rewrite(path, tmp_path / "shape.pt", tensors={"fc.inner.weight": torch.zeros(7, 8)})
    with pytest.raises(F8TVMError, match=r"fc.inner.weight: file \(7, 8\) vs model \(5, 8\)"):
        qat.load(bad, model=model)


def test_load_rejects_bad_files(small_ckpt, tmp_path):
    _, path, model, _ = small_ckpt
    with pytest.raises(F8TVMError, match="QAT checkpoint not found: .*nope.pt"):
        qat.load(tmp_path / "nope.pt", model=model)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(open(path, "rb").read()[:2000])
    with pytest.raises(F8TVMError, match="cut.pt is not a QAT checkpoint"):
        qat.load(cut, model=model)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    with pytest.raises(F8TVMError, match="not a QAT checkpoint.*plain state_dict"):
        qat.load(plain, model=model)
    with pytest.raises(F8TVMError, match="format version 99 is not supported"):
        qat.load(_rewrite(path, tmp_path / "v99.pt", version=99), model=model)
    with pytest.raises(F8TVMError, match="has no model-zoo name"):
        qat.load(path)
    with pytest.raises(F8TVMError, match="'vgg99' is not in the model zoo"):
        qat.load(_rewrite(path, tmp_path / "vgg.pt", model_name="vgg99"))


# ----------------------------------------------------------------------------- CLI errors
def test_cli_rejects_wrong_model_and_bad_files(zoo_ckpt, small_ckpt, tmp_path, capsys):
    _, path, _ = zoo_ckpt
    out = tmp_path / "out"
    rc, _, err = _build(["--model", "mobilenet_v2", "--qat-checkpoint", path, "--output-dir",
                         out], capsys)
    assert rc == 2 and "holds model resnet18, not --model mobilenet_v2" in err
    rc, _, err = _build(["--model", "resnet18", "--qat-checkpoint", small_ckpt[1],
                         "--output-dir", out], capsys)
    assert rc == 2 and "holds no model-zoo name, not --model resnet18" in err
    rc, _, err = _build(["--model", "resnet18", "--qat-checkpoint", path, "--input-size", "64",
                         "--output-dir", out], capsys)
    assert rc == 2 and "trained at input 32x32, not --input-size 64" in err
    rc, _, err = _build(["--model", "resnet18", "--qat-checkpoint", tmp_path / "none.pt",
                         "--output-dir", out], capsys)
    assert rc == 2 and "no such file" in err and "none.pt" in err
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint at all")
    rc, _, err = _build(["--model", "resnet18", "--qat-checkpoint", junk, "--output-dir", out],
                        capsys)
    assert rc == 2 and "junk.pt is not a QAT checkpoint" in err
    # a failure after the model is rebuilt: the state_dict lacks a key
    bad = _rewrite(path, tmp_path / "bad.pt", drop=["layer1.0.conv2.input_fraclen"])
    rc, _, err = _build(["--model", "resnet18", "--qat-checkpoint", bad, "--output-dir", out],
                        capsys)
    assert rc == 2 and "missing keys (1): layer1.0.conv2.input_fraclen" in err
    assert not out.exists()  # nothing written, not even the folder


def test_cli_rejects_flags_the_checkpoint_decides(zoo_ckpt, capsys):
    _, path, _ = zoo_ckpt
    for extra, named in [(["--calib", "random", "--calib-count", "2"], "--calib, --calib-count"),
                         (["--weights", path], "--weights"), (["--scheme", "mse"], "--scheme")]:
        rc, _, err = _build(["--model", "resnet18", "--qat-checkpoint", path, *extra], capsys)
        assert rc == 2 and f"cannot be combined with {named}" in err
