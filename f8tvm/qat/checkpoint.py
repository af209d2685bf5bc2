"""QAT checkpoints: :func:`save` a prepared model with everything :func:`load` needs to
rebuild it without calibration data; :func:`read_checkpoint` validates one."""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from f8tvm.core import __version__
from f8tvm.core.errors import F8TVMError
from f8tvm.models import MODELS, _load_strict, get_model

from .modules import QATConfig
from .swap import prepare, to_float

CHECKPOINT_FORMAT = "f8tvm-qat"
CHECKPOINT_VERSION = 1


@dataclass(frozen=True)
class QATCheckpoint:
    """The contents of a QAT checkpoint (see :func:`save`), validated by
    :func:`read_checkpoint`."""

    path: str
    version: int
    model_name: str | None
    config: QATConfig
    input_shape: tuple
    input_signed: bool
    output_shape: tuple
    state_dict: dict = field(repr=False)


def _prepared_info(qmodel) -> dict:
    info = getattr(qmodel, "f8_qat", None)
    if not isinstance(info, dict) or not hasattr(qmodel, "f8_streams"):
        raise F8TVMError("not a prepared QAT model (make one with f8tvm.qat.prepare)")
    return info


def _zoo_model(name: str, num_classes: int, origin: str) -> nn.Module:
    """A zoo architecture with random weights (they are overwritten); ``origin`` says who
    asked, for the message."""
    if name not in MODELS:
        raise F8TVMError(f"{origin}: model {name!r} is not in the model zoo ({', '.join(MODELS)});"
                         " load it with qat.load(path, model=<the float model>)")
    return get_model(name, pretrained=False, num_classes=num_classes)[0]


def _check_zoo_architecture(qmodel, name: str, info: dict) -> None:
    """Refuse to record a zoo name the model does not have: the checkpoint would save fine and
    fail only when :func:`load` or the build CLI rebuilds the model from that name."""
    zoo = _zoo_model(name, int(info["output_shape"][1]), "qat.save")
    try:
        _load_strict(zoo, to_float(qmodel).state_dict(), origin="the QAT model")
    except ValueError as err:
        raise F8TVMError(f"qat.save: the model is not the zoo's {name}: {err}") from err


