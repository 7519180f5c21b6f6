"""Blueprint separable convolution (BSConv-U), 1x1 pointwise then depthwise:
:class:`BlueprintSeparableConv2d` and its 1-D / 3-D twins."""

from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional as SF
from .._checks import check_positive_int
from .._computed import computed_weight
from ..decompose import blueprint_separable, compose_blueprint_separable
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


class _BlueprintSeparableConvNd(_Padded):
    _output_factor = "depthwise"

    def __init__(self, n: int, in_channels: int, out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0,
                 dilation=1, rank: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 norm_layer: Optional[NormLayer] = None, act_layer: Optional[ActLayer] = None,
                 device=None, dtype=None) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.rank = check_positive_int("rank", rank)
        self._init_geometry(n, kernel_size, stride, padding, dilation, padding_mode)
        factory = _factory(bias, device, dtype)
        mid = out_channels * rank
        conv = _CONV[n]
        self.pointwise = conv(in_channels, mid, 1, bias=False, **factory)
        self.norm, self.act = _middle(norm_layer, act_layer, mid, factory)
        self.depthwise = conv(mid, out_channels, self.kernel_size, self.stride, self._conv_padding, self.dilation,
                              groups=out_channels, bias=bias, **factory)
        self.reset_parameters()

    @property
    def weight(self) -> Tensor:
        """The equivalent dense kernel ``(N, C, *k)`` (computed, not a parameter).

        Read-only: a :class:`~sepconv._computed.ComputedWeight` that raises on in-place changes
        (``nn.init.zeros_(layer.weight)`` would change nothing). Initialize or load the factors
        instead, e.g. ``nn.init.zeros_(layer.pointwise.weight)``, or use :meth:`from_dense`.
        """
        w = compose_blueprint_separable(self.pointwise.weight, self.depthwise.weight)
        return computed_weight(w, type(self).__name__, ("pointwise", "depthwise"))

    @weight.setter
    def weight(self, value: Tensor) -> None:
        _refuse_weight_assignment(self, ("pointwise", "depthwise"))

    @property
    def bias(self) -> Optional[Tensor]:
        return self.depthwise.bias

    def reset_parameters(self) -> None:
        """LeCun-uniform factors (fan-in: ``C``, then ``r*`` kernel elements), zero bias, fresh norm."""
        _lecun_uniform_(self.pointwise.weight)
        _lecun_uniform_(self.depthwise.weight)
        if self.depthwise.bias is not None:
            nn.init.zeros_(self.depthwise.bias)
        if hasattr(self.norm, "reset_parameters"):
            self.norm.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            SF.check_input(x, self._n, self.in_channels)
        else:
            self._check_call(x, self.pointwise.weight.dtype)
        unbatched = x.dim() == self._n + 1  # a batch of one: see SeparableConvNd.forward
        if unbatched:
            x = x.unsqueeze(0)
        # A 1x1 conv commutes with every padding mode: pad the intermediate, not the input.
        y = self.depthwise(self._pad(self.act(self.norm(self.pointwise(x)))))
        return y.squeeze(0) if unbatched else y

    def to_dense(self, input_size=None) -> nn.Module:
        """The exactly equivalent standard ``nn.ConvNd``; see :meth:`SeparableConv2d.to_dense`.

        A BatchNorm between the factors is folded only with ``padding_mode != 'zeros'`` or no
        padding, since its shift would otherwise turn the zero border into a constant one.
        """
        _check_no_act(self.act)
        pw = self.pointwise.weight.detach()
        dw = self.depthwise.weight.detach()
        bias = None if self.depthwise.bias is None else self.depthwise.bias.detach()
        pads = self._dense_pads(input_size)
        affine = _affine_of(self.norm, "between pointwise and depthwise")
        if affine is not None:
            scale, shift = affine
            if self.padding_mode == "zeros" and any(p for pair in pads for p in pair):
                raise ValueError("to_dense: a BatchNorm before zero padding has no exact dense equivalent; expected no padding or norm_layer=None")
            pw = fold_affine(pw, None, scale, shift)[0]
            shifted = shifted_bias(dw, shift, groups=dw.shape[0])
            bias = shifted if bias is None else bias + shifted
        weight = compose_blueprint_separable(pw, dw)
        return _dense_module(self._n, weight, bias, self.stride, self.dilation, 1, pads, self.padding_mode)

    @classmethod
    def from_dense(cls, conv: nn.Module, rank: int = 1):
        """The best blueprint separable approximation of a trained dense conv (truncated SVD).

        Exact when every output filter's ``C x K`` slice has rank <= ``rank``; see
        :func:`sepconv.decompose.blueprint_separable`.
        """
        opts = _dense_options(conv, int(cls._N))
        pw, dw, _ = blueprint_separable(conv.weight.detach(), rank)
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank=rank, **opts)
        return _load_factors(layer, conv, pointwise=pw, depthwise=dw)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, {self._geometry_repr()}"
        if self.rank != 1:
            s += f", rank={self.rank}"
        return s + f", bias={self.depthwise.bias is not None}"


