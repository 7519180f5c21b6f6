"""Inference preparation: fold BatchNorm, choose the memory format and the execution path.

``optimize_for_inference(model, example_input)`` returns a new, inference-only module:

1. **BatchNorm folding** — a BatchNorm directly after a conv (in an ``nn.Sequential``) and the
   norm between the factors of a sepconv layer are folded into the preceding conv's weight and
   bias (exact in eval mode), removing a full pass over the activations each.
2. **Lowering** — a sepconv layer whose child convs do their own padding becomes a plain
   ``nn.Sequential`` of them (no per-call input checks or identity modules).
3. **Memory format** — ``channels_last`` (NHWC): oneDNN's depthwise and 1x1 kernels are several
   times faster on it than on NCHW, and the 1x1 conv becomes a plain GEMM over pixels.
4. **Fused depthwise + pointwise kernel** (``csrc/fused_dwpw.cpp``, candidate ``'fused'``): per
   tile of output pixels, the depthwise result is computed into an L2-sized buffer and consumed
   at once by a register-blocked GEMM, so the intermediate tensor never goes to memory; BatchNorm
   (folded), ReLU/ReLU6 between and after the factors are fused. Chosen **per layer** by a
   measured dispatch on the layer's own input (interleaved medians): it replaces the PyTorch
   path only where it is faster. Its large outputs come from a small caching allocator (see
   :func:`release_buffers`). The same dispatch tries the kernel's GEMM for a dense conv with few
   inputs per output (:class:`FusedConv2d`: a network's stem on RGB input, patches read in place,
   ReLU fused) and for linear layers (:class:`FusedLinear`: weights packed once; the BLAS path
   repacks them on every call).
5. **Execution path**, chosen once by a measured dispatch on ``example_input`` (medians of
   interleaved runs): eager PyTorch on channels_last, eager with fused layers, a traced, frozen
   TorchScript graph run through ``torch.jit.optimize_for_inference`` (oneDNN with conv + ReLU
   fused and weights prepacked), or (opt-in) inductor with freezing. The chosen path must match
   the reference output (relative error <= 1e-4 in float32) or the next best is used; eager
   channels_last always works and is the fallback, also when the kernel cannot be compiled.
"""

import copy
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from . import _fused
from ._timing import interleaved
from .convert import fold_batchnorm
from .layers import _foldable_bn as _foldable
from .layers import _SeparableConvNd

__all__ = ["fold_batchnorms", "optimize_for_inference", "InferenceModule", "release_buffers"]

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
CANDIDATES = ("eager", "fused", "torchscript", "compile")
BACKENDS = ("eager", "fused", "torchscript", "fused+torchscript", "compile")  # what InferenceModule.backend can be
# Paths within 10% of the fastest count as tied, and a tie goes to a path with fused layers. The
# other paths allocate their activations through glibc and, at batch 8, lose 1.3-1.5x when other
# work runs between calls (page faults: eager MobileNetV1 batch 8 ran 184-193 ms, 136-137 with huge
# pages; a TorchScript pick ran 1.5x behind ONNX Runtime in the benchmark), which the dispatch's
# clean timing loop does not see; with a 5% margin a noisy 5-round dispatch picked TorchScript.
TIE = 1.10
_ACTS = {nn.Identity: 0, nn.ReLU: 1, nn.ReLU6: 2}


def _pack_panels(weight: Tensor, bias: Optional[Tensor]) -> tuple:
    """A (N, K) weight as the GEMM's panels (ceil(N / 16), K, 16), zero-padded, and the bias
    padded to ceil(N / 16) * 16 (empty without one)."""
    n, k = weight.shape
    blocks = (n + 15) // 16
    packed = torch.zeros(blocks * 16, k)
    packed[:n] = weight.detach().float()
    padded = torch.zeros(blocks * 16 if bias is not None else 0)
    if bias is not None:
        padded[:n] = bias.detach().float()
    return packed.reshape(blocks, 16, k).transpose(1, 2).contiguous(), padded


def _needs_reference(x: Tensor) -> bool:
    """Whether a fused layer must run its PyTorch reference on ``x``: another dtype, gradients
    wanted, or no compiled kernels here (``_fused.load()`` builds them and registers their ops
    once, then is a cached lookup)."""
    return x.dtype != torch.float32 or (x.requires_grad and torch.is_grad_enabled()) or _fused.load() is None


