"""An official F8Net checkpoint as a plan source: :func:`load_checkpoint` rebuilds the float
module and the integers of the official integer-only export; :class:`F8NetCheckpoint` gives
the plan over the module's graph (see the package docstring for the method)."""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from f8tvm.core import formats
from f8tvm.core.errors import F8TVMError, InputError
from f8tvm.core.plan import FixedPointPlan, LayerPlan
from f8tvm.frontend.torch_import import float_graph

from .architectures import (
    ARCHS,
    CONFIGS,
    F8NetConfig,
    F8NetFloatModel,
    architecture,
    resolve_config,
)
from .export import export_layers, float_state_dict, maxpool_exact
from .reader import check_keys, infer_num_classes, infer_width, read_state_dict

_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
OFFICIAL_POOL_KERNEL = 7  # FXQAvgPool2d(7): the official int model always pools with this
AVGPOOL_MODES = ("official", "corrected")
DEFAULT_AVGPOOL = "official"


@dataclass
class F8NetCheckpoint:
    """An imported F8Net checkpoint: the float module, its example input and the plan.

    ``f8tvm.compile(ck.model, ck.example_input, plan=ck.plan)`` compiles it; :meth:`compile`
    does the same with one import of the module instead of two (the plan is keyed by the names
    of the imported graph, so :attr:`plan` and :attr:`graph` import it on first use).
    """

    arch: str
    config: str
    avgpool: str
    model: nn.Module
    example_input: torch.Tensor
    info: dict
    _exported: dict = field(repr=False)
    _graph: object = field(default=None, repr=False)
    _plan: FixedPointPlan | None = field(default=None, repr=False)

    def plan_for(self, graph, progress=None) -> FixedPointPlan:
        """The plan of this checkpoint over ``graph`` (the layer graph of :attr:`model`)."""
        plan = _plan(graph, self._exported, CONFIGS[self.config], self.info["pool_shift"],
                     info={"f8net": dict(self.info)})
        self._graph, self._plan = graph, plan
        return plan

    @property
    def graph(self):
        if self._graph is None:
            self.plan_for(float_graph(self.model, self.example_input)[2])
        return self._graph

    @property
    def plan(self) -> FixedPointPlan:
        if self._plan is None:
            _ = self.graph
        return self._plan

    def metadata(self) -> dict:
        """The ``.json``'s ``f8net`` entry and the input preprocessing of the official model."""
        if CONFIGS[self.config].normalize:
            pre = {"mean": list(_IMAGENET_MEAN), "std": list(_IMAGENET_STD)}
        else:  # the official input is the raw pixel P read as P / 256
            pre = {"mean": [0.0] * 3, "std": [256 / 255] * 3}
        return {"f8net": {"arch": self.arch, "config": self.config, "avgpool": self.avgpool},
                "preprocess": dict(pre, size=int(self.example_input.shape[-1]))}


def _module_prefix(node) -> str:
    src = node.source.split(" (", 1)[0]
    return src.removesuffix(".conv")


