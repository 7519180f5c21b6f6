"""A small CNN for scikit-learn's digits (upsampled to 16x16) and its separable twin.

The architecture is the table :data:`DIGITS_CNN`; the twin replaces every 3x3 conv after the
first (whose single input channel leaves nothing to separate) by a depthwise separable one.
"""

from collections.abc import Sequence

import torch
from torch import nn

from .._checks import check_positive_int
from ..layers import SeparableConv2d

__all__ = ["DIGITS_CNN", "DigitsCNN", "digits_cnn", "digits_separable_cnn"]

# (kind, width multiple): "conv" 3x3 + BN + ReLU with out = multiple * width, "pool" 2x2 max-pool
DIGITS_CNN: tuple[tuple[str, int], ...] = (("conv", 1), ("conv", 2), ("pool", 0), ("conv", 2), ("conv", 4))


class DigitsCNN(nn.Module):
    """3x3 conv + BN + ReLU blocks, a max-pool, global average pooling and a linear classifier.

    Args:
        width: channels of the first conv (later ones are multiples of it).
        num_classes: outputs.
        in_channels: input channels.
        separable: use :class:`SeparableConv2d` for every conv but the first.
        arch: rows ``(kind, multiple)``.

    Shape:
        ``(B, in_channels, H, W) -> (B, num_classes)``.

    Example:
        >>> digits_cnn()(torch.randn(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """

    def __init__(self, width: int = 32, num_classes: int = 10, in_channels: int = 1, separable: bool = False,
                 arch: Sequence[tuple[str, int]] = DIGITS_CNN) -> None:
        super().__init__()
        check_positive_int("width", width)
        check_positive_int("num_classes", num_classes)
        check_positive_int("in_channels", in_channels)
        layers: list[nn.Module] = []
        cin, first = in_channels, True
        for i, row in enumerate(arch):
            if not (isinstance(row, tuple) and len(row) == 2 and row[0] in ("conv", "pool")):
                raise ValueError(f"arch[{i}]: expected ('conv', multiple) or ('pool', 0), got {row!r}")
            kind, mult = row
            if kind == "pool":
                layers.append(nn.MaxPool2d(2))
                continue
            cout = check_positive_int(f"arch[{i}] multiple", mult) * width
            conv = (nn.Conv2d(cin, cout, 3, padding=1, bias=False) if first or not separable
                    else SeparableConv2d(cin, cout, 3, padding=1, bias=False))
            layers += [conv, nn.BatchNorm2d(cout), nn.ReLU()]
            cin, first = cout, False
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(cin, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)).flatten(1))


def digits_cnn(width: int = 32, **kwargs) -> DigitsCNN:
    """The standard digits CNN (full 3x3 convolutions)."""
    return DigitsCNN(width, **kwargs)


def digits_separable_cnn(width: int = 32, **kwargs) -> DigitsCNN:
    """Its separable twin: the same layout with depthwise separable 3x3 convolutions."""
    return DigitsCNN(width, separable=True, **kwargs)
