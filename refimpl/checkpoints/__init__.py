"""Checkpoint weights: read safely, upcast, and match keys strictly.

Formats read (no torch import, no code from the file ever runs), one module each:

* `safetensors`: ``model.safetensors``; the header is parsed and validated, and each tensor
  is a read-only NumPy view of a memory map of the file (zero-copy when no cast is needed).
* `pytorch`: ``pytorch_model.bin``, zip format (torch >= 1.6) and legacy format
  (``torch.save(..., _use_new_zipfile_serialization=False)``); the pickle is read by the
  restricted unpickler of `unpickle`, that only knows the handful of globals torch uses to
  rebuild tensors, each replaced by a stand-in; every other global is refused before anything runs.
* `loading`: checkpoint directories and sharded sets (``model.safetensors.index.json`` /
  ``pytorch_model.bin.index.json``), the casts to the requested dtype (`raw`).
* `keys`: matching checkpoint keys to the model's, strictly.

Hostile and broken files end in `CheckpointError` (or ``OSError`` for a genuine I/O
failure), naming the file and the tensor; the limits checked before any allocation are
those of `refimpl.files`.
"""

from ..files import CheckpointError, sha256_file
from .keys import match_state_dict, subtree
from .loading import (
    WEIGHT_FILES,
    convert_bin_to_safetensors,
    load_raw_state_dict,
    load_state_dict,
    read_state_dict,
    weight_files,
)
from .pytorch import UnsafeCheckpointError
from .raw import RawTensor
from .safetensors import read_safetensors, save_safetensors, write_safetensors

__all__ = [
    "CheckpointError",
    "UnsafeCheckpointError",
    "RawTensor",
    "WEIGHT_FILES",
    "weight_files",
    "load_state_dict",
    "read_state_dict",
    "read_safetensors",
    "load_raw_state_dict",
    "save_safetensors",
    "write_safetensors",
    "convert_bin_to_safetensors",
    "sha256_file",
    "match_state_dict",
    "subtree",
]
