"""Writing a file without losing what a user has: the one atomic writer.

Every file refimpl writes goes through `atomic_write` (one file) or `StagedFiles` (several
that belong together, such as a fused checkpoint): the bytes go to a temp file in the
destination's directory, named ``.<name>.refimpl-<host>-<pid>-<thread>-<random>.tmp``, which
is fsynced, renamed over the destination, and the directory fsynced. The temp is removed on
every failure path (an exception, ``KeyboardInterrupt``, the CLI's SIGTERM); one left by a
killed process is removed by the next process that writes there (`clean_stale_temps`) once
its process is gone, or after ``STALE_TEMP_SECONDS``. A full disk raises an ``OSError``
naming the destination, which keeps its old bytes (`full_disk_error`). Every byte goes
through ``_write``, the one place a test injects a full disk.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import socket
import stat
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .limits import STALE_TEMP_SECONDS

__all__ = ["atomic_write", "StagedFiles", "clean_stale_temps", "is_refimpl_temp", "full_disk_error"]


# ---------------------------------------------------------------------------------------------
# writing: one atomic way, never over an input
# ---------------------------------------------------------------------------------------------
_TEMP_RE = re.compile(
    r"^\.(?P<base>.*)\.refimpl-(?P<host>[A-Za-z0-9_-]{1,64})-(?P<pid>[0-9]{1,10})-(?P<tid>[0-9]{1,24})"
    r"-(?P<rand>[0-9a-f]{8})\.tmp$",
    re.DOTALL,
)
_live_temps: set[str] = set()  # temps being written by this process (any thread)
_live_lock = threading.Lock()
_cleaned_dirs: set[str] = set()  # directories whose stale temps this process removed


def _host() -> str:
    h = re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname() or "host")[:64]
    return h or "host"


def _write(fd: int, data: memoryview) -> int:
    """``os.write`` (a module attribute so that a test can inject ``ENOSPC``)."""
    return os.write(fd, data)


def is_refimpl_temp(name: str) -> bool:
    """Whether a file name is one of this project's temp files (``.<name>.refimpl-<host>-<pid>-<thread>-<hex>.tmp``)."""
    return _TEMP_RE.match(name) is not None


def _temp_path(dest: str) -> str:
    d, base = os.path.split(dest)
    base = base[:120]  # the name is informational; keep the temp's within NAME_MAX
    return os.path.join(
        d, f".{base}.refimpl-{_host()}-{os.getpid()}-{threading.get_ident()}-{secrets.token_hex(4)}.tmp"
    )


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid > 0  # exists (another user's) or not a pid at all
    return True


def clean_stale_temps(directory: str | os.PathLike, now: float | None = None) -> list[str]:
    """Remove this project's stale temp files from ``directory``; return their paths.

    A temp is stale when it was made on this host by a process that no longer runs, or when
    it has not been modified for ``STALE_TEMP_SECONDS`` (a temp from another host, or a pid
    reused since). A live writer's temp (this process's threads, or another running process)
    is left alone, and so is every file whose name is not this project's temp pattern, and
    anything that is not a regular file.
    """
    d = os.fspath(directory) or "."
    try:
        names = os.listdir(d)
    except OSError:
        return []
    now = time.time() if now is None else now
    host = _host()
    removed = []
    for name in names:
        m = _TEMP_RE.match(name)
        if m is None:
            continue
        p = os.path.join(d, name)
        with _live_lock:
            if p in _live_temps:
                continue
        try:
            st = os.lstat(p)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        dead = m["host"] == host and not _pid_alive(int(m["pid"]))
        if dead or now - st.st_mtime > STALE_TEMP_SECONDS:
            try:
                os.unlink(p)
                removed.append(p)
            except OSError:
                pass
    return removed


