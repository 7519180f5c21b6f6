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
"""


from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from ._checks import check_padding_mode, to_tuple
from .padding import PaddingArg, normalize_padding, same_fpad, static_pads, to_fpad

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

BORDERS = ("reflect", "replicate", "circular", "zeros")


# --------------------------------------------------------------------------------------------
# TorchScript-compatible core, shared by the public functions and the layers' forward().
# --------------------------------------------------------------------------------------------
def check_input(x: Tensor, n: int, channels: int) -> None:
    """Raise ``ValueError`` unless ``x`` is ``(B, channels, *n dims)`` or ``(channels, *n dims)``."""
    if x.dim() != n + 2 and x.dim() != n + 1:
        raise ValueError(
            f"input: expected a {n + 2}-D batched or {n + 1}-D unbatched tensor, got {x.dim()}-D of shape {list(x.shape)}"
        )
    if x.shape[-n - 1] != channels:
        raise ValueError(f"input: expected {channels} channels at dim {-n - 1}, got {x.shape[-n - 1]} (shape {list(x.shape)})")


def pad_input(x: Tensor, fpad: List[int], padding_mode: str) -> Tensor:
    """Pad ``x`` with the ``F.pad``-ordered ``fpad`` using a torch ``padding_mode``."""
    nonzero = False
    for p in fpad:
        if p != 0:
            nonzero = True
    if not nonzero:
        return x
    if padding_mode == "zeros":
        return F.pad(x, fpad, mode="constant", value=0.0)
    return F.pad(x, fpad, mode=padding_mode)


def conv_nd(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: List[int],
    fpad: List[int],
    dilation: List[int],
    groups: int,
    padding_mode: str,
) -> Tensor:
    """``F.conv{1,2,3}d`` with explicit, possibly asymmetric ``F.pad``-ordered pads.

    Symmetric zero padding is left to the convolution itself (no copy of the input); any other
    padding is done by :func:`pad_input` first.
    """
    n = weight.dim() - 2
    conv_pad: List[int] = [0] * n
    symmetric = True
    for i in range(n):
        if fpad[2 * i] != fpad[2 * i + 1]:
            symmetric = False
    if padding_mode == "zeros" and symmetric:
        conv_pad = [fpad[2 * (n - 1 - i)] for i in range(n)]
    else:
        x = pad_input(x, fpad, padding_mode)
    if n == 1:
        return F.conv1d(x, weight, bias, stride, conv_pad, dilation, groups)
    if n == 2:
        return F.conv2d(x, weight, bias, stride, conv_pad, dilation, groups)
    return F.conv3d(x, weight, bias, stride, conv_pad, dilation, groups)


def input_fpad(x: Tensor, static_fpad: List[int], dynamic: bool, kernel: List[int], stride: List[int], dilation: List[int]) -> List[int]:
    """The pads for this input: the static ones, or TF 'same' computed from ``x``'s size."""
    if not dynamic:
        return static_fpad
    n = len(kernel)
    sizes: List[int] = [int(s) for s in x.shape[-n:]]
    return same_fpad(sizes, kernel, stride, dilation)


# --------------------------------------------------------------------------------------------
# Argument preparation for the public functions (plain Python, not scripted).
# --------------------------------------------------------------------------------------------
Describe = Union[str, Callable[[], str]]


