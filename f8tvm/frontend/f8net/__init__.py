"""Import checkpoints trained by the official F8Net code into a FixedPointPlan, bit-exactly.

A checkpoint is the state_dict of the official ``fix_resnet`` / ``fix_mobilenet_v2`` /
``fix_mobilenet_v1`` models: per quantized layer (``ReLUClipFXQConvBN``) the keys ``conv.weight``,
``bn.{weight,bias,running_mean,running_var,num_batches_tracked}``, ``alpha`` (the PACT clipping
level) and ``input_fraclen`` (an EMA of the input fractional length); per classifier
(``ReLUClipFXQLinear``) ``weight``, ``bias``, ``alpha``, ``input_fraclen``.

:func:`load_checkpoint` rebuilds what the official *integer-only* export (``int_op_only``, with
``quant_bias``, ``quant_avgpool`` and ``pool_fusing`` on) computes, and expresses it as a plan
that :func:`f8tvm.compile` consumes:

* input FL: 8 for the raw ``uint8`` pixel taken as ``P / 256`` (conventional); the head's own
  ``clamp(round_half_even(input_fraclen), 0, 7)`` for a signed normalised input (tiny finetuning);
* per layer ``FL_in = clamp(round_half_even(input_fraclen), 0, 8 - s)`` (``s`` = signed input);
* ``eta_L = 2**FL_in * |alpha| / (2**(8 - s) - 1)``, ``alpha`` taken from the layer's clipping
  master (shared along residual streams); ``eta = 1`` for the weight-only head and under
  ``no_clipping`` (tiny finetuning);
* ``W_eff = (gamma / sqrt(var + eps)) * W * eta_L / eta_next``,
  ``b_eff = (beta - gamma * mean / sqrt(var + eps)) / eta_next``, both times the average-pool
  factor where it is folded;
* ``FL_w = clamp(floor(log2(40 / std(W_eff))), 0, 7)`` (conventional, F8Net's std rule) or the
  RMSE-optimal FL in 0..7 (tiny finetuning, ``format_grid_search``);
* ``w_int = clamp(round_half_even(W_eff * 2**FL_w), -127, 127)``,
  ``b_int = clamp(round_half_even(b_eff * 2**(FL_in + FL_w)), -(2**31 - 1), 2**31 - 1)``;
* classifier: weights quantized from the raw ``W``; ``b_eff = b / eta_fc / ws`` with
  ``ws = (1 / sqrt(out_features)) / std(W_q)`` (F8Net's constant rescale).

These are evaluated with float32 torch operations in the same order as the official export, so
every rounding decision (ties included) comes out the same.

Average pooling: the integer program sums the last feature map and adds ``k`` to its FL; the
remaining factor ``2**k / (H*W)`` is folded offline.  ``avgpool="official"`` (the default)
reproduces the official export: ``k = 6`` and the factor ``64/49`` of its hard-coded 7x7 pool,
folded into the last conv of the network; for ResNet that is ``body[-1]`` of the last block only,
so the identity branch of that block is left unscaled (``F8NET_SPEC`` §1d).
``avgpool="corrected"`` applies the factor to the whole pooled sum with the true ``H*W``: for
ResNet it is folded into the classifier weights instead, for MobileNet it stays in the last conv
(already consistent there).
"""

from .architectures import (
           ARCHS,
           CONFIGS,
           Arch,
           F8NetConfig,
           F8NetFloatModel,
           LayerSpec,
           architecture,
)
from .reader import CheckpointError, read_state_dict
from .source import AVGPOOL_MODES, DEFAULT_AVGPOOL, F8NetCheckpoint, load_checkpoint

__all__ = ["ARCHS", "AVGPOOL_MODES", "CONFIGS", "DEFAULT_AVGPOOL", "Arch", "CheckpointError",
           "F8NetCheckpoint", "F8NetConfig", "F8NetFloatModel", "LayerSpec", "architecture",
           "load_checkpoint", "read_state_dict"]
