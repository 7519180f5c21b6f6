"""The graph paths of the dispatch: a traced, frozen TorchScript graph (optionally of the model with
only its separable layers fused) and inductor with freezing."""

import copy
import io
import warnings
from collections.abc import Callable
from typing import Optional

import torch
from torch import Tensor, nn

from .checks import relative_error, tolerance
from .fused import _ACTS, FusedBlueprintConv2d, FusedConv2d, FusedLinear, FusedSeparableConv2d


def _separable_only(fused: nn.Module) -> Optional[nn.Module]:
    """A copy of ``fused`` whose fused stem convs and linear layers are the original layers again
    (their fused activation after them), or None if it has none of them or no fused separable
    layer. In a TorchScript graph oneDNN runs those layers with its own fusions and layouts, and
    a kernel call among them can cost more than it saves: the digits CNN's fused stem made its
    frozen graph 3.8 ms against 3.1 ms at batch 64 (one thread)."""
    kinds = {type(m) for m in fused.modules()}
    if not kinds & {FusedConv2d, FusedLinear} or not kinds & {FusedSeparableConv2d, FusedBlueprintConv2d}:
        return None
    model = copy.deepcopy(fused)
    acts = {code: cls for cls, code in _ACTS.items()}
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (FusedConv2d, FusedLinear)):
                act = acts[child.act_out]
                parent._modules[name] = child.reference if act is nn.Identity else nn.Sequential(child.reference, act())
    return model


def _trace(base: nn.Module, x: Tensor) -> tuple:
    """The traced, frozen, oneDNN-optimized graph of ``base`` on ``x``, and the frozen graph as
    torch.jit's archive (the optimized graph's oneDNN constants cannot be saved; the frozen one
    can, and is optimized again when loaded)."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # shape checks become constants: guarded by InferenceModule
        traced = torch.jit.trace(copy.deepcopy(base), x, check_trace=False)
        # frozen as loaded from an archive, in a compilation unit of its own: frozen from the traced
        # module (whose types live in torch.jit's global unit) its weights stayed in memory for the
        # rest of the process (+47 MB per ResNet-18 optimized; a time-budget conversion optimizes a
        # model up to ~15 times: 3-8 GB)
        buffer = io.BytesIO()
        torch.jit.save(traced, buffer)
        buffer.seek(0)
        frozen = torch.jit.freeze(torch.jit.load(buffer).eval())
        archive = io.BytesIO()
        torch.jit.save(frozen, archive)
        return torch.jit.optimize_for_inference(frozen), archive.getvalue()


def _faster_graph(module: nn.Module, archive: bytes, fused: nn.Module, x: Tensor, rounds: int,
                  timer: Callable[..., dict]) -> tuple:
    """``(module, archive)``, or the graph of ``fused`` with only its separable layers fused
    (:func:`_separable_only`) if that one runs faster on ``x`` (``timer``: the dispatch's
    interleaved medians) and matches it."""
    plain = _separable_only(fused)
    if plain is None:
        return module, archive
    other, other_archive = _trace(plain, x)
    with torch.inference_mode():
        if relative_error(other(x), module(x)) > tolerance(x.dtype):
            return module, archive
    t = timer({"all": lambda: module(x), "separable": lambda: other(x)}, rounds, warmup=2)
    return (other, other_archive) if t["separable"] < t["all"] else (module, archive)


def _compile(folded: nn.Module, x: Tensor) -> nn.Module:
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        compiled = torch.compile(copy.deepcopy(folded))
        with torch.inference_mode():
            compiled(x)  # compile now, with freezing, not on the user's first call
    return compiled
