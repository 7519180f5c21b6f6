"""MobileNetV1 (Howard et al., 2017) and its full-convolution twin (the paper's Table 4).

The architecture is the data table :data:`MOBILENET_V1` (Table 1), validated when a model is
built. As in every public implementation, the last depthwise layer has stride 1 (the paper's
table says 2, which would make the 7x7 average pool act on a 4x4 map). Padding is symmetric
(``padding=1`` for 3x3), the PyTorch convention; output sizes equal TensorFlow's ``'same'``.
"""

import math
from collections.abc import Callable, Sequence
from typing import Optional

import torch
from torch import nn

from .._checks import call_factory, check_positive_int
from ..layers import SeparableConv2d

__all__ = ["MOBILENET_V1", "MobileNetV1", "mobilenet_v1", "conv_mobilenet_v1"]

# (kind, out_channels, stride): "conv" = full 3x3 conv, "dws" = depthwise separable 3x3.
MOBILENET_V1: tuple[tuple[str, int, int], ...] = (
    ("conv", 32, 2),
    ("dws", 64, 1),
    ("dws", 128, 2),
    ("dws", 128, 1),
    ("dws", 256, 2),
    ("dws", 256, 1),
    ("dws", 512, 2),
    ("dws", 512, 1),
    ("dws", 512, 1),
    ("dws", 512, 1),
    ("dws", 512, 1),
    ("dws", 512, 1),
    ("dws", 1024, 2),
    ("dws", 1024, 1),
)


def _validate(table: Sequence[tuple[str, int, int]]) -> None:
    if not table:
        raise ValueError("arch: expected at least one (kind, out_channels, stride) row, got none")
    for i, row in enumerate(table):
        if not (isinstance(row, tuple) and len(row) == 3):
            raise ValueError(f"arch[{i}]: expected (kind, out_channels, stride), got {row!r}")
        kind, out, stride = row
        if kind not in ("conv", "dws"):
            raise ValueError(f"arch[{i}]: expected kind 'conv' or 'dws', got {kind!r}")
        check_positive_int(f"arch[{i}] out_channels", out)
        if stride not in (1, 2):
            raise ValueError(f"arch[{i}]: expected stride 1 or 2, got {stride!r}")


_NORM, _ACT = "a callable taking the channel count", "a callable returning a module"


def _conv_bn_act(cin: int, cout: int, stride: int, norm_layer, act_layer) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), call_factory("norm_layer", norm_layer, cout, wants=_NORM),
                         call_factory("act_layer", act_layer, wants=_ACT))


class MobileNetV1(nn.Module):
    """MobileNetV1 with width multiplier ``alpha``: BN + activation after every conv.

    Args:
        width_mult: alpha; channels become ``int(c * alpha)`` (Keras' rule), at least 1.
        num_classes: classifier outputs.
        dropout: dropout before the classifier (Keras default 1e-3).
        norm_layer: ``callable(channels) -> nn.Module``; default ``nn.BatchNorm2d``.
        act_layer: ``callable() -> nn.Module``; default ``nn.ReLU`` (Keras uses ReLU6).
        separable: depthwise separable blocks (True) or full 3x3 convs (False, Table 4's twin).
        in_channels: input channels (3 for RGB).
        arch: the architecture table, rows ``(kind, out_channels, stride)``.

    Shape:
        ``(B, in_channels, H, W) -> (B, num_classes)``; any ``H, W`` >= 32 (global average pool).

    Example:
        >>> mobilenet_v1(0.25, num_classes=10)(torch.randn(1, 3, 128, 128)).shape
        torch.Size([1, 10])
    """

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 1e-3,
                 norm_layer: Optional[Callable[[int], nn.Module]] = None,
                 act_layer: Optional[Callable[[], nn.Module]] = None, separable: bool = True,
                 in_channels: int = 3, arch: Sequence[tuple[str, int, int]] = MOBILENET_V1) -> None:
        super().__init__()
        if isinstance(width_mult, bool) or not isinstance(width_mult, (int, float)) or not 0 < width_mult < math.inf:
            raise ValueError(f"width_mult: expected a positive number, got {width_mult!r}")
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        if not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout: expected a probability in [0, 1), got {dropout!r}")
        arch = tuple(tuple(r) if isinstance(r, list) else r for r in arch)
        _validate(arch)
        norm_layer = norm_layer or nn.BatchNorm2d
        act_layer = act_layer or nn.ReLU
        self.width_mult = width_mult
        layers = []
        cin = in_channels
        for i, (kind, out, stride) in enumerate(arch):
            cout = max(1, int(out * width_mult))
            if kind == "conv" or not separable:
                layers.append(_conv_bn_act(cin, cout, stride, norm_layer, act_layer))
            else:
                layers.append(nn.Sequential(
                    SeparableConv2d(cin, cout, 3, stride, 1, bias=False, norm_layer=norm_layer, act_layer=act_layer),
                    call_factory("norm_layer", norm_layer, cout, wants=_NORM), call_factory("act_layer", act_layer, wants=_ACT)))
            cin = cout
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(cin, num_classes)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.features(x)).flatten(1)
        return self.classifier(self.dropout(x))


def mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000, **kwargs) -> MobileNetV1:
    """MobileNetV1 (Table 1). At width 1.0 and 224x224: 568,740,352 MACs, 4,231,976 parameters.

    Example:
        >>> sum(p.numel() for p in mobilenet_v1().parameters())
        4231976
    """
    return MobileNetV1(width_mult, num_classes, **kwargs)


def conv_mobilenet_v1(width_mult: float = 1.0, num_classes: int = 1000, **kwargs) -> MobileNetV1:
    """The same network with full 3x3 convolutions (the paper's Table 4 "Conv MobileNet")."""
    return MobileNetV1(width_mult, num_classes, separable=False, **kwargs)
