"""Depthwise convolution, ``groups == in_channels``: :class:`DepthwiseConv2d` and its 1-D / 3-D twins."""


import torch
from torch import Tensor, nn

from .. import functional as SF
from .._checks import check_finite, check_positive_int
from ..padding import PaddingArg
from ._base import _CONV, _dense_module, _dense_options, _factory, _lecun_uniform_, _Padded


class _DepthwiseConvNd(_Padded):
    def __init__(self, n: int, in_channels: int, kernel_size, depth_multiplier: int = 1, stride=1,
                 padding: PaddingArg = 0, dilation=1, bias: bool = True, padding_mode: str = "zeros",
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.depth_multiplier = check_positive_int("depth_multiplier", depth_multiplier)
        self.out_channels = in_channels * depth_multiplier
        self.groups = in_channels
        self._init_geometry(n, kernel_size, stride, padding, dilation, padding_mode)
        factory = _factory(bias, device, dtype)
        self.weight = nn.Parameter(torch.empty(self.out_channels, 1, *self.kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(self.out_channels, **factory)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """LeCun-uniform weight (fan-in = kernel elements), zero bias."""
        _lecun_uniform_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            SF.check_input(x, self._n, self.in_channels)
        else:
            self._check_call(x, self.weight.dtype)
        return SF.conv_nd(x, self.weight, self.bias, self._stride, self._input_fpad(x), self._dilation,
                          self.groups, self.padding_mode)

    def to_dense(self, input_size=None) -> nn.Module:
        """The equivalent grouped ``nn.ConvNd`` (``groups = in_channels``), with explicit padding.

        Args:
            input_size: spatial input size, needed only for ``padding='same'`` with stride > 1.
        """
        return _dense_module(self._n, self.weight.detach(), None if self.bias is None else self.bias.detach(),
                             self.stride, self.dilation, self.groups, self._dense_pads(input_size), self.padding_mode)

    @classmethod
    def from_dense(cls, conv: nn.Module):
        """Copy a grouped ``nn.ConvNd`` with ``groups == in_channels`` into a depthwise layer."""
        n = int(cls._N)
        if isinstance(conv, _CONV[n]) and conv.groups != conv.in_channels:
            raise ValueError(f"conv: expected groups == in_channels ({conv.in_channels}) for a depthwise conv, got groups={conv.groups}")
        opts = _dense_options(conv, n, groups_ok=True)
        check_finite("conv.weight", conv.weight)
        if conv.bias is not None:
            check_finite("conv.bias", conv.bias)
        layer = cls(conv.in_channels, conv.kernel_size, conv.out_channels // conv.in_channels, **opts)
        with torch.no_grad():
            layer.weight.copy_(conv.weight)
            if conv.bias is not None:
                layer.bias.copy_(conv.bias)
        return layer

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self._geometry_repr()}"
        if self.depth_multiplier != 1:
            s += f", depth_multiplier={self.depth_multiplier}"
        return s + f", bias={self.bias is not None}"


class DepthwiseConv1d(_DepthwiseConvNd):
    """Depthwise 1-D convolution: ``depth_multiplier`` filters per input channel (``groups = C``).

    Args:
        in_channels: C.
        kernel_size: int or 1-tuple.
        depth_multiplier: filters per input channel d; ``out_channels = C*d``.
        stride, padding, dilation, bias, padding_mode, device, dtype: as ``nn.Conv1d``;
            ``padding`` also takes ``'valid'`` and TensorFlow-exact ``'same'``.

    Shape:
        ``(B, C, L) -> (B, C*d, L_out)``; ``weight`` is ``(C*d, 1, k)``.

    Example:
        >>> DepthwiseConv1d(4, 3, padding='same')(torch.randn(2, 4, 10)).shape
        torch.Size([2, 4, 10])
    """

    _N = 1

    def __init__(self, in_channels: int, kernel_size, depth_multiplier: int = 1, stride=1, padding: PaddingArg = 0,
                 dilation=1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__(1, in_channels, kernel_size, depth_multiplier, stride, padding, dilation, bias, padding_mode,
                         device, dtype)


class DepthwiseConv2d(_DepthwiseConvNd):
    """Depthwise 2-D convolution, Keras ``DepthwiseConv2D`` semantics.

    Args:
        in_channels: C.
        kernel_size: int or ``(kh, kw)``.
        depth_multiplier: filters per input channel d; ``out_channels = C*d``.
        stride, padding, dilation, bias, padding_mode, device, dtype: as ``nn.Conv2d``;
            ``padding`` also takes ``'valid'`` and TensorFlow-exact ``'same'``.

    Shape:
        ``(B, C, H, W) -> (B, C*d, H_out, W_out)``; ``weight`` is ``(C*d, 1, kh, kw)``.

    Example:
        >>> DepthwiseConv2d(3, 3, stride=2, padding='same')(torch.randn(1, 3, 15, 15)).shape
        torch.Size([1, 3, 8, 8])
    """

    _N = 2

    def __init__(self, in_channels: int, kernel_size, depth_multiplier: int = 1, stride=1, padding: PaddingArg = 0,
                 dilation=1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__(2, in_channels, kernel_size, depth_multiplier, stride, padding, dilation, bias, padding_mode,
                         device, dtype)


class DepthwiseConv3d(_DepthwiseConvNd):
    """Depthwise 3-D convolution.

    Shape:
        ``(B, C, D, H, W) -> (B, C*d, D_out, H_out, W_out)``; ``weight`` is ``(C*d, 1, kd, kh, kw)``.

    Example:
        >>> DepthwiseConv3d(2, 3, padding=1)(torch.randn(1, 2, 4, 4, 4)).shape
        torch.Size([1, 2, 4, 4, 4])
    """

    _N = 3

    def __init__(self, in_channels: int, kernel_size, depth_multiplier: int = 1, stride=1, padding: PaddingArg = 0,
                 dilation=1, bias: bool = True, padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__(3, in_channels, kernel_size, depth_multiplier, stride, padding, dilation, bias, padding_mode,
                         device, dtype)
