"""The ``sepconv`` command: a thin layer over the library.

User mistakes (bad shapes, unknown models, unreadable files, an output that cannot be written)
print one ``sepconv: error: ...`` line on stderr and exit with status 2, never a traceback; they
are found before any long work starts. Ctrl-C prints ``sepconv: interrupted`` and exits 130, from
the first moment (this package imports torch only inside the commands). When the reader of the
output goes away (``sepconv profile ... | head``), the command stops quietly with status 141, as a
Unix tool killed by SIGPIPE would.

Layout: :mod:`.parser` builds the parser, :mod:`.common` holds what every command shares (the
error type, shape parsing, output), :mod:`.loading` reads the MODEL argument, :mod:`.calibration`
the ``--calibration-data``, :mod:`.commands` the commands that measure (explain, profile, bench,
demo, doctor) and :mod:`.conversion` those that write a model (convert, optimize).
"""

import os
import sys
from collections.abc import Sequence
from typing import Optional

from .common import DEMO_FILES, MAX_ELEMENTS, MAX_SIZE, UsageError, _first_line, _guarded, _one_line, console, parse_shape
from .loading import load_model
from .parser import build_parser

__all__ = ["main", "build_parser", "load_model", "parse_shape", "console", "UsageError", "DEMO_FILES", "MAX_SIZE",
           "MAX_ELEMENTS", "_first_line", "_guarded"]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``sepconv`` command; returns the exit status (0, 2 for a mistake, 130, 141)."""
    try:
        return _main(argv)
    except KeyboardInterrupt:
        print("sepconv: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader went away (``| head``): stop quietly, like a tool killed by SIGPIPE
        _discard_stdout()
        return 141


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, inside the handlers, not at the interpreter's exit
        return status
    except BrokenPipeError:
        raise
    except ImportError as exc:  # an optional extra is missing (e.g. scikit-learn for the demo)
        print(f"sepconv: error: {_one_line(exc)} (install the demo extras: pip install scikit-learn matplotlib)", file=sys.stderr)
        return 2
    except (UsageError, ValueError, TypeError, OSError) as exc:
        print(f"sepconv: error: {_one_line(exc) or _first_line(exc)}", file=sys.stderr)
        return 2


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's final flush does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # stdout is not a real file (e.g. captured in tests)
        pass