def _fsync_dir(d: str) -> None:
    try:
        fd = os.open(d, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems cannot fsync a directory; the rename has happened
        pass
    finally:
        os.close(fd)


def full_disk_error(e: OSError, dest: str) -> OSError:
    """A full-disk ``OSError`` (``ENOSPC``, ``EDQUOT``, ``EFBIG``) re-phrased to name the
    destination and say it is unchanged; any other error as it is."""
    what = {errno.ENOSPC: "no space left on device", errno.EFBIG: "file too large"}.get(e.errno)
    if what is None and e.errno == getattr(errno, "EDQUOT", -1):
        what = "disk quota exceeded"
    if what is None:
        return e
    err = OSError(e.errno, f"{what} while writing {dest}; {dest} was left as it was (nothing replaced)")
    err.filename = dest
    return err


class _TempFile:
    """An unbuffered binary file on a temp path: ``write`` (whole buffers, any size), ``tell``."""

    def __init__(self, fd: int, path: str, dest: str):
        self.fd, self.path, self.dest, self.pos = fd, path, dest, 0

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        while done < len(view):
            try:
                done += _write(self.fd, view[done:])
            except OSError as e:
                raise full_disk_error(e, self.dest) from None
        self.pos += done
        return done

    def tell(self) -> int:
        return self.pos

    def fileno(self) -> int:
        return self.fd


class StagedFiles:
    """Several files written as one: each to a temp in its destination's directory, and only
    when every one is complete, all fsynced and renamed over their destinations in the order
    they were opened (put the file that marks the set as complete last, e.g. ``config.json``).

    Use as a context manager: a clean exit commits, an exception (``KeyboardInterrupt``,
    the CLI's SIGTERM included) removes every temp and replaces nothing:

        with StagedFiles() as staged:
            staged.open("out/model.safetensors").write(data)
            staged.open("out/config.json").write(text)
    """

    def __init__(self) -> None:
        self._files: list[_TempFile] = []
        self._done = False

    def open(self, path: str | os.PathLike) -> _TempFile:
        """A new temp file for ``path`` (its directory must exist); the first time this process
        writes into that directory, stale temps there are removed (`clean_stale_temps`)."""
        dest = os.fspath(path)
        d = os.path.dirname(os.path.abspath(dest))
        with _live_lock:
            first = d not in _cleaned_dirs
            _cleaned_dirs.add(d)
        if first:  # once per directory and process: a batch of 10,000 files lists it once
            clean_stale_temps(d)
        tmp = _temp_path(os.path.join(d, os.path.basename(dest)))
        with _live_lock:
            _live_temps.add(tmp)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except BaseException:
            with _live_lock:
                _live_temps.discard(tmp)
            raise
        try:  # a replaced file keeps its permissions; a new one gets the umask's
            os.fchmod(fd, stat.S_IMODE(os.stat(dest).st_mode))
        except OSError:
            pass
        f = _TempFile(fd, tmp, dest)
        self._files.append(f)
        return f

    def commit(self) -> list[str]:
        """fsync and close every temp, rename each over its destination, fsync the directories.

        Returns:
            the destinations, in order.

        Raises:
            OSError: naming the destination (a full disk: nothing was replaced).
        """
        try:
            for f in self._files:
                try:
                    os.fsync(f.fd)
                except OSError as e:
                    raise full_disk_error(e, f.dest) from None
            for f in self._files:
                os.close(f.fd)
                f.fd = -1
            dirs = []
            for f in self._files:
                os.replace(f.path, f.dest)
                with _live_lock:
                    _live_temps.discard(f.path)
                d = os.path.dirname(os.path.abspath(f.dest))
                if d not in dirs:
                    dirs.append(d)
            for d in dirs:
                _fsync_dir(d)
            self._done = True
            return [f.dest for f in self._files]
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        """Close and remove every temp not yet renamed (destinations untouched)."""
        for f in self._files:
            if f.fd >= 0:
                try:
                    os.close(f.fd)
                except OSError:
                    pass
                f.fd = -1
            try:
                os.unlink(f.path)
            except FileNotFoundError:
                pass
            except OSError:
                pass
            with _live_lock:
                _live_temps.discard(f.path)
        self._done = True

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._done:
            return
        if exc_type is None:
            self.commit()
        else:
            self.abort()


@contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[_TempFile]:
    """Write one file atomically: ``with atomic_write(p) as f: f.write(b)``.

    The bytes go to a unique temp file in ``p``'s directory (per process and thread), which
    is fsynced and renamed over ``p`` when the block ends cleanly; the directory is then
    fsynced. On any exception the temp is removed and ``p`` keeps its old bytes; a full disk
    raises an ``OSError`` that names ``p``. The destination is not checked here: call
    `check_destination` first.
    """
    with StagedFiles() as staged:
        yield staged.open(path)
