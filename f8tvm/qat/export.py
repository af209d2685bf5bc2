"""A prepared model as a plan source: its evaluation-mode integers as a
:class:`~f8tvm.core.plan.FixedPointPlan` over the graph of its float twin."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from f8tvm.core import formats
from f8tvm.core.errors import F8TVMError
from f8tvm.core.plan import FixedPointPlan, LayerPlan

from .swap import _module_name, to_float


def plan_for(qmodel: nn.Module):
    """A callable ``graph -> FixedPointPlan`` for :func:`f8tvm.compile`: the prepared model's
    evaluation-mode integers, keyed by the graph of :func:`to_float` (matched by module name)."""

    def build(graph) -> FixedPointPlan:
        streams = qmodel.f8_streams
        layers = streams._layers
        fl, eta, lps, clip_hi = {}, {}, {}, {}
        input_fl = None
        for n in graph.nodes:
            if n.op == "input":
                continue
            src = n.inputs[0]
            name = _module_name(n)
            if n.is_layer:
                if name not in layers:
                    raise F8TVMError(f"QAT plan: graph layer {n.name} ({n.source}) has no "
                                     "prepared layer")
                e = layers[name].export()
                if src == graph.input:
                    if input_fl is not None and input_fl != e.in_fl:
                        raise F8TVMError("QAT plan: input consumers disagree on the input FL")
                    input_fl = e.in_fl
                lps[n.name] = LayerPlan(n.name, e.in_fl, e.signed, e.w_fl, e.w_int, e.b_int,
                                        e.eta_in, e.eta_out)
                fl[n.name] = e.acc_fl
                eta[n.name] = e.eta_out
                continue
            if src == graph.input:
                raise F8TVMError(f"QAT plan: {n.op} directly on the input is not supported")
            f = formats.propagate(n, graph, fl, eta)  # the one per-op rule
            fl[n.name], eta[n.name] = f.fl, f.eta
            if f.clip_hi is not None:
                clip_hi[n.name] = f.clip_hi
        info = qmodel.f8_qat
        fl[graph.input] = np.full(graph[graph.input].shape[1], input_fl, np.int64)
        eta[graph.input] = 1.0
        return FixedPointPlan("qat", int(input_fl), bool(info["input_signed"]), fl, eta, lps,
                              clip_hi, info={"qat": {
                                  "per_channel": info["config"].per_channel,
                                  "strict": info["config"].strict}})

    return build


@dataclass
class QATSource:
    """A trained (prepared) model as a plan source for :func:`f8tvm.compile`: the float module
    of :func:`to_float` under :func:`plan_for`.  Its integer output equals the eval-mode model's
    output times 2**FL."""

    qmodel: nn.Module
    model: nn.Module
    example_input: torch.Tensor

    def plan_for(self, graph, progress=None) -> FixedPointPlan:
        return plan_for(self.qmodel)(graph)

    def metadata(self) -> dict:
        return {"qat": {"per_channel": self.qmodel.f8_qat["config"].per_channel}}


def source(qmodel: nn.Module, example_input=None) -> QATSource:
    """The plan source of a prepared (trained) model: ``f8tvm.compile(qat.source(q),
    target=...)`` compiles it (at ``example_input``'s shape, default the training input's)."""
    if example_input is None:
        example_input = torch.zeros(qmodel.f8_qat["input_shape"])
    qmodel.eval()
    return QATSource(qmodel, to_float(qmodel), example_input)
