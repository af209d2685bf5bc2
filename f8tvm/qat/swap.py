"""Swapping fake-quant modules into a float model (:func:`prepare`) and back out
(:func:`to_float`)."""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from f8tvm.core import formats
from f8tvm.core.errors import F8TVMError
from f8tvm.core.fixedpoint import STD_C_SIGNED, STD_C_UNSIGNED, pool_shift, qrange
from f8tvm.frontend.torch_import import float_graph

from .modules import QATConfig, QAvgPool, QClip, QLayer, _Streams

# alpha / sigma in the middle of the band where F8Net's std rule keeps the FL fixed
# (unsigned [3.64, 7.29), signed [3.18, 6.35)): the fallback when no samples were seen
_ALPHA_BAND = {False: 5.15, True: 4.49}


def _graph_of(model, example_input):
    return float_graph(model, example_input)[2]


def _module_name(node) -> str:
    return node.source.split(" (", 1)[0]


def _pair_batchnorms(model, example_input) -> dict:
    """conv module name -> the BatchNorm2d module name that directly consumes its output."""
    out_of, pairs, hooks = {}, {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: out_of.__setitem__(id(out), name)))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(
                lambda mod, inp, out, name=name: pairs.__setitem__(
                    out_of.get(id(inp[0])), name)))
    try:
        with torch.no_grad():
            model(example_input)
    finally:
        for h in hooks:
            h.remove()
    pairs.pop(None, None)
    return pairs


