"""BatchNorm folding math: small pure functions of tensors, used by layers, convert and optimize.

In eval mode a BatchNorm is a per-channel affine map ``bn(x) = scale * x + shift`` with
``scale = weight / sqrt(running_var + eps)`` and ``shift = bias - running_mean * scale``
(:func:`batchnorm_affine`). After a convolution it folds into the convolution's output channels
(:func:`fold_affine`, :func:`fold_batchnorm`): a plain, grouped or depthwise conv alike, since
output channel ``o`` of any conv is row ``o`` of its weight. Before a convolution (the norm
between the two factors of a separable layer) its scale folds into the first factor's output
channels and its shift, passed through the second factor, becomes a bias (:func:`shifted_bias`);
that is exact only where the second factor sees no zero padding.

Nothing here knows about modules: every function takes and returns tensors (new ones; the
arguments are not modified, and gradients are not tracked).
"""

from typing import Optional

import torch
from torch import Tensor

__all__ = ["batchnorm_affine", "fold_affine", "fold_batchnorm", "shifted_bias"]


@torch.no_grad()
def batchnorm_affine(running_mean: Tensor, running_var: Tensor, eps: float, weight: Optional[Tensor] = None,
                     bias: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``batch_norm(x) == scale * x + shift`` per channel in eval mode.

    Args:
        running_mean, running_var: the BatchNorm's running statistics, shape ``(C,)``.
        eps: the BatchNorm's ``eps``.
        weight, bias: its affine parameters, or None for ``affine=False``.

    Returns:
        ``(scale, shift)``, each of shape ``(C,)``, in the statistics' dtype.
    """
    scale = torch.rsqrt(running_var + eps)
    shift = -running_mean * scale
    if weight is not None:
        scale, shift = scale * weight, shift * weight + bias
    return scale.detach(), shift.detach()


@torch.no_grad()
def fold_affine(weight: Tensor, bias: Optional[Tensor], scale: Tensor,
                shift: Tensor) -> tuple[Tensor, Tensor]:
    """Weight and bias of a conv whose output is then multiplied by ``scale`` and offset by ``shift``
    per output channel: ``scale * conv(x; weight, bias) + shift == conv(x; w, b)``.

    Args:
        weight: the conv's weight, output channels first (any ``nn.ConvNd``, grouped or not).
        bias: its bias of shape ``(out_channels,)``, or None.
        scale, shift: per output channel, shape ``(out_channels,)``.

    Returns:
        ``(w, b)``: new tensors; ``b`` is never None.
    """
    w = weight.detach() * scale.reshape(-1, *[1] * (weight.dim() - 1))
    b = shift if bias is None else bias.detach() * scale + shift
    return w, b


def fold_batchnorm(weight: Tensor, bias: Optional[Tensor], running_mean: Tensor, running_var: Tensor, eps: float,
                   bn_weight: Optional[Tensor] = None, bn_bias: Optional[Tensor] = None) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``batch_norm(conv(x))`` (eval mode) as a single conv.

    Args:
        weight, bias: the conv's (output channels first; bias may be None).
        running_mean, running_var, eps: the BatchNorm's statistics.
        bn_weight, bn_bias: the BatchNorm's affine parameters, or None.

    Returns:
        ``(w, b)``: new tensors; ``b`` is never None.

    Example:
        >>> conv, bn = torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8).eval()
        >>> w, b = fold_batchnorm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)
        >>> x = torch.randn(1, 3, 8, 8)
        >>> torch.allclose(torch.nn.functional.conv2d(x, w, b), bn(conv(x)), atol=1e-6)
        True
    """
    scale, shift = batchnorm_affine(running_mean, running_var, eps, bn_weight, bn_bias)
    return fold_affine(weight, bias, scale, shift)


@torch.no_grad()
def shifted_bias(weight: Tensor, shift: Tensor, groups: int = 1) -> Tensor:
    """The bias a per-input-channel constant ``shift`` adds when passed through a conv of ``weight``.

    ``conv(x + shift; weight) == conv(x; weight) + shifted_bias(weight, shift, groups)`` wherever
    the conv sees no zero padding.

    Args:
        weight: the conv's weight ``(out_channels, in_channels // groups, *kernel)``.
        shift: per input channel, shape ``(in_channels,)``.
        groups: the conv's groups.

    Returns:
        The bias, shape ``(out_channels,)``.
    """
    out, per_group = weight.shape[0], weight.shape[1]
    taps = weight.detach().reshape(groups, out // groups, per_group, -1).sum(-1)  # (g, out/g, in/g)
    return (taps @ shift.reshape(groups, per_group, 1)).reshape(out)