def load_checkpoint(checkpoint, arch: str, config: str = "conventional",
                    avgpool: str = DEFAULT_AVGPOOL, input_size: int = 224,
                    width: float | None = None, num_classes: int | None = None
                    ) -> F8NetCheckpoint:
    """Import an official F8Net checkpoint as a float module plus a :class:`FixedPointPlan`.

    Parameters
    ----------
    checkpoint : str, path or dict
        A ``.pth`` saved by the official training, or the state_dict itself; a ``module.``
        prefix and a ``{"model": ...}`` wrapper are accepted.
    arch : {'resnet18', 'resnet50', 'mobilenet_v1', 'mobilenet_v2'}
    config : {'conventional', 'tiny'}
        The training config family (see :data:`CONFIGS`).
    avgpool : {'official', 'corrected'}
        Where the average-pool factor is folded (module docstring).  ``official`` (default)
        reproduces the official integer-only model bit for bit.
    input_size : int
        H = W of the input the module will be compiled for.
    width : float, optional
        Channel multiplier of the architecture (1.0 = the official models); inferred from the
        head's channel count when omitted.
    num_classes : int, optional
        Inferred from ``classifier.0.weight`` when omitted.

    Returns
    -------
    F8NetCheckpoint

    Raises
    ------
    CheckpointError
        Missing or unexpected keys, or wrong shapes (the keys are named).
    InputError
        Unknown architecture, config or avgpool mode.
    """
    cfg = resolve_config(config)
    if arch not in ARCHS:
        raise InputError(f"unknown F8Net architecture {arch!r}; expected one of "
                         f"{', '.join(ARCHS)}")
    if avgpool not in AVGPOOL_MODES:
        raise InputError(f"unknown avgpool mode {avgpool!r}; expected one of "
                         f"{', '.join(AVGPOOL_MODES)}")
    sd = read_state_dict(checkpoint)
    n_cls = num_classes or infer_num_classes(sd)
    if width is None:
        width = infer_width(sd, arch)
    a = architecture(arch, width, n_cls, cfg)
    check_keys(sd, a)

    model = F8NetFloatModel(a).eval()
    x = torch.zeros(1, 3, input_size, input_size)
    with torch.no_grad():
        final = model.head(x)
        for p in model.block_names:
            final = getattr(model, p)(final)
    hw = int(final.shape[2] * final.shape[3])

    # ---- the average-pool factor: where it is folded and with which shift
    if avgpool == "official":
        shift = round(math.log2(OFFICIAL_POOL_KERNEL**2))
        factor = 2.0**shift / OFFICIAL_POOL_KERNEL**2
        if hw != OFFICIAL_POOL_KERNEL**2:
            warnings.warn(f"F8Net official avgpool: the final map is {hw} pixels, not 7x7; the "
                          "official model still divides its sum by 49 (use avgpool='corrected' "
                          "for a mean)", stacklevel=2)
    else:
        shift = round(math.log2(hw))
        factor = 2.0**shift / hw
    pool_scale, fc_scale = {}, 1.0
    if avgpool == "corrected" and a.family == "resnet":
        fc_scale = factor  # the whole pooled sum, identity branch included
    elif factor != 1.0:
        pool_scale[a.pool_fold] = factor
    exported = export_layers(sd, a, cfg, pool_scale, fc_scale)

    model.load_state_dict(float_state_dict(a, exported), strict=True)

    info = {"arch": arch, "config": cfg.name, "avgpool": avgpool, "pool_shift": shift,
            "pool_factor": factor, "final_hw": hw, "width": width, "num_classes": n_cls}
    if a.family == "resnet":
        info["head_maxpool_exact"] = maxpool_exact(exported["head.0"])
        if not info["head_maxpool_exact"]:
            warnings.warn("F8Net head accumulator may exceed 2**24: the official model's float32 "
                          "max-pool can round it, f8tvm's int32 max-pool does not", stacklevel=2)
    return F8NetCheckpoint(arch, cfg.name, avgpool, model, x, info, exported)


def _plan(graph, exported: dict, cfg: F8NetConfig, pool_shift: int,
          info: dict) -> FixedPointPlan:
    fl, eta, layers = {}, {}, {}
    head = exported["head.0"]
    input_fl = head.in_fl
    for n in graph.nodes:
        if n.op == "input":
            fl[n.name] = np.full(n.shape[1], input_fl, np.int64)
            eta[n.name] = 1.0
            continue
        if n.is_layer:
            prefix = _module_prefix(n)
            e = exported.get(prefix)
            if e is None:
                raise F8TVMError(f"internal: graph layer {n.name} ({n.source}) has no F8Net "
                                 "layer")
            cout = n.weight.shape[0]
            w_fl = np.full(cout, e.w_fl, np.int64)
            layers[n.name] = LayerPlan(n.name, e.in_fl, e.signed, w_fl, e.w_int, e.b_int,
                                       e.eta_in, e.eta_out)
            fl[n.name] = e.in_fl + w_fl
            eta[n.name] = e.eta_out
        elif n.op in ("add", "global_avg_pool", "relu", "max_pool2d", "reshape"):
            # the one per-op rule; the official model folds the pool's 2**k / (H*W) into the
            # classifier's weights (its export), so eta stays
            f = formats.propagate(n, graph, fl, eta, pool_k=pool_shift, pool_factor_in_eta=False)
            fl[n.name], eta[n.name] = f.fl, f.eta
        else:
            raise F8TVMError(f"internal: unexpected op {n.op} in an F8Net graph")
    return FixedPointPlan("f8net-checkpoint", int(input_fl), bool(cfg.normalize), fl, eta,
                          layers, info=info)
