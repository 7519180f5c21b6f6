"""The candidates of each eligible conv: which structures apply, the rank grid, and every
(structure, rank)'s MACs and relative error (weight error from the singular values; output error
with an input covariance)."""

import math
from dataclasses import dataclass, field
from typing import Optional, Union

from torch import Tensor, nn

from .. import cost as C
from .spectra import Spectrum

NOMINAL_SIZE = 32
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


@dataclass
class _Candidate:
    structure: str
    rank: Optional[int]
    macs: int
    error: float  # relative error used for allocation (weight or output)
    weight_error: float
    ms: Optional[float] = None  # measured (or interpolated) latency on this machine, with cost="latency"


@dataclass
class _Layer:
    name: str
    conv: nn.Module
    weight: Tensor  # BN-folded
    bias: Optional[Tensor]
    in_shape: tuple
    dense_macs: int
    candidates: list
    bn_name: Optional[str] = None
    cov: Optional[Tensor] = None
    spectra: dict = field(default_factory=dict)  # structure -> Spectrum
    scale: Optional[Tensor] = None  # data-free: sqrt(E[x_c^2]) per input channel, from the BatchNorms before it
    # the network's output error per unit of this layer's error (portfolio.measure_sensitivities); weighs the
    # layer's squared errors in the global allocation
    sensitivity: float = 1.0


def _skip_reason(m: nn.Module) -> Optional[str]:
    """None for a module that is not a conv, '' for an eligible conv, else why it is skipped."""
    if isinstance(m, nn.modules.conv._ConvTransposeNd):
        return "transposed conv"
    if not isinstance(m, _CONVS):
        return None
    if isinstance(m.weight, nn.parameter.UninitializedParameter):
        return "lazy conv not initialized: run the model once first"
    if m.groups != 1:
        return f"grouped conv (groups={m.groups}): already {'depthwise' if m.groups == m.in_channels else 'grouped'}"
    if all(k == 1 for k in m.kernel_size):
        return "1x1 kernel: nothing to separate"
    return ""


def _rank_grid(max_rank: int) -> list[int]:
    """All ranks up to 8, then about 4 per octave, always including max_rank."""
    ranks = set(range(1, min(max_rank, 8) + 1))
    r = 8.0
    while r < max_rank:
        r *= 2 ** 0.25
        ranks.add(min(max_rank, int(round(r))))
    ranks.add(max_rank)
    return sorted(ranks)


def _padding_arg(conv) -> Union[str, tuple]:
    return conv.padding if isinstance(conv.padding, str) else tuple(conv.padding)


def _structure_macs(structure: str, conv, in_shape: tuple, rank: int) -> int:
    k, s, p, d, n = conv.kernel_size, conv.stride, _padding_arg(conv), conv.dilation, conv.out_channels
    if structure == "depthwise":
        return C.separable_conv_cost(in_shape, n, k, s, p, d, rank).macs
    if structure == "blueprint":
        return C.blueprint_separable_conv_cost(in_shape, n, k, s, p, d, rank).macs
    return C.spatially_separable_conv_cost(in_shape, n, k, rank, s, p, d).macs


def _structures(conv, method: str) -> tuple[list[str], str]:
    n = conv.weight.dim() - 2
    spatial_ok = n == 2 and conv.kernel_size[0] > 1 and conv.kernel_size[1] > 1
    if method == "auto":
        return ["depthwise", "blueprint"] + (["spatial"] if spatial_ok else []), ""
    if method == "spatial" and not spatial_ok:
        return [], "spatial needs a 2-D kernel with kh > 1 and kw > 1"
    return [method], ""


def _max_rank(structure: str, w: Tensor) -> int:
    n, c, *k = w.shape
    kk = math.prod(k)
    if structure == "depthwise":
        return min(n, kk)
    if structure == "blueprint":
        return min(c, kk)
    return min(c * k[0], n * k[1])


def _output_error(w: Tensor, w_hat: Tensor, cov: Tensor) -> float:
    """sqrt(tr(dW S dW^T) / tr(W S W^T)) with W as (N, C*K)."""
    w2 = w.reshape(w.shape[0], -1).double()
    dw = w2 - w_hat.reshape(w.shape[0], -1).double()
    num = float(((dw @ cov) * dw).sum())
    den = float(((w2 @ cov) * w2).sum())
    return math.sqrt(max(num, 0.0) / den) if den > 0 else 0.0


def _candidates(layer: _Layer, structures: list[str], fixed_rank: Optional[int]) -> list[_Candidate]:
    """Every (structure, rank) of ``layer`` with its MACs and errors; keeps each structure's
    :class:`Spectrum` in ``layer.spectra`` for building the chosen one."""
    out = []
    for st in structures:
        ranks = [fixed_rank] if fixed_rank is not None else _rank_grid(_max_rank(st, layer.weight))
        spectrum = layer.spectra[st] = Spectrum(weighted(layer), st, ranks)
        errors = {r: spectrum.error(r) for r in ranks}
        if layer.cov is not None:
            used = spectrum.output_errors(layer.weight, ranks, layer.cov)
        else:
            used = errors
        for r in ranks:
            out.append(_Candidate(st, r, _structure_macs(st, layer.conv, layer.in_shape, r), used[r], errors[r]))
    return out


def weighted(layer: _Layer) -> Tensor:
    """The weight whose Frobenius error is the data-free objective: ``W * s`` over the input channels
    with ``layer.scale`` (see :mod:`sepconv.prior`), else ``W``."""
    if layer.scale is None:
        return layer.weight
    w = layer.weight
    return w * layer.scale.to(w.dtype).view(1, -1, *([1] * (w.dim() - 2)))


def _with_dense(layer: _Layer, candidates: list[_Candidate]) -> list[_Candidate]:
    """The candidates cheaper than the dense conv, and the dense conv itself (error 0)."""
    return [c for c in candidates if c.macs < layer.dense_macs] + [_Candidate("dense", None, layer.dense_macs, 0.0, 0.0)]


def _nominal_shape(conv) -> tuple[tuple, int]:
    """Without an example input: an input of ``32 * stride`` per spatial dim (a 32-wide output
    map with 'same'-like padding), large enough for the kernel."""
    extent = [(k - 1) * d + 1 for k, d in zip(conv.kernel_size, conv.dilation)]
    in_shape = (1, conv.in_channels, *[max(NOMINAL_SIZE * s, e) for s, e in zip(conv.stride, extent)])
    macs = C.conv_cost(in_shape, conv.out_channels, conv.kernel_size, conv.stride, _padding_arg(conv),
                       conv.dilation, bias=False).macs
    return in_shape, macs
