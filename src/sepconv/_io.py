"""Atomic file writes: a temporary file in the target's directory, fsync, then rename.

A reader never sees a half-written file, and an interrupted write leaves the old file intact.
"""

import os
import tempfile
from collections.abc import Callable
from typing import BinaryIO


def write_atomic(path: str, write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then rename it to ``path``."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1], dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
