"""``refimpl fuse-lilt``: a LiLT checkpoint from a RoBERTa-like text model and lilt-only
layout weights."""

from __future__ import annotations

import argparse

from ..lilt.merge_checkpoints import fuse_lilt
from .common import _need_file

__all__ = ["cmd_fuse_lilt"]


def cmd_fuse_lilt(args: argparse.Namespace) -> int:
    """``refimpl fuse-lilt --text DIR --layout DIR --out DIR``: write the fused LiLT checkpoint; 0."""
    _need_file(args.text, "text checkpoint")
    _need_file(args.layout, "layout checkpoint")
    report = fuse_lilt(
        args.text, args.layout, args.out, copy_tokenizer=not args.no_tokenizer, force=args.force
    )
    print(report.summary())
    return 0