def check_call(x: object, kind: Describe, n: int, channels: int, dtype: torch.dtype) -> Tensor:
    """Eager checks of an op's or a layer's input: a tensor of the right rank, channels and dtype.

    ``kind`` names the op or layer in messages (a callable is only called to raise). Under
    autocast the dtype is left to autocast.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"input: expected a torch.Tensor, got {type(x).__name__}")
    check_input(x, n, channels)
    if x.dtype != dtype and not torch.is_autocast_enabled(x.device.type):
        raise TypeError(f"input: expected dtype {dtype} (the weights' dtype of {kind if isinstance(kind, str) else kind()}), "
                        f"got {x.dtype} (shape {list(x.shape)})")
    return x


def check_fit(x: Tensor, kind: Describe, kernel: List[int], dilation: List[int],
              fpad: Union[List[int], Callable[[Tensor], List[int]]], padding_mode: str) -> None:
    """Raise ``ValueError`` unless the (dilated) kernel fits ``x`` padded by ``fpad`` (F.pad order,
    or a function of ``x`` giving them, for ``'same'`` with a stride), and the pads are ones
    ``padding_mode`` can make from ``x`` ('reflect' needs pads < size, 'circular' pads <= size)."""
    n = len(kernel)
    sizes = list(x.shape[-n:])  # no int(): symbolic sizes stay symbolic under torch.export
    if callable(fpad):  # input-dependent 'same' pads: any non-empty input fits the kernel
        fpad = fpad(x) if all(size > 0 for size in sizes) else [0] * (2 * n)
        kernel = [1] * n if min(sizes) < 1 else kernel
    need = []
    for i in range(n):
        before, after = fpad[2 * (n - 1 - i)], fpad[2 * (n - 1 - i) + 1]
        m = max(1, (kernel[i] - 1) * dilation[i] + 1 - before - after)
        if padding_mode == "reflect" and (before or after):
            m = max(m, before + 1, after + 1)
        elif padding_mode == "circular":
            m = max(m, before, after)
        need.append(m)
    if any(size < m for size, m in zip(sizes, need)):
        why = {"reflect": "; 'reflect' pads must be smaller than the input",
               "circular": "; 'circular' pads must not exceed the input"}.get(padding_mode, "")
        raise ValueError(f"input: expected a spatial size >= {tuple(need)} for {kind if isinstance(kind, str) else kind()} "
                         f"(the kernel must fit the padded input{why}), got {tuple(sizes)} (shape {list(x.shape)})")


def _check_tensor(name: str, t: object, dim: int) -> Tensor:
    if not isinstance(t, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if t.dim() != dim:
        raise ValueError(f"{name}: expected a {dim}-D tensor, got {t.dim()}-D of shape {tuple(t.shape)}")
    if 0 in t.shape:
        raise ValueError(f"{name}: expected a tensor without empty dims, got shape {tuple(t.shape)}")
    return t


def _same_dtype(a_name: str, a: Tensor, b_name: str, b: Tensor) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{b_name}: expected the dtype of {a_name} ({a.dtype}), got {b.dtype}")


def _check_bias(bias: Optional[Tensor], channels: int) -> None:
    if bias is not None:
        _check_tensor("bias", bias, 1)
        if bias.shape[0] != channels:
            raise ValueError(f"bias: expected shape ({channels},), got {tuple(bias.shape)}")


def _geometry(
    x: Tensor, n: int, kernel: Tuple[int, ...], stride, padding: PaddingArg, dilation, padding_mode: str
) -> Tuple[List[int], List[int], List[int]]:
    """Validate stride/padding/dilation/padding_mode; return stride, F.pad list, dilation."""
    stride_t = to_tuple("stride", stride, n)
    dilation_t = to_tuple("dilation", dilation, n)
    pad = normalize_padding(padding, n)
    check_padding_mode(padding_mode)
    pads = static_pads(pad, kernel, stride_t, dilation_t)
    if pads is None:
        fpad = same_fpad([int(s) for s in x.shape[-n:]], list(kernel), list(stride_t), list(dilation_t))
    else:
        fpad = to_fpad(pads)
    return list(stride_t), fpad, list(dilation_t)


def _channels(x: object, n: int) -> int:
    """The channel count of a checked input (-1 if ``x`` is not even a tensor of enough dims)."""
    c = x.shape[-n - 1] if isinstance(x, Tensor) and x.dim() >= n + 1 else -1
    if c == 0:
        raise ValueError(f"input: expected at least 1 channel at dim {-n - 1}, got 0 (shape {list(x.shape)})")
    return c


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


def separable_filter2d(image: Tensor, kernel_x: Tensor, kernel_y: Tensor, padding: str = "same",
                       border: str = "reflect", kernel: str = "auto") -> Tensor:
    """Apply a fixed separable filter to every channel in two 1-D passes (vertical, then horizontal).

    Equals cross-correlating each channel with the 2-D kernel ``outer(kernel_y, kernel_x)``, at
    ``kh + kw`` instead of ``kh * kw`` multiplications per pixel. Sobel-x is
    ``kernel_x = [-1, 0, 1]``, ``kernel_y = [1, 2, 1]``.

    Args:
        image: ``(B, C, H, W)`` or ``(C, H, W)``, any floating-point dtype (an integer image raises
            ``TypeError``: filter ``image.float()``).
        kernel_x: ``(kw,)`` applied along W (or ``(C, kw)``, one per channel).
        kernel_y: ``(kh,)`` applied along H (or ``(C, kh)``).
        padding: ``'same'`` (output ``H x W``; even kernels put the smaller half before) or ``'valid'``.
        border: how ``'same'`` extends the image: ``'reflect'`` (mirror without repeating the edge,
            OpenCV's default ``BORDER_REFLECT_101``), ``'replicate'``, ``'circular'`` or ``'zeros'``.
        kernel: the implementation for float32 CPU images without gradients. ``'compiled'``: the
            C++ strip kernel (``csrc/separable_filter.cpp``; borders handled in place and one pass
            over memory instead of one per tap, several times faster for large kernels), compiled on first use (~1 min,
            cached); ``'auto'`` (default): the compiled kernel if it is already loaded in this
            process (e.g. by :func:`sepconv.optimize_for_inference` or an earlier
            ``'compiled'`` call), never triggering the compile; ``'torch'``: the pure PyTorch
            path (shifted multiply-adds), which also serves every other input (any dtype,
            device, autograd).

    Returns:
        Same shape as ``image`` for ``'same'``; ``(B, C, H-kh+1, W-kw+1)`` for ``'valid'``.

    Raises:
        TypeError: ``image`` is not a floating-point tensor.
        ValueError: a bad argument, or an image too small for the kernel: smaller than it for
            ``'valid'``, not larger than the border for ``'reflect'``, smaller than the border for
            ``'circular'`` (the same rules for every ``kernel`` choice).

    Example:
        >>> img = torch.rand(1, 3, 32, 32)
        >>> gx = separable_filter2d(img, torch.tensor([-1., 0., 1.]), torch.tensor([1., 2., 1.]))
        >>> gx.shape
        torch.Size([1, 3, 32, 32])
    """
    if not isinstance(image, Tensor):
        raise TypeError(f"image: expected a torch.Tensor, got {type(image).__name__}")
    if image.dim() not in (3, 4):
        raise ValueError(f"image: expected a 4-D (B, C, H, W) or 3-D (C, H, W) tensor, got {image.dim()}-D of shape {tuple(image.shape)}")
    if not image.is_floating_point():  # the kernel cast to an integer dtype would truncate to 0
        raise TypeError(f"image: expected a floating-point tensor, got {image.dtype} (filter image.float() for a float result)")
    if padding not in ("same", "valid"):
        raise ValueError(f"padding: expected one of ('same', 'valid'), got {padding!r}")
    if border not in BORDERS:
        raise ValueError(f"border: expected one of {BORDERS}, got {border!r}")
    if kernel not in ("auto", "compiled", "torch"):
        raise ValueError(f"kernel: expected one of ('auto', 'compiled', 'torch'), got {kernel!r}")
    c = image.shape[-3]
    weights = []
    for name, k in (("kernel_y", kernel_y), ("kernel_x", kernel_x)):
        if not isinstance(k, Tensor):
            k = torch.as_tensor(k)
        if k.dim() == 1:
            k = k.expand(c, k.shape[0])
        if k.dim() != 2 or k.shape[0] != c or k.shape[1] < 1:
            raise ValueError(f"{name}: expected shape (k,) or ({c}, k), got {tuple(k.shape)}")
        weights.append(k.to(device=image.device, dtype=image.dtype))
    ky, kx = weights
    kh, kw = ky.shape[1], kx.shape[1]
    fpad = _filter_pads(image, kh, kw, padding, border)
    if image.numel() == 0:  # no batch or no channels (F.pad refuses some such tensors): an empty result
        h, w = image.shape[-2:]
        return image.new_zeros(*image.shape[:-2], h + fpad[2] + fpad[3] - kh + 1, w + fpad[0] + fpad[1] - kw + 1)
    ext = _compiled_kernels(kernel, image, ky, kx)
    if ext is not None:
        batched = image if image.dim() == 4 else image.unsqueeze(0)
        out = torch.ops.sepconv.separable_filter2d(batched, ky, kx, fpad[2], fpad[3], fpad[0], fpad[1],
                                                   _BORDER_CODES[border])
        return out if image.dim() == 4 else out.squeeze(0)
    # Two 1-D passes as sums of shifted slices: each tap is one vectorized multiply-add over the
    # image, which on CPU beats a depthwise conv with a (k, 1) kernel by 2-3x (oneDNN has no fast
    # path for those shapes). In-place accumulation unless gradients are needed.
    y = _shifted_sum(pad_input(image, [0, 0, fpad[2], fpad[3]], border), ky, dim=-2)
    return _shifted_sum(pad_input(y, [fpad[0], fpad[1], 0, 0], border), kx, dim=-1)


def _filter_pads(image: Tensor, kh: int, kw: int, padding: str, border: str) -> List[int]:
    """``separable_filter2d``'s ``F.pad``-ordered pads, after checking that the image suits them:
    the same rules for the compiled and the PyTorch path, checked before either runs."""
    h, w = image.shape[-2:]
    if h < 1 or w < 1:
        raise ValueError(f"image: expected H >= 1 and W >= 1, got {h}x{w}")
    if padding == "valid":
        if h < kh or w < kw:
            raise ValueError(f"image: expected H >= {kh} and W >= {kw} for padding='valid' with a {kh}x{kw} kernel, got {h}x{w}")
        return [0, 0, 0, 0]
    fpad = to_fpad([((kh - 1) // 2, kh - 1 - (kh - 1) // 2), ((kw - 1) // 2, kw - 1 - (kw - 1) // 2)])
    ph, pw = max(fpad[2:]), max(fpad[:2])
    # F.pad's limits: a reflection must not repeat the edge, a circular border wraps at most once
    if border == "reflect" and (ph >= h or pw >= w):
        raise ValueError(f"image: expected H > {ph} and W > {pw} for border='reflect' with a {kh}x{kw} kernel, got {h}x{w}")
    if border == "circular" and (ph > h or pw > w):
        raise ValueError(f"image: expected H >= {ph} and W >= {pw} for border='circular' with a {kh}x{kw} kernel, got {h}x{w}")
    return fpad


_BORDER_CODES = {"zeros": 0, "reflect": 1, "replicate": 2, "circular": 3}  # as in csrc/separable_filter.cpp


def _compiled_kernels(choice: str, image: Tensor, *kernels: Tensor):
    """The C++ kernels' module if ``choice`` and the input allow it, else None (PyTorch path)."""
    if choice == "torch" or image.dtype != torch.float32 or image.device.type != "cpu":
        return None
    if torch.is_grad_enabled() and (image.requires_grad or any(k.requires_grad for k in kernels)):
        return None
    from . import _fused

    if choice == "auto":
        return _fused.loaded()
    ext = _fused.load()
    if ext is None:
        raise RuntimeError(f"kernel='compiled': the C++ kernels could not be built here ({_fused.error()}); "
                           "use kernel='torch'")
    return ext


def _shifted_sum(x: Tensor, kernel: Tensor, dim: int) -> Tensor:
    """``out[..., i] = sum_j kernel[:, j] * x[..., i + j]`` along ``dim``, per channel (dim -3)."""
    k = kernel.shape[1]
    n = x.shape[dim] - k + 1
    if n < 1:
        raise ValueError(f"image: expected a size >= {k} along dim {dim} for a 'valid' filter, got {x.shape[dim]}")
    taps = kernel.t().reshape(k, kernel.shape[0], 1, 1)  # (k, C, 1, 1), broadcast over H, W
    differentiable = torch.is_grad_enabled() and (x.requires_grad or kernel.requires_grad)
    out = x.narrow(dim, 0, n) * taps[0]
    for j in range(1, k):
        if differentiable:
            out = out + x.narrow(dim, j, n) * taps[j]
        else:
            out.addcmul_(x.narrow(dim, j, n), taps[j])
    return out
