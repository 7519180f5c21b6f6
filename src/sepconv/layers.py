"""Separable convolution layers in ``torch.nn`` style.

Each layer stores parameters and options and does its math through :mod:`sepconv.functional`
(``conv_nd``, ``pad_input``), so a layer and its functional op always agree. Two-factor layers
keep their factors as plain ``nn.ConvNd`` children (``depthwise``/``pointwise``,
``vertical``/``horizontal``) so exporters, FLOP counters and pruning tools recognise them.

Padding is applied once, to the input of the spatial factor: symmetric zero padding is handed to
the child conv itself; asymmetric pads (``'same'`` with an even kernel) and the other padding
modes go through ``F.pad``; ``'same'`` with a stride > 1 is recomputed from each input's size
(TensorFlow semantics, see :mod:`sepconv.padding`).

Initialization
--------------
Every factor is initialized LeCun-uniform with the fan-in of *that factor*
(``U(-sqrt(3/fan_in), sqrt(3/fan_in))``, variance ``1/fan_in``; depthwise fan-in = kernel
elements, pointwise fan-in = ``C*d``, vertical fan-in = ``C/g*kh``, horizontal = ``r/g*kw``).
Each factor then preserves the variance of its input, and the composed dense kernel has
exactly the LeCun variance ``1/(C*kh*kw)`` of a dense conv. torch's default
(kaiming-uniform with ``a=sqrt(5)``, variance ``1/(3*fan_in)``) would shrink the signal by 3x per
factor, i.e. 9x per separable layer: after 20 layers ``9**-20``. Biases start at zero (Keras).
"""


import math
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from . import functional as SF
from ._computed import computed_weight
from ._checks import call_factory, check_divisible, check_finite, check_padding_mode, check_positive_int, to_tuple
from .decompose import (
    blueprint_separable,
    compose_blueprint_separable,
    compose_depthwise_separable,
    compose_spatially_separable,
    depthwise_separable,
    spatially_separable,
)
from .fold import batchnorm_affine, fold_affine, shifted_bias
from .padding import PaddingArg, is_symmetric, normalize_padding, resolve_pads, static_pads, to_fpad

__all__ = [
    "DepthwiseConv1d",
    "DepthwiseConv2d",
    "DepthwiseConv3d",
    "SeparableConv1d",
    "SeparableConv2d",
    "SeparableConv3d",
    "BlueprintSeparableConv1d",
    "BlueprintSeparableConv2d",
    "BlueprintSeparableConv3d",
    "SpatiallySeparableConv2d",
]

_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_PAD_MODULES = {
    "zeros": {1: nn.ZeroPad1d, 2: nn.ZeroPad2d, 3: nn.ZeroPad3d},
    "reflect": {1: nn.ReflectionPad1d, 2: nn.ReflectionPad2d, 3: nn.ReflectionPad3d},
    "replicate": {1: nn.ReplicationPad1d, 2: nn.ReplicationPad2d, 3: nn.ReplicationPad3d},
    "circular": {1: nn.CircularPad1d, 2: nn.CircularPad2d, 3: nn.CircularPad3d},
}

NormLayer = Callable[[int], nn.Module]
ActLayer = Callable[[], nn.Module]


def _factory(bias: object, device: object, dtype: object) -> dict:
    """Check the constructor's ``bias`` flag and ``dtype``; the ``device``/``dtype`` keywords."""
    if not isinstance(bias, bool):
        raise TypeError(f"bias: expected a bool, got {bias!r}")
    if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"dtype: expected None or a floating-point torch.dtype, got {dtype!r}")
    return dict(device=device, dtype=dtype)


def _lecun_uniform_(weight: Tensor) -> None:
    fan_in = weight.shape[1] * math.prod(weight.shape[2:])
    bound = math.sqrt(3.0 / fan_in)
    nn.init.uniform_(weight, -bound, bound)


