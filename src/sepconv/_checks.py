"""Shared validators for user input at the API boundary.

Every check raises :class:`ValueError` or :class:`TypeError` whose message names the argument,
what was expected and what was got, e.g. ``kernel_size: expected 2 positive ints, got (3, 0)``.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence

PADDING_MODES = ("zeros", "reflect", "replicate", "circular")
PADDING_STRINGS = ("valid", "same")


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


def check_padding_mode(padding_mode: object) -> str:
    """Check ``padding_mode`` is one of torch's four modes."""
    if padding_mode not in PADDING_MODES:
        raise ValueError(f"padding_mode: expected one of {PADDING_MODES}, got {padding_mode!r}")
    return str(padding_mode)


def check_divisible(name: str, value: int, divisor_name: str, divisor: int) -> None:
    """Raise if ``value`` is not a multiple of ``divisor``."""
    if value % divisor != 0:
        raise ValueError(f"{name}: expected a multiple of {divisor_name}={divisor}, got {value}")
