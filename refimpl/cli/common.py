"""What every command shares: the one error a user sees, messages of one line, and the check
that a path names a directory or a regular file."""

from __future__ import annotations

import os

from ..files import regular_file

__all__ = ["CliError"]


class CliError(Exception):
    """A user-facing error: printed as one line, exit code 2."""


def _one_line(e: BaseException) -> str:
    text = str(e) or type(e).__name__
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    msg = lines[0] if lines else type(e).__name__
    if len(lines) > 1:
        rest = "; ".join(lines[1:])
        msg = f"{msg} {rest}"
    if len(msg) > 600:
        msg = msg[:597] + "..."
    if isinstance(e, KeyError) and msg.startswith("'"):
        msg = f"missing key {msg}"
    return msg


def _need_file(path: str, what: str) -> str:
    """``path`` if it exists and is a directory or a regular file (a FIFO, device or socket is
    refused before anything opens it)."""
    if not os.path.lexists(path) or not os.path.exists(path):
        raise CliError(f"{what} not found: {path}")
    if not os.path.isdir(path):
        regular_file(path, what)
    return path
