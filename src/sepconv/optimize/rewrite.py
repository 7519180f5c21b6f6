"""Graph rewrites on a copy of the model: BatchNorm folding, lowering of sepconv layers to their
child convs, global average pooling as one pooling window, in-place activations after fresh outputs."""

import copy
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..fold import fold_batchnorm
from ..graph import fold_conv_bn
from ..layers._base import _foldable_bn as _foldable
from ..layers.separable import _SeparableConvNd
from .fused import FusedBlueprintConv2d, FusedConv2d, FusedLinear, FusedSeparableConv2d
from .._checks import check_module

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


def _fold_into(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``conv`` computing ``bn(conv(x))`` in eval mode."""
    weight, bias = fold_batchnorm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
    new = copy.deepcopy(conv)
    new.weight = nn.Parameter(weight)
    new.bias = nn.Parameter(bias)
    return new


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every foldable BatchNorm folded into its conv.

    Folds the ``norm`` between the depthwise and pointwise factors of
    :class:`~sepconv.SeparableConv2d` (into the depthwise conv), then every BatchNorm that takes a
    conv's output, wherever it is called in ``forward`` (into the conv, or a sepconv layer's output
    factor; see :func:`sepconv.graph.fold_conv_bn`, which also says which BatchNorms are left
    alone and why). The model keeps its class and module names; outputs are unchanged in eval mode.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> type(fold_batchnorms(m)[1]).__name__
        'Identity'
    """
    return _fold(model)[0]


def _fold(model: nn.Module) -> tuple[nn.Module, dict]:
    """:func:`fold_batchnorms` and each BatchNorm's outcome: ``"folded into 'conv'"`` or why not."""
    check_module("model", model)
    model = copy.deepcopy(model).eval()
    inside = {}
    for name, module in list(model.named_modules()):
        if isinstance(module, _SeparableConvNd) and _foldable(module.norm, module.depthwise.out_channels):
            prefix = f"{name}." if name else ""
            module.depthwise = _fold_into(module.depthwise, module.norm)
            module.norm = nn.Identity()
            inside[f"{prefix}norm"] = f"folded into '{prefix}depthwise'"
    folded = fold_conv_bn(model, inplace=True)
    return folded.model, {**inside, **folded.batchnorms}


def _lower(model: nn.Module) -> nn.Module:
    """Replace sepconv layers whose padding their child convs do themselves by a plain
    ``nn.Sequential`` of those children (identities dropped): the same ops without the layer's
    input checks and extra module calls, which matter at batch 1; and ``nn.AdaptiveAvgPool2d(1)``
    by :class:`_GlobalAvgPool2d`. Modifies ``model``."""
    from ..layers import SpatiallySeparableConv2d
    from ..layers.blueprint import _BlueprintSeparableConvNd

    def lowered(m: nn.Module) -> Optional[nn.Module]:
        if getattr(m, "_explicit", True):
            return None
        if isinstance(m, _SeparableConvNd):
            parts = [m.depthwise, m.norm, m.act, m.pointwise]
        elif isinstance(m, _BlueprintSeparableConvNd):
            parts = [m.pointwise, m.norm, m.act, m.depthwise]
        elif isinstance(m, SpatiallySeparableConv2d):
            parts = [m.vertical, m.horizontal]
        else:
            return None
        return nn.Sequential(*[p for p in parts if not isinstance(p, nn.Identity)])

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = lowered(child) or _global_pool(child)
            if new is not None:
                setattr(parent, name, new)
    model = lowered(model) or model
    _inplace_activations(model)
    return model


class _GlobalAvgPool2d(nn.Module):
    """``nn.AdaptiveAvgPool2d(1)`` as one ``avg_pool2d`` window over the whole map: the same means,
    where PyTorch's adaptive kernel is slower on a channels_last map (MobileNetV1's 1x1024x7x7 with
    cold caches, as inside the network: 0.117 ms against 0.045; Zen 3, 2 threads). Other inputs
    (empty maps, other dtypes) run the adaptive pooling itself."""

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() in (3, 4) and x.shape[-1] > 0 and x.shape[-2] > 0 and x.dtype in (torch.float32, torch.float64):
            return F.avg_pool2d(x, (x.shape[-2], x.shape[-1]))
        return F.adaptive_avg_pool2d(x, 1)


def _global_pool(m: nn.Module) -> Optional[nn.Module]:
    """:class:`_GlobalAvgPool2d` in place of an ``nn.AdaptiveAvgPool2d`` to 1 x 1, else None."""
    if type(m) is nn.AdaptiveAvgPool2d and m.output_size in (1, (1, 1)):
        return _GlobalAvgPool2d()
    return None


def _inplace_activations(model: nn.Module) -> None:
    """Make a ReLU / ReLU6 that directly follows a conv (identities skipped) in an
    ``nn.Sequential`` work in place: the conv's output is a fresh tensor nobody else sees, so
    this saves an allocation and a pass over memory. Modifies ``model``."""
    producers = (*_CONVS, nn.Linear, FusedSeparableConv2d, FusedBlueprintConv2d, FusedConv2d, FusedLinear)

    def produces(m: Optional[nn.Module]) -> bool:  # a fresh output: a producer, or a Sequential ending in one
        if isinstance(m, nn.Sequential):
            rest = [c for c in m if not isinstance(c, nn.Identity)]
            return bool(rest) and produces(rest[-1])
        return isinstance(m, producers)

    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        previous = None
        for name, child in parent.named_children():
            if isinstance(child, nn.Identity):
                continue
            if type(child) in (nn.ReLU, nn.ReLU6) and produces(previous) and not child.inplace:
                setattr(parent, name, type(child)(inplace=True))
            previous = child
