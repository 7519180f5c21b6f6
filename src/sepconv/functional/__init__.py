"""Functional separable convolutions: the single source of truth for the math.

Shapes use ``C`` input channels, ``N`` output channels, ``d`` the depth multiplier, ``r`` a rank,
``k`` the kernel size and ``*`` the 1, 2 or 3 spatial dims. Every op is a cross-correlation, as in
``torch.nn.functional.conv2d``, and accepts batched ``(B, C, *)`` or unbatched ``(C, *)`` input.

=================================  ===========================================================
op                                 weights
=================================  ===========================================================
``depthwise_conv{1,2,3}d``         ``weight (C*d, 1, *k)``
``separable_conv{1,2,3}d``         ``depthwise (C*d, 1, *k)``, ``pointwise (N, C*d, *1)``
``blueprint_separable_conv{..}d``  ``pointwise (N*r, C, *1)``, ``depthwise (N, r, *k)``
``spatially_separable_conv2d``     ``vertical (r, C/g, kh, 1)``, ``horizontal (N, r/g, 1, kw)``
``separable_filter2d``             fixed 1-D ``kernel_x (kw,)``, ``kernel_y (kh,)``
=================================  ===========================================================

``padding`` is an int, a tuple, ``'valid'`` or ``'same'`` (TensorFlow semantics, see
:mod:`sepconv.padding`); ``padding_mode`` one of ``'zeros'``, ``'reflect'``, ``'replicate'``,
``'circular'``. Padding is applied once, to the input of the spatial (k > 1) factor.

The ops are in :mod:`sepconv.functional.conv` and :mod:`sepconv.functional.filter`; the core they and
the layers run through (TorchScript-compatible) in :mod:`sepconv.functional._core`.
"""

from ._core import check_call, check_fit, check_input, conv_nd, input_fpad, pad_input  # noqa: F401 (the layers' forward)
from .conv import (
    blueprint_separable_conv1d,
    blueprint_separable_conv2d,
    blueprint_separable_conv3d,
    depthwise_conv1d,
    depthwise_conv2d,
    depthwise_conv3d,
    separable_conv1d,
    separable_conv2d,
    separable_conv3d,
    spatially_separable_conv2d,
)
from .filter import separable_filter2d

__all__ = [
    "depthwise_conv1d",
    "depthwise_conv2d",
    "depthwise_conv3d",
    "separable_conv1d",
    "separable_conv2d",
    "separable_conv3d",
    "blueprint_separable_conv1d",
    "blueprint_separable_conv2d",
    "blueprint_separable_conv3d",
    "spatially_separable_conv2d",
    "separable_filter2d",
]
