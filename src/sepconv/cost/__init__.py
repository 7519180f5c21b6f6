"""Exact cost accounting from shapes alone: MACs, FLOPs, parameters and activation memory.

Units, stated once and used everywhere:

* **MACs** (multiply-accumulates) = the multiplications the separable-convolution tutorials and
  the MobileNet paper count ("mult-adds"). A convolution output element costs
  ``C/groups * prod(kernel)`` MACs.
* **FLOPs** = ``2 * MACs`` (one multiply and one add each), the convention of
  ``torch.utils.flop_counter.FlopCounterMode``. Bias additions are not counted (as there).
* **params**: parameter elements; **bytes**: elements times the dtype's item size.

Every formula is a pure function of shapes (no tensor arithmetic), e.g. for a conv::

    macs = B * N * prod(out_spatial) * (C / groups) * prod(kernel)
    macs (transposed) = B * C * prod(in_spatial) * (N / groups) * prod(kernel)

:func:`profile` propagates shapes through a whole model on the ``meta`` device (no real
compute), attributes each convolution / matmul to the module that ran it, and reports per layer
and per layer type (MobileNet's Table 2). :func:`compare` and :func:`explain` put one layer's
standard and separable forms side by side, with the derivation written out the way the
tutorials do (docs/worked-examples.md checks their worked examples).

One layer's closed forms are in :mod:`sepconv.cost.layer`, whole models in
:mod:`sepconv.cost.model`, the side-by-side view in :mod:`sepconv.cost.compare`.
"""

from .compare import Comparison, compare, explain
from .layer import (
    LayerCost,
    blueprint_separable_conv_cost,
    conv_cost,
    conv_output_size,
    depthwise_conv_cost,
    linear_cost,
    separable_conv_cost,
    spatially_separable_conv_cost,
)
from .model import CATEGORIES, LayerRow, ModelCost, profile  # noqa: F401 (CATEGORIES, LayerRow: for readers of a ModelCost)

__all__ = [
    "LayerCost",
    "conv_output_size",
    "conv_cost",
    "linear_cost",
    "depthwise_conv_cost",
    "separable_conv_cost",
    "blueprint_separable_conv_cost",
    "spatially_separable_conv_cost",
    "ModelCost",
    "profile",
    "Comparison",
    "compare",
    "explain",
]

