"""Stage lines on stderr while ``sepconv convert`` works: when stderr is a terminal, or with
``--progress``; never with ``--quiet``.

Plain lines, never on stdout (which may carry ``--json`` or ``--markdown``), flushed at once so a
long conversion shows where it is.
"""

import contextlib
import sys
import time
from collections.abc import Iterator


class Stages:
    """``stages('loading the model')`` prints ``sepconv: loading the model`` on stderr unless quiet."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.start = time.monotonic()

    def __call__(self, text: str) -> None:
        if not self.quiet:
            print(f"sepconv: [{time.monotonic() - self.start:6.1f} s] {text}", file=sys.stderr, flush=True)

    @contextlib.contextmanager
    def refits(self, samples: int) -> Iterator[None]:
        """Within it, a line per converted layer that :func:`sepconv.convert` refits on the data."""
        try:
            from ..convert import api, calibrate
        except ImportError:  # another layout of the package: no per-layer lines
            yield
            return
        refine, refit_last, count = api._refine, calibrate._refit_last, {"i": 0, "n": 0}

        def _refine(target, layers, converted, *rest):
            count["n"] = sum(converted.get(l.name) is not None and l.weight.dim() <= 4 for l in layers)
            self(f"refitting {count['n']} converted layers on {samples} samples (least squares, layer by layer)")
            return refine(target, layers, converted, *rest)

        def _refit(child, *rest):
            count["i"] += 1
            self(f"refitting layer {count['i']}/{count['n']}")
            return refit_last(child, *rest)

        api._refine, calibrate._refit_last = _refine, _refit
        try:
            yield
        finally:
            api._refine, calibrate._refit_last = refine, refit_last
