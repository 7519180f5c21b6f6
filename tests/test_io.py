"""Atomic writes: file modes, leftovers of killed writes, and errors that name the target."""

import os
import signal
import stat
import subprocess
import threading
import sys

import pytest

from sepconv._io import check_output_file, remove_stale_temps, temp_prefix, write_atomic


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def _dead_pid() -> int:
    """A pid no process has: one above the system's largest."""
    try:
        with open("/proc/sys/kernel/pid_max") as f:
            return int(f.read()) + 1
    except OSError:
        return 2**22 + 1  # Linux's largest pid_max is 2**22


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600), (0o002, 0o664)])
def test_a_new_file_honours_the_umask(tmp_path, umask, mask, expected):
    umask(mask)
    write_atomic(tmp_path / "out.bin", lambda f: f.write(b"data"))
    assert _mode(tmp_path / "out.bin") == expected
    assert (tmp_path / "out.bin").read_bytes() == b"data"


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o755, 0o440])
def test_replacing_a_file_keeps_its_mode(tmp_path, umask, mode):
    umask(0o022)
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")
    os.chmod(target, mode)
    write_atomic(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new" and _mode(target) == mode


def test_temp_files_are_named_after_their_target():
    assert temp_prefix("some/dir/model.pt") == ".model.pt.tmp-"
    assert len(temp_prefix("x" * 300)) < 255 - 30  # room for the pid and the random part


def test_stale_temps_of_dead_writers_are_removed_on_the_next_write(tmp_path):
    dead = _dead_pid()
    stale = tmp_path / f".model.pt.tmp-{dead}-0a1b2c3d"
    live_other = tmp_path / ".model.pt.tmp-1-0a1b2c3d"  # pid 1 is always running
    own = tmp_path / f".model.pt.tmp-{os.getpid()}-0a1b2c3d"  # maybe another thread's write in progress
    other_target = tmp_path / f".other.pt.tmp-{dead}-0a1b2c3d"
    not_ours = tmp_path / f".model.pt.tmp-x{dead}"
    for p in (stale, live_other, own, other_target, not_ours):
        p.write_bytes(b"partial")
    write_atomic(tmp_path / "model.pt", lambda f: f.write(b"whole"))
    assert (tmp_path / "model.pt").read_bytes() == b"whole"
    assert not stale.exists()
    assert live_other.exists() and own.exists() and other_target.exists() and not_ours.exists()
    assert remove_stale_temps(tmp_path / "other.pt") == [str(other_target)]


_KILLED_WRITER = """
import sys, time
from sepconv._io import write_atomic

def write(f):
    f.write(b"x" * 4096)
    f.flush()
    print("writing", flush=True)
    time.sleep(120)

write_atomic(sys.argv[1], write)
"""


def test_a_write_killed_midway_leaves_a_findable_temp_that_the_next_write_removes(tmp_path):
    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"old checkpoint")
    child = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(target)], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline() == "writing\n"
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
        child.stdout.close()
    left = sorted(p.name for p in tmp_path.iterdir())
    assert len(left) == 2 and left[1] == "ckpt.pt" and left[0].startswith(f".ckpt.pt.tmp-{child.pid}-")
    assert target.read_bytes() == b"old checkpoint"
    write_atomic(target, lambda f: f.write(b"new checkpoint"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
    assert target.read_bytes() == b"new checkpoint"


def test_a_failed_write_leaves_no_temp_and_the_old_file(tmp_path):
    target = tmp_path / "a.txt"
    target.write_bytes(b"old")

    def fail(f):
        f.write(b"half")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        write_atomic(target, fail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"] and target.read_bytes() == b"old"


def test_an_unwritable_target_is_named_in_the_error_not_the_temp_file():
    with pytest.raises(FileNotFoundError) as info:
        write_atomic("/proc/x.pt", lambda f: f.write(b"x"))
    assert str(info.value) == "[Errno 2] No such file or directory: '/proc/x.pt'"


def test_a_directory_as_target_is_named_in_the_error(tmp_path):
    (tmp_path / "d").mkdir()
    with pytest.raises(IsADirectoryError) as info:
        write_atomic(tmp_path / "d", lambda f: f.write(b"x"))
    assert str(info.value) == f"[Errno 21] Is a directory: '{tmp_path / 'd'}'"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_devices_and_fifos_are_written_through_not_replaced(tmp_path):
    """Renaming over /dev/null would replace the device by a regular file (as root it can)."""
    write_atomic(os.devnull, lambda f: f.write(b"model"))
    assert stat.S_ISCHR(os.stat(os.devnull).st_mode)
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    write_atomic(fifo, lambda f: f.write(b"through the pipe"))
    reader.join(timeout=10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    check_output_file(fifo, "--output")  # accepted, without opening it (that would wait for a reader)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_a_device_write_error_names_the_device():
    """A write error on a device (no file name of its own) names the path the user gave."""
    with pytest.raises(OSError) as info:
        write_atomic("/dev/full", lambda f: f.write(b"x" * 100_000))
    assert str(info.value) == "[Errno 28] No space left on device: '/dev/full'"


def test_a_symlink_is_written_through(tmp_path):
    target = tmp_path / "target.pt"
    target.write_bytes(b"old")
    link = tmp_path / "link.pt"
    link.symlink_to(target)
    write_atomic(link, lambda f: f.write(b"new"))
    assert link.is_symlink() and target.read_bytes() == b"new"


@pytest.mark.parametrize("name,message", [
    ("", "--output: expected a file name, got ''"),
    ("x" * 300 + ".pt", "--output: file name too long for its folder (303 bytes, at most 255): "),
])
def test_output_names_that_cannot_be_written_are_found_first(tmp_path, name, message):
    path = str(tmp_path / name) if name else ""
    with pytest.raises(ValueError) as info:
        check_output_file(path, "--output")
    assert str(info.value).startswith(message)
