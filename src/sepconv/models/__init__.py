"""Models built from sepconv layers, and the built-in names the CLI accepts."""

import math
from collections.abc import Callable

from torch import nn

from .digits import DIGITS_CNN, DigitsCNN, digits_cnn, digits_separable_cnn
from .mobilenet import MOBILENET_V1, MobileNetV1, conv_mobilenet_v1, mobilenet_v1

__all__ = [
    "MOBILENET_V1",
    "MobileNetV1",
    "mobilenet_v1",
    "conv_mobilenet_v1",
    "DIGITS_CNN",
    "DigitsCNN",
    "digits_cnn",
    "digits_separable_cnn",
    "BUILTIN",
    "build",
]

# name -> (factory taking the optional ':arg' as a float, default input size)
BUILTIN: dict[str, tuple[Callable[..., nn.Module], tuple[int, ...]]] = {
    "mobilenet_v1": (lambda a=1.0: mobilenet_v1(a), (1, 3, 224, 224)),
    "conv_mobilenet_v1": (lambda a=1.0: conv_mobilenet_v1(a), (1, 3, 224, 224)),
    "digits_cnn": (lambda w=32: digits_cnn(int(w)), (1, 1, 16, 16)),
    "digits_separable_cnn": (lambda w=32: digits_separable_cnn(int(w)), (1, 1, 16, 16)),
}

# name -> (kind of its ':WIDTH', the largest accepted: a typo must not allocate a huge model)
_WIDTHS = {"mobilenet_v1": ("number", 8), "conv_mobilenet_v1": ("number", 8),
           "digits_cnn": ("int", 1024), "digits_separable_cnn": ("int", 1024)}


def build(name: str) -> nn.Module:
    """Build a built-in model by name, e.g. ``'mobilenet_v1'`` or ``'mobilenet_v1:0.5'``.

    Example:
        >>> build('mobilenet_v1:0.25').num_features
        256
    """
    if not isinstance(name, str):
        raise TypeError(f"model: expected a name such as 'mobilenet_v1:0.5', got {name!r}")
    base, colon, arg = name.partition(":")
    if base not in BUILTIN:
        raise ValueError(f"model: expected one of {sorted(BUILTIN)} (optionally ':WIDTH'), got {name!r}")
    factory = BUILTIN[base][0]
    if not colon:
        return factory()
    try:
        value = float(arg)
    except ValueError:
        raise ValueError(f"model: expected a number after ':' in {name!r}, got {arg!r}") from None
    kind, largest = _WIDTHS[base]
    if not (math.isfinite(value) and 0 < value <= largest) or (kind == "int" and value != int(value)):
        raise ValueError(f"model: expected a positive {kind} up to {largest:g} after ':' in {name!r}, got {arg!r}")
    return factory(value)