def _input_samples(model, names, batches, keep=20000) -> dict:
    """Unbiased std and a seeded random sample of the real input of each named module."""
    acc = {k: [0, 0.0, 0.0, []] for k in names}
    rng = np.random.default_rng(0)
    hooks = []
    for name, m in model.named_modules():
        if name in acc:
            def hook(mod, inp, name=name):
                v = inp[0].detach().double().reshape(-1)
                a = acc[name]
                a[0] += v.numel()
                a[1] += float(v.sum())
                a[2] += float((v * v).sum())
                v = v.numpy()
                a[3].append(rng.choice(v, keep, replace=False) if v.size > keep else v)
            hooks.append(m.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            for x in batches:
                model(torch.as_tensor(np.asarray(x, np.float32)))
    finally:
        for h in hooks:
            h.remove()
    out = {}
    for k, (n, s, ss, samples) in acc.items():
        if n > 1:
            mean = s / n
            out[k] = (math.sqrt(max(ss / n - mean * mean, 0.0) * n / (n - 1)),
                      np.concatenate(samples))
    return out


def _band_alpha(std: float, samples: np.ndarray, signed: bool) -> float:
    """The clipping level with the least quantization error among those F8Net's std rule can
    hold (``alpha / sigma`` inside the band where the FL has a fixed point; outside it the FL
    drifts until the effective clipping level is back inside)."""
    top = qrange(signed)[1]
    c_std = STD_C_SIGNED if signed else STD_C_UNSIGNED
    lo_c, hi_c = top / c_std, 2 * top / c_std
    best, best_err = _ALPHA_BAND[signed] * std, np.inf
    for c in np.geomspace(lo_c * 1.001, hi_c * 0.999, 24):
        a = c * std
        step = a / top
        q = np.clip(np.round(samples / step), -top if signed else 0, top) * step
        err = float(np.mean((q - samples) ** 2))
        if err < best_err:
            best, best_err = a, err
    return float(best)


# graph op -> the module types QAT swaps for it (functional forms cannot be swapped)
_SWAPPED = {"conv2d": nn.Conv2d, "dense": nn.Linear, "clip": (nn.ReLU6, nn.Hardtanh),
            "global_avg_pool": (nn.AdaptiveAvgPool2d,)}


def prepare(model: nn.Module, example_input, config: QATConfig | None = None, calib=None,
            inplace: bool = False, input_signed: bool | None = None) -> nn.Module:
    """Swap F8Net fixed-point fake-quant modules into a float model.

    Parameters
    ----------
    model : torch.nn.Module
        A float CNN that :func:`f8tvm.compile` accepts; ReLU6-like clips and the global average
        pool must be modules (``nn.ReLU6``, ``nn.AdaptiveAvgPool2d(1)``), not functional calls.
    example_input : torch.Tensor
        Float32 input of the shape the model will be compiled for.
    config : QATConfig, optional
    calib : iterable of arrays, optional
        Batches used to initialise the clipping levels (``config.alpha == 'calibrate'``) and
        to decide whether the input is signed; defaults to ``example_input``.
    inplace : bool
        Modify ``model`` instead of a deep copy.
    input_signed : bool, optional
        Whether the network input is quantized as signed 8-bit; None: signed when ``calib``
        holds a negative value.  The signedness shapes the modules but is no parameter or
        buffer: a model rebuilt from a checkpoint (on a zero input, which would say unsigned)
        must be given the saved one.

    Returns
    -------
    torch.nn.Module
        The prepared model, in training mode.  ``model.f8_streams`` holds the clipping levels.

    Raises
    ------
    F8TVMError
        The model uses a construct QAT cannot map onto its modules (named in the message).
    """
    cfg = config or QATConfig()
    example_input = torch.as_tensor(example_input, dtype=torch.float32)
    calib = [np.asarray(b, np.float32) for b in (calib or [example_input.numpy()])]
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    graph = _graph_of(model, example_input)
    bn_of = _pair_batchnorms(model, example_input)
    stream_of = formats.stream_index(graph)
    nonneg = formats.nonnegative(graph)
    consumers = graph.consumers()
    if input_signed is None:
        input_signed = min(float(b.min()) for b in calib) < 0
    input_signed = bool(input_signed)
    n_streams = max(stream_of.values()) + 1

    # ---- streams: kind, master consumer, signedness
    first_consumer = {}  # stream -> first layer node consuming one of its tensors
    for n in graph.layers():
        first_consumer.setdefault(stream_of[n.inputs[0]], n)
    kinds, masters, derived, signed = ["one"] * n_streams, [None] * n_streams, \
        [None] * n_streams, [False] * n_streams
    fixed = {stream_of[graph.input], stream_of[graph.output]}
    pools = [n for n in graph.nodes if n.op == "global_avg_pool"]
    for s in range(n_streams):
        if s in fixed or s not in first_consumer:
            continue
        src = first_consumer[s].inputs[0]
        kinds[s], masters[s] = "alpha", _module_name(first_consumer[s])
        signed[s] = not nonneg[src]
    for p in pools:  # the pooled stream and its source differ by 2**k / HW
        hw = int(np.prod(graph[p.inputs[0]].shape[2:]))
        f = 2.0 ** pool_shift(hw) / hw
        a, b = stream_of[p.inputs[0]], stream_of[p.name]
        if kinds[a] == "one" and a not in fixed and kinds[b] == "alpha":
            kinds[a], derived[a] = "derived", (b, 1.0 / f)  # F8Net: the classifier's alpha
        elif b not in fixed:
            kinds[b], derived[b], masters[b] = "derived", (a, f), None
    if cfg.alpha == "calibrate":
        names = [masters[s] for s in range(n_streams) if kinds[s] == "alpha"]
        seen_inputs = _input_samples(model, names, calib)
    init_alpha = []
    for s in range(n_streams):
        if kinds[s] != "alpha":
            continue
        if cfg.alpha == "calibrate" and masters[s] in seen_inputs:
            std, samples = seen_inputs[masters[s]]
            init_alpha.append(_band_alpha(max(std, 1e-6), samples, signed[s]))
        else:
            init_alpha.append(float(8.0 if cfg.alpha == "calibrate" else cfg.alpha))
    streams = _Streams(kinds, masters, derived, signed, init_alpha)

    # ---- swap the modules
    layers, seen = {}, set()
    for n in graph.nodes:
        name = _module_name(n)
        if n.op in _SWAPPED:
            try:
                mod = model.get_submodule(name) if name else None
            except AttributeError:
                mod = None
            if not isinstance(mod, _SWAPPED[n.op]):
                raise F8TVMError(f"QAT: the {n.op} {n.name} ({n.source or 'top level'}) is a "
                                 "functional call or an unexpected module; write it as a module "
                                 "(nn.Conv2d, nn.Linear, nn.ReLU6, nn.AdaptiveAvgPool2d) so it "
                                 "can be swapped")
            if name in seen:
                raise F8TVMError(f"QAT: module {name} is used twice; give each use its own module")
            seen.add(name)
        if n.is_layer:
            inner = model.get_submodule(name)
            if type(inner) is nn.Conv2d and n.op == "conv2d":
                p = inner.padding
                if isinstance(p, str) or list(n.attrs["padding"]) != [p[0], p[1], p[0], p[1]]:
                    raise F8TVMError(f"QAT: {name} is padded outside its module; pad inside it")
            bn = None
            if name in bn_of:
                bn = model.get_submodule(bn_of[name])
                model.set_submodule(bn_of[name], nn.Identity())  # folded into the QLayer
            src = n.inputs[0]
            is_input = src == graph.input
            sgn = input_signed if is_input else not nonneg[src]
            fixed_fl = cfg.input_fl if is_input else None
            q = QLayer(name, inner, bn, n, stream_of[src], stream_of[n.name], sgn, cfg,
                       fixed_fl, streams)
            if is_input and fixed_fl is None and len(consumers[graph.input]) > 1:
                raise F8TVMError("QAT: the input feeds several layers; set QATConfig.input_fl")
            q.bn_path = bn_of.get(name)
            model.set_submodule(name, q)
            layers[name] = q
        elif n.op == "clip":
            prod = graph[n.inputs[0]]
            if not prod.is_layer:
                raise F8TVMError(f"QAT: clip {name} must follow a conv/dense layer directly")
            model.set_submodule(name, QClip(n.attrs["hi"], stream_of[n.name], _module_name(prod),
                                            model.get_submodule(name), streams))
        elif n.op == "global_avg_pool":
            hw = int(np.prod(graph[n.inputs[0]].shape[2:]))
            model.set_submodule(name, QAvgPool(pool_shift(hw), model.get_submodule(name)))
    streams._layers = layers
    model.add_module("f8_streams", streams)
    model.f8_qat = {"config": cfg, "input_signed": input_signed,
                    "input_shape": tuple(example_input.shape),
                    "output_shape": tuple(graph[graph.output].shape)}
    return model.train()


def to_float(qmodel: nn.Module) -> nn.Module:
    """The float model with the prepared model's weights (original modules back in place):
    the network :func:`f8tvm.compile` imports for the graph the plan is keyed by."""
    m = copy.deepcopy(qmodel)
    swaps = []
    for name, mod in m.named_modules():
        if isinstance(mod, QLayer):
            swaps.append((name, mod.inner))
            if mod.bn is not None:
                swaps.append((mod.bn_path, mod.bn))
        elif isinstance(mod, (QClip, QAvgPool)):
            swaps.append((name, mod.original))
    for name, mod in swaps:
        m.set_submodule(name, mod)
    del m.f8_streams
    del m.f8_qat
    return m.eval()
