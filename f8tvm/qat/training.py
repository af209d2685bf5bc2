"""Training a prepared model: the regimes (:data:`TRAIN_REGIMES`), :func:`train` and
:func:`evaluate`."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from f8tvm.core.errors import InputError


@dataclass(frozen=True)
class TrainConfig:
    """A training regime (an entry of :data:`TRAIN_REGIMES`).

    Attributes
    ----------
    steps : int
        Optimizer steps.
    lr : float
        Peak learning rate (cosine decay to 0).
    optimizer : 'sgd' or 'adam'
    weight_decay : float
        On weights only (not on BN parameters, biases or clipping levels).
    temperature : float
        Distillation temperature when a teacher is given.
    """

    name: str
    steps: int
    lr: float
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    temperature: float = 1.0
    description: str = ""


TRAIN_REGIMES = {r.name: r for r in [
    TrainConfig("conventional", 2000, 0.01, "sgd", 1e-4, 1.0,
                "quantization-aware training from a float checkpoint on labelled data"),
    TrainConfig("tiny", 300, 1e-4, "adam", 0.0, 1.0,
                "tiny fine-tuning: a few hundred steps on a small (calibration) set, small lr, "
                "optionally distilled from the float model"),
]}


def _param_groups(model, wd):
    decay, other = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.dim() > 1 and "f8_streams" not in name else other).append(p)
    return [{"params": decay, "weight_decay": wd}, {"params": other, "weight_decay": 0.0}]


def train(qmodel: nn.Module, batches, regime: str | TrainConfig = "conventional", teacher=None,
          steps: int | None = None, lr: float | None = None, log=None) -> list:
    """Train a prepared model.

    Parameters
    ----------
    qmodel : torch.nn.Module
        From :func:`prepare`.
    batches : iterable
        Yields ``(x, y)`` (labelled) or ``x`` (with a teacher); cycled until ``steps``.
    regime : str or TrainConfig
        ``conventional`` (labelled QAT from a float checkpoint) or ``tiny`` (fine-tuning).
    teacher : torch.nn.Module, optional
        Float model whose softened outputs are the targets (distillation); with labels too,
        the loss is the sum.
    steps, lr : optional
        Override the regime's.
    log : callable(step, loss), optional

    Returns
    -------
    list of float
        The loss of every step.
    """
    cfg = TRAIN_REGIMES[regime] if isinstance(regime, str) else regime
    steps = cfg.steps if steps is None else steps
    lr = cfg.lr if lr is None else lr
    groups = _param_groups(qmodel, cfg.weight_decay)
    if cfg.optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    elif cfg.optimizer == "adam":
        opt = torch.optim.Adam(groups, lr=lr)
    else:
        raise InputError(f"unknown optimizer {cfg.optimizer!r}")
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda i: 0.5 * (1 + math.cos(math.pi * min(i, steps) / max(steps, 1))))
    if teacher is not None:
        teacher.eval()
    qmodel.train()
    losses, step, t = [], 0, cfg.temperature
    while step < steps:
        progressed = False
        for b in batches:
            progressed = True
            x, y = (b if isinstance(b, (tuple, list)) else (b, None))
            x = torch.as_tensor(x, dtype=torch.float32)
            out = qmodel(x).float()
            loss = out.new_zeros(())
            if y is not None:
                loss = loss + F.cross_entropy(out, torch.as_tensor(y, dtype=torch.long))
            if teacher is not None:
                with torch.no_grad():
                    soft = F.softmax(teacher(x) / t, dim=1)
                loss = loss + F.kl_div(F.log_softmax(out / t, dim=1), soft,
                                       reduction="batchmean") * t * t
            if y is None and teacher is None:
                raise InputError("unlabelled batches need a teacher")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(float(loss.detach()))
            if log is not None:
                log(step, losses[-1])
            step += 1
            if step >= steps:
                break
        if not progressed:
            raise InputError("no training batches")
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, batches) -> np.ndarray:
    """Logits of ``model`` in eval mode over ``batches`` (arrays or (x, y) pairs), stacked
    (float64 for a prepared model: exactly the compiled module's output times 2**-FL)."""
    model.eval()
    outs = []
    for b in batches:
        x = b[0] if isinstance(b, (tuple, list)) else b
        outs.append(model(torch.as_tensor(np.asarray(x), dtype=torch.float32)).numpy())
    return np.concatenate(outs)