def _dense_module(
    n: int,
    weight: Tensor,
    bias: Optional[Tensor],
    stride: Tuple[int, ...],
    dilation: Tuple[int, ...],
    groups: int,
    pads: List[Tuple[int, int]],
    padding_mode: str,
) -> nn.Module:
    """A standard ``nn.ConvNd`` holding ``weight``; wrapped after an explicit pad if asymmetric."""
    out_ch, in_per_group = weight.shape[:2]
    kw = dict(stride=stride, dilation=dilation, groups=groups, bias=bias is not None,
              device=weight.device, dtype=weight.dtype)
    if is_symmetric(pads):
        conv = _CONV[n](in_per_group * groups, out_ch, tuple(weight.shape[2:]),
                        padding=tuple(b for b, _ in pads), padding_mode=padding_mode, **kw)
        module: nn.Module = conv
    else:
        conv = _CONV[n](in_per_group * groups, out_ch, tuple(weight.shape[2:]), padding=0, **kw)
        module = nn.Sequential(_PAD_MODULES[padding_mode][n](tuple(to_fpad(pads))), conv)
    with torch.no_grad():
        conv.weight.copy_(weight)
        if bias is not None:
            conv.bias.copy_(bias)
    return module


def _dense_options(conv: nn.Module, n: int, groups_ok: bool = False) -> dict:
    """Geometry, bias, device and dtype of a dense ``nn.ConvNd``, checked for conversion."""
    if not isinstance(conv, _CONV[n]):
        raise TypeError(f"conv: expected nn.Conv{n}d, got {type(conv).__name__}")
    if conv.groups != 1 and not groups_ok:
        raise ValueError(f"conv: expected groups=1 (a dense conv), got groups={conv.groups}")
    padding = conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)
    # torch's padding='same' (stride 1) puts the extra pad of an even kernel after, like TensorFlow
    return dict(stride=tuple(conv.stride), padding=padding, dilation=tuple(conv.dilation),
                bias=conv.bias is not None, padding_mode=conv.padding_mode,
                device=conv.weight.device, dtype=conv.weight.dtype)


def _load_factors(layer: nn.Module, conv: nn.Module, **weights: Tensor) -> nn.Module:
    """Copy factor weights into ``layer``'s children of those names, and ``conv``'s bias into the
    layer's output factor (where its bias lives). Returns ``layer``."""
    with torch.no_grad():
        for name, weight in weights.items():
            getattr(layer, name).weight.copy_(weight)
        if conv.bias is not None:
            getattr(layer, layer._output_factor).bias.copy_(conv.bias)
    return layer


class _Padded(nn.Module):
    """Shared geometry: kernel/stride/padding/dilation normalization and the forward padding."""

    # Computed convenience properties, not needed in (and not compiled for) TorchScript.
    __jit_unused_properties__ = ["weight", "bias"]

    _fpad: List[int]
    _kernel: List[int]
    _stride: List[int]
    _dilation: List[int]
    _dynamic: bool
    _explicit: bool
    _n: int

    def _init_geometry(self, n: int, kernel_size, stride, padding: PaddingArg, dilation, padding_mode: str) -> None:
        self._n = n
        self.kernel_size = to_tuple("kernel_size", kernel_size, n)
        self.stride = to_tuple("stride", stride, n)
        self.dilation = to_tuple("dilation", dilation, n)
        self.padding = normalize_padding(padding, n)
        self.padding_mode = check_padding_mode(padding_mode)
        pads = static_pads(self.padding, self.kernel_size, self.stride, self.dilation)
        self._dynamic = pads is None
        self._fpad = to_fpad(pads) if pads is not None else [0] * (2 * n)
        self._kernel, self._stride, self._dilation = list(self.kernel_size), list(self.stride), list(self.dilation)
        # Symmetric zero padding is done by the conv itself; everything else explicitly in forward.
        self._explicit = self._dynamic or not (padding_mode == "zeros" and is_symmetric(pads))
        self._conv_padding = (0,) * n if self._explicit else tuple(b for b, _ in pads)

    @torch.jit.unused
    def _check_call(self, x: Tensor, dtype: torch.dtype) -> None:
        """Eager-only checks naming the layer: input type, rank, channels, dtype and that the kernel
        fits the padded input (instead of PyTorch's messages from deep inside the factors)."""
        if torch.compiler.is_compiling():  # torch.compile / torch.export: only the shape check
            SF.check_input(x, self._n, self.in_channels)
            return
        describe = lambda: f"{type(self).__name__}({self.extra_repr()})"  # noqa: E731
        SF.check_call(x, describe, self._n, self.in_channels, dtype)
        SF.check_fit(x, describe, self._kernel, self._dilation, self._input_fpad if self._dynamic else self._fpad,
                     self.padding_mode)

    def _input_fpad(self, x: Tensor) -> List[int]:
        return SF.input_fpad(x, self._fpad, self._dynamic, self._kernel, self._stride, self._dilation)

    def _pad(self, x: Tensor) -> Tensor:
        if not self._explicit:
            return x
        return SF.pad_input(x, self._input_fpad(x), self.padding_mode)

    def _dense_pads(self, input_size) -> List[Tuple[int, int]]:
        if input_size is not None:
            input_size = to_tuple("input_size", input_size, self._n)
        return resolve_pads(self.padding, self.kernel_size, self.stride, self.dilation, input_size)

    def _geometry_repr(self) -> str:
        s = f"kernel_size={self.kernel_size}, stride={self.stride}"
        s += f", padding={self.padding!r}" if isinstance(self.padding, str) else f", padding={self.padding}"
        if any(d != 1 for d in self.dilation):
            s += f", dilation={self.dilation}"
        if self.padding_mode != "zeros":
            s += f", padding_mode={self.padding_mode!r}"
        return s


