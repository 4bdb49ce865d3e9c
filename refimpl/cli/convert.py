"""``refimpl convert``: ``pytorch_model.bin`` -> ``model.safetensors`` without torch."""

from __future__ import annotations

import argparse
import os

from .. import checkpoints
from .common import _need_file

__all__ = ["cmd_convert"]


def cmd_convert(args: argparse.Namespace) -> int:
    """``refimpl convert SRC DST``: rewrite a ``pytorch_model.bin`` as safetensors; 0."""
    src, dst = args.src, args.dst
    _need_file(src, "input")
    if os.path.isdir(dst):
        dst = os.path.join(dst, "model.safetensors")
    checkpoints.convert_bin_to_safetensors(src, dst)
    print(f"wrote {dst}")
    return 0
