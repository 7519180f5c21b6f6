"""The module :func:`~sepconv.optimize.optimize_for_inference` returns."""

from typing import Optional

import torch
from torch import Tensor, nn


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
