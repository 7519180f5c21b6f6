"""Depthwise separable convolution, depthwise then 1x1 pointwise: :class:`SeparableConv2d` and
its 1-D / 3-D twins."""

from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional as SF
from .._checks import check_positive_int
from .._computed import computed_weight
from ..decompose import compose_depthwise_separable, depthwise_separable
from ..fold import fold_affine, shifted_bias
from ..padding import PaddingArg
from ._base import (
    _CONV,
    ActLayer,
    NormLayer,
    _affine_of,
    _check_no_act,
    _dense_module,
    _dense_options,
    _factory,
    _lecun_uniform_,
    _load_factors,
    _middle,
    _Padded,
    _refuse_weight_assignment,
)


class _SeparableConvNd(_Padded):
    _output_factor = "pointwise"  # the child whose bias is the layer's; a following BatchNorm folds there

    def __init__(self, n: int, in_channels: int, out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0,
                 dilation=1, depth_multiplier: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 norm_layer: Optional[NormLayer] = None, act_layer: Optional[ActLayer] = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.depth_multiplier = check_positive_int("depth_multiplier", depth_multiplier)
        self._init_geometry(n, kernel_size, stride, padding, dilation, padding_mode)
        factory = _factory(bias, device, dtype)
        mid = in_channels * depth_multiplier
        conv = _CONV[n]
        self.depthwise = conv(in_channels, mid, self.kernel_size, self.stride, self._conv_padding, self.dilation,
                              groups=in_channels, bias=False, **factory)
        self.norm, self.act = _middle(norm_layer, act_layer, mid, factory)
        self.pointwise = conv(mid, out_channels, 1, bias=bias, **factory)
        self.reset_parameters()

    @property
    def weight(self) -> Tensor:
        """The equivalent dense kernel ``(N, C, *k)`` (computed, not a parameter).

        Read-only: a :class:`~sepconv._computed.ComputedWeight` that raises on in-place changes
        (``nn.init.zeros_(layer.weight)`` would change nothing). Initialize or load the factors
        instead, e.g. ``nn.init.zeros_(layer.depthwise.weight)``, or use :meth:`from_dense`.
        """
        w = compose_depthwise_separable(self.depthwise.weight, self.pointwise.weight, self.depth_multiplier)
        return computed_weight(w, type(self).__name__, ("depthwise", "pointwise"))

    @weight.setter
    def weight(self, value: Tensor) -> None:
        _refuse_weight_assignment(self, ("depthwise", "pointwise"))

    @property
    def bias(self) -> Optional[Tensor]:
        return self.pointwise.bias

    def reset_parameters(self) -> None:
        """LeCun-uniform factors (fan-in: kernel elements, then ``C*d``), zero bias, fresh norm."""
        _lecun_uniform_(self.depthwise.weight)
        _lecun_uniform_(self.pointwise.weight)
        if self.pointwise.bias is not None:
            nn.init.zeros_(self.pointwise.bias)
        if hasattr(self.norm, "reset_parameters"):
            self.norm.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            SF.check_input(x, self._n, self.in_channels)
        else:
            self._check_call(x, self.depthwise.weight.dtype)
        # an unbatched input runs as a batch of one: a norm (or a per-channel activation) between
        # the factors reads dim 1 as the channels (BatchNorm1d took an unbatched (C, L) as (N, C))
        unbatched = x.dim() == self._n + 1
        if unbatched:
            x = x.unsqueeze(0)
        y = self.pointwise(self.act(self.norm(self.depthwise(self._pad(x)))))
        return y.squeeze(0) if unbatched else y

    def to_dense(self, input_size=None) -> nn.Module:
        """The exactly equivalent standard ``nn.ConvNd`` (``groups=1``), with explicit padding.

        An eval-mode BatchNorm between the factors is folded in; an activation cannot be.

        Args:
            input_size: spatial input size, needed only for ``padding='same'`` with stride > 1.
        """
        _check_no_act(self.act)
        dw = self.depthwise.weight.detach()
        pw = self.pointwise.weight.detach()
        bias = None if self.pointwise.bias is None else self.pointwise.bias.detach()
        affine = _affine_of(self.norm, "between depthwise and pointwise")
        if affine is not None:
            scale, shift = affine
            dw = fold_affine(dw, None, scale, shift)[0]
            shifted = shifted_bias(pw, shift)
            bias = shifted if bias is None else bias + shifted
        weight = compose_depthwise_separable(dw, pw, self.depth_multiplier)
        return _dense_module(self._n, weight, bias, self.stride, self.dilation, 1, self._dense_pads(input_size),
                             self.padding_mode)

    @classmethod
    def from_dense(cls, conv: nn.Module, depth_multiplier: int = 1):
        """The best depthwise separable approximation of a trained dense conv (truncated SVD).

        Keeps stride, padding, dilation, padding_mode, bias, dtype and device. Exact when every
        input channel's ``N x K`` filter slice has rank <= ``depth_multiplier``; see
        :func:`sepconv.decompose.depthwise_separable` for the error.

        Example:
            >>> conv = nn.Conv2d(3, 8, 3, padding=1)
            >>> SeparableConv2d.from_dense(conv, depth_multiplier=8).to_dense().weight.allclose(conv.weight, atol=1e-6)
            True
        """
        opts = _dense_options(conv, int(cls._N))
        dw, pw, _ = depthwise_separable(conv.weight.detach(), depth_multiplier)
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, depth_multiplier=depth_multiplier, **opts)
        return _load_factors(layer, conv, depthwise=dw, pointwise=pw)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, {self._geometry_repr()}"
        if self.depth_multiplier != 1:
            s += f", depth_multiplier={self.depth_multiplier}"
        return s + f", bias={self.pointwise.bias is not None}"


