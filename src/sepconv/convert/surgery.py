"""Model surgery: finding the eligible convs (with the BatchNorms to fold into them), building the
separable layer of a chosen structure and rank, and putting it in place of the conv."""

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from ..fold import fold_batchnorm as _fold_batchnorm
from ..graph import Folded, chain_weights, fold_chains
from ..layers import (
    BlueprintSeparableConv1d,
    BlueprintSeparableConv2d,
    BlueprintSeparableConv3d,
    SeparableConv1d,
    SeparableConv2d,
    SeparableConv3d,
    SpatiallySeparableConv2d,
)
from ..layers._base import _dense_options, _load_factors
from .candidates import _Candidate, _Layer, _nominal_shape, _skip_reason, _structures, weighted
from .parallel import map_layers
from .spectra import Spectrum

_SEPARABLE = {1: SeparableConv1d, 2: SeparableConv2d, 3: SeparableConv3d}
_BLUEPRINT = {1: BlueprintSeparableConv1d, 2: BlueprintSeparableConv2d, 3: BlueprintSeparableConv3d}


def fold_batchnorm(conv: nn.Module, bn: nn.Module) -> tuple[Tensor, Tensor]:
    """Weight and bias of ``bn(conv(x))`` (eval mode) as a single conv. Pure, returns new tensors.

    Args:
        conv: an ``nn.ConvNd`` (any groups).
        bn: the BatchNorm that takes its output.

    Returns:
        ``(weight, bias)``, new tensors (:func:`sepconv.fold.fold_batchnorm`).
    """
    return _fold_batchnorm(conv.weight, conv.bias, bn.running_mean, bn.running_var, bn.eps, bn.weight, bn.bias)


_FACTOR_NAMES = {"depthwise": ("depthwise", "pointwise"), "blueprint": ("pointwise", "depthwise"),
                 "spatial": ("vertical", "horizontal")}


def _build(structure: str, conv, weight: Tensor, bias: Optional[Tensor], rank: int,
           spectrum: Optional[Spectrum] = None) -> nn.Module:
    """The separable layer for ``conv`` with (BatchNorm-folded) ``weight`` and ``bias``, from
    ``spectrum``'s factors (the decomposition computed while ranking the candidates) where it has
    them, else via ``from_dense``."""
    dense = copy.deepcopy(conv)
    dense.weight = nn.Parameter(weight.detach().clone())
    dense.bias = None if bias is None else nn.Parameter(bias.detach().clone())
    n = weight.dim() - 2
    factors = spectrum.factors(dense.weight, rank) if spectrum is not None else None
    opts = _dense_options(dense, n)
    if structure == "depthwise":
        layer = (_SEPARABLE[n].from_dense(dense, depth_multiplier=rank) if factors is None else
                 _SEPARABLE[n](conv.in_channels, conv.out_channels, conv.kernel_size, depth_multiplier=rank, **opts))
    elif structure == "blueprint":
        layer = (_BLUEPRINT[n].from_dense(dense, rank=rank) if factors is None else
                 _BLUEPRINT[n](conv.in_channels, conv.out_channels, conv.kernel_size, rank=rank, **opts))
    else:
        layer = (SpatiallySeparableConv2d.from_dense(dense, rank=rank) if factors is None else
                 SpatiallySeparableConv2d(conv.in_channels, conv.out_channels, conv.kernel_size, rank, **opts))
    if factors is not None:
        layer = _load_factors(layer, dense, **dict(zip(_FACTOR_NAMES[structure], factors)))
    layer.train(conv.training)
    return layer


_INPUT_FACTOR = {"depthwise": "depthwise", "blueprint": "pointwise", "spatial": "vertical"}


def _unscale_input(layer: nn.Module, structure: str, scale: Tensor) -> None:
    """Divide the factor that reads the input by ``scale`` per input channel: the layer built from
    ``W * s`` then computes the optimal approximation of ``W`` under the weighted error."""
    w = getattr(layer, _INPUT_FACTOR[structure]).weight
    s = scale.to(w.dtype)
    with torch.no_grad():
        if structure == "depthwise":  # (C * multiplier, 1, *k): rows grouped by input channel
            w.view(s.numel(), -1).div_(s.view(-1, 1))
        else:  # (mid, C, *k)
            w.div_(s.view(1, -1, *([1] * (w.dim() - 2))))