def save(qmodel: nn.Module, path, model_name: str | None = None) -> str:
    """Write a self-describing QAT checkpoint: everything :func:`load` needs to rebuild the
    prepared model without calibration data.

    The file (``torch.save`` of plain dicts, lists and tensors, readable with
    ``weights_only=True``) holds the prepared model's state_dict (weights, BN statistics, FL
    EMA buffers, clipping levels), the :class:`QATConfig`, the input shape and signedness, the
    output shape, the zoo model name and a format version.  It is written to a temporary file
    beside ``path`` and renamed, so ``path`` is either the old file or the complete new one.
    Optimizer state is not saved: the checkpoint is for export (or fine-tuning afresh).

    Parameters
    ----------
    qmodel : torch.nn.Module
        From :func:`prepare` (trained or not) or :func:`load`.
    path : str or os.PathLike
    model_name : str, optional
        The model-zoo name of the architecture (:func:`f8tvm.models.available_models`), which
        lets ``python -m f8tvm.build --qat-checkpoint`` and ``load(path)`` rebuild it; checked
        against the model.  Defaults to the name of the checkpoint ``qmodel`` was loaded from.

    Returns
    -------
    str
        The absolute path written.

    Raises
    ------
    F8TVMError
        ``qmodel`` is not prepared, or ``model_name`` is unknown or another architecture.
    """
    info = _prepared_info(qmodel)
    model_name = model_name if model_name is not None else info.get("model_name")
    if model_name is not None:
        _check_zoo_architecture(qmodel, model_name, info)
    ck = {"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
          "f8tvm_version": __version__, "model_name": model_name,
          "config": asdict(info["config"]), "input_shape": list(info["input_shape"]),
          "input_signed": bool(info["input_signed"]),
          "output_shape": list(info["output_shape"]),
          "state_dict": {k: v.detach().cpu().clone() for k, v in qmodel.state_dict().items()}}
    path = os.path.abspath(os.fspath(path))
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".f8tvm-qat-", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ck, f)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _first_line(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"


def _shape(value, what: str, path: str) -> tuple:
    if not (isinstance(value, (list, tuple)) and value and all(type(v) is int for v in value)):
        raise F8TVMError(f"QAT checkpoint {path}: {what} {value!r} is not a shape")
    return tuple(value)


def read_checkpoint(path) -> QATCheckpoint:
    """Read and validate a checkpoint written by :func:`save` (no model is built).

    Raises
    ------
    F8TVMError
        Missing file, unreadable or not a QAT checkpoint, unsupported format version, or a
        malformed field (each named in the message).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise F8TVMError(f"QAT checkpoint not found: {path}")
    try:  # weights_only: never run code from a checkpoint
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, corrupted or another kind of file
        raise F8TVMError(f"{path} is not a QAT checkpoint (torch.load cannot read it: "
                         f"{_first_line(err)})") from err
    if not isinstance(obj, dict) or obj.get("format") != CHECKPOINT_FORMAT:
        hint = ""
        if isinstance(obj, dict) and obj and all(torch.is_tensor(v) for v in obj.values()):
            hint = " (it looks like a plain state_dict: float weights go to --weights)"
        raise F8TVMError(f"{path} is not a QAT checkpoint: no '{CHECKPOINT_FORMAT}' format "
                         f"tag; write one with f8tvm.qat.save{hint}")
    version = obj.get("version")
    if version != CHECKPOINT_VERSION:
        raise F8TVMError(f"QAT checkpoint {path}: format version {version!r} is not supported "
                         f"(this f8tvm reads version {CHECKPOINT_VERSION})")
    try:
        config = QATConfig(**obj["config"])
    except (KeyError, TypeError) as err:
        raise F8TVMError(f"QAT checkpoint {path}: bad config ({_first_line(err)})") from err
    sd = obj.get("state_dict")
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise F8TVMError(f"QAT checkpoint {path}: no state_dict of tensors")
    name = obj.get("model_name")
    if name is not None and not isinstance(name, str):
        raise F8TVMError(f"QAT checkpoint {path}: model_name {name!r} is not a string")
    return QATCheckpoint(path, version, name, config,
                         _shape(obj.get("input_shape"), "input_shape", path),
                         bool(obj.get("input_signed")),
                         _shape(obj.get("output_shape"), "output_shape", path), sd)


def load(source, model: nn.Module | None = None) -> nn.Module:
    """Rebuild a prepared model from a checkpoint written by :func:`save`.

    The architecture comes from the checkpoint's zoo model name, or from ``model`` (the float
    model, as given to :func:`prepare`; not modified).  :func:`prepare` runs on a zero input of
    the saved shape (no calibration data: the saved clipping levels replace the calibrated
    ones), then the saved state_dict is loaded strictly, so the evaluation-mode model (and its
    compiled module) equals the one that was saved.

    Parameters
    ----------
    source : str, os.PathLike or QATCheckpoint
        The checkpoint file, or what :func:`read_checkpoint` returned for it.
    model : torch.nn.Module, optional
        The float architecture; required when the checkpoint has no zoo model name.

    Returns
    -------
    torch.nn.Module
        The prepared model, in evaluation mode (:func:`train` switches it back).

    Raises
    ------
    F8TVMError
        What :func:`read_checkpoint` raises; no or an unknown zoo model name without
        ``model``; state_dict keys missing or unexpected, or of the wrong shape (named).
    """
    ck = source if isinstance(source, QATCheckpoint) else read_checkpoint(source)
    if model is None:
        if ck.model_name is None:
            raise F8TVMError(f"QAT checkpoint {ck.path} has no model-zoo name (saved without "
                             "model_name); load it with qat.load(path, model=<the float model>)")
        model = _zoo_model(ck.model_name, ck.output_shape[1], f"QAT checkpoint {ck.path}")
        inplace = True
    else:
        inplace = False
    x = torch.zeros(ck.input_shape)
    q = prepare(model, x, ck.config, calib=[x.numpy()], inplace=inplace,
                input_signed=ck.input_signed)
    try:
        _load_strict(q, ck.state_dict, origin=f"QAT checkpoint {ck.path}")
    except ValueError as err:
        raise F8TVMError(str(err)) from err
    q.f8_qat["model_name"] = ck.model_name
    return q.eval()
