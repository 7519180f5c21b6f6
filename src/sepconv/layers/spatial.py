"""Spatially separable 2-D convolution, ``(kh, 1)`` then ``(1, kw)``: :class:`SpatiallySeparableConv2d`."""

from typing import Optional

import torch
from torch import Tensor, nn

from .. import functional as SF
from .._checks import check_divisible, check_positive_int
from .._computed import computed_weight
from ..decompose import compose_spatially_separable, spatially_separable
from ..padding import PaddingArg
from ._base import (
    _dense_module,
    _dense_options,
    _factory,
    _lecun_uniform_,
    _load_factors,
    _Padded,
    _refuse_weight_assignment,
)


class SpatiallySeparableConv2d(_Padded):
    """Spatially separable 2-D convolution: ``(kh, 1)`` filters to ``rank`` channels, then ``(1, kw)``.

    A learnable low-rank conv (Jaderberg et al. 2014): its dense kernel has rank ``rank`` per group
    when each ``(kh, kw)`` slice pair is read as a ``(C/g*kh) x (N/g*kw)`` matrix. With
    ``groups == in_channels == out_channels == rank`` it is the tutorials' per-channel Kx1 then 1xK
    filter. Stride, dilation and padding of H go to ``vertical``, those of W to ``horizontal``,
    so the output shape is the dense conv's.

    Args:
        in_channels: C.
        out_channels: N.
        kernel_size: int or ``(kh, kw)``.
        rank: intermediate channels r (a multiple of ``groups``).
        stride, padding, dilation, groups, bias, padding_mode, device, dtype: as ``nn.Conv2d``.

    Attributes:
        vertical: ``nn.Conv2d(C, r, (kh, 1), stride=(sh, 1), groups=g, bias=False)``.
        horizontal: ``nn.Conv2d(r, N, (1, kw), stride=(1, sw), groups=g, bias=bias)``.

    Example:
        >>> SpatiallySeparableConv2d(1, 1, 3, rank=1)(torch.randn(1, 1, 15, 15)).shape
        torch.Size([1, 1, 13, 13])
    """

    _N = 2
    _output_factor = "horizontal"

    def __init__(self, in_channels: int, out_channels: int, kernel_size, rank: int, stride=1,
                 padding: PaddingArg = 0, dilation=1, groups: int = 1, bias: bool = True,
                 padding_mode: str = "zeros", device=None, dtype=None) -> None:
        super().__init__()
        self.in_channels = check_positive_int("in_channels", in_channels)
        self.out_channels = check_positive_int("out_channels", out_channels)
        self.rank = check_positive_int("rank", rank)
        self.groups = check_positive_int("groups", groups)
        check_divisible("in_channels", in_channels, "groups", groups)
        check_divisible("out_channels", out_channels, "groups", groups)
        check_divisible("rank", rank, "groups", groups)
        self._init_geometry(2, kernel_size, stride, padding, dilation, padding_mode)
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        ph, pw = self._conv_padding
        factory = _factory(bias, device, dtype)
        self.vertical = nn.Conv2d(in_channels, rank, (kh, 1), (sh, 1), (ph, 0), (dh, 1), groups, bias=False, **factory)
        self.horizontal = nn.Conv2d(rank, out_channels, (1, kw), (1, sw), (0, pw), (1, dw), groups, bias=bias, **factory)
        self.reset_parameters()

    @property
    def weight(self) -> Tensor:
        """The equivalent dense kernel ``(N, C/g, kh, kw)`` (computed, not a parameter).

        Read-only: a :class:`~sepconv._computed.ComputedWeight` that raises on in-place changes
        (``nn.init.zeros_(layer.weight)`` would change nothing). Initialize or load the factors
        instead, e.g. ``nn.init.zeros_(layer.vertical.weight)``, or use :meth:`from_dense`.
        """
        w = compose_spatially_separable(self.vertical.weight, self.horizontal.weight, self.groups)
        return computed_weight(w, type(self).__name__, ("vertical", "horizontal"))

    @weight.setter
    def weight(self, value: Tensor) -> None:
        _refuse_weight_assignment(self, ("vertical", "horizontal"))

    @property
    def bias(self) -> Optional[Tensor]:
        return self.horizontal.bias

    def reset_parameters(self) -> None:
        """LeCun-uniform factors (fan-in ``C/g*kh``, then ``r/g*kw``), zero bias."""
        _lecun_uniform_(self.vertical.weight)
        _lecun_uniform_(self.horizontal.weight)
        if self.horizontal.bias is not None:
            nn.init.zeros_(self.horizontal.bias)

    def forward(self, x: Tensor) -> Tensor:
        if torch.jit.is_scripting():
            SF.check_input(x, 2, self.in_channels)
        else:
            self._check_call(x, self.vertical.weight.dtype)
        if not self._explicit:
            return self.horizontal(self.vertical(x))
        fpad = self._input_fpad(x)  # [w_before, w_after, h_before, h_after]
        y = self.vertical(SF.pad_input(x, [0, 0, fpad[2], fpad[3]], self.padding_mode))
        return self.horizontal(SF.pad_input(y, [fpad[0], fpad[1], 0, 0], self.padding_mode))

    def to_dense(self, input_size=None) -> nn.Module:
        """The exactly equivalent standard ``nn.Conv2d`` (same ``groups``), with explicit padding."""
        bias = None if self.horizontal.bias is None else self.horizontal.bias.detach()
        weight = compose_spatially_separable(self.vertical.weight.detach(), self.horizontal.weight.detach(), self.groups)
        return _dense_module(2, weight, bias, self.stride, self.dilation, self.groups, self._dense_pads(input_size),
                             self.padding_mode)

    @classmethod
    def from_dense(cls, conv: nn.Module, rank: int):
        """The best rank-``rank`` vertical + horizontal approximation of a trained ``nn.Conv2d``.

        Closed form (SVD of the kernel as a ``(C*kh) x (N*kw)`` matrix, per group); see
        :func:`sepconv.decompose.spatially_separable`. ``rank`` must be a multiple of the
        conv's groups.
        """
        opts = _dense_options(conv, 2, groups_ok=True)
        v, h, _ = spatially_separable(conv.weight.detach(), rank, conv.groups)
        layer = cls(conv.in_channels, conv.out_channels, conv.kernel_size, rank, groups=conv.groups, **opts)
        return _load_factors(layer, conv, vertical=v, horizontal=h)

    def extra_repr(self) -> str:
        s = f"{self.in_channels}, {self.out_channels}, {self._geometry_repr()}, rank={self.rank}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={self.horizontal.bias is not None}"
