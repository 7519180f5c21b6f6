"""The module :func:`~sepconv.optimize.optimize_for_inference` returns."""

import io
import warnings
from typing import Optional

import torch
from torch import Tensor, nn

from .. import _fused


def _to_channels_last(x: Tensor) -> Tensor:
    """``x.contiguous(memory_format=torch.channels_last)``; an NCHW float32 image batch by the
    kernels' copy where they are loaded (``csrc/layout.cpp``: vectorized, into a reused buffer)."""
    if _fused.loaded() is not None and x.dtype == torch.float32 and x.device.type == "cpu":
        return torch.ops.sepconv.to_channels_last(x)
    return x.contiguous(memory_format=torch.channels_last)


class InferenceModule(nn.Module):
    """The result of :func:`optimize_for_inference`: inference-only, input made channels_last.

    It can be saved with ``torch.save`` (load it with ``torch.load(path, weights_only=False)``),
    pickled and deep-copied on every backend but ``'compile'``: a TorchScript graph is stored as
    torch.jit's own archive of the frozen graph and optimized again when loaded; a graph with
    fused layers needs the fused kernels where it is loaded (without them the eager path runs,
    with a warning).

    Attributes:
        backend: ``'eager'``, ``'fused'``, ``'torchscript'``, ``'fused+torchscript'`` or
            ``'compile'``, the path chosen.
        timings: median ms per candidate measured on the example input (empty without one, or
            with a single candidate left).
        rejected: why each candidate path that is not in ``timings`` was dropped (it could not
            be built, failed on the example input, or its output differed from the original
            model's), e.g. ``{'torchscript': 'failed on the example input: RuntimeError: ...'}``.
        batchnorms: each BatchNorm of the model (by qualified name) -> ``"folded into 'conv'"``
            or why it was left alone, e.g. ``{'layer1.0.bn1': "folded into 'layer1.0.conv1'"}``.
        densified: the separable layers (qualified names) that run as the dense conv they compose
            to, because that measured clearly faster on this machine (same outputs).
        nonfinite_to_eager: True where the chosen path (a frozen TorchScript graph) would turn NaN
            inputs into numbers: an input with NaN or Inf then runs the eager path, which gives
            NaN where the original model does (a check costing one sum over the input).
        input_dtype: the example input's dtype, the one the optimized weights and graph take (another
            raises a ``TypeError``; ``None``: not checked).
        input_shape: the example input's shape. An input with another number of dimensions (e.g. an
            unbatched image) runs where the model takes it; where it fails, a ``ValueError`` says
            what was expected (the original model's BatchNorms, which checked it, are folded away).
    """

    def __init__(self, module: nn.Module, backend: str, channels_last: bool, timings: dict,
                 eager: Optional[nn.Module] = None, shape: Optional[tuple] = None,
                 rejected: Optional[dict] = None, archive: Optional[bytes] = None,
                 batchnorms: Optional[dict] = None, densified: Optional[list] = None,
                 nonfinite_to_eager: bool = False, input_dtype: Optional[torch.dtype] = None,
                 input_shape: Optional[tuple] = None) -> None:
        super().__init__()
        self.module = module
        self.backend = backend
        self.channels_last = channels_last
        self.timings = timings
        self.rejected = dict(rejected or {})
        self.batchnorms = dict(batchnorms or {})
        self.densified = list(densified or [])
        self.nonfinite_to_eager = nonfinite_to_eager and eager is not None
        self.input_dtype = input_dtype
        self.input_shape = input_shape
        self._archive = archive  # the frozen TorchScript graph, saved by torch.jit (see __getstate__)
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
        if not isinstance(x, Tensor):
            raise TypeError(f"input: expected a torch.Tensor, got {type(x).__name__}")
        if self.input_dtype is not None and x.dtype != self.input_dtype:
            raise TypeError(f"input: expected dtype {self.input_dtype} (the example input's, which the model was optimized "
                            f"for), got {x.dtype}")
        if torch.is_grad_enabled() and x.requires_grad:
            raise RuntimeError(
                "optimize_for_inference returned an inference-only model (BatchNorm folded, frozen graph); "
                "train the original model and optimize it again, or call it under torch.no_grad()"
            )
        if self.channels_last and x.dim() == 4 and not x.is_contiguous(memory_format=torch.channels_last):
            x = _to_channels_last(x)  # (an unbatched input runs as the layers take it)
        modules = self._modules  # not nn.Module.__getattr__: ~1 us per submodule lookup
        eager = modules.get("eager")
        module = eager if eager is not None and tuple(x.shape[1:]) != self.shape else modules["module"]
        # (a sum is NaN or Inf if any element is, or if it overflows: then the eager path runs, as correct)
        if self.nonfinite_to_eager and module is not eager and not torch.isfinite(x.sum()):
            module = eager
        try:
            return self._run(module, x)
        except RuntimeError as exc:
            if self.input_shape is None or x.dim() == len(self.input_shape):
                raise
            raise ValueError(f"input: expected a {len(self.input_shape)}-D input like the example input (shape "
                             f"{tuple(self.input_shape)}), got shape {tuple(x.shape)}: the optimized model does not run it "
                             f"({exc})") from exc

    def _run(self, module: nn.Module, x: Tensor) -> Tensor:
        if not self._context or torch.is_inference_mode_enabled():
            return module(x)
        with torch.inference_mode():
            return module(x)

    def __getstate__(self) -> dict:
        """The state to pickle: a TorchScript graph as torch.jit's archive (a ScriptModule cannot
        be pickled, and its oneDNN constants cannot be saved)."""
        if self.backend == "compile":
            raise TypeError("InferenceModule: a model on the 'compile' backend cannot be saved, pickled or copied "
                            "(torch.compile's code belongs to this process); save the original model and call "
                            "optimize_for_inference again after loading it, or leave 'compile' out of candidates")
        state = self.__dict__.copy()
        if self._archive is not None:
            state["_modules"] = {k: (None if k == "module" else m) for k, m in self._modules.items()}
        return state

    def __setstate__(self, state: dict) -> None:
        super().__setstate__(state)
        self.__dict__.setdefault("batchnorms", {})  # saved before BatchNorm outcomes were recorded
        self.__dict__.setdefault("densified", [])
        self.__dict__.setdefault("nonfinite_to_eager", False)  # saved before NaN inputs were routed
        self.__dict__.setdefault("input_dtype", None)  # saved before input dtypes were checked
        self.__dict__.setdefault("input_shape", None)  # saved before input ranks were checked
        if self._archive is None:
            return
        if "fused" in self.backend and _fused.load() is None:  # the graph calls the kernels' ops
            warnings.warn(f"InferenceModule: the fused kernels are not available here; the loaded model runs its "
                          f"eager path instead of {self.backend!r}", RuntimeWarning, stacklevel=2)
            self._modules["module"], self._modules["eager"] = self._modules["eager"], None
            self.backend, self.shape, self._archive, self.nonfinite_to_eager = "eager", None, None, False
            return
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit's: the archive is ours, read at once
            frozen = torch.jit.load(io.BytesIO(self._archive))
            self._modules["module"] = torch.jit.optimize_for_inference(frozen)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}, channels_last={self.channels_last}"
