"""The separable convolutions as functions: depthwise, depthwise separable, blueprint separable and
spatially separable."""

from typing import List, Optional, Tuple

import torch  # noqa: F401 (the docstring examples)
from torch import Tensor

from ..padding import PaddingArg
from ._core import _channels, _check_bias, _check_tensor, _geometry, _same_dtype, check_call, check_fit, conv_nd


# --------------------------------------------------------------------------------------------
# Public ops
# --------------------------------------------------------------------------------------------
def _depthwise(n: int, x, weight, bias, stride, padding, dilation, padding_mode) -> Tensor:
    _check_tensor("weight", weight, n + 2)
    if weight.shape[1] != 1:
        raise ValueError(f"weight: expected shape (C*d, 1, *k) for a depthwise conv, got {tuple(weight.shape)}")
    kind = f"depthwise_conv{n}d"
    c = _channels(x, n)
    check_call(x, kind, n, c, weight.dtype)
    if weight.shape[0] % c != 0:
        raise ValueError(f"weight: expected a multiple of the {c} input channels in dim 0, got {weight.shape[0]}")
    _check_bias(bias, weight.shape[0])
    kernel = tuple(weight.shape[2:])
    s, fpad, d = _geometry(x, n, kernel, stride, padding, dilation, padding_mode)
    check_fit(x, kind, list(kernel), d, fpad, padding_mode)
    return conv_nd(x, weight, bias, s, fpad, d, c, padding_mode)


def depthwise_conv1d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding: PaddingArg = 0,
                     dilation=1, padding_mode: str = "zeros") -> Tensor:
    """Depthwise 1-D convolution: each input channel filtered by its own ``d`` kernels.

    Args:
        x: ``(B, C, L)`` or ``(C, L)``.
        weight: ``(C*d, 1, k)``; output channel ``c*d + j`` is input channel ``c``'s ``j``-th filter.
        bias: ``(C*d,)`` or None.

    Returns:
        ``(B, C*d, L_out)``.

    Example:
        >>> depthwise_conv1d(torch.randn(2, 4, 10), torch.randn(8, 1, 3), padding='same').shape
        torch.Size([2, 8, 10])
    """
    return _depthwise(1, x, weight, bias, stride, padding, dilation, padding_mode)


def depthwise_conv2d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding: PaddingArg = 0,
                     dilation=1, padding_mode: str = "zeros") -> Tensor:
    """Depthwise 2-D convolution (``groups = C``), Keras ``DepthwiseConv2D`` semantics.

    Args:
        x: ``(B, C, H, W)`` or ``(C, H, W)``.
        weight: ``(C*d, 1, kh, kw)``.
        bias: ``(C*d,)`` or None.

    Returns:
        ``(B, C*d, H_out, W_out)``.

    Example:
        >>> depthwise_conv2d(torch.randn(1, 3, 15, 15), torch.randn(3, 1, 3, 3)).shape
        torch.Size([1, 3, 13, 13])
    """
    return _depthwise(2, x, weight, bias, stride, padding, dilation, padding_mode)


def depthwise_conv3d(x: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding: PaddingArg = 0,
                     dilation=1, padding_mode: str = "zeros") -> Tensor:
    """Depthwise 3-D convolution.

    Args:
        x: ``(B, C, D, H, W)`` or ``(C, D, H, W)``.
        weight: ``(C*d, 1, kd, kh, kw)``.
        bias: ``(C*d,)`` or None.

    Example:
        >>> depthwise_conv3d(torch.randn(1, 2, 5, 5, 5), torch.randn(2, 1, 3, 3, 3), padding='same').shape
        torch.Size([1, 2, 5, 5, 5])
    """
    return _depthwise(3, x, weight, bias, stride, padding, dilation, padding_mode)