# --------------------------------------------------------------------------------------------
# Depthwise
# --------------------------------------------------------------------------------------------
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


# --------------------------------------------------------------------------------------------
# Two-factor layers with an optional norm + activation between the factors
# --------------------------------------------------------------------------------------------
def _middle(norm_layer: Optional[NormLayer], act_layer: Optional[ActLayer], channels: int, factory: dict):
    norm: nn.Module = nn.Identity()
    if norm_layer is not None:
        norm = call_factory("norm_layer", norm_layer, channels, wants="a callable taking the channel count")
        norm.to(**{k: v for k, v in factory.items() if v is not None})
    act: nn.Module = nn.Identity()
    if act_layer is not None:
        act = call_factory("act_layer", act_layer, wants="a callable returning a module")
    return norm, act


def _bn_affine(bn: nn.Module) -> Tuple[Tensor, Tensor]:
    """``(scale, shift)`` with ``bn(x) == scale * x + shift`` per channel in eval mode."""
    return batchnorm_affine(bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


def _foldable_bn(bn: nn.Module, channels: int) -> bool:
    """A BatchNorm with running statistics over ``channels`` channels (foldable in eval mode)."""
    return isinstance(bn, nn.modules.batchnorm._BatchNorm) and bn.track_running_stats and bn.num_features == channels


def _affine_of(norm: nn.Module, where: str) -> Optional[Tuple[Tensor, Tensor]]:
    """``(scale, shift)`` of an eval-mode BatchNorm (None for Identity); raise if not foldable."""
    if isinstance(norm, nn.Identity):
        return None
    if isinstance(norm, nn.modules.batchnorm._BatchNorm) and not norm.training and norm.track_running_stats:
        return _bn_affine(norm)
    raise ValueError(
        f"to_dense: expected no norm or an eval-mode BatchNorm {where} (foldable), got {type(norm).__name__}"
        f"{' in training mode' if norm.training else ''}"
    )


def _refuse_weight_assignment(layer: nn.Module, factors: Tuple[str, str]) -> None:
    raise AttributeError(
        f"weight: expected no assignment ({type(layer).__name__}.weight is computed from "
        f"{factors[0]}.weight and {factors[1]}.weight), got one; set the factors instead, or build the layer "
        f"with {type(layer).__name__}.from_dense(conv)"
    )


def _check_no_act(act: nn.Module) -> None:
    if not isinstance(act, nn.Identity):
        raise ValueError(f"to_dense: a nonlinear {type(act).__name__} between the factors has no dense equivalent; expected act_layer=None")


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
        return self.pointwise(self.act(self.norm(self.depthwise(self._pad(x)))))

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
SeparableConv3d.__doc__ = _SEPARABLE_DOC.format(n=3, example="SeparableConv3d(2, 4, 3, padding=1)(torch.randn(1, 2, 5, 5, 5)).shape\n        torch.Size([1, 4, 5, 5, 5])")


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
        # A 1x1 conv commutes with every padding mode: pad the intermediate, not the input.
        y = self.act(self.norm(self.pointwise(x)))
        return self.depthwise(self._pad(y))

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


# --------------------------------------------------------------------------------------------
# Spatially separable
# --------------------------------------------------------------------------------------------
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
