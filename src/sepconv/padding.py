"""Padding: ``'valid'`` | ``'same'`` | int | tuple -> explicit per-side pads. Pure integer math.

``'same'`` follows TensorFlow/Keras exactly, for every stride, dilation and even kernel size.
For one spatial dimension of size ``n`` with kernel ``k``, stride ``s`` and dilation ``d``::

    out   = ceil(n / s)
    total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
    before, after = total // 2, total - total // 2      # the smaller half goes before

With stride 1 the total is ``(k - 1) * d`` whatever ``n`` is, so the pads are known at
construction ("static"). With a larger stride they depend on the input size and are computed
per call ("dynamic"). An even kernel (or an odd total) gives asymmetric pads, which
``torch.nn.ConvNd`` cannot express on its own: sepconv then pads explicitly with ``F.pad``.
"""


from collections.abc import Sequence
from typing import List, Optional, Tuple, Union

import torch

from ._checks import PADDING_STRINGS, to_tuple, to_tuples

PaddingArg = Union[str, int, Sequence[int]]

__all__ = [
    "PaddingArg",
    "normalize_padding",
    "same_pads",
    "static_pads",
    "resolve_pads",
    "to_fpad",
    "is_symmetric",
    "same_fpad",
]


def normalize_padding(padding: PaddingArg, n: int) -> Union[str, Tuple[int, ...]]:
    """Validate a user's ``padding`` for ``n`` spatial dims.

    Returns ``'same'`` or a tuple of ``n`` non-negative ints (``'valid'`` becomes zeros).

    Example:
        >>> normalize_padding('valid', 2)
        (0, 0)
        >>> normalize_padding(1, 3)
        (1, 1, 1)
    """
    if isinstance(padding, str):
        if padding not in PADDING_STRINGS:
            raise ValueError(f"padding: expected one of {PADDING_STRINGS}, an int or a tuple of {n} ints, got {padding!r}")
        return "same" if padding == "same" else (0,) * n
    return to_tuple("padding", padding, n, minimum=0)


def same_pads(
    input_size: Sequence[int], kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> List[Tuple[int, int]]:
    """TensorFlow ``'same'`` pads ``(before, after)`` for each spatial dim.

    Example:
        >>> same_pads([7], [4], [2], [1])   # out = 4, total = 3*2 + 4 - 7 = 3
        [(1, 2)]

    Raises:
        TypeError, ValueError: unless all four are sequences of the same number of positive ints.
    """
    kernel_size, input_size, stride, dilation = to_tuples(
        ("kernel_size", kernel_size), ("input_size", input_size), ("stride", stride), ("dilation", dilation))
    pads = []
    for n, k, s, d in zip(input_size, kernel_size, stride, dilation):
        out = -(-n // s)
        total = max((out - 1) * s + (k - 1) * d + 1 - n, 0)
        pads.append((total // 2, total - total // 2))
    return pads


def static_pads(
    padding: Union[str, Tuple[int, ...]], kernel_size: Sequence[int], stride: Sequence[int], dilation: Sequence[int]
) -> Optional[List[Tuple[int, int]]]:
    """Pads known without the input size, or ``None`` for ``'same'`` with a stride > 1."""
    if padding == "same":
        if any(s != 1 for s in stride):
            return None
        # stride 1: total = (k - 1) * d independently of the input size
        return [((k - 1) * d // 2, (k - 1) * d - (k - 1) * d // 2) for k, d in zip(kernel_size, dilation)]
    return [(p, p) for p in padding]


def resolve_pads(
    padding: Union[str, Tuple[int, ...]],
    kernel_size: Sequence[int],
    stride: Sequence[int],
    dilation: Sequence[int],
    input_size: Optional[Sequence[int]] = None,
) -> List[Tuple[int, int]]:
    """Explicit ``(before, after)`` pads per dim; ``input_size`` is needed for dynamic ``'same'``."""
    pads = static_pads(padding, kernel_size, stride, dilation)
    if pads is not None:
        return pads
    if input_size is None:
        raise ValueError(
            "input_size: padding='same' with stride > 1 depends on the input size; expected input_size, got None"
        )
    return same_pads(input_size, kernel_size, stride, dilation)


def to_fpad(pads: Sequence[Tuple[int, int]]) -> List[int]:
    """``[(before, after), ...]`` in dim order -> the flat, last-dim-first list ``F.pad`` takes."""
    out: List[int] = []
    for before, after in reversed(list(pads)):
        out += [before, after]
    return out


def is_symmetric(pads: Sequence[Tuple[int, int]]) -> bool:
    """True when every dim pads the same amount on both sides."""
    return all(b == a for b, a in pads)


@torch.jit.unused
def traced_same_fpad(x: torch.Tensor, kernel_size: List[int], stride: List[int], dilation: List[int]) -> List[int]:
    """:func:`same_fpad` of ``x``'s size under ``torch.jit.trace``: 0-dim tensors computed by
    tensor ops, which the trace records, so that the traced graph pads every input for its own
    size (Python arithmetic on the sizes would be frozen at the example's). ``total = max((k - 1)
    d - (n - 1) mod s, 0)``, the same pads as :func:`same_fpad`."""
    n = len(kernel_size)
    sizes = torch._shape_as_tensor(x)[-n:]
    out: list = []
    for i in range(n - 1, -1, -1):
        total = torch.clamp((kernel_size[i] - 1) * dilation[i] - torch.remainder(sizes[i] - 1, stride[i]), min=0)
        before = torch.div(total, 2, rounding_mode="floor")
        out += [before, total - before]
    return out


@torch.jit.unused
def _has_tensor(fpad: List[int]) -> bool:
    return any(isinstance(p, torch.Tensor) for p in fpad)


def traced_pads(fpad: List[int]) -> bool:
    """Whether ``fpad`` came from :func:`traced_same_fpad` (tensors): then no decision may depend
    on their values (a trace would freeze it), and they are always applied with ``F.pad``."""
    if not torch.jit.is_tracing():
        return False
    return _has_tensor(fpad)


def same_fpad(input_size: List[int], kernel_size: List[int], stride: List[int], dilation: List[int]) -> List[int]:
    """:func:`same_pads` in ``F.pad`` order; TorchScript-compatible, used by layers' ``forward``."""
    out: List[int] = []
    for i in range(len(input_size) - 1, -1, -1):
        n = input_size[i]
        s = stride[i]
        if s < 1 or n < 1 or kernel_size[i] < 1 or dilation[i] < 1:
            raise ValueError("same_fpad: expected positive input_size, kernel_size, stride and dilation, got "
                             + str(input_size) + ", " + str(kernel_size) + ", " + str(stride) + ", " + str(dilation))
        o = (n + s - 1) // s
        total = max((o - 1) * s + (kernel_size[i] - 1) * dilation[i] + 1 - n, 0)
        out.append(total // 2)
        out.append(total - total // 2)
    return out
