"""Stage lines on stderr while ``sepconv convert`` works: when stderr is a terminal, or with
``--progress``; never with ``--quiet``.

Plain lines, never on stdout (which may carry ``--json`` or ``--markdown``), flushed at once so a
long conversion shows where it is.
"""

import contextlib
import logging
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
    def library_lines(self) -> Iterator[None]:
        """Within it, what the library logs at INFO on the ``sepconv`` logger (e.g. a line per layer
        that :func:`sepconv.convert` refits on the data) is printed as stage lines."""
        logger, stages = logging.getLogger("sepconv"), self

        class _Lines(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                stages(record.getMessage())

        handler, level, propagate = _Lines(logging.INFO), logger.level, logger.propagate
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False  # printed here, not also by a handler the user's logging set up
        try:
            yield
        finally:
            logger.removeHandler(handler)
            logger.setLevel(level)
            logger.propagate = propagate
