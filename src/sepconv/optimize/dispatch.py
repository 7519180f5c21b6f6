"""The candidate execution paths, their correctness checks and the measured choice between them."""

import copy
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from .. import _fused
from .._timing import interleaved
from .fused import _ACTS, FusedConv2d, FusedLinear, FusedSeparableConv2d
from .module import InferenceModule
from .rewrite import _lower, fold_batchnorms

CANDIDATES = ("eager", "fused", "torchscript", "compile")
BACKENDS = ("eager", "fused", "torchscript", "fused+torchscript", "compile")  # what InferenceModule.backend can be
# Paths within 10% of the fastest count as tied, and a tie goes to a path with fused layers. The
# other paths allocate their activations through glibc and, at batch 8, lose 1.3-1.5x when other
# work runs between calls (page faults: eager MobileNetV1 batch 8 ran 184-193 ms, 136-137 with huge
# pages; a TorchScript pick ran 1.5x behind ONNX Runtime in the benchmark), which the dispatch's
# clean timing loop does not see; with a 5% margin a noisy 5-round dispatch picked TorchScript.
TIE = 1.10


# dense convs with at most this many inputs per output (in_channels x kh x kw) are candidates for
# FusedConv2d: stems on RGB input, where oneDNN's direct conv runs at about half the FMA peak here
STEM_MAX_K = 64


def _fused_class(m: nn.Module) -> Optional[type]:
    """The fused module class that can replace ``m``, or None."""
    from ..layers import SeparableConv2d

    if (isinstance(m, SeparableConv2d) and m.padding_mode == "zeros"
            and not m._dynamic and all(d == 1 for d in m.dilation) and isinstance(m.norm, nn.Identity)
            and type(m.act) in _ACTS and m.depthwise.weight.dtype == torch.float32):
        return FusedSeparableConv2d
    if (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros" and m.weight.dtype == torch.float32
            and 0 < m.weight.numel() and m.weight[0].numel() <= STEM_MAX_K):
        return FusedConv2d
    if type(m) is nn.Linear and m.weight.dtype == torch.float32 and m.weight.numel() > 0:
        return FusedLinear
    return None


def _fuse(folded: nn.Module, x: Tensor, rounds: int):
    """Replace each separable layer, stem conv and linear layer (and a ReLU / ReLU6 after it in an
    ``nn.Sequential``) by its fused kernel where that measures faster on the layer's own input;
    None if the kernels are unavailable or never win."""
    if _fused.load() is None:
        return None
    model = copy.deepcopy(folded)
    single = _fused_class(model) is not None
    if single:  # the model is a single layer: a parent to replace it in
        model = nn.Sequential(model)
    sites = []  # (parent, name of the layer, name of a fused activation or None)

    def find(parent: nn.Module) -> None:  # not inside a site: a fused layer replaces its children too
        keys = list(parent._modules)
        for i, k in enumerate(keys):
            child = parent._modules[k]
            if child is None:
                continue
            if _fused_class(child) is None:
                find(child)
                continue
            act = None
            if isinstance(parent, nn.Sequential):  # an activation applied right after the layer
                nxt = next((j for j in range(i + 1, len(keys)) if not isinstance(parent._modules[keys[j]], nn.Identity)), None)
                if nxt is not None and type(parent._modules[keys[nxt]]) in (nn.ReLU, nn.ReLU6):
                    act = keys[nxt]
            sites.append((parent, k, act))

    find(model)
    if not sites:
        return None
    inputs = {}
    hooks = [p._modules[k].register_forward_pre_hook(lambda m, a, key=(id(p), k): inputs.__setitem__(key, a[0]))
             for p, k, _ in sites]
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    used = 0
    for parent, k, act_key in sites:
        if (id(parent), k) not in inputs:  # not run by the model's forward
            continue
        layer = parent._modules[k]
        act = parent._modules[act_key] if act_key else nn.Identity()
        fused = _fused_class(layer)(layer, _ACTS[type(act)])
        inp = inputs[(id(parent), k)]
        with torch.inference_mode():
            ref = act(layer(inp))
            if _rel(fused(inp), ref) > 1e-4:
                continue
        t = interleaved({"eager": lambda: act(layer(inp)), "fused": lambda: fused(inp)}, rounds, warmup=1)
        if t["fused"] < t["eager"]:
            parent._modules[k] = fused
            if act_key:
                parent._modules[act_key] = nn.Identity()
            used += 1
    if not used:
        return None
    return model[0] if single else model  # without the wrapper's call (~2 us)


def _rel(a: Tensor, b: Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30))


