"""``refimpl convert``: ``pytorch_model.bin`` -> ``model.safetensors`` without torch."""

from __future__ import annotations

import argparse
import os

from .. import checkpoints
from .common import _need_file

__all__ = ["cmd_convert"]


def cmd_convert(args: argparse.Namespace) -> int:
    """``refimpl convert SRC DST [--force]``: rewrite a ``pytorch_model.bin`` as safetensors; 0.

    The destination is never the source (nor a link to it), a FIFO or a device; an existing
    one is replaced only with ``--force``, atomically (a kill or a full disk leaves it as it was).
    """
    src, dst = args.src, args.dst
    _need_file(src, "input")
    if os.path.isdir(dst):
        dst = os.path.join(dst, "model.safetensors")
    dst = checkpoints.convert_bin_to_safetensors(src, dst, force=args.force)
    print(f"wrote {dst}")
    return 0
