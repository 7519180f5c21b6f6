"""The candidate execution paths, their correctness checks and the measured choice between them."""

import copy
import math
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from .. import _fused
from .._timing import interleaved
from .checks import check_arguments, reason, relative_error, tolerance
from .densify import densify
from .fused import _ACTS, FusedBlueprintConv2d, FusedConv2d, FusedLinear, FusedSeparableConv2d
from .graphs import _compile, _faster_graph, _trace
from .module import InferenceModule
from .rewrite import _fold, _lower

BACKENDS = ("eager", "fused", "torchscript", "fused+torchscript", "compile")  # what InferenceModule.backend can be
# Paths within 10% of the fastest count as tied, and a tie goes to a path with fused layers. The
# other paths allocate their activations through glibc and, at batch 8, lose 1.3-1.5x when other
# work runs between calls (page faults: eager MobileNetV1 batch 8 ran 184-193 ms, 136-137 with huge
# pages; a TorchScript pick ran 1.5x behind ONNX Runtime in the benchmark), which the dispatch's
# clean timing loop does not see; with a 5% margin a noisy 5-round dispatch picked TorchScript.
TIE = 1.10
# Paths within CLOSE of the fastest are timed again, together, for about SETTLE_MS (at most
# SETTLE_MAX x ``rounds`` rounds) when the first timing was shorter. Ten rounds of a 20 ms model
# are a draw: ResNet-18 optimized four times at batch 1 timed TorchScript at 17.9-24.2 ms and took
# it once, where the four results side by side ran 20.3-22.3 ms; a conversion measured against
# one draw of the original and compared against another missed its time budget by that much.
CLOSE, SETTLE_MS, SETTLE_MAX = 1.25, 2000.0, 20


# dense convs with at most this many inputs per output (in_channels x kh x kw) are candidates for
# FusedConv2d: stems on RGB input, where oneDNN's direct conv runs at about half the FMA peak here
STEM_MAX_K = 64


def _fused_class(m: nn.Module) -> Optional[type]:
    """The fused module class that can replace ``m``, or None."""
    from ..layers import BlueprintSeparableConv2d, SeparableConv2d
    from ..layers._base import _foldable_bn

    if (isinstance(m, SeparableConv2d) and m.padding_mode == "zeros"
            and not m._dynamic and all(d == 1 for d in m.dilation) and isinstance(m.norm, nn.Identity)
            and type(m.act) in _ACTS and m.depthwise.weight.dtype == torch.float32):
        return FusedSeparableConv2d
    if (isinstance(m, BlueprintSeparableConv2d) and m.padding_mode == "zeros" and not m._dynamic
            and all(d == 1 for d in m.dilation)
            and (isinstance(m.norm, nn.Identity) or _foldable_bn(m.norm, m.out_channels * m.rank))
            and type(m.act) in _ACTS and m.depthwise.weight.dtype == torch.float32):
        return FusedBlueprintConv2d
    if (type(m) is nn.Conv2d and m.groups == 1 and m.padding_mode == "zeros" and m.weight.dtype == torch.float32
            and 0 < m.weight.numel() and m.weight[0].numel() <= STEM_MAX_K):
        return FusedConv2d
    if type(m) is nn.Linear and m.weight.dtype == torch.float32 and m.weight.numel() > 0:
        return FusedLinear
    return None


def _fuse(folded: nn.Module, x: Tensor, rounds: Optional[int]):
    """Replace each separable layer, stem conv and linear layer (and a ReLU / ReLU6 after it in an
    ``nn.Sequential``) by its fused kernel where that measures faster on the layer's own input
    (``rounds`` interleaved rounds; with ``rounds=None`` wherever the kernel reproduces the layer,
    untimed); None if the kernels are unavailable or never win."""
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
        try:  # a layer the kernel cannot take, or gets wrong, stays on PyTorch
            with torch.inference_mode():
                if relative_error(fused(inp), act(layer(inp))) > 1e-4:
                    continue
            faster = rounds is None or _faster(fused, lambda: act(layer(inp)), inp, rounds)
        except Exception:
            continue
        if faster:
            parent._modules[k] = fused
            if act_key:
                parent._modules[act_key] = nn.Identity()
            used += 1
    if not used:
        return None
    return model[0] if single else model  # without the wrapper's call (~2 us)