def optimize_for_inference(model: nn.Module, example_input: Optional[Tensor] = None, rounds: int = 10,
                           candidates: tuple = ("eager", "fused", "torchscript")) -> InferenceModule:
    """Prepare ``model`` for fast CPU inference; the original is not modified.

    Args:
        model: any module built from convs, sepconv layers, BatchNorm and activations.
        example_input: a representative batch. With it, every candidate path is traced, checked
            against the unoptimized model (relative error <= 1e-4) and timed (interleaved
            medians of ``rounds`` runs) and the fastest correct one is kept (within 10% of the
            fastest, a path with fused layers is preferred: its pooled outputs make it insensitive
            to the allocator's state). Without it, the eager channels_last path is used.
        rounds: timing rounds for the dispatch.
        candidates: paths to consider, a subset of ``('eager', 'fused', 'torchscript', 'compile')``.
            ``'fused'`` replaces each depthwise separable layer by the fused kernel where that
            measures faster on the layer's own input (a per-layer dispatch); the kernel is
            compiled on first use (~1 min, cached). ``'torchscript'`` also tries the frozen graph
            of the model with fused layers when ``'fused'`` is a candidate (backend
            ``'fused+torchscript'``). ``'compile'`` (inductor with freezing) costs seconds to
            minutes of compilation.

    Returns:
        :class:`InferenceModule` (inference-only: gradients raise a clear error).

    Example:
        >>> from sepconv.models import mobilenet_v1
        >>> fast = optimize_for_inference(mobilenet_v1(0.25), torch.randn(1, 3, 64, 64), rounds=2)
        >>> fast.backend in BACKENDS
        True
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected an nn.Module, got {type(model).__name__}")
    bad = [c for c in candidates if c not in CANDIDATES]
    if bad or not candidates:
        raise ValueError(f"candidates: expected a non-empty subset of {CANDIDATES}, got {candidates!r}")
    if example_input is not None and not isinstance(example_input, Tensor):
        raise TypeError(f"example_input: expected a torch.Tensor, got {type(example_input).__name__}")
    folded = fold_batchnorms(model)
    four_d = example_input is None or example_input.dim() == 4
    if four_d:
        folded = folded.to(memory_format=torch.channels_last)
    if example_input is None:
        return InferenceModule(_lower(folded), "eager", four_d, {})

    x = example_input.contiguous(memory_format=torch.channels_last) if four_d else example_input
    reference_model = copy.deepcopy(model).eval()
    with torch.inference_mode():
        reference = reference_model(example_input)
    paths = {}
    if "eager" in candidates:
        paths["eager"] = _lower(copy.deepcopy(folded))
    fused = None
    if "fused" in candidates and four_d and x.dtype == torch.float32:
        fused = _fuse(folded, x, rounds)
        if fused is not None:
            fused = _lower(fused)
            paths["fused"] = fused
    if "torchscript" in candidates:
        # the frozen graph of the plain model, and of the one with fused layers (the kernel is a
        # dispatcher op, so it stays a call in the graph while oneDNN fuses the convs around it)
        bases = [("torchscript", folded)] + ([("fused+torchscript", fused)] if "fused" in paths else [])
        for name, base in bases:
            try:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # shape checks become constants: guarded by InferenceModule
                    traced = torch.jit.trace(copy.deepcopy(base), x, check_trace=False)
                    paths[name] = torch.jit.optimize_for_inference(torch.jit.freeze(traced.eval()))
            except Exception:  # a graph TorchScript cannot trace: the other paths remain
                pass
    if "compile" in candidates:
        try:
            import torch._inductor.config as inductor_config

            with inductor_config.patch(freezing=True):
                compiled = torch.compile(copy.deepcopy(folded))
                with torch.inference_mode():
                    compiled(x)  # compile now, with freezing, not on the user's first call
            paths["compile"] = compiled
        except Exception:  # no compiler or an unsupported graph: the other paths remain
            pass
    correct = {}
    for name, m in paths.items():
        with torch.inference_mode():
            out = m(x)
        if _rel(out, reference) <= 1e-4:
            correct[name] = m
    if not correct:
        return InferenceModule(folded, "eager", four_d, {})  # unlowered: checks stay in place
    timings = interleaved({k: (lambda m=m: m(x)) for k, m in correct.items()}, rounds, warmup=1) if len(correct) > 1 else {}
    best = min(correct, key=lambda k: timings.get(k, 0.0))
    # near-ties (see TIE) go to a path with fused layers: its pooled outputs keep its speed when
    # the process's allocator state changes
    tied = [k for k in ("fused", "fused+torchscript") if k in timings and timings[k] <= TIE * timings[best]]
    if tied:
        best = min(tied, key=lambda k: timings[k])
    if best in ("eager", "fused"):  # no baked-in sizes: any input size runs this path
        return InferenceModule(correct[best], best, four_d, timings)
    return InferenceModule(correct[best], best, four_d, timings, eager=_lower(folded), shape=tuple(x.shape[1:]))
