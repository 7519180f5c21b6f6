"""One layer's cost from shapes alone: :class:`LayerCost` and the closed forms of the standard,
linear, depthwise, depthwise separable, blueprint separable and spatially separable convolutions."""

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch

from .._checks import check_positive_int, to_tuple, to_tuples
from ..padding import PaddingArg, normalize_padding, resolve_pads

Shape = tuple[int, ...]


def _shape(s) -> str:
    return "x".join(str(v) for v in s)


@dataclass(frozen=True)
class LayerCost:
    """Cost of one layer, from shapes. ``parts`` holds the factors of a separable layer.

    Attributes:
        macs: multiply-accumulates (the papers' "mult-adds").
        params: parameter elements.
        input_shape: ``(B, C, *spatial)``.
        output_shape: ``(B, N, *spatial_out)``.
        parts: ``((name, LayerCost), ...)`` for multi-factor layers, else empty.
    """

    macs: int
    params: int
    input_shape: Shape
    output_shape: Shape
    parts: tuple = ()

    @property
    def flops(self) -> int:
        """``2 * macs``: one multiply and one add per MAC."""
        return 2 * self.macs

    def output_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the output activation (intermediate factors' outputs not included)."""
        return math.prod(self.output_shape) * _itemsize(dtype)

    def param_bytes(self, dtype: torch.dtype = torch.float32) -> int:
        """Bytes of the parameters."""
        return self.params * _itemsize(dtype)

    @property
    def intermediate_shapes(self) -> tuple:
        """Output shapes of all factors but the last (the round trip through memory)."""
        return tuple(p.output_shape for _, p in self.parts[:-1])


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def _input_shape(input_shape: Sequence[int], n: Optional[int] = None) -> Shape:
    """Check ``(B, C, *spatial)``; ``n`` spatial dims if given (1-3 otherwise)."""
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"input_shape: expected a sequence of ints (B, C, *spatial), got {input_shape!r}")
    shape = tuple(input_shape)
    if n is None and not 3 <= len(shape) <= 5:
        raise ValueError(f"input_shape: expected (B, C, *spatial) with 1 to 3 spatial dims, got {shape}")
    if n is not None and len(shape) != n + 2:
        raise ValueError(f"input_shape: expected {n + 2} dims (B, C, *spatial), got {shape}")
    for s in shape:
        if isinstance(s, bool) or not isinstance(s, int) or s < 1:
            raise ValueError(f"input_shape: expected positive ints, got {shape}")
    return shape