def _faster(fused: nn.Module, eager, inp: Tensor, rounds: int) -> bool:
    t = interleaved({"eager": eager, "fused": lambda: fused(inp)}, rounds, warmup=1)
    return t["fused"] < t["eager"]


class _Rejected(Exception):
    """A candidate path that is not built, with the reason (recorded in ``rejected``)."""


def _build(folded: nn.Module, x: Tensor, four_d: bool, rounds: int, candidates: tuple,
           rejected: dict, archives: dict) -> dict:
    """The candidate paths that could be built, by name; why the others could not, in ``rejected``."""
    paths = {}

    def attempt(name: str, build) -> None:
        try:
            paths[name] = build()
        except _Rejected as exc:
            rejected[name] = str(exc)
        except Exception as exc:  # a graph a backend cannot take: the other paths remain
            rejected[name] = f"could not be built: {reason(exc)}"

    if "eager" in candidates:
        attempt("eager", lambda: _lower(copy.deepcopy(folded)))
    if "fused" in candidates:
        attempt("fused", lambda: _fused_path(folded, x, four_d, rounds))
    if "torchscript" in candidates:
        # the frozen graph of the plain model, and of the one with fused layers (the kernel is a
        # dispatcher op, so it stays a call in the graph while oneDNN fuses the convs around it)
        for name, base in [("torchscript", folded)] + ([("fused+torchscript", paths["fused"])] if "fused" in paths else []):
            def traced(base=base, name=name):
                module, archives[name] = _trace(base, x)
                if name == "fused+torchscript":
                    module, archives[name] = _faster_graph(module, archives[name], base, x, rounds, interleaved)
                return module
            attempt(name, traced)
    if "compile" in candidates:
        attempt("compile", lambda: _compile(folded, x))
    return paths


def _fused_path(folded: nn.Module, x: Tensor, four_d: bool, rounds: int) -> nn.Module:
    if not four_d or x.dtype != torch.float32:
        raise _Rejected(f"needs a 4-D float32 example input, got {x.dim()}-D {str(x.dtype).replace('torch.', '')}")
    if _fused.load() is None:
        raise _Rejected("the fused kernels are not available here" + (f": {_fused.error()}" if _fused.error() else ""))
    fused = _fuse(folded, x, rounds)
    if fused is None:
        raise _Rejected("no layer ran faster on the fused kernels")
    return _lower(fused)


def _check(paths: dict, x: Tensor, reference: Tensor, rejected: dict) -> dict:
    """The paths whose output on ``x`` matches ``reference`` (relative error at most
    :func:`~sepconv.optimize.checks.tolerance` of its dtype: 1e-4 in float32) on three calls
    (TorchScript's executor optimizes the graph again after its first calls)."""
    correct = {}
    for name, m in paths.items():
        try:
            with torch.inference_mode():
                for _ in range(3):
                    out = m(x)
        except Exception as exc:
            rejected[name] = f"failed on the example input: {reason(exc)}"
            continue
        error, limit = relative_error(out, reference), tolerance(reference.dtype)
        if error <= limit:
            correct[name] = m
        else:
            rejected[name] = f"output differs from the original model's: relative error {error:.3g} > {limit:g}"
    return correct


def settle_rounds(timings: dict, rounds: int) -> int:
    """Rounds of the second timing of the paths within :data:`CLOSE` of the fastest in
    ``timings`` (ms): enough for about :data:`SETTLE_MS`, at most ``SETTLE_MAX * rounds``; 0 if
    fewer than two are that close or the first timing was already that long.

    Example:
        >>> settle_rounds({"eager": 20.0, "fused": 21.0, "torchscript": 40.0}, 10)  # 2000 ms / 41 ms
        49
        >>> settle_rounds({"eager": 20.0, "torchscript": 40.0}, 10)
        0
    """
    close = _close(timings)
    if len(close) < 2:
        return 0
    wanted = min(SETTLE_MAX * rounds, math.ceil(SETTLE_MS / max(sum(timings[k] for k in close), 1e-6)))
    return wanted if wanted > rounds else 0