def _min_input(channels: int, extent: tuple, pads: tuple) -> tuple:
    """``(channels, H, W)``: the least input a fused conv's kernel runs on (a padded image holding the
    kernel's extent ``(h, w)`` at least once; ``pads`` top, bottom, left, right). See :func:`_fits`."""
    return channels, max(1, extent[0] - pads[0] - pads[1]), max(1, extent[1] - pads[2] - pads[3])


def _fits(x: Tensor, least: tuple) -> bool:
    """Whether the 4-D ``x`` has a non-empty batch, the channels and at least the size ``least``
    (:func:`_min_input`) of a fused conv's kernel. Any other input runs the reference layer, which
    raises the original model's error for it (the kernel itself refuses it too, in its own words).
    True while tracing: a traced graph keeps the kernel call, whose own checks then guard it (and
    comparing traced sizes would only warn)."""
    if torch.jit.is_tracing():
        return True
    return x.shape[1] == least[0] and x.shape[2] >= least[1] and x.shape[3] >= least[2] and x.shape[0] > 0


def _activation(y: Tensor, code: int) -> Tensor:
    return torch.relu(y) if code == 1 else (y.clamp(0, 6) if code == 2 else y)


class FusedSeparableConv2d(nn.Module):
    """Inference-only depthwise + pointwise in one pass (``csrc/fused_dwpw.cpp``), float32 NHWC.

    Built by :func:`optimize_for_inference` from a BatchNorm-folded :class:`~sepconv.SeparableConv2d`
    (any depth multiplier; and the ReLU/ReLU6 after it, fused). Any other input (another dtype,
    gradients), or a machine where the kernel cannot be compiled, runs the original layer, kept as
    ``reference``. The kernel is the dispatcher op ``torch.ops.sepconv.fused_dwpw``, so tracing,
    freezing and the profiler see it.
    """

    def __init__(self, layer: nn.Module, act_out: int) -> None:
        super().__init__()
        dw, pw = layer.depthwise, layer.pointwise
        c, n, m = layer.in_channels, layer.out_channels, layer.depth_multiplier
        kh, kw = layer.kernel_size
        self.reference = layer
        self.act_mid = _ACTS[type(layer.act)]
        self.act_out = act_out
        self.n = n
        self.geometry = (kh, kw, *layer.stride, layer._fpad[2], layer._fpad[3], layer._fpad[0], layer._fpad[1])
        self.least = _min_input(c, (kh, kw), self.geometry[4:])
        # PyTorch's depthwise output channel c * m + j filters input channel c; the kernel keeps
        # the intermediate in the order j * C + c (so 8 adjacent channels read 8 adjacent inputs),
        # the pointwise weights' columns permuted to match
        packed, bias = _pack_panels(pw.weight.reshape(n, c, m).transpose(1, 2).reshape(n, m * c), pw.bias)
        taps = dw.weight.detach().float().reshape(c, m, kh * kw)
        self.register_buffer("dw_weight", taps.permute(1, 2, 0).contiguous())  # (m, kh * kw, c)
        self.register_buffer("dw_bias", dw.bias.detach().float().reshape(c, m).t().reshape(-1).contiguous()
                             if dw.bias is not None else torch.zeros(0))
        self.register_buffer("pw_weight", packed)
        self.register_buffer("pw_bias", bias)
        # a tile's depthwise result, its input rows (prefetched during the previous tile's GEMM)
        # and the weights share L2; >= 48 pixels, as each tile streams all the pointwise weights
        self.tile_bytes = max(96 * 1024, 48 * 4 * c * m)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or not _fits(x, self.least) or _needs_reference(x):
            return _activation(self.reference(x), self.act_out)
        # buffers straight from _buffers: nn.Module.__getattr__ cost ~1.5 us each, a quarter of a
        # small layer's whole call at batch 1
        b = self._buffers
        return torch.ops.sepconv.fused_dwpw(x, b["dw_weight"], b["dw_bias"], self.act_mid, b["pw_weight"], b["pw_bias"],
                                            self.n, self.act_out, *self.geometry, self.tile_bytes)


