"""Atomic file writes: a temporary file in the target's directory, fsync, then rename.

A reader never sees a half-written file, and an interrupted write leaves the old file intact.

The temporary file is named after its target, ``.{name}.tmp-{pid}-{random}`` next to ``{name}``,
so a write killed outright (``kill -9``, power loss) leaves a file that is easy to find; the next
write to the same target removes such leftovers whose process is no longer running.

A new file gets the mode a plain ``open()`` would give (``0o666`` minus the umask); replacing a
file keeps its mode. A symbolic link is written through (its target is replaced, the link stays),
and a device or FIFO (``/dev/null``) is written to directly: renaming over it would replace it.
"""

import errno
import os
import stat
from collections.abc import Callable, Sequence
from typing import BinaryIO, Union

# a temporary name must stay under the usual 255-byte file-name limit
_MAX_STEM = 200


def temp_prefix(path: Union[str, os.PathLike]) -> str:
    """The name prefix of ``path``'s temporary files, e.g. ``'.model.pt.tmp-'`` for ``'dir/model.pt'``."""
    return f".{os.path.basename(os.fspath(path))[:_MAX_STEM]}.tmp-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    except (OverflowError, ValueError):  # not a pid at all
        return False
    return True


def remove_stale_temps(path: Union[str, os.PathLike]) -> list[str]:
    """Remove temporary files of ``path`` left by writes whose process has died; returns their paths."""
    directory = os.path.dirname(os.path.abspath(path))
    prefix = temp_prefix(path)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].partition("-")[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid() or _pid_alive(int(pid_text)):
            continue
        try:
            os.unlink(os.path.join(directory, name))
            removed.append(os.path.join(directory, name))
        except OSError:
            pass
    return removed


def _named(exc: OSError, path: str, own: tuple) -> OSError:
    """``exc`` reworded to name ``path`` when it is about one of our own files (the temporary file)."""
    if exc.errno is None or exc.filename not in own:
        return exc
    return type(exc)(exc.errno, exc.strerror or os.strerror(exc.errno), path)


def _resolved(path: Union[str, os.PathLike]) -> str:
    """``path``, or what it links to: a symbolic link is written through (the link stays a link)."""
    path = os.fspath(path)
    return os.path.realpath(path) if os.path.islink(path) else path


def _special(path: str) -> bool:
    """Whether ``path`` exists and is neither a regular file nor a directory (a device, a FIFO)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def write_atomic(path: Union[str, os.PathLike], write: Callable[[BinaryIO], None]) -> None:
    """Call ``write(f)`` on a temporary binary file next to ``path``, then rename it to ``path``.

    Args:
        path: the file to create or replace. Its directory is created if missing.
        write: writes the whole content to the open binary file it is given.

    Raises:
        OSError: the file cannot be written; the message names ``path`` (not the temporary file).
    """
    path = _resolved(path)
    if _special(path):  # /dev/null, a FIFO...: renaming over it would replace the device itself
        try:
            with open(path, "wb") as f:
                write(f)
        except OSError as exc:  # e.g. /dev/full: a write error has no file name of its own
            raise _named(exc, path, (None, path)) from None
        return
    directory = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(directory, f"{temp_prefix(path)}{os.getpid()}-{os.urandom(4).hex()}")
    try:
        os.makedirs(directory, exist_ok=True)
        remove_stale_temps(path)
        try:
            st = os.stat(path)
        except FileNotFoundError:
            keep_mode = None
        else:
            if stat.S_ISDIR(st.st_mode):  # found now, not after the whole content is written
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            keep_mode = stat.S_IMODE(st.st_mode)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)  # umask applies
    except OSError as exc:
        raise _named(exc, path, (tmp, directory)) from None
    try:
        with os.fdopen(fd, "wb") as f:
            if keep_mode is not None:
                os.fchmod(f.fileno(), keep_mode)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise _named(exc, path, (tmp,)) from None
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
    """Make the rename durable (best effort: not every system can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def probe_writable(directory: str, path: str, what: str) -> None:
    """Create and remove a file in ``directory``, the way :func:`write_atomic` will for ``path``
    (a real write: permission bits alone do not tell, e.g. for root or on a read-only mount).

    Raises:
        ValueError: ``{what}: cannot write {path!r}: <reason>``.
    """
    probe = os.path.join(directory, f"{temp_prefix(path)}{os.getpid()}-probe")
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return  # our own probe, left by an interrupted check: the folder is writable
    except OSError as exc:
        raise ValueError(f"{what}: cannot write {path!r}: {exc.strerror or exc}") from None
    os.close(fd)
    os.unlink(probe)


def check_output_file(path: Union[str, os.PathLike], what: str) -> None:
    """Check, before any long work, that :func:`write_atomic` will be able to write ``path``.

    Raises:
        ValueError: naming ``what`` (e.g. ``'--output'``) and ``path``: it is a directory, its folder
            does not exist, or the folder cannot be written.
    """
    if not os.fspath(path):
        raise ValueError(f"{what}: expected a file name, got ''")
    path = _resolved(path)
    if os.path.isdir(path):
        raise ValueError(f"{what}: expected a file name, got the directory {path!r}")
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        parent = os.path.dirname(path)  # as the user wrote it: the first folder of it that exists
        while parent and not os.path.lexists(parent) and os.path.dirname(parent) != parent:
            parent = os.path.dirname(parent)
        if parent and os.path.lexists(parent) and not os.path.isdir(parent):
            raise ValueError(f"{what}: {parent!r} is a file, not a directory, so {path!r} cannot be written")
        raise ValueError(f"{what}: directory of {path!r} does not exist")
    if _special(path):
        return  # written through, as it is (opening a FIFO to check it would wait for a reader)
    longest = os.pathconf(directory, "PC_NAME_MAX")
    if len(os.fsencode(os.path.basename(path))) > longest:
        raise ValueError(f"{what}: file name too long for its folder ({len(os.fsencode(os.path.basename(path)))} bytes, "
                         f"at most {longest}): {path!r}")
    probe_writable(directory, path, what)


def check_output_dir(path: Union[str, os.PathLike], what: str, names: Sequence[str] = ()) -> None:
    """Create the directory ``path`` if needed and check that the files ``names`` can be written in it.

    Raises:
        ValueError: naming ``what`` and ``path``: it is a file, it cannot be created or written, or
            one of ``names`` in it is a directory.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not os.path.isdir(path):
        raise ValueError(f"{what}: expected a directory, got the file {path!r}")
    try:
        os.makedirs(path, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{what}: cannot create the directory {path!r}: {exc.strerror or exc}") from None
    for name in names:
        if os.path.isdir(os.path.join(path, name)):
            raise ValueError(f"{what}: cannot write {os.path.join(path, name)!r}: it is a directory")
    probe_writable(path, os.path.join(path, names[0] if names else "output"), what)
