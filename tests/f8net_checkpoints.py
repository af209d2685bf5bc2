"""Seeded checkpoints in the official F8Net format, for the tests (a fixture, not part of f8tvm):
``make_checkpoint(arch, ...)`` gives a state_dict shaped and valued like a trained one."""

import math

import numpy as np
import torch
from torch import nn

from f8tvm.frontend.f8net.architectures import (
    F8NetFloatModel,
    _ConvBN,
    architecture,
    resolve_config,
)


def make_checkpoint(arch: str, seed: int = 0, config: str = "conventional",
                    num_classes: int = 1000, width: float = 1.0, input_size: int = 64,
                    wrap: bool = False) -> dict:
    """A seeded state_dict in the official F8Net format, with realistic statistics.

    Weights follow the official initialisation (Kaiming normal, fan-out); BatchNorm running
    statistics are measured on random inputs (so pre-activations are about N(beta, gamma**2));
    each clipping level is ``alpha = c * sigma`` of its input with ``c`` in [4, 6.5] (where
    F8Net's std rule has a fixed point, so any FL is a trained-looking one); ``input_fraclen``
    buffers are EMA-like values near a plausible FL, some of them exact halves to exercise the
    round-half-to-even of the official eval path.

    Parameters
    ----------
    arch, config, width, num_classes
        As for :func:`load_checkpoint`.
    seed : int
    input_size : int
        Resolution of the random images used for the statistics.
    wrap : bool
        Return ``{"model": {"module." + key: value}}`` as the official training saves it.
    """
    cfg = resolve_config(config)
    a = architecture(arch, width, num_classes, cfg)
    gen = torch.Generator().manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = F8NetFloatModel(a)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                m.weight.normal_(0, math.sqrt(2.0 / n), generator=gen)
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.3, generator=gen)
            elif isinstance(m, nn.Linear):
                m.weight.normal_(0, 0.05, generator=gen)  # trained-like; the init 0.01 is tiny
                m.bias.normal_(0, 0.02, generator=gen)
    x = _random_images(gen, cfg, input_size, 4)
    # BatchNorm statistics: one cumulative pass in training mode
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    # the std of each quantized layer's real input
    sigma, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (_ConvBN, nn.Linear)):
            prefix = name

            def hook(mod, inp, _out, prefix=prefix):
                sigma[prefix] = float(inp[0].std())

            hooks.append(m.register_forward_hook(hook))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    sd = {}
    msd = model.state_dict()
    for q in a.layers:
        p = q.prefix
        keys = (["conv.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var",
                 "bn.num_batches_tracked"] if q.kind == "conv" else ["weight", "bias"])
        for k in keys:
            sd[f"{p}.{k}"] = msd[f"{p}.{k}"].clone()
        s = max(sigma[p], 1e-3)
        signed = q.signed
        sd[f"{p}.alpha"] = torch.tensor(float(rng.uniform(4.0, 6.5) * s))
        sd[f"{p}.input_fraclen"] = torch.tensor([_plausible_fl(s, signed, cfg, rng)])
    return {"model": {f"module.{k}": v for k, v in sd.items()}} if wrap else sd


def _random_images(gen, cfg, size, n):
    pixels = torch.randint(0, 256, (n, 3, size, size), generator=gen).float()
    if cfg.normalize:
        mean = torch.tensor([0.485, 0.456, 0.406]).reshape(1, 3, 1, 1)
        std = torch.tensor([0.229, 0.224, 0.225]).reshape(1, 3, 1, 1)
        return (pixels / 255 - mean) / std
    return pixels / 256


def _plausible_fl(sigma, signed, cfg, rng) -> float:
    """An EMA buffer value plus EMA noise.  Tiny finetuning (eta = 1): the std rule's FL.
    Conventional: alpha sits in the std rule's fixed-point band, where every FL is stable, so
    most layers keep the initial FL 6 (as in F8Net's seeded runs) and some drift to the top;
    mostly equal FLs along a residual stream keep its adds from clipping trivially."""
    hi = 7 if signed else 8
    if cfg.no_clipping:
        c = 40.0 if signed else 70.0
        base = int(np.clip(np.floor(np.log2(c / sigma)), 0, hi))
    else:
        base = int(rng.choice([6, hi, 5], p=[0.75, 0.15, 0.1]))
    r = rng.random()
    if r < 0.2:
        return base + 0.5 if base < hi else base - 0.5  # an exact tie: rounds to even
    if r < 0.5:
        return base + float(rng.uniform(-0.45, 0.45))
    return float(base)