def _separable(n: int, x, depthwise_weight, pointwise_weight, bias, stride, padding, dilation, padding_mode) -> Tensor:
    _check_tensor("depthwise_weight", depthwise_weight, n + 2)
    _check_tensor("pointwise_weight", pointwise_weight, n + 2)
    _same_dtype("depthwise_weight", depthwise_weight, "pointwise_weight", pointwise_weight)
    mid = depthwise_weight.shape[0]
    if depthwise_weight.shape[1] != 1:
        raise ValueError(f"depthwise_weight: expected shape (C*d, 1, *k), got {tuple(depthwise_weight.shape)}")
    if pointwise_weight.shape[1] != mid or any(k != 1 for k in pointwise_weight.shape[2:]):
        raise ValueError(
            f"pointwise_weight: expected shape (N, {mid}{', 1' * n}), got {tuple(pointwise_weight.shape)}"
        )
    kind = f"separable_conv{n}d"
    c = _channels(x, n)
    check_call(x, kind, n, c, depthwise_weight.dtype)
    if mid % c != 0:
        raise ValueError(f"depthwise_weight: expected a multiple of the {c} input channels in dim 0, got {mid}")
    _check_bias(bias, pointwise_weight.shape[0])
    kernel = tuple(depthwise_weight.shape[2:])
    s, fpad, d = _geometry(x, n, kernel, stride, padding, dilation, padding_mode)
    check_fit(x, kind, list(kernel), d, fpad, padding_mode)
    y = conv_nd(x, depthwise_weight, None, s, fpad, d, c, padding_mode)
    ones = [1] * n
    return conv_nd(y, pointwise_weight, bias, ones, [0] * (2 * n), ones, 1, "zeros")


def separable_conv1d(x: Tensor, depthwise_weight: Tensor, pointwise_weight: Tensor, bias: Optional[Tensor] = None,
                     stride=1, padding: PaddingArg = 0, dilation=1, padding_mode: str = "zeros") -> Tensor:
    """Depthwise separable 1-D convolution: depthwise then pointwise, one bias at the end.

    Args:
        x: ``(B, C, L)``.
        depthwise_weight: ``(C*d, 1, k)``.
        pointwise_weight: ``(N, C*d, 1)``.
        bias: ``(N,)`` or None.

    Example:
        >>> separable_conv1d(torch.randn(2, 4, 9), torch.randn(4, 1, 3), torch.randn(6, 4, 1)).shape
        torch.Size([2, 6, 7])
    """
    return _separable(1, x, depthwise_weight, pointwise_weight, bias, stride, padding, dilation, padding_mode)


def separable_conv2d(x: Tensor, depthwise_weight: Tensor, pointwise_weight: Tensor, bias: Optional[Tensor] = None,
                     stride=1, padding: PaddingArg = 0, dilation=1, padding_mode: str = "zeros") -> Tensor:
    """Depthwise separable 2-D convolution (MobileNet, Xception, Keras ``SeparableConv2D``).

    Equals a dense conv with kernel ``W[n, c] = sum_j P[n, c*d + j] * D[c*d + j]``.

    Args:
        x: ``(B, C, H, W)``.
        depthwise_weight: ``(C*d, 1, kh, kw)``.
        pointwise_weight: ``(N, C*d, 1, 1)``.
        bias: ``(N,)`` or None.

    Returns:
        ``(B, N, H_out, W_out)``.

    Example:
        >>> x = torch.randn(1, 3, 15, 15)
        >>> separable_conv2d(x, torch.randn(3, 1, 3, 3), torch.randn(10, 3, 1, 1)).shape
        torch.Size([1, 10, 13, 13])
    """
    return _separable(2, x, depthwise_weight, pointwise_weight, bias, stride, padding, dilation, padding_mode)


def separable_conv3d(x: Tensor, depthwise_weight: Tensor, pointwise_weight: Tensor, bias: Optional[Tensor] = None,
                     stride=1, padding: PaddingArg = 0, dilation=1, padding_mode: str = "zeros") -> Tensor:
    """Depthwise separable 3-D convolution.

    Args:
        x: ``(B, C, D, H, W)``.
        depthwise_weight: ``(C*d, 1, kd, kh, kw)``.
        pointwise_weight: ``(N, C*d, 1, 1, 1)``.

    Example:
        >>> x = torch.randn(1, 2, 6, 6, 6)
        >>> separable_conv3d(x, torch.randn(2, 1, 3, 3, 3), torch.randn(4, 2, 1, 1, 1), padding=1).shape
        torch.Size([1, 4, 6, 6, 6])
    """
    return _separable(3, x, depthwise_weight, pointwise_weight, bias, stride, padding, dilation, padding_mode)


