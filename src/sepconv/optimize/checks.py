"""Checks of :func:`~sepconv.optimize.optimize_for_inference`'s arguments at the API boundary, and
the comparison of a candidate path's output with the original model's."""

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .._checks import check_finite, check_module, check_positive_int

CANDIDATES = ("eager", "fused", "torchscript", "compile")


def check_arguments(model: object, example_input: object, rounds: object, candidates: object) -> None:
    """Raise TypeError / ValueError naming the argument, what was expected and what was got.

    Refuses non-finite weights (parameters and normalization statistics) and a non-finite example
    input: either would make every candidate's output differ from the original's (NaN != NaN) and
    leave the model unoptimized without saying why, or fold NaN into every weight.
    """
    check_module("model", model)
    if isinstance(candidates, str) or not isinstance(candidates, Sequence):
        raise TypeError(f"candidates: expected a tuple of names from {CANDIDATES}, got {candidates!r}")
    bad = [c for c in candidates if not isinstance(c, str) or c not in CANDIDATES]
    if bad or not candidates:
        raise ValueError(f"candidates: expected a non-empty subset of {CANDIDATES}, got {candidates!r}")
    check_positive_int("rounds", rounds)
    if example_input is not None:
        if not isinstance(example_input, Tensor):
            raise TypeError(f"example_input: expected a torch.Tensor, got {type(example_input).__name__}")
        if example_input.dim() == 0 or example_input.numel() == 0:
            raise ValueError(f"example_input: expected a non-empty tensor with at least one dimension, "
                             f"got shape {tuple(example_input.shape)}")
        check_finite("example_input", example_input)
    for name, t in model.named_parameters():
        check_finite("model", t, f" of parameter {name!r}")
    for prefix, m in model.named_modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):  # running statistics are folded into weights
            for name, t in m.named_buffers(recurse=False):
                check_finite("model", t, f" of normalization statistic {f'{prefix}.{name}' if prefix else name!r}")


def tolerance(dtype: torch.dtype) -> float:
    """The relative error a path may show against the unoptimized model: 1e-4, or for a dtype
    coarser than that (float16, bfloat16) 4 x its epsilon, since another order of the same sums
    differs by a few roundings there (a float16 model's TorchScript path measured 1.1e-4).

    Example:
        >>> tolerance(torch.float32), tolerance(torch.bfloat16)
        (0.0001, 0.03125)
    """
    return max(1e-4, 4 * torch.finfo(dtype).eps) if dtype.is_floating_point else 1e-4


def relative_error(out: object, ref: Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 over the finite entries; infinite if ``out`` is not a
    tensor of ``ref``'s shape or its NaNs and infinities are not exactly ``ref``'s."""
    if not isinstance(out, Tensor) or out.shape != ref.shape:
        return float("inf")
    a, b = out.detach().double(), ref.detach().double()
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if bool(fa.all()) and bool(fb.all()):  # the usual case, without the masked copies (6x faster)
        return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b).clamp_min(1e-30))
    # NaN as 0, infinities as the extreme finite values: equal only if the same kind everywhere
    if not torch.equal(fa, fb) or not torch.equal(a[~fa].nan_to_num(0.0), b[~fb].nan_to_num(0.0)):
        return float("inf")
    return float((a[fa] - b[fb]).norm() / b[fb].norm().clamp_min(1e-30))


def reason(exc: BaseException) -> str:
    """A one-line account of ``exc`` (TorchScript errors carry a whole traceback: its last line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if last.startswith(type(exc).__name__) else f"{type(exc).__name__}: {last}"
