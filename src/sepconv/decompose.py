"""Pure tensor math for separable structures: composing factors into dense kernels, and back.

Nothing here knows about ``nn.Module``. Dense conv weights are ``W (N, C, *k)`` (output
channels, input channels per group, kernel). Each ``compose_*`` is the exact inverse of the
structure: the dense kernel whose convolution equals the two-factor convolution.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "compose_depthwise_separable",
    "compose_blueprint_separable",
    "compose_spatially_separable",
]


def compose_depthwise_separable(depthwise_weight: Tensor, pointwise_weight: Tensor, depth_multiplier: int = 1) -> Tensor:
    """Dense kernel of depthwise ``(C*d, 1, *k)`` then pointwise ``(N, C*d, *1)``.

    ``W[n, c] = sum_j P[n, c*d + j] * D[c*d + j]`` (output channel ``c*d + j`` of a grouped conv
    with ``groups = C`` belongs to input channel ``c``).

    Returns:
        ``(N, C, *k)``.

    Example:
        >>> compose_depthwise_separable(torch.randn(6, 1, 3, 3), torch.randn(4, 6, 1, 1), 2).shape
        torch.Size([4, 3, 3, 3])
    """
    d = depth_multiplier
    mid, n_out = depthwise_weight.shape[0], pointwise_weight.shape[0]
    c = mid // d
    pw = pointwise_weight.reshape(n_out, c, d)
    dw = depthwise_weight.reshape(c, d, -1)
    return torch.einsum("ncj,cjk->nck", pw, dw).reshape(n_out, c, *depthwise_weight.shape[2:])


def compose_blueprint_separable(pointwise_weight: Tensor, depthwise_weight: Tensor) -> Tensor:
    """Dense kernel of pointwise ``(N*r, C, *1)`` then grouped ``(N, r, *k)`` (``groups = N``).

    ``W[n, c] = sum_j P[n*r + j, c] * B[n, j]``.

    Returns:
        ``(N, C, *k)``.

    Example:
        >>> compose_blueprint_separable(torch.randn(8, 3, 1, 1), torch.randn(4, 2, 5, 5)).shape
        torch.Size([4, 3, 5, 5])
    """
    n_out, r = depthwise_weight.shape[:2]
    c = pointwise_weight.shape[1]
    pw = pointwise_weight.reshape(n_out, r, c)
    dw = depthwise_weight.reshape(n_out, r, -1)
    return torch.einsum("njc,njk->nck", pw, dw).reshape(n_out, c, *depthwise_weight.shape[2:])


def compose_spatially_separable(vertical_weight: Tensor, horizontal_weight: Tensor, groups: int = 1) -> Tensor:
    """Dense kernel of vertical ``(r, C/g, kh, 1)`` then horizontal ``(N, r/g, 1, kw)`` filters.

    In each group: ``W[o, i, y, x] = sum_q H[o, q, 0, x] * V[q, i, y, 0]``.

    Returns:
        ``(N, C/g, kh, kw)``.

    Example:
        >>> compose_spatially_separable(torch.randn(2, 3, 3, 1), torch.randn(4, 2, 1, 3)).shape
        torch.Size([4, 3, 3, 3])
    """
    g = groups
    r, cg, kh = vertical_weight.shape[:3]
    n_out, _, _, kw = horizontal_weight.shape
    v = vertical_weight.reshape(g, r // g, cg, kh)
    h = horizontal_weight.reshape(g, n_out // g, r // g, kw)
    return torch.einsum("goqx,gqiy->goiyx", h, v).reshape(n_out, cg, kh, kw)