class FusedConv2d(nn.Module):
    """Inference-only dense 2-D convolution with few inputs per output (``csrc/dense.cpp``).

    Built by :func:`optimize_for_inference` from an ``nn.Conv2d`` with ``groups=1``, zero padding
    and ``in_channels x kh x kw <= 64`` (a network's stem on RGB input), and the ReLU/ReLU6 after
    it (fused): an implicit GEMM of the input patches (read in place, gathered only near the
    border) with the prepacked weights on the fused kernel's GEMM. Float32 NHWC. Any other input
    runs the original conv (``reference``).
    """

    def __init__(self, conv: nn.Conv2d, act_out: int) -> None:
        super().__init__()
        n, c, kh, kw = conv.weight.shape
        self.reference = conv
        self.act_out = act_out
        self.n = n
        left, right, top, bottom = conv._reversed_padding_repeated_twice
        self.geometry = (kh, kw, *conv.stride, *conv.dilation, top, bottom, left, right)
        dh, dw = conv.dilation
        self.least = _min_input(c, (dh * (kh - 1) + 1, dw * (kw - 1) + 1), (top, bottom, left, right))
        weight, bias = _pack_panels(conv.weight.permute(0, 2, 3, 1).reshape(n, kh * kw * c), conv.bias)
        self.register_buffer("weight", weight)  # rows in (kh, kw, in_channels) order, as gathered
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or not _fits(x, self.least) or _needs_reference(x):
            return _activation(self.reference(x), self.act_out)
        b = self._buffers
        return torch.ops.sepconv.conv2d_gemm(x, b["weight"], b["bias"], self.n, self.act_out, *self.geometry)


class FusedLinear(nn.Module):
    """Inference-only linear layer on the fused kernel's GEMM with prepacked weights (``csrc/dense.cpp``).

    Built by :func:`optimize_for_inference` from an ``nn.Linear`` (and the ReLU/ReLU6 after it,
    fused). The BLAS path repacks the weight matrix on every call; this one packs it once. Input
    ``(*, in_features)`` float32; any other input runs the original layer (``reference``).
    """

    def __init__(self, linear: nn.Linear, act_out: int) -> None:
        super().__init__()
        self.reference = linear
        self.act_out = act_out
        self.n = linear.out_features
        self.k = linear.in_features
        weight, bias = _pack_panels(linear.weight, linear.bias)
        self.register_buffer("weight", weight)
        self.register_buffer("bias", bias)

    def forward(self, x: Tensor) -> Tensor:
        # another feature count: the reference raises the layer's error (while tracing, the kernel's check guards)
        if x.dim() == 0 or (not torch.jit.is_tracing() and x.shape[-1] != self.k) or _needs_reference(x):
            return _activation(self.reference(x), self.act_out)
        b = self._buffers
        y = torch.ops.sepconv.linear_gemm(x.reshape(-1, x.shape[-1]), b["weight"], b["bias"], self.n, self.act_out)
        return y.reshape(*x.shape[:-1], self.n)


def release_buffers() -> None:
    """Free the idle output buffers of the fused kernel.

    Outputs of 1 MiB and more of fused layers come from a small caching allocator (at most 16 idle
    blocks): reusing memory that nothing references any more avoids a page fault per 4 KiB page on
    every call. Memory a tensor still uses is never reused; this frees the idle blocks.

    Example:
        >>> release_buffers()
    """
    from . import _fused

    ext = _fused.loaded()  # nothing to free if the kernels were never loaded
    if ext is not None:
        ext.release_buffers()


# dense convs with at most this many inputs per output (in_channels x kh x kw) are candidates for
# FusedConv2d: stems on RGB input, where oneDNN's direct conv runs at about half the FMA peak here
STEM_MAX_K = 64


def _fused_class(m: nn.Module) -> Optional[type]:
    """The fused module class that can replace ``m``, or None."""
    from .layers import SeparableConv2d

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


def _fold_into(conv: nn.Module, bn: nn.Module) -> nn.Module:
    """A copy of ``conv`` computing ``bn(conv(x))`` in eval mode."""
    weight, bias = fold_batchnorm(conv, bn)
    new = copy.deepcopy(conv)
    new.weight = nn.Parameter(weight.clone())
    new.bias = nn.Parameter(bias.clone())
    return new


