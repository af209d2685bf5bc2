"""F8Net quantization-aware training in PyTorch, exported as a :class:`FixedPointPlan`.

:func:`prepare` swaps fixed-point fake-quant modules into a float model (a copy by default):

* every ``Conv2d`` (with the ``BatchNorm2d`` that follows it) and ``Linear`` becomes a
  :class:`QLayer` that quantizes **its own input** (8-bit, unsigned after ReLU-like ops, signed
  otherwise) and its BN-folded, eta-scaled weight;
* every ``ReLU6``-like module becomes a :class:`QClip`, every ``AdaptiveAvgPool2d(1)`` a
  :class:`QAvgPool` (sum and ``2**-k``, ``k = round(log2(H*W))``; the rest lives in eta);
* additions, ReLU, max-pooling and reshapes stay the model's own code.

The F8Net method (``F8NET_SPEC`` §1), as f8tvm applies it to any graph:

* Activation FL from the standard deviation (``floor(log2(C / std))``, ``C = 70`` unsigned,
  ``40`` signed, unbiased std).  Training quantizes with the batch FL and keeps an EMA of it in a
  buffer (momentum 0.1, initial 6); evaluation uses ``clamp(round_half_even(buffer))``.
* Weight FL from the std of the effective weight (``C = 40``), recomputed on every forward, per
  layer (F8Net's default) or per output channel.
* PACT: one learnable clipping level ``alpha`` per activation stream, **shared by every consumer
  of a residual stream**.  It is folded as ``eta = 2**FL_m * |alpha| / (2**(8-s) - 1)`` (``FL_m``
  the rounded buffer of the stream's first consumer) into the producers' weights and bias, so
  tensors hold ``real / eta``.  f8tvm keeps one eta per stream (as its calibration does) rather
  than F8Net's one per consumer: residual adds then combine operands of one scale, and a consumer
  whose private FL differs from the master's clips at ``alpha * 2**(FL - FL_m)``.  Gradients
  reach alpha through the folding and the straight-through quantizer (masked to the unclipped
  range), which is PACT's gradient.
* BatchNorm folded with batch statistics by the double forward: a first convolution of the
  (eta-scaled) quantized input with the float weight updates the running statistics and gives
  the batch mean and biased variance used in the fold; evaluation folds the running statistics.
  ``freeze_bn`` folds the running statistics in training too (useful for tiny fine-tuning).
* ``W_eff = gamma / sigma * W * eta_in / eta_out``, ``b_eff = (beta + gamma * (b - mu) / sigma)
  / eta_out``; the network's input and its logits have ``eta = 1``.

In evaluation mode a :class:`QLayer` computes in float64 from exactly the integers it exports
(``w_int * 2**-w_fl``, ``b_int * 2**-(FL_in + w_fl)``, inputs rounded half to even and
clamped), so the prepared model's eval forward *is* the fake-quant semantics of the exported plan:
the compiled integer module returns its logits times ``2**FL`` bit for bit.
F8Net's classifier weight rescale (``rescale_forward``) is not applied: training starts from
float checkpoints whose classifier was trained without it.

:func:`save` writes a trained model as a self-describing checkpoint, :func:`load` rebuilds it
without calibration data, and ``python -m f8tvm.build --model NAME --qat-checkpoint PATH``
compiles it.

The package: :mod:`.modules` (the fake-quant modules), :mod:`.swap` (:func:`prepare`,
:func:`to_float`), :mod:`.export` (the plan source), :mod:`.checkpoint`, :mod:`.training`.
"""

from .checkpoint import (
    CHECKPOINT_FORMAT,
    CHECKPOINT_VERSION,
    QATCheckpoint,
    load,
    read_checkpoint,
    save,
)
from .export import QATSource, plan_for, source
from .modules import LayerExport, QATConfig, QAvgPool, QClip, QLayer, fake_quant, std_fl
from .swap import prepare, to_float
from .training import TRAIN_REGIMES, TrainConfig, evaluate, train

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "TRAIN_REGIMES", "LayerExport",
    "QATCheckpoint", "QATConfig", "QAvgPool", "QClip", "QLayer", "TrainConfig",
    "QATSource", "evaluate", "fake_quant", "load", "plan_for", "prepare",
    "read_checkpoint", "save", "source", "std_fl", "to_float", "train"]
