"""What every command shares: the one-line error, shape parsing, code the user supplied, output."""

import argparse
import contextlib
import errno
import math
import os
import sys
from collections.abc import Sequence
from typing import Optional

# what ``sepconv demo`` writes into its --output directory
DEMO_FILES = ("report.md", "digits_cnn.pt", "accuracy_vs_macs.png", "spectra.png", "layer_error.png", "latency.png")


# the largest --input the commands take: sizes torch can index, and a tensor torch can allocate
MAX_SIZE, MAX_ELEMENTS = 2**31 - 1, 2**40


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse's own mistakes (unknown option, missing argument) as one ``sepconv: error:`` line too."""

    def error(self, message: str):
        self.exit(2, f"sepconv: error: {message} (see '{self.prog} --help')\n")


def parse_shape(text: str, what: str, dims: Optional[Sequence[int]] = None, example: str = "1x3x224x224") -> tuple[int, ...]:
    """``'1x3x224x224'`` -> ``(1, 3, 224, 224)``; checks positive ints and the number of dims
    (``example``: the form the error message shows)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise UsageError(f"{what}: expected sizes separated by 'x' like {example}, got {text!r}") from None
    if any(s < 1 for s in shape):
        raise UsageError(f"{what}: expected positive sizes, got {text!r}")
    if any(s > MAX_SIZE for s in shape) or math.prod(shape) > MAX_ELEMENTS:
        raise UsageError(f"{what}: expected sizes up to {MAX_SIZE:,} and at most {MAX_ELEMENTS:,} values in all, "
                         f"got {text!r}")
    if dims is not None and len(shape) not in dims:
        raise UsageError(f"{what}: expected {' or '.join(str(d) for d in dims)} sizes, got {len(shape)} in {text!r}")
    return shape


def _one_line(exc: BaseException) -> str:
    """The first non-blank line of ``exc``'s message ('' if none)."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), "")


def _first_line(exc: BaseException) -> str:
    """``'Type: first line of the message'``: what a one-line error can say about ``exc``."""
    line = _one_line(exc)
    return f"{type(exc).__name__}: {line}" if line else type(exc).__name__


def _guarded(fn, what: str):
    """``fn()``, with anything it raises (even ``sys.exit``) turned into a :class:`UsageError` about ``what``.

    For code the user supplied (their model file, their factory, a pickle): its failure is theirs to
    see, on one line.
    """
    try:
        with contextlib.redirect_stdout(sys.stderr):  # the user's prints must not mix into --json / --markdown
            return fn()
    except SystemExit as exc:
        raise UsageError(f"{what}: it called sys.exit({exc.code!r})") from None
    except Exception as exc:  # noqa: BLE001 - see the docstring
        raise UsageError(f"{what}: {_first_line(exc)}") from None


def console(width: Optional[int] = None):
    """A rich console whose closed-pipe error reaches :func:`main` (rich alone would exit 1 there)."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, os.strerror(errno.EPIPE))

    return _Console(width=width)


def _console():
    from rich.console import Console

    return console(width=max(100, Console().width))


def print_wide(renderable) -> None:
    """Print a table (or report) with :func:`_console`; when stdout is not a terminal (a file, a
    pipe), as wide as the table needs, so that no layer name or number is cut to fit a width
    nobody sees."""
    from rich.measure import Measurement

    out = _console()
    if not out.is_terminal:
        needed = Measurement.get(out, out.options.update_width(100_000), renderable).maximum
        if needed > out.width:
            out = console(width=needed)
    out.print(renderable)


def _emit(report, args) -> None:
    """Print a report as JSON, markdown, or a rich table, as the flags ask."""
    if args.json:
        print(report.to_json())
    elif args.markdown:
        print(report.to_markdown())
    else:
        print_wide(report)


def _int_arg(text: str, what: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise UsageError(f"{what}: expected 'valid', 'same' or a non-negative int, got {text!r}") from None
    if value < 0:
        raise UsageError(f"{what}: expected 'valid', 'same' or a non-negative int, got {text!r}")
    return value