def _blueprint(n: int, x, pointwise_weight, depthwise_weight, bias, stride, padding, dilation, padding_mode) -> Tensor:
    _check_tensor("pointwise_weight", pointwise_weight, n + 2)
    _check_tensor("depthwise_weight", depthwise_weight, n + 2)
    _same_dtype("pointwise_weight", pointwise_weight, "depthwise_weight", depthwise_weight)
    out, rank = depthwise_weight.shape[0], depthwise_weight.shape[1]
    if pointwise_weight.shape[0] != out * rank or any(k != 1 for k in pointwise_weight.shape[2:]):
        raise ValueError(
            f"pointwise_weight: expected shape ({out * rank}, C{', 1' * n}) for depthwise_weight "
            f"{tuple(depthwise_weight.shape)}, got {tuple(pointwise_weight.shape)}"
        )
    kind = f"blueprint_separable_conv{n}d"
    check_call(x, kind, n, pointwise_weight.shape[1], pointwise_weight.dtype)
    _check_bias(bias, out)
    kernel = tuple(depthwise_weight.shape[2:])
    s, fpad, d = _geometry(x, n, kernel, stride, padding, dilation, padding_mode)
    check_fit(x, kind, list(kernel), d, fpad, padding_mode)
    ones = [1] * n
    # A 1x1 conv commutes with every padding mode, so padding its (smaller or equal) output is exact.
    y = conv_nd(x, pointwise_weight, None, ones, [0] * (2 * n), ones, 1, "zeros")
    return conv_nd(y, depthwise_weight, bias, s, fpad, d, out, padding_mode)


def blueprint_separable_conv1d(x: Tensor, pointwise_weight: Tensor, depthwise_weight: Tensor,
                               bias: Optional[Tensor] = None, stride=1, padding: PaddingArg = 0, dilation=1,
                               padding_mode: str = "zeros") -> Tensor:
    """Blueprint separable 1-D convolution: pointwise ``C -> N*r`` then grouped ``(N*r -> N, groups=N)``.

    Args:
        x: ``(B, C, L)``.
        pointwise_weight: ``(N*r, C, 1)``.
        depthwise_weight: ``(N, r, k)``.

    Example:
        >>> blueprint_separable_conv1d(torch.randn(1, 3, 8), torch.randn(5, 3, 1), torch.randn(5, 1, 3)).shape
        torch.Size([1, 5, 6])
    """
    return _blueprint(1, x, pointwise_weight, depthwise_weight, bias, stride, padding, dilation, padding_mode)


def blueprint_separable_conv2d(x: Tensor, pointwise_weight: Tensor, depthwise_weight: Tensor,
                               bias: Optional[Tensor] = None, stride=1, padding: PaddingArg = 0, dilation=1,
                               padding_mode: str = "zeros") -> Tensor:
    """Blueprint separable 2-D convolution (BSConv-U, Haase & Amthor 2020), generalized to rank ``r``.

    Each output channel ``n`` has ``r`` spatial blueprints ``B[n, j]`` weighted per input channel:
    ``W[n, c] = sum_j P[n*r + j, c] * B[n, j]``. At ``r = 1`` it is exactly BSConv-U.

    Args:
        x: ``(B, C, H, W)``.
        pointwise_weight: ``(N*r, C, 1, 1)``.
        depthwise_weight: ``(N, r, kh, kw)``.
        bias: ``(N,)`` or None.

    Example:
        >>> x = torch.randn(1, 3, 8, 8)
        >>> blueprint_separable_conv2d(x, torch.randn(4, 3, 1, 1), torch.randn(4, 1, 3, 3), padding='same').shape
        torch.Size([1, 4, 8, 8])
    """
    return _blueprint(2, x, pointwise_weight, depthwise_weight, bias, stride, padding, dilation, padding_mode)


def blueprint_separable_conv3d(x: Tensor, pointwise_weight: Tensor, depthwise_weight: Tensor,
                               bias: Optional[Tensor] = None, stride=1, padding: PaddingArg = 0, dilation=1,
                               padding_mode: str = "zeros") -> Tensor:
    """Blueprint separable 3-D convolution; see :func:`blueprint_separable_conv2d`.

    Example:
        >>> x = torch.randn(1, 3, 5, 5, 5)
        >>> blueprint_separable_conv3d(x, torch.randn(2, 3, 1, 1, 1), torch.randn(2, 1, 3, 3, 3)).shape
        torch.Size([1, 2, 3, 3, 3])
    """
    return _blueprint(3, x, pointwise_weight, depthwise_weight, bias, stride, padding, dilation, padding_mode)