def fold_batchnorms(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (eval mode) with every foldable BatchNorm folded into its conv.

    Folds a BatchNorm that directly follows a conv or a sepconv layer in an ``nn.Sequential``
    (into the conv, or the layer's output factor), and the ``norm`` between the depthwise and
    pointwise factors of :class:`~sepconv.SeparableConv2d` (into the depthwise conv). Outputs are
    unchanged in eval mode.

    Example:
        >>> m = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU()).eval()
        >>> type(fold_batchnorms(m)[1]).__name__
        'Identity'
    """
    model = copy.deepcopy(model).eval()
    for module in list(model.modules()):
        if isinstance(module, _SeparableConvNd) and _foldable(module.norm, module.depthwise.out_channels):
            module.depthwise = _fold_into(module.depthwise, module.norm)
            module.norm = nn.Identity()
        if isinstance(module, nn.Sequential):
            names = list(module._modules)
            for a, b in zip(names, names[1:]):
                conv, bn = module._modules[a], module._modules[b]
                if isinstance(conv, _CONVS) and _foldable(bn, conv.out_channels):
                    module._modules[a] = _fold_into(conv, bn)
                    module._modules[b] = nn.Identity()
                elif hasattr(conv, "_output_factor") and _foldable(bn, conv.out_channels):
                    attr = conv._output_factor
                    setattr(conv, attr, _fold_into(getattr(conv, attr), bn))
                    module._modules[b] = nn.Identity()
    return model


def _lower(model: nn.Module) -> nn.Module:
    """Replace sepconv layers whose padding their child convs do themselves by a plain
    ``nn.Sequential`` of those children (identities dropped): the same ops without the layer's
    input checks and extra module calls, which matter at batch 1. Modifies ``model``."""
    from .layers import SpatiallySeparableConv2d, _BlueprintSeparableConvNd

    def lowered(m: nn.Module) -> Optional[nn.Module]:
        if getattr(m, "_explicit", True):
            return None
        if isinstance(m, _SeparableConvNd):
            parts = [m.depthwise, m.norm, m.act, m.pointwise]
        elif isinstance(m, _BlueprintSeparableConvNd):
            parts = [m.pointwise, m.norm, m.act, m.depthwise]
        elif isinstance(m, SpatiallySeparableConv2d):
            parts = [m.vertical, m.horizontal]
        else:
            return None
        return nn.Sequential(*[p for p in parts if not isinstance(p, nn.Identity)])

    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            new = lowered(child)
            if new is not None:
                setattr(parent, name, new)
    model = lowered(model) or model
    _inplace_activations(model)
    return model


def _inplace_activations(model: nn.Module) -> None:
    """Make a ReLU / ReLU6 that directly follows a conv (identities skipped) in an
    ``nn.Sequential`` work in place: the conv's output is a fresh tensor nobody else sees, so
    this saves an allocation and a pass over memory. Modifies ``model``."""
    producers = (*_CONVS, nn.Linear, FusedSeparableConv2d, FusedConv2d, FusedLinear)

    def produces(m: Optional[nn.Module]) -> bool:  # a fresh output: a producer, or a Sequential ending in one
        if isinstance(m, nn.Sequential):
            rest = [c for c in m if not isinstance(c, nn.Identity)]
            return bool(rest) and produces(rest[-1])
        return isinstance(m, producers)

    for parent in model.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        previous = None
        for name, child in parent.named_children():
            if isinstance(child, nn.Identity):
                continue
            if type(child) in (nn.ReLU, nn.ReLU6) and produces(previous) and not child.inplace:
                setattr(parent, name, type(child)(inplace=True))
            previous = child


class InferenceModule(nn.Module):
    """The result of :func:`optimize_for_inference`: inference-only, input made channels_last.

    Attributes:
        backend: ``'eager'``, ``'fused'``, ``'torchscript'``, ``'fused+torchscript'`` or
            ``'compile'``, the path chosen.
        timings: median ms per candidate measured on the example input (empty without one).
    """

    def __init__(self, module: nn.Module, backend: str, channels_last: bool, timings: dict,
                 eager: Optional[nn.Module] = None, shape: Optional[tuple] = None) -> None:
        super().__init__()
        self.module = module
        self.backend = backend
        self.channels_last = channels_last
        self.timings = timings
        # a traced graph has the example's sizes baked in (e.g. TF 'same' pads): other sizes run eager
        self.eager = eager
        self.shape = shape
        # With no parameter requiring gradients (and inputs that do refused), no autograd graph is
        # recorded, so the call needs no inference-mode context (~5 us, a few % of a small layer);
        # a compiled module keeps one: it was compiled in it, and its guards check the mode.
        self._context = backend == "compile"
        if not self._context:
            for p in self.parameters():
                p.requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(
                "optimize_for_inference returned an inference-only model (BatchNorm folded, frozen graph); "
                "train the original model and optimize it again, or call it under torch.no_grad()"
            )
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        modules = self._modules  # not nn.Module.__getattr__: ~1 us per submodule lookup
        eager = modules.get("eager")
        module = eager if eager is not None and tuple(x.shape[1:]) != self.shape else modules["module"]
        if not self._context or torch.is_inference_mode_enabled():
            return module(x)
        with torch.inference_mode():
            return module(x)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, channels_last={self.channels_last}"


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
