"""sepconv: separable convolutions for PyTorch.

Layers (depthwise, depthwise separable, blueprint separable, spatially separable), exact cost
accounting, and optimal decomposition of trained convolutions into separable ones.
"""

from . import cost, decompose, functional
from .convert import ConversionReport, convert
from .cost import ModelCost, compare, explain, profile
from .optimize import optimize_for_inference
from .train import distill
from .layers import (
    BlueprintSeparableConv1d,
    BlueprintSeparableConv2d,
    BlueprintSeparableConv3d,
    DepthwiseConv1d,
    DepthwiseConv2d,
    DepthwiseConv3d,
    SeparableConv1d,
    SeparableConv2d,
    SeparableConv3d,
    SpatiallySeparableConv2d,
)

__version__ = "0.1.0"

__all__ = [
    "functional",
    "decompose",
    "cost",
    "convert",
    "ConversionReport",
    "distill",
    "optimize_for_inference",
    "profile",
    "compare",
    "explain",
    "ModelCost",
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
