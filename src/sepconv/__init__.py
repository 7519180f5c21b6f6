"""sepconv: separable convolutions for PyTorch.

Layers (depthwise, depthwise separable, blueprint separable, spatially separable), exact cost
accounting, and optimal decomposition of trained convolutions into separable ones.
"""

import importlib
import sys
import types
from typing import TYPE_CHECKING, Any

# The package imports its submodules (and so torch) on first use, not at ``import sepconv``: the
# ``sepconv`` command then starts light and can report a Ctrl-C during torch's import as one line.
_EXPORTS = {
    "ConversionReport": "convert",
    "convert": "convert",
    "distill": "train",
    "optimize_for_inference": "optimize",
    "ModelCost": "cost",
    "compare": "cost",
    "explain": "cost",
    "profile": "cost",
    "load": "serialize",
    "save": "serialize",
    "apply_recipe": "serialize",
    **{name: "layers" for name in (
        "BlueprintSeparableConv1d", "BlueprintSeparableConv2d", "BlueprintSeparableConv3d",
        "DepthwiseConv1d", "DepthwiseConv2d", "DepthwiseConv3d",
        "SeparableConv1d", "SeparableConv2d", "SeparableConv3d", "SpatiallySeparableConv2d")},
}

if TYPE_CHECKING:
    from . import cost, decompose, functional
    from .convert import ConversionReport, convert
    from .cost import ModelCost, compare, explain, profile
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
    from .optimize import optimize_for_inference
    from .serialize import apply_recipe, load, save
    from .train import distill


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif not name.startswith("__"):
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps ``sepconv.convert`` the function when the submodule of the same name is imported."""

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _EXPORTS and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package

__version__ = "0.1.0"

__all__ = [
    "functional",
    "decompose",
    "cost",
    "convert",
    "ConversionReport",
    "distill",
    "optimize_for_inference",
    "load",
    "save",
    "apply_recipe",
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