_BLUEPRINT_DOC = """Blueprint separable {n}-D convolution (BSConv-U): pointwise first, then depthwise.

    Each output channel is ``rank`` spatial blueprints mixed over the input channels:
    ``W[n, c] = sum_j P[n*r + j, c] * B[n, j]``. ``rank=1`` is BSConv-U (Haase & Amthor, 2020).

    Args:
        in_channels: C.
        out_channels: N.
        kernel_size, stride, padding, dilation, padding_mode, device, dtype: as ``nn.Conv{n}d``.
        rank: blueprints per output channel r.
        bias: one bias on the output (on ``depthwise``).
        norm_layer, act_layer: optional modules between the factors.

    Attributes:
        pointwise: ``nn.Conv{n}d(C, N*r, 1, bias=False)``.
        depthwise: ``nn.Conv{n}d(N*r, N, k, groups=N, bias=bias)``.

    Example:
        >>> {example}
    """


class BlueprintSeparableConv1d(_BlueprintSeparableConvNd):
    _N = 1

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0,
                 dilation=1, rank: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 norm_layer: Optional[NormLayer] = None, act_layer: Optional[ActLayer] = None,
                 device=None, dtype=None) -> None:
        super().__init__(1, in_channels, out_channels, kernel_size, stride, padding, dilation, rank, bias,
                         padding_mode, norm_layer, act_layer, device, dtype)


class BlueprintSeparableConv2d(_BlueprintSeparableConvNd):
    _N = 2

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0,
                 dilation=1, rank: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 norm_layer: Optional[NormLayer] = None, act_layer: Optional[ActLayer] = None,
                 device=None, dtype=None) -> None:
        super().__init__(2, in_channels, out_channels, kernel_size, stride, padding, dilation, rank, bias,
                         padding_mode, norm_layer, act_layer, device, dtype)


class BlueprintSeparableConv3d(_BlueprintSeparableConvNd):
    _N = 3

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0,
                 dilation=1, rank: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 norm_layer: Optional[NormLayer] = None, act_layer: Optional[ActLayer] = None,
                 device=None, dtype=None) -> None:
        super().__init__(3, in_channels, out_channels, kernel_size, stride, padding, dilation, rank, bias,
                         padding_mode, norm_layer, act_layer, device, dtype)


BlueprintSeparableConv1d.__doc__ = _BLUEPRINT_DOC.format(n=1, example="BlueprintSeparableConv1d(4, 8, 3)(torch.randn(2, 4, 16)).shape\n        torch.Size([2, 8, 14])")
BlueprintSeparableConv2d.__doc__ = _BLUEPRINT_DOC.format(n=2, example="BlueprintSeparableConv2d(3, 16, 3, padding='same')(torch.randn(1, 3, 8, 8)).shape\n        torch.Size([1, 16, 8, 8])")
BlueprintSeparableConv3d.__doc__ = _BLUEPRINT_DOC.format(n=3, example="BlueprintSeparableConv3d(2, 4, 3)(torch.randn(1, 2, 5, 5, 5)).shape\n        torch.Size([1, 4, 3, 3, 3])")
