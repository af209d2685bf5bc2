"""The FixedPointPlan: every fixed-point decision, the one hand-off between deciding and doing.

Calibration (PTQ), F8Net checkpoints and QAT produce a plan; the Relax rewrite, the NumPy integer
reference and the fake-quant model consume it, so all three agree by construction.

A plan is frozen: its maps are read-only views and its arrays read-only, so a consumer cannot
change a decision behind the others' backs (make a changed plan with ``dataclasses.replace``).

Semantics of a tensor ``t`` in the integer program, with format ``(fl, eta)``:
``real(t) = eta * T / 2**fl`` where ``T`` is the stored integer and ``fl`` is per channel (axis 1).
``eta`` is F8Net's scale factor (the PACT clipping level folded into the producing layer's
effective weights and bias), shared along residual streams, so it never appears at run time.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from types import MappingProxyType
from typing import Any, Protocol, runtime_checkable

import numpy as np


@dataclass(frozen=True)
class Scheme:
    """How fixed-point formats are chosen (a registry entry; see :data:`SCHEMES`).

    Attributes
    ----------
    act_fl : 'std' (F8Net) or 'mse'
        Rule for the fractional length of an 8-bit activation.
    weight_fl : 'std' (F8Net), 'mse' or 'max'
        Rule for weight fractional lengths.
    per_channel : bool
        Weight FL per output channel (F8Net's option) instead of per layer.
    clip : 'none' or 'mse'
        Clipping level per activation stream: none (eta = 1, F8Net's no-clipping mode) or the
        PACT-style level with the least error on the calibration data, folded as eta.
    strict : bool
        Keep F8Net's FL ranges (activations 0..8-s, weights 0..7); otherwise wider ranges are used,
        which cost nothing at run time (only the shift amounts change).
    """

    name: str
    act_fl: str
    weight_fl: str
    per_channel: bool
    clip: str
    strict: bool
    description: str = ""


SCHEMES = {
    s.name: s
    for s in [
        Scheme("f8net", "std", "std", False, "none", True,
               "F8Net's rules as published: std-based FLs, per-layer weights, no clipping (eta=1)"),
        Scheme("f8net-pc", "std", "std", True, "none", True,
               "F8Net's std rule with per-channel weight FLs"),
        Scheme("mse", "mse", "mse", True, "mse", False,
               "error-minimizing FLs, per-channel weights, calibrated PACT clipping folded as eta"),
    ]
}
DEFAULT_SCHEME = "mse"


def _frozen(a) -> np.ndarray:
    """A read-only copy of ``a`` (same dtype)."""
    a = np.array(a)
    a.setflags(write=False)
    return a


def _frozen_map(m, value=lambda v: v) -> MappingProxyType:
    return MappingProxyType({k: value(v) for k, v in dict(m).items()})


@dataclass(frozen=True)
class LayerPlan:
    """A conv2d/dense layer: ``acc = conv(q, w_int) + b_int`` at ``acc_fl = in_fl + w_fl``."""

    name: str
    in_fl: int
    in_signed: bool
    w_fl: np.ndarray  # per output channel
    w_int: np.ndarray  # int8, same layout as the float weight
    b_int: np.ndarray  # int32 per output channel
    eta_in: float
    eta_out: float

    def __post_init__(self):
        for name in ("w_fl", "w_int", "b_int"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))

    @property
    def acc_fl(self) -> np.ndarray:
        return self.in_fl + self.w_fl


@dataclass(frozen=True)
class FixedPointPlan:
    """Every tensor's format and every layer's integers (module doc); frozen."""

    scheme: str
    input_fl: int
    input_signed: bool
    fl: dict  # node name -> np.ndarray[int] per channel (int32 domain; input: 8-bit)
    eta: dict  # node name -> float
    layers: dict  # node name -> LayerPlan
    clip_hi: dict = field(default_factory=dict)  # clip node -> np.ndarray[int] per channel
    # global_avg_pool node -> right shift (per channel, ties to even) of its input before the
    # sum, set where the sum could pass int32 (f8tvm.core.bounds); absent: no shift
    pool_shift: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)  # calibration notes (per-stream clip levels ...)

    def __post_init__(self):
        object.__setattr__(self, "fl", _frozen_map(self.fl, _frozen))
        object.__setattr__(self, "eta", _frozen_map(self.eta))
        object.__setattr__(self, "layers", _frozen_map(self.layers))
        object.__setattr__(self, "clip_hi", _frozen_map(self.clip_hi, _frozen))
        object.__setattr__(self, "pool_shift", _frozen_map(self.pool_shift, _frozen))
        object.__setattr__(self, "info", _frozen_map(self.info))

    def output_format(self, graph) -> tuple[np.ndarray, float]:
        return self.fl[graph.output], self.eta[graph.output]

    def shift_table(self, graph) -> list[dict]:
        """Per layer: formats and the requantize shift(s) applied to its input."""
        rows = []
        for node in graph.layers():
            lp = self.layers[node.name]
            src = node.inputs[0]
            shift = self.fl[src] - lp.in_fl
            rows.append(dict(
                layer=node.name, source=node.source, op=node.op,
                in_fl=int(lp.in_fl), in_signed=bool(lp.in_signed),
                w_fl=compact(lp.w_fl), acc_fl=compact(lp.acc_fl),
                in_shift=compact(shift), eta_in=float(lp.eta_in), eta_out=float(lp.eta_out),
                macs=int(_macs(node))))
        return rows

    def to_json(self, graph) -> dict:
        fl_out, eta_out = self.output_format(graph)
        return dict(scheme=self.scheme, input_fl=int(self.input_fl),
                    input_signed=bool(self.input_signed), output_fl=compact(fl_out),
                    output_eta=float(eta_out), layers=self.shift_table(graph),
                    pool_shift={k: compact(v) for k, v in self.pool_shift.items()},
                    info=dict(self.info))


def compact(arr):
    arr = np.asarray(arr)
    if arr.size and np.all(arr == arr.flat[0]):
        return int(arr.flat[0])
    return [int(v) for v in arr.ravel()]


def _macs(node) -> int:
    out = int(np.prod(node.shape))
    return out * int(np.prod(node.weight.shape[1:]))


def dumps(obj) -> str:
    def plain(o):
        if hasattr(o, "tolist"):
            return o.tolist()
        return dict(o) if isinstance(o, MappingProxyType) else asdict(o)

    return json.dumps(obj, indent=1, default=plain)


@runtime_checkable
class PlanSource(Protocol):
    """Where a build's fixed-point decisions come from: calibration
    (:class:`f8tvm.calibrate.Calibration`), a given plan (:class:`f8tvm.api.GivenPlan`), a QAT
    model (:func:`f8tvm.qat.source`) or an F8Net checkpoint
    (:func:`f8tvm.frontend.f8net.load_checkpoint`).  A source decides; it never compiles:
    :func:`f8tvm.compile` takes any of them down the one build path."""

    model: Any  # the float torch.nn.Module the plan is for
    example_input: Any  # its input, batch included

    def plan_for(self, graph, progress=None) -> FixedPointPlan:
        """The plan over ``graph``, the layer graph of :attr:`model` (``progress(phase, done,
        total)`` for long work)."""

    def metadata(self) -> dict:
        """Entries the source adds to the module's ``.json``."""
