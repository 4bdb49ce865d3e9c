"""Where refimpl may write: never over an input (same inode: symlinks and hardlinks caught),
never over something that is not a regular file, and over an existing file that is not this
project's own output only with ``force`` (`check_destination`), checked before any work."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable

from .limits import DestinationError
from .reading import _kind

__all__ = ["input_identities", "check_destination"]


# ---------------------------------------------------------------------------------------------
# destinations: never an input, never something that is not ours
# ---------------------------------------------------------------------------------------------
def input_identities(paths: Iterable[str | os.PathLike | None]) -> dict[tuple[int, int], str]:
    """``(st_dev, st_ino) -> path`` of every input: each file (symlinks followed) and, for a
    directory, the directory itself and every entry directly inside it. Missing paths are
    skipped. Two paths are the same file exactly when their identities are equal (hardlinks
    and symlinks included)."""
    out: dict[tuple[int, int], str] = {}

    def add(p: str) -> None:
        try:
            st = os.stat(p)
        except OSError:
            return
        out.setdefault((st.st_dev, st.st_ino), p)

    for path in paths:
        if path is None:
            continue
        p = os.fspath(path)
        add(p)
        if os.path.isdir(p):
            try:
                names = os.listdir(p)
            except OSError:
                continue
            for n in names:
                add(os.path.join(p, n))
    return out


def _describe(mode: int) -> str:
    return "a directory" if stat.S_ISDIR(mode) else _kind(mode)


def check_destination(
    path: str | os.PathLike,
    protected: dict[tuple[int, int], str] | Iterable[str | os.PathLike | None] = (),
    force: bool = False,
    ours: Callable[[str], bool] | None = None,
    what: str = "output",
    kind: str = "a file refimpl wrote",
    force_flag: str = "--force",
) -> str:
    """Check, before any work, that ``path`` may be written; return the path to write.

    Args:
        path: the destination file. A symlink is followed (its target is written, the link
            kept); a dangling one is refused.
        protected: the inputs: files (and directories, see `input_identities`) the command
            reads, or their identities; never written over.
        force: allow replacing an existing regular file that is not ``ours``.
        ours: whether an existing file is this project's own output (a golden file), which
            may be replaced without ``force``; ``None``: no file is.
        what: names the destination in messages ("--out", "output").
        kind: what ``ours`` recognises, for the message.
        force_flag: how the caller spells ``force`` (the CLI's ``--force``).

    Raises:
        DestinationError: the destination is one of the inputs (even with ``force``), is not a
            regular file (FIFO, device, socket, directory; even with ``force``), its parent is
            not a directory, or it exists, is not ``ours`` and ``force`` is not given.
    """
    p = os.fspath(path)
    if os.path.islink(p):
        target = os.path.realpath(p)
        if not os.path.lexists(target):
            raise DestinationError(
                f"{what} {p}: is a dangling symlink (to {target}); refusing to write through it"
            )
        p = target
    ids = protected if isinstance(protected, dict) else input_identities(protected)
    parent = os.path.dirname(os.path.abspath(p))
    if os.path.exists(parent) and not os.path.isdir(parent):
        raise DestinationError(f"{what} {p}: its parent {parent} is not a directory")
    try:
        st = os.stat(p)
    except FileNotFoundError:
        return p
    except NotADirectoryError:
        raise DestinationError(f"{what} {p}: a parent of it is not a directory") from None
    same = ids.get((st.st_dev, st.st_ino))
    if same is not None:
        also = "" if os.path.abspath(same) == os.path.abspath(p) else f" (via a link: {same})"
        raise DestinationError(
            f"{what} {p}: is an input of this command{also}; refusing to overwrite an input ({force_flag} does not change this)"
        )
    if not stat.S_ISREG(st.st_mode):
        raise DestinationError(
            f"{what} {p}: is {_describe(st.st_mode)}; refusing to replace it: only regular files are written "
            f"({force_flag} does not change this)"
        )
    if not force and not (ours is not None and ours(p)):
        raise DestinationError(
            f"{what} {p}: exists and is not {kind}; refusing to replace it (pass {force_flag} to replace it)"
        )
    return p
