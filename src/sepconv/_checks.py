"""Shared validators for user input at the API boundary.

Every check raises :class:`ValueError` or :class:`TypeError` whose message names the argument,
what was expected and what was got, e.g. ``kernel_size: expected 2 positive ints, got (3, 0)``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PADDING_STRINGS = ("valid", "same")


def describe(value: object, limit: int = 80) -> str:
    """``value`` for an error message: a tensor by its dtype and shape (its repr is its data), any
    other value by its repr, cut at ``limit`` characters.

    Example:
        >>> import torch
        >>> describe(torch.zeros(1, 3, 8, 8))
        'a torch.float32 tensor of shape (1, 3, 8, 8)'
    """
    import torch

    if isinstance(value, torch.Tensor):
        return f"a {value.dtype} tensor of shape {tuple(value.shape)}"
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_positive_int(name: str, value: object) -> int:
    """Return ``value`` as an int if it is a positive integer, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected a positive int, got {value!r} ({type(value).__name__})")
    if value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value}")
    return int(value)


def to_tuple(name: str, value: object, n: int, *, minimum: int = 1) -> tuple[int, ...]:
    """Normalize an int or a length-``n`` sequence of ints to a tuple, checking each is >= minimum.

    Args:
        name: the argument name used in error messages.
        value: an int or a sequence of ``n`` ints.
        n: the number of spatial dimensions.
        minimum: the smallest allowed value (1 for sizes, 0 for paddings).
    """
    what = "positive" if minimum == 1 else f">= {minimum}"
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        items: tuple = (value,) * n
    elif isinstance(value, Sequence) and not isinstance(value, str):
        items = tuple(value)
        if len(items) != n:
            raise ValueError(f"{name}: expected an int or {n} ints, got {len(items)} values {value!r}")
    else:
        raise TypeError(f"{name}: expected an int or a tuple of {n} ints, got {value!r}")
    for item in items:
        if isinstance(item, bool) or not isinstance(item, numbers.Integral):
            raise TypeError(f"{name}: expected {n} ints, got {value!r}")
        if item < minimum:
            raise ValueError(f"{name}: expected {n} {what} ints, got {value!r}")
    return tuple(int(i) for i in items)


def to_tuples(lead: tuple[str, object], *others: tuple[str, object], hint: str = "") -> tuple[tuple[int, ...], ...]:
    """``(name, value)`` pairs as tuples of positive ints, all as long as the first, a sequence
    that sets the number of dims (the others may also be one int, repeated); ``hint`` follows
    "a sequence of positive ints" in the first one's TypeError.

    Example:
        >>> to_tuples(("kernel_size", [3, 5]), ("stride", 1))
        ((3, 5), (1, 1))
    """
    name, value = lead
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise TypeError(f"{name}: expected a sequence of positive ints{hint}, got {value!r}")
    n = len(value)
    return tuple(to_tuple(k, v, n) for k, v in (lead, *others))


def check_padding_mode(padding_mode: object) -> str:
    """Check ``padding_mode`` is one of torch's four modes."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode: expected one of {PADDING_MODES}, got {padding_mode!r}")
    return str(padding_mode)


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    """Raise if ``value`` is not a multiple of ``divisor``."""
    if value % divisor != 0:
        raise ValueError(f"{name}: expected a multiple of {divisor_name}={divisor}, got {value}")


def check_tensor(name: str, value: object) -> "torch.Tensor":
    """Return ``value`` if it is a ``torch.Tensor``, else raise ``TypeError``."""
    import torch

    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    return value


def check_module(name: str, value: object) -> "nn.Module":
    """Return ``value`` if it is an ``nn.Module``, else raise ``TypeError`` naming ``name``."""
    from torch import nn

    if not isinstance(value, nn.Module):
        raise TypeError(f"{name}: expected an nn.Module, got {type(value).__name__}")
    return value


def check_finite(name: str, tensor: "torch.Tensor", where: str = "") -> "torch.Tensor":
    """Raise ``ValueError`` naming the first non-finite entry of a floating tensor and its index.

    Example message: ``calibration_data: expected finite values, got nan at index (0, 0, 3, 5)``
    (``where``, e.g. ``' in batch 2'``, is appended).
    """
    import torch

    if tensor.is_floating_point() or tensor.is_complex():
        bad = ~torch.isfinite(tensor.detach())
        if bool(bad.any()):
            index = tuple(int(i) for i in bad.nonzero()[0])
            value = tensor.detach()[index].item()
            raise ValueError(f"{name}: expected finite values, got {value} at index {index}{where}")
    return tensor


def check_real(name: str, value: object, *, minimum: float = 0.0) -> float:
    """Return ``value`` as a float if it is a finite real number >= ``minimum``, else raise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a number >= {minimum:g}, got {value!r} ({type(value).__name__})")
    if not math.isfinite(value) or value < minimum:
        raise ValueError(f"{name}: expected a finite number >= {minimum:g}, got {value!r}")
    return float(value)


def call_factory(name: str, factory: object, *args: object, wants: str) -> "nn.Module":
    """Call a user's module factory (``norm_layer``, ``act_layer``) and check it made a module.

    Args:
        name: the argument name used in error messages.
        factory: a class or function returning an ``nn.Module`` (``nn.ReLU``, not ``nn.ReLU()``).
        args: what the factory is called with (e.g. the channel count).
        wants: a description of the expected callable, e.g. ``'a callable taking the channel count'``.
    """
    from torch import nn

    if isinstance(factory, nn.Module):
        kind = type(factory).__name__
        raise TypeError(f"{name}: expected {wants} (a class such as nn.{kind}, not an instance), "
                        f"got the module instance {kind}()")
    if not callable(factory):
        raise TypeError(f"{name}: expected {wants}, got {factory!r}")
    module = factory(*args)
    if not isinstance(module, nn.Module):
        raise TypeError(f"{name}: expected a callable returning an nn.Module, got one returning {type(module).__name__}")
    return module