def _close(timings: dict) -> list[str]:
    """The paths in ``timings`` (ms) within :data:`CLOSE` of the fastest (none if it is empty)."""
    fastest = min(timings.values(), default=0.0)
    return [k for k, t in timings.items() if t <= CLOSE * fastest]


def _measure(correct: dict, x: Tensor, rounds: int, rejected: dict) -> dict:
    """Median ms of each path that runs (interleaved, see :func:`interleaved`), the close ones
    timed again for longer (:func:`settle_rounds`); one that raises during the timing is moved
    to ``rejected``."""
    timings = _timed(correct, x, rounds, rejected)
    again = settle_rounds(timings, rounds)
    if again:
        names = _close(timings)
        close = {k: correct[k] for k in names}
        settled = _timed(close, x, again, rejected)
        for k in names:
            if k not in close:  # raised during the second timing
                del correct[k], timings[k]
        timings.update(settled)
    return timings


def _timed(correct: dict, x: Tensor, rounds: int, rejected: dict) -> dict:
    """One interleaved timing of ``correct``'s paths; a path that raises is removed from
    ``correct`` (and ``rejected`` says why) and the others are timed again."""
    while len(correct) > 1:
        failed = {}

        def guarded(name: str, m: nn.Module):
            def run():
                try:
                    return m(x)
                except Exception as exc:
                    failed[name] = exc
                    raise
            return run

        try:
            return interleaved({k: guarded(k, m) for k, m in correct.items()}, rounds, warmup=1)
        except Exception:
            if not failed:
                raise
            for name, exc in failed.items():
                rejected[name] = f"failed on the example input: {reason(exc)}"
                del correct[name]
    return {}


