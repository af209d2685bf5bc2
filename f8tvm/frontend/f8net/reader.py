"""Reading an official F8Net checkpoint: its bare state_dict (:func:`read_state_dict`) and the
check that its keys and shapes match an architecture (:func:`check_keys`)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from f8tvm.core.errors import F8TVMError, InputError
from f8tvm.models import PickledObjectsError, load_state_dict_file

from .architectures import Arch

_MAX_LISTED = 12


class CheckpointError(F8TVMError, ValueError):
    """The checkpoint does not match the architecture (keys or shapes)."""


def read_state_dict(obj) -> dict:
    """The bare state_dict of a checkpoint: a file path or a dict, possibly wrapped as
    ``{"model": ...}`` (or ``{"state_dict": ...}``) with ``module.`` key prefixes."""
    if isinstance(obj, (str, bytes)) or hasattr(obj, "__fspath__"):
        try:
            return load_state_dict_file(obj)
        except PickledObjectsError as err:
            # e.g. the official latest_checkpoint.pt, which pickles its meter objects
            raise CheckpointError(
                f"{obj}: not loadable as plain tensors (f8tvm never unpickles code); use the "
                "official best_model.pt or re-save torch.save({'model': ckpt['model']}, path)"
            ) from err
    if not isinstance(obj, Mapping):
        raise InputError(f"expected a checkpoint path or a state_dict, got {type(obj).__name__}")
    for key in ("model", "state_dict"):
        if isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def _expected_keys(arch: Arch) -> dict:
    """key -> shape (None for scalars/buffers whose shape is not checked strictly)."""
    keys = {}
    for q in arch.layers:
        for k, s in q.shapes().items():
            keys[f"{q.prefix}.{k}"] = s
        keys[f"{q.prefix}.alpha"] = ()
        keys[f"{q.prefix}.input_fraclen"] = (1,)
    return keys


def _optional_keys(arch: Arch) -> set:
    # Older torch versions did not save num_batches_tracked; it plays no part in inference.
    return {f"{q.prefix}.bn.num_batches_tracked" for q in arch.layers if q.kind == "conv"}


def _listed(keys) -> str:
    keys = sorted(keys)
    more = f", ... ({len(keys) - _MAX_LISTED} more)" if len(keys) > _MAX_LISTED else ""
    return ", ".join(keys[:_MAX_LISTED]) + more


def check_keys(sd: dict, arch: Arch) -> None:
    want = _expected_keys(arch)
    optional = _optional_keys(arch)
    missing = set(want) - set(sd)
    unexpected = set(sd) - set(want) - optional
    problems = []
    if missing:
        problems.append(f"missing keys: {_listed(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_listed(unexpected)}")
    if not problems:
        bad = []
        for k, shape in want.items():
            got = tuple(torch.as_tensor(sd[k]).shape)
            ok = got == shape or (shape in ((), (1,)) and int(np.prod(got)) == 1)
            if not ok:
                bad.append(f"{k}: expected {shape}, got {got}")
        if bad:
            problems.append("wrong shapes: " + "; ".join(bad[:_MAX_LISTED]))
    if problems:
        raise CheckpointError(f"checkpoint does not match F8Net {arch.name}: "
                              + " | ".join(problems))


def infer_width(sd: dict, arch: str) -> float:
    w = sd.get("head.0.conv.weight")  # when absent, the key check names it
    return 1.0 if w is None else int(w.shape[0]) / (64 if arch.startswith("resnet") else 32)


def infer_num_classes(sd: dict) -> int:
    w = sd.get("classifier.0.weight")  # when absent, the key check names it
    return 1000 if w is None else int(w.shape[0])
