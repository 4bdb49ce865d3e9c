"""Checkpoint directories, weight files and sharded sets, read as NumPy arrays.

A directory is searched for `WEIGHT_FILES` in transformers' order (safetensors first); a
shard index (``*.index.json``) names its shards, each read once. Every file goes through the
format's own reader (`refimpl.checkpoints.safetensors`, `refimpl.checkpoints.pytorch`).
"""

from __future__ import annotations

import os

import numpy as np

from ..files import CheckpointError, check_destination, input_identities, read_json, regular_file, short_repr
from .pytorch import read_torch
from .raw import RawTensor, _cast, _check_float_dtype
from .safetensors import read_safetensors, save_safetensors

__all__ = [
    "WEIGHT_FILES",
    "weight_files",
    "load_raw_state_dict",
    "load_state_dict",
    "read_state_dict",
    "convert_bin_to_safetensors",
]

#: The files a checkpoint directory is searched for, in transformers' order of preference.
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)


def _read_safetensors(path: str) -> dict[str, RawTensor]:
    """The tensors of `read_safetensors` (without the metadata)."""
    return read_safetensors(path)[1]


def _read_index(path: str) -> dict[str, str]:
    """``weight_map`` of a sharded index: key -> shard file name (in the index's directory)."""
    index = read_json(path, f"{path}: corrupt shard index")
    wmap = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(wmap, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in wmap.items()
    ):
        raise CheckpointError(f"{path}: shard index needs a 'weight_map' of tensor name -> shard file")
    for k, v in wmap.items():
        if not v or os.path.basename(v) != v or v in (".", ".."):
            raise CheckpointError(
                f"{path}: shard of {short_repr(k)} must be a file name in the same directory, got {short_repr(v)}"
            )
    return wmap


def weight_files(path: str | os.PathLike) -> list[str]:
    """The weight files ``load_state_dict(path)`` reads, in order (shards included).

    A directory is searched for ``WEIGHT_FILES`` in order (safetensors first, as
    transformers does); a file is taken as it is.

    Raises:
        FileNotFoundError: naming the directory and every file looked for.
    """
    p = os.fspath(path)
    if os.path.isdir(p):
        for name in WEIGHT_FILES:
            if os.path.lexists(os.path.join(p, name)):
                p = regular_file(os.path.join(p, name), "checkpoint")  # a FIFO or device is refused
                break
        else:
            raise FileNotFoundError(f"no checkpoint weights in {p}: looked for {', '.join(WEIGHT_FILES)}")
    elif not os.path.exists(p):
        raise FileNotFoundError(f"no such checkpoint file or directory: {p}")
    else:
        regular_file(p, "checkpoint")
    if not p.endswith(".json"):
        return [p]
    wmap = _read_index(p)
    shards = list(dict.fromkeys(wmap.values()))
    d = os.path.dirname(p)
    return [p] + [os.path.join(d, s) for s in shards]


def _read_file(path: str) -> dict[str, RawTensor]:
    return _read_safetensors(path) if path.endswith(".safetensors") else read_torch(path)


def load_raw_state_dict(path: str | os.PathLike) -> dict[str, RawTensor]:
    """Every tensor of a checkpoint as stored (dtype code + array; bfloat16 as uint16 bits).

    Args:
        path: a checkpoint directory, a weight file, or a shard index (``*.index.json``).

    Returns:
        checkpoint key -> `RawTensor`. Arrays may be read-only views of the file.

    Raises:
        FileNotFoundError: no weights found.
        CheckpointError: a corrupt / truncated file, a refused pickle global
            (`UnsafeCheckpointError`), or a shard that lacks a key its index names.
    """
    files = weight_files(path)
    if len(files) == 1:
        return _read_file(files[0])
    index, shard_files = files[0], files[1:]
    wmap = _read_index(index)
    out: dict[str, RawTensor] = {}
    for shard in shard_files:  # each shard read once
        if not os.path.lexists(shard):
            raise CheckpointError(f"{index}: shard file {shard} is missing")
        regular_file(shard, "shard")
        tensors = _read_file(shard)
        name = os.path.basename(shard)
        lacking = [k for k, s in wmap.items() if s == name and k not in tensors]
        if lacking:
            raise CheckpointError(
                f"{shard}: lacks tensors its index {index} places there: {', '.join(lacking)}"
            )
        for k, v in tensors.items():
            if k in out:
                raise CheckpointError(
                    f"{index}: tensor {k!r} is stored in more than one shard (again in {shard})"
                )
            out[k] = v
    return out


def load_state_dict(path: str | os.PathLike, dtype=np.float32) -> dict[str, np.ndarray]:
    """Read every tensor of a checkpoint directory (or weight file) as NumPy arrays.

    Args:
        path: a checkpoint directory (``model.safetensors``, ``model.safetensors.index.json``,
            ``pytorch_model.bin``, ``pytorch_model.bin.index.json``, looked for in that order),
            a weight file, or a shard index.
        dtype: float dtype for floating tensors (float16 / bfloat16 are upcast exactly);
            ``None`` keeps the stored float type (bfloat16 becomes float32). Integer and bool
            tensors keep theirs.

    Returns:
        checkpoint key -> array of the stored shape. When the stored dtype already is
        ``dtype``, a safetensors (or zip ``.bin``) tensor is a read-only view of the
        memory-mapped file: no copy is made.

    Raises:
        FileNotFoundError: no weights found.
        CheckpointError: corrupt or truncated file, refused pickle global; names the file.
    """
    dt = _check_float_dtype(dtype)
    return {k: _cast(v, dt) for k, v in load_raw_state_dict(path).items()}


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Every tensor with its stored dtype where NumPy has it (bfloat16 becomes float32, exactly):
    ``load_state_dict(path, dtype=None)``."""
    return load_state_dict(path, dtype=None)


def convert_bin_to_safetensors(
    bin_path: str | os.PathLike, out_path: str | os.PathLike, force: bool = False
) -> str:
    """Rewrite a ``pytorch_model.bin`` (file, shard index or directory) as one safetensors file.

    Read with the restricted unpickler (nothing in the pickle runs); every tensor keeps its
    dtype, bfloat16 included, and its exact bits. Tensors that shared storage are written
    separately. The metadata is ``{"format": "pt"}`` so transformers loads the result.

    The destination is checked before anything is read (`refimpl.files.check_destination`):
    never a file of the source checkpoint (same inode: a symlink or hardlink to the ``.bin``
    is caught), never a FIFO, device or directory, and an existing file only with ``force``.
    It is written atomically, so a crash or a full disk leaves its old bytes in place.

    Args:
        bin_path: the ``.bin`` checkpoint (file, index or directory).
        out_path: the ``.safetensors`` file to write.
        force: replace an existing ``out_path``.

    Returns:
        ``out_path`` (a symlink's target when it is one).

    Raises:
        refimpl.files.DestinationError: the destination may not be written.
    """
    src = weight_files(bin_path)
    if src[0].endswith(".safetensors"):
        raise ValueError(f"bin_path {os.fspath(bin_path)} holds safetensors weights already")
    inputs = input_identities(src)
    dst = check_destination(out_path, inputs, force=force, what="out_path", kind="a file to replace")
    tensors = load_raw_state_dict(src[0])
    check_destination(
        dst, inputs, force=force, what="out_path", kind="a file to replace"
    )  # again, after the read
    return save_safetensors(dst, tensors)
