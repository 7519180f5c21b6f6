"""What every layer shares: padding and geometry (:class:`_Padded`), dense-conv helpers, factor
initialization, and the BatchNorm / activation between two factors."""

import math
from typing import Callable, List, Optional, Tuple

import torch
from torch import Tensor, nn

from .. import functional as SF
from .._checks import call_factory, check_padding_mode, to_tuple
from ..fold import batchnorm_affine
from ..padding import PaddingArg, is_symmetric, normalize_padding, resolve_pads, static_pads, to_fpad

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