_SEPARABLE_DOC = """Depthwise separable {n}-D convolution: depthwise ``(C -> C*d, groups=C)`` then pointwise ``1x1``.

    Keras/Xception style by default (nothing between the factors, one bias at the output); pass
    ``norm_layer=nn.BatchNorm{n}d, act_layer=nn.ReLU`` for the MobileNet block. Costs
    ``1/N + 1/K`` of a dense conv's multiplications at ``d = 1`` (K = kernel elements).

    Args:
        in_channels: C.
        out_channels: N.
        kernel_size: int or {n}-tuple.
        stride, padding, dilation, padding_mode, device, dtype: as ``nn.Conv{n}d``; ``padding``
            also takes ``'valid'`` and TensorFlow-exact ``'same'``.
        depth_multiplier: depthwise filters per input channel d.
        bias: one bias on the output (on ``pointwise``).
        norm_layer: ``callable(channels) -> nn.Module`` applied between the factors, or None.
        act_layer: ``callable() -> nn.Module`` applied between the factors, or None.

    Attributes:
        depthwise: ``nn.Conv{n}d(C, C*d, k, groups=C, bias=False)``.
        pointwise: ``nn.Conv{n}d(C*d, N, 1, bias=bias)``.

    Shape:
        ``(B, C, *in) -> (B, N, *out)``, ``out`` as for the dense conv.

    Example:
        >>> {example}
    """


class SeparableConv1d(_SeparableConvNd):
    _N = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0,
                 dilation=1, depth_multiplier: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 norm_layer: Optional[NormLayer] = None, act_layer: Optional[ActLayer] = None,
                 device=None, dtype=None) -> None:
        super().__init__(1, in_channels, out_channels, kernel_size, stride, padding, dilation, depth_multiplier, bias,
                         padding_mode, norm_layer, act_layer, device, dtype)


class SeparableConv2d(_SeparableConvNd):
    _N = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0,
                 dilation=1, depth_multiplier: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 norm_layer: Optional[NormLayer] = None, act_layer: Optional[ActLayer] = None,
                 device=None, dtype=None) -> None:
        super().__init__(2, in_channels, out_channels, kernel_size, stride, padding, dilation, depth_multiplier, bias,
                         padding_mode, norm_layer, act_layer, device, dtype)


class SeparableConv3d(_SeparableConvNd):
    _N = 3

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0,
                 dilation=1, depth_multiplier: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 norm_layer: Optional[NormLayer] = None, act_layer: Optional[ActLayer] = None,
                 device=None, dtype=None) -> None:
        super().__init__(3, in_channels, out_channels, kernel_size, stride, padding, dilation, depth_multiplier, bias,
                         padding_mode, norm_layer, act_layer, device, dtype)


SeparableConv1d.__doc__ = _SEPARABLE_DOC.format(n=1, example="SeparableConv1d(4, 8, 3, padding='same')(torch.randn(2, 4, 16)).shape\n        torch.Size([2, 8, 16])")
SeparableConv2d.__doc__ = _SEPARABLE_DOC.format(n=2, example="SeparableConv2d(3, 10, 3)(torch.randn(1, 3, 15, 15)).shape\n        torch.Size([1, 10, 13, 13])")