def spatial_geometry(
    stride: List[int], fpad: List[int], dilation: List[int]
) -> Tuple[List[int], List[int], List[int], List[int], List[int], List[int]]:
    """Split 2-D stride, pads (F.pad order ``[wl, wr, ht, hb]``) and dilation between the factors.

    Returns ``(v_stride, v_fpad, v_dilation, h_stride, h_fpad, h_dilation)``: the vertical
    ``(kh, 1)`` factor strides, dilates and pads along H only, the horizontal one along W only.
    """
    return (
        [stride[0], 1], [0, 0, fpad[2], fpad[3]], [dilation[0], 1],
        [1, stride[1]], [fpad[0], fpad[1], 0, 0], [1, dilation[1]],
    )


def spatially_separable_conv2d(x: Tensor, vertical_weight: Tensor, horizontal_weight: Tensor,
                               bias: Optional[Tensor] = None, stride=1, padding: PaddingArg = 0, dilation=1,
                               groups: int = 1, padding_mode: str = "zeros") -> Tensor:
    """Spatially separable 2-D convolution: ``(kh, 1)`` filters to ``r`` channels, then ``(1, kw)``.

    Equals a dense conv whose kernel in each group is ``W[o, i, y, x] = sum_r H[o, r, x] V[r, i, y]``
    (rank ``r`` per group). Stride, dilation and padding of H go to the vertical factor, those of
    W to the horizontal one, so the output shape is the dense conv's. The vertical factor has no
    bias, which keeps zero padding of its output exact; every torch padding mode commutes with a
    convolution along the other axis, so all modes are exact.

    Args:
        x: ``(B, C, H, W)``.
        vertical_weight: ``(r, C/groups, kh, 1)``.
        horizontal_weight: ``(N, r/groups, 1, kw)``.
        bias: ``(N,)`` or None.
        groups: channel groups, applied to both factors.

    Example:
        >>> x = torch.randn(1, 1, 15, 15)   # the tutorials' 3x1 then 1x3 example
        >>> spatially_separable_conv2d(x, torch.randn(1, 1, 3, 1), torch.randn(1, 1, 1, 3)).shape
        torch.Size([1, 1, 13, 13])
    """
    _check_tensor("vertical_weight", vertical_weight, 4)
    _check_tensor("horizontal_weight", horizontal_weight, 4)
    _same_dtype("vertical_weight", vertical_weight, "horizontal_weight", horizontal_weight)
    if vertical_weight.shape[3] != 1:
        raise ValueError(f"vertical_weight: expected shape (r, C/groups, kh, 1), got {tuple(vertical_weight.shape)}")
    if horizontal_weight.shape[2] != 1:
        raise ValueError(f"horizontal_weight: expected shape (N, r/groups, 1, kw), got {tuple(horizontal_weight.shape)}")
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups: expected a positive int, got {groups!r}")
    rank = vertical_weight.shape[0]
    if rank % groups or horizontal_weight.shape[0] % groups:
        raise ValueError(f"groups: expected a divisor of rank={rank} and out_channels={horizontal_weight.shape[0]}, got {groups}")
    if horizontal_weight.shape[1] * groups != rank:
        raise ValueError(
            f"horizontal_weight: expected {rank // groups} channels in dim 1 (rank/groups), got {horizontal_weight.shape[1]}"
        )
    check_call(x, "spatially_separable_conv2d", 2, vertical_weight.shape[1] * groups, vertical_weight.dtype)
    _check_bias(bias, horizontal_weight.shape[0])
    kernel = (vertical_weight.shape[2], horizontal_weight.shape[3])
    s, fpad, d = _geometry(x, 2, kernel, stride, padding, dilation, padding_mode)
    check_fit(x, "spatially_separable_conv2d", list(kernel), d, fpad, padding_mode)
    vs, vp, vd, hs, hp, hd = spatial_geometry(s, fpad, d)
    y = conv_nd(x, vertical_weight, None, vs, vp, vd, groups, padding_mode)
    return conv_nd(y, horizontal_weight, bias, hs, hp, hd, groups, padding_mode)
