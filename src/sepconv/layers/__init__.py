"""Separable convolution layers in ``torch.nn`` style.

Each layer stores parameters and options and does its math through :mod:`sepconv.functional`
(``conv_nd``, ``pad_input``), so a layer and its functional op always agree. Two-factor layers
keep their factors as plain ``nn.ConvNd`` children (``depthwise``/``pointwise``,
``vertical``/``horizontal``) so exporters, FLOP counters and pruning tools recognise them.

Padding is applied once, to the input of the spatial factor: symmetric zero padding is handed to
the child conv itself; asymmetric pads (``'same'`` with an even kernel) and the other padding
modes go through ``F.pad``; ``'same'`` with a stride > 1 is recomputed from each input's size
(TensorFlow semantics, see :mod:`sepconv.padding`).

Initialization
--------------
Every factor is initialized LeCun-uniform with the fan-in of *that factor*
(``U(-sqrt(3/fan_in), sqrt(3/fan_in))``, variance ``1/fan_in``; depthwise fan-in = kernel
elements, pointwise fan-in = ``C*d``, vertical fan-in = ``C/g*kh``, horizontal = ``r/g*kw``).
Each factor then preserves the variance of its input, and the composed dense kernel has
exactly the LeCun variance ``1/(C*kh*kw)`` of a dense conv. torch's default
(kaiming-uniform with ``a=sqrt(5)``, variance ``1/(3*fan_in)``) would shrink the signal by 3x per
factor, i.e. 9x per separable layer: after 20 layers ``9**-20``. Biases start at zero (Keras).

One kind per module: :mod:`~sepconv.layers.depthwise`, :mod:`~sepconv.layers.separable`,
:mod:`~sepconv.layers.blueprint`, :mod:`~sepconv.layers.spatial`; what they share in
:mod:`~sepconv.layers._base`.
"""

from .blueprint import BlueprintSeparableConv1d, BlueprintSeparableConv2d, BlueprintSeparableConv3d
from .depthwise import DepthwiseConv1d, DepthwiseConv2d, DepthwiseConv3d
from .separable import SeparableConv1d, SeparableConv2d, SeparableConv3d
from .spatial import SpatiallySeparableConv2d

__all__ = [
    "DepthwiseConv1d",
    "DepthwiseConv2d",
    "DepthwiseConv3d",
    "SeparableConv1d",
    "SeparableConv2d",
    "SeparableConv3d",
    "BlueprintSeparableConv1d",
    "BlueprintSeparableConv2d",
    "BlueprintSeparableConv3d",
    "SpatiallySeparableConv2d",
]