def optimize_for_inference(model: nn.Module, example_input: Optional[Tensor] = None, rounds: int = 10,
                           candidates: tuple = ("eager", "fused", "torchscript")) -> InferenceModule:
    """Prepare ``model`` for fast CPU inference; the original is not modified.

    Args:
        model: any module built from convs, sepconv layers, BatchNorm and activations, with
            finite parameters and normalization statistics.
        example_input: a representative batch (finite values). With it, every candidate path is
            built, checked against the unoptimized model (relative error <= 1e-4; in float16 or
            bfloat16, 4 x the dtype's epsilon; NaNs and
            infinities at the same places) and timed (interleaved medians of ``rounds`` runs;
            the paths within 25% of the fastest are timed again, together, for about 2 s or at
            most ``20 * rounds`` rounds) and the fastest correct one is kept (within 10% of the
            fastest, a path with fused layers is preferred: its pooled outputs make it
            insensitive to the allocator's state). A
            path that cannot be built, raises or differs is dropped and the reason recorded in
            the result's ``rejected``; if none is left, the original model is returned (with a
            ``RuntimeWarning``). Before that, each separable layer is timed on its own input as it
            is, on the fused kernel and as the dense conv it composes to, and runs as the dense
            conv where that is clearly faster (the result's ``densified`` names them; see
            :mod:`sepconv.optimize.densify`). Without an example, the eager channels_last path is used.
        rounds: timing rounds for the dispatch, a positive int.
        candidates: paths to consider, a subset of ``('eager', 'fused', 'torchscript', 'compile')``.
            ``'fused'`` replaces each depthwise separable layer by the fused kernel where that
            measures faster on the layer's own input (a per-layer dispatch); the kernel is
            compiled on first use (~1 min, cached). ``'torchscript'`` also tries the frozen graph
            of the model with fused layers when ``'fused'`` is a candidate (backend
            ``'fused+torchscript'``). ``'compile'`` (inductor with freezing) costs seconds to
            minutes of compilation.

    Returns:
        :class:`InferenceModule` (inference-only: gradients raise a clear error); ``backend``,
        ``timings`` and ``rejected`` report the dispatch. It can be saved with ``torch.save``.

    Raises:
        TypeError: ``model`` is not a module, ``candidates`` not a tuple of names, ``rounds`` not
            an int or ``example_input`` not a tensor.
        ValueError: unknown candidates, ``rounds`` < 1, an empty or non-finite
            ``example_input``, non-finite weights, or an example the model fails on.

    Example:
        >>> from sepconv.models import mobilenet_v1
        >>> fast = optimize_for_inference(mobilenet_v1(0.25).eval(), torch.randn(1, 3, 64, 64), rounds=2)
        >>> fast.backend in BACKENDS
        True
    """
    check_arguments(model, example_input, rounds, candidates)
    training = [name for name, m in model.named_modules() if m.training]
    if training:
        who = "the model" if training[0] == "" else f"submodule {training[0]!r}"
        more = f" (and {len(training) - 1} more modules)" if len(training) > 1 else ""
        warnings.warn(f"optimize_for_inference: {who}{more} is in training mode: the result computes what model.eval() "
                      "does (BatchNorm with its running statistics, Dropout off), not the training-mode outputs; call "
                      "model.eval() first", RuntimeWarning, stacklevel=2)
    folded, batchnorms = _fold(model)
    four_d = example_input is None or example_input.dim() == 4
    if four_d:
        folded = folded.to(memory_format=torch.channels_last)
    if example_input is None:
        return InferenceModule(_lower(folded), "eager", four_d, {}, batchnorms=batchnorms)

    x = example_input.contiguous(memory_format=torch.channels_last) if four_d else example_input
    reference_model = copy.deepcopy(model).eval()
    try:
        with torch.inference_mode():
            reference = reference_model(example_input)
    except Exception as exc:
        raise ValueError(f"example_input: the model fails on a tensor of shape {tuple(example_input.shape)} "
                         f"({reason(exc)})") from exc
    if not isinstance(reference, Tensor):
        raise TypeError(f"model: expected a module returning one tensor, got {type(reference).__name__}")
    folded, densified = densify(folded, x, rounds)  # separable layers that run faster as their dense conv
    rejected, archives = {}, {}
    correct = _check(_build(folded, x, four_d, rounds, candidates, rejected, archives), x, reference, rejected)
    timings = _measure(correct, x, rounds, rejected)
    if not correct:  # the original model itself, unchanged: it is the reference
        warnings.warn("optimize_for_inference: no candidate path reproduced the model's output; the returned "
                      f"module runs the original model (why, per path: {rejected})", RuntimeWarning, stacklevel=2)
        return InferenceModule(reference_model, "eager", False, {}, rejected=rejected,
                               batchnorms={name: "not folded: the original model runs" for name in batchnorms})
    best = min(correct, key=lambda k: timings.get(k, 0.0))
    # near-ties (see TIE) go to a path with fused layers: its pooled outputs keep its speed when
    # the process's allocator state changes
    tied = [k for k in ("fused", "fused+torchscript") if k in timings and timings[k] <= TIE * timings[best]]
    if tied:
        best = min(tied, key=lambda k: timings[k])
    if best in ("eager", "fused"):  # no baked-in sizes: any input size runs this path
        return InferenceModule(correct[best], best, four_d, timings, rejected=rejected, batchnorms=batchnorms,
                               densified=densified, input_dtype=x.dtype, input_shape=tuple(x.shape))
    return InferenceModule(correct[best], best, four_d, timings, eager=_lower(folded), shape=tuple(x.shape[1:]),
                           rejected=rejected, archive=archives.get(best), batchnorms=batchnorms, densified=densified,
                           nonfinite_to_eager=not _propagates_nan(correct[best], reference_model, x), input_dtype=x.dtype,
                           input_shape=tuple(x.shape))


def _propagates_nan(module: nn.Module, reference_model: nn.Module, x: Tensor) -> bool:
    """Whether ``module`` gives NaN where the original model does for an input with one NaN (at
    its centre). A frozen TorchScript graph may not: oneDNN's fused ReLU and max-pool turn NaN into
    numbers, so a corrupted input would give plausible outputs."""
    probe = x.clone()
    probe[tuple(s // 2 for s in probe.shape)] = float("nan")
    try:
        with torch.inference_mode():
            got, want = module(probe), reference_model(probe)
        return bool(torch.equal(torch.isnan(got), torch.isnan(want)))
    except Exception:  # noqa: BLE001 (a model that refuses NaN inputs: route them to the eager path)
        return False
