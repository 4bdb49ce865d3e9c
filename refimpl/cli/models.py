"""``refimpl models``: the supported architectures."""

from __future__ import annotations

import argparse

from .. import BASE_MODELS, SUPPORTED_ARCHITECTURES

__all__ = ["cmd_models"]


def cmd_models(args: argparse.Namespace) -> int:
    """``refimpl models``: print the supported architectures; 0."""
    print("supported architectures (config.json architectures[0]):")
    for name, target in SUPPORTED_ARCHITECTURES.items():
        print(f"  {name:<34} {target.replace(':', '.')}")
    print("model_type fallbacks: " + ", ".join(f"{k} -> {v}" for k, v in BASE_MODELS.items()))
    return 0