def conv_output_size(
    input_size: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int], padding: PaddingArg,
    dilation: Sequence[int],
) -> Shape:
    """Spatial output size: ``floor((n + before + after - (k - 1) * d - 1) / s) + 1`` per dim.

    Example:
        >>> conv_output_size((15, 15), (3, 3), (1, 1), 'valid', (1, 1))
        (13, 13)
        >>> conv_output_size((224, 224), (3, 3), (2, 2), 'same', (1, 1))
        (112, 112)
    """
    input_size, kernel_size, stride, dilation = to_tuples(
        ("input_size", input_size), ("kernel_size", kernel_size), ("stride", stride), ("dilation", dilation),
        hint=" (the spatial size)")
    pads = resolve_pads(normalize_padding(padding, len(input_size)), kernel_size, stride, dilation, input_size)
    out = []
    for size, k, s, d, (b, a) in zip(input_size, kernel_size, stride, dilation, pads):
        span = size + b + a - (k - 1) * d - 1
        if span < 0:
            raise ValueError(
                f"input_shape: spatial size {size} (padded {size + b + a}) is smaller than the dilated kernel {(k - 1) * d + 1}"
            )
        out.append(span // s + 1)
    return tuple(out)


def _geom(input_shape, kernel_size, stride, dilation):
    x = _input_shape(input_shape)
    n = len(x) - 2
    return x, n, to_tuple("kernel_size", kernel_size, n), to_tuple("stride", stride, n), to_tuple("dilation", dilation, n)


def conv_cost(
    input_shape: Sequence[int], out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0, dilation=1,
    groups: int = 1, bias: bool = True, transposed: bool = False, output_padding=0,
) -> LayerCost:
    """Cost of a (grouped, strided, dilated, padded, or transposed) 1-3-D convolution.

    ``macs = B * N * prod(out) * (C/groups) * prod(k)``; transposed:
    ``B * C * prod(in) * (N/groups) * prod(k)`` (every input element meets the whole kernel).

    Args:
        input_shape: ``(B, C, *spatial)``.
        out_channels: N.

    Example:
        >>> conv_cost((1, 3, 15, 15), 10, 3).macs     # the tutorials' 3x3x3x10x13x13
        45630
    """
    x, n, k, s, d = _geom(input_shape, kernel_size, stride, dilation)
    b, c = x[:2]
    check_positive_int("out_channels", out_channels)
    groups = check_positive_int("groups", groups)
    if c % groups or out_channels % groups:
        raise ValueError(f"groups: expected a divisor of in_channels={c} and out_channels={out_channels}, got {groups}")
    kernel = math.prod(k)
    params = out_channels * (c // groups) * kernel + (out_channels if bias else 0)
    if transposed:
        p = to_tuple("padding", padding, n, minimum=0)
        op = to_tuple("output_padding", output_padding, n, minimum=0)
        out = tuple((i - 1) * si - 2 * pi + di * (ki - 1) + oi + 1 for i, si, pi, di, ki, oi in zip(x[2:], s, p, d, k, op))
        macs = b * c * math.prod(x[2:]) * (out_channels // groups) * kernel
    else:
        out = conv_output_size(x[2:], k, s, padding, d)
        macs = b * out_channels * math.prod(out) * (c // groups) * kernel
    return LayerCost(macs, params, x, (b, out_channels, *out))


def linear_cost(input_shape: Sequence[int], out_features: int, bias: bool = True) -> LayerCost:
    """Cost of ``nn.Linear``: ``macs = prod(batch dims) * in_features * out_features``.

    Example:
        >>> linear_cost((1, 1024), 1000).macs
        1024000
    """
    shape = tuple(input_shape)
    if not shape or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape):
        raise ValueError(f"input_shape: expected positive ints (*, in_features), got {shape}")
    check_positive_int("out_features", out_features)
    in_features = shape[-1]
    macs = math.prod(shape[:-1]) * in_features * out_features
    return LayerCost(macs, in_features * out_features + (out_features if bias else 0), shape, (*shape[:-1], out_features))


def _combine(parts: list[tuple[str, LayerCost]]) -> LayerCost:
    return LayerCost(sum(p.macs for _, p in parts), sum(p.params for _, p in parts), parts[0][1].input_shape,
                     parts[-1][1].output_shape, tuple(parts))


def depthwise_conv_cost(input_shape: Sequence[int], kernel_size, depth_multiplier: int = 1, stride=1,
                        padding: PaddingArg = 0, dilation=1, bias: bool = True) -> LayerCost:
    """Cost of a depthwise conv: ``B * C*d * prod(out) * prod(k)`` MACs.

    Example:
        >>> depthwise_conv_cost((1, 3, 15, 15), 3).macs    # 3x3x1 x 3 channels x 13x13
        4563
    """
    x = _input_shape(input_shape)
    d = check_positive_int("depth_multiplier", depth_multiplier)
    return conv_cost(x, x[1] * d, kernel_size, stride, padding, dilation, groups=x[1], bias=bias)


def separable_conv_cost(input_shape: Sequence[int], out_channels: int, kernel_size, stride=1, padding: PaddingArg = 0,
                        dilation=1, depth_multiplier: int = 1, bias: bool = True) -> LayerCost:
    """Cost of depthwise (``C -> C*d``) then pointwise (``C*d -> N``), one bias at the end.

    ``macs = B * prod(out) * C*d * (prod(k) + N)``; ratio to dense ``d/N + d/prod(k)``.

    Example:
        >>> separable_conv_cost((1, 3, 15, 15), 10, 3).macs   # 4,563 + 5,070
        9633
    """
    dw = depthwise_conv_cost(input_shape, kernel_size, depth_multiplier, stride, padding, dilation, bias=False)
    pw = conv_cost(dw.output_shape, out_channels, 1, bias=bias)
    return _combine([("depthwise", dw), ("pointwise", pw)])


def blueprint_separable_conv_cost(input_shape: Sequence[int], out_channels: int, kernel_size, stride=1,
                                  padding: PaddingArg = 0, dilation=1, rank: int = 1, bias: bool = True) -> LayerCost:
    """Cost of pointwise (``C -> N*r`` at input resolution) then grouped spatial (``N*r -> N``).

    ``macs = B * (prod(in) * C * N*r + prod(out) * N*r * prod(k))``.

    Example:
        >>> blueprint_separable_conv_cost((1, 3, 15, 15), 10, 3, padding='same').macs  # 15*15*(3*10 + 10*9)
        27000
    """
    x = _input_shape(input_shape)
    r = check_positive_int("rank", rank)
    pw = conv_cost(x, out_channels * r, 1, bias=False)
    dw = conv_cost(pw.output_shape, out_channels, kernel_size, stride, padding, dilation, groups=out_channels, bias=bias)
    return _combine([("pointwise", pw), ("depthwise", dw)])


def spatially_separable_conv_cost(input_shape: Sequence[int], out_channels: int, kernel_size, rank: int = 1, stride=1,
                                  padding: PaddingArg = 0, dilation=1, groups: int = 1, bias: bool = True) -> LayerCost:
    """Cost of ``(kh, 1)`` filters to ``r`` channels, then ``(1, kw)`` filters, as the layer runs them.

    The vertical factor pads, strides and dilates along H only, so its output is
    ``(H_out, W)``; the horizontal factor then produces ``(H_out, W_out)``::

        macs = B * (r * H_out * W * C/g * kh  +  N * H_out * W_out * r/g * kw)

    Example:
        >>> c = spatially_separable_conv_cost((1, 1, 15, 15), 1, 3)   # the tutorials' 3x1 then 1x3
        >>> [p.macs for _, p in c.parts], c.macs
        ([585, 507], 1092)
    """
    x, n, k, s, d = _geom(input_shape, kernel_size, stride, dilation)
    if n != 2:
        raise ValueError(f"input_shape: expected (B, C, H, W) for a spatially separable conv, got {x}")
    r = check_positive_int("rank", rank)
    (pt, pb), (pl, pr) = resolve_pads(normalize_padding(padding, 2), k, s, d, x[2:])
    v = _padded_conv_cost(x, r, (k[0], 1), (s[0], 1), ((pt, pb), (0, 0)), (d[0], 1), groups, bias=False)
    h = _padded_conv_cost(v.output_shape, out_channels, (1, k[1]), (1, s[1]), ((0, 0), (pl, pr)), (1, d[1]), groups, bias)
    return _combine([("vertical", v), ("horizontal", h)])


def _padded_conv_cost(x, out_channels, k, s, pads, d, groups, bias) -> LayerCost:
    """Conv cost with explicit (possibly asymmetric) pads: that of the padded input, unpadded."""
    padded = (*x[:2], *(size + b + a for size, (b, a) in zip(x[2:], pads)))
    cost = conv_cost(padded, out_channels, k, s, 0, d, groups=groups, bias=bias)
    return LayerCost(cost.macs, cost.params, tuple(x), cost.output_shape)