def _build_weighted(l: _Layer, c: _Candidate) -> nn.Module:
    """The chosen layer, optimal for ``l``'s (possibly weighted) objective; with a weighting, the
    candidate's ``weight_error`` becomes the built layer's plain relative weight error."""
    if l.scale is None:
        return _build(c.structure, l.conv, l.weight, l.bias, c.rank, l.spectra.get(c.structure))
    layer = _build(c.structure, l.conv, weighted(l), l.bias, c.rank, l.spectra.get(c.structure))
    _unscale_input(layer, c.structure, l.scale)
    w_hat = layer.to_dense().weight.detach().double()
    w = l.weight.detach().double()
    c.weight_error = float((w - w_hat).norm() / w.norm()) if float(w.norm()) > 0 else 0.0
    return layer


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    """Replace the submodule ``name`` (dotted) of ``root`` by ``module``."""
    parent_name, _, attr = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, attr, module)


def _folded_weights(target: nn.Module, name: str, chain) -> tuple[Tensor, Tensor]:
    """The conv's weights with its BatchNorm folded in, refusing non-finite statistics or results."""
    bn = target.get_submodule(chain.bn)
    if not all(bool(torch.isfinite(t).all()) for t in (bn.running_mean, bn.running_var)):
        raise ValueError(f"layer '{chain.bn}': expected finite BatchNorm statistics, got NaN or Inf")
    w, b = chain_weights(target, chain)
    if not (bool(torch.isfinite(w).all()) and bool(torch.isfinite(b).all())):
        raise ValueError(f"layer '{chain.bn}': expected a BatchNorm that folds into finite weights "
                         f"(running_var + eps > 0), got non-finite folded weights for layer '{name}'")
    return w, b


def _find_layers(target: nn.Module, method: str, found: Optional[Folded], rows: dict,
                 input_error: Optional[str]) -> tuple[list[_Layer], list]:
    """The eligible convs of ``target`` (BatchNorm-folded weights, input shape, dense MACs) and the
    skipped ones with the reason. ``rows``: the profile rows by name; ``input_error``: the argument
    to blame (with the model input's shape) when a layer sees an unbatched input."""
    chain_of = {c.conv: c for c in found.chains if c.conv == c.target} if found else {}
    layers, skipped = [], []
    for name, m in target.named_modules():
        reason = _skip_reason(m)
        if reason is None:
            continue
        structures, why = _structures(m, method) if not reason else ([], reason)
        if not structures:
            skipped.append((name, why))
            continue
        chain = chain_of.get(name)
        if chain is not None:
            w, b = _folded_weights(target, name, chain)
        else:
            w, b = m.weight.detach(), None if m.bias is None else m.bias.detach()
        if name in rows:
            in_shape, dense_macs = rows[name].input_shape, rows[name].macs
            if len(in_shape) != m.weight.dim():
                raise ValueError(f"{input_error} (layer '{name}' ({type(m).__name__}) received an unbatched input "
                                 f"of shape {tuple(in_shape)})")
        else:
            in_shape, dense_macs = _nominal_shape(m)
        layers.append(_Layer(name, m, w, b, tuple(in_shape), dense_macs, [], chain.bn if chain else None))
    return layers, skipped


def _operate(target: nn.Module, layers: list[_Layer], choice: dict[str, _Candidate],
             found: Optional[Folded]) -> dict[str, nn.Module]:
    """Fold the BatchNorms, then put each layer's chosen separable form in place of its conv, and
    drop the layers' spectra (their factors are not needed any more).

    Returns:
        Each layer's module after the surgery by name (the conv itself where it stays dense).
    """
    if found is not None:
        fold_chains(target, found.chains)
    todo = [l for l in layers if choice[l.name].structure != "dense"]
    built = map_layers(lambda l: _build_weighted(l, choice[l.name]), todo,
                       cost=lambda l: l.weight.numel() * l.weight.shape[1])
    new_layers = {l.name: l.conv for l in layers}  # a dense choice stays as it is (with its BatchNorm folded in)
    for l, new in zip(todo, built):
        _set_module(target, l.name, new)
        new_layers[l.name] = new
    for l in layers:
        l.spectra = {}
    return new_layers
