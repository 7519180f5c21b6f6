"""Separable layers that run faster as the dense conv they compose to.

A factorized layer is a linear map; its dense equivalent (``layer.to_dense()``) computes the same
outputs. Where the factorization keeps most of the dense MACs (a high rank or depth multiplier),
on small maps, or where the factors' convs take slow library paths, the dense conv can be the
faster way to compute it on this machine. :func:`densify` times each separable layer of the model
on its own input — as it is, on the fused kernel where one applies, and as its dense equivalent —
and runs the dense equivalent only where it is clearly faster (by ``MARGIN``): an optimized
converted model is then never slower, layer by layer, than the dense layers it replaced.
"""

import copy
from typing import Optional

import torch
from torch import Tensor, nn

from .. import _fused
from .._timing import interleaved
from .checks import relative_error

# the dense equivalent replaces a separable layer only when it is faster than every other way of
# running that layer by this factor (timing noise must not undo a factorization)
MARGIN = 0.9


def _separable(m: nn.Module) -> bool:
    from ..layers import SpatiallySeparableConv2d
    from ..layers.blueprint import _BlueprintSeparableConvNd
    from ..layers.separable import _SeparableConvNd

    return isinstance(m, (_SeparableConvNd, _BlueprintSeparableConvNd, SpatiallySeparableConv2d))


def _dense_equivalent(layer: nn.Module, x: Tensor) -> Optional[nn.Module]:
    """``layer``'s dense conv (channels_last for a 4-D input), or None if it has none (an
    activation between the factors), its padding depends on the input size (the optimized model
    also runs inputs of other sizes), or it does not reproduce the layer on ``x``."""
    if getattr(layer, "_dynamic", False):  # TF-style 'same' padding with stride > 1: per input size
        return None
    try:
        dense = layer.to_dense().eval()
    except (ValueError, TypeError, NotImplementedError):
        return None
    if x.dim() == 4:
        dense = dense.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        if relative_error(dense(x), layer(x)) > 1e-4:
            return None
    return dense


def _ways(layer: nn.Module, x: Tensor) -> dict:
    """The ways to run ``layer`` other than its dense equivalent: as it is (lowered to its child
    convs) and on its fused kernel where one applies and reproduces it."""
    from .dispatch import _fused_class
    from .fused import _ACTS
    from .rewrite import _lower

    ways = {"separable": _lower(copy.deepcopy(layer))}
    cls = _fused_class(layer)
    if cls is not None and _fused.load() is not None:
        try:
            fused = cls(layer, _ACTS[nn.Identity])
            with torch.inference_mode():
                if relative_error(fused(x), layer(x)) <= 1e-4:
                    ways["fused"] = fused
        except Exception:  # a shape the kernel cannot take: the other ways remain
            pass
    return ways


def densify(model: nn.Module, x: Tensor, rounds: int) -> tuple[nn.Module, list[str]]:
    """``model`` (modified) with each separable layer that runs clearly faster as its dense
    equivalent on its own input (from ``model(x)``) replaced by that conv, and the replaced names.
    A model that is itself one separable layer is left as it is (it is what is being timed, e.g.
    by :mod:`sepconv.latency`).

    Args:
        model: a folded copy (eval mode, channels_last for 4-D inputs), modified in place.
        x: the example input, as the model takes it.
        rounds: timing rounds per layer (interleaved medians).
    """
    sites = [(name, m) for name, m in model.named_modules() if name and _separable(m)]
    if not sites:
        return model, []
    inputs: dict[str, Tensor] = {}
    hooks = [m.register_forward_pre_hook(lambda m, a, name=name: inputs.setdefault(name, a[0]))
             for name, m in sites]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    replaced = []
    for name, layer in sites:
        inp = inputs.get(name)
        if inp is None:  # not run by forward
            continue
        dense = _dense_equivalent(layer, inp)
        if dense is None:
            continue
        ways = _ways(layer, inp)
        with torch.inference_mode():
            t = interleaved({**{k: (lambda m=m: m(inp)) for k, m in ways.items()}, "dense": lambda: dense(inp)},
                            rounds, warmup=1)
        if t["dense"] < MARGIN * min(t[k] for k in ways):
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, dense)
            replaced.append(name)
    return model, replaced
