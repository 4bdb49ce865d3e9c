"""Reading golden files: `read` validates the manifest against the file and returns a
`Golden` whose tensors are read from disk one at a time."""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checkpoints import read_safetensors
from ..files import CheckpointError, read_json
from .format import MANIFEST_KEY
from .manifest import validate_manifest
from .selection import is_selected, selection_spec

__all__ = ["Golden", "read"]


class _Tensors(MutableMapping):
    """A golden file's tensors by name (aliases resolved), read from disk one at a time.

    Each lookup reads that tensor's bytes from the file into a fresh array (nothing is cached,
    so a comparison's memory is one tensor pair at a time). Assigning a name keeps the new
    value in memory (for building a perturbed copy in tests and tools).
    """

    def __init__(
        self, path: str, table: dict[str, tuple[np.dtype, tuple[int, ...], int, int]], order, aliases
    ):
        self._path, self._table, self._aliases = path, table, dict(aliases)
        self._order = list(order)
        self._set: dict[str, np.ndarray] = {}
        self._deleted: set[str] = set()

    def info(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """(dtype, shape) of ``name`` without reading its data."""
        if name in self._set:
            return self._set[name].dtype, tuple(self._set[name].shape)
        if name in self._deleted:
            raise KeyError(name)
        dt, shape, _, _ = self._table[self._aliases.get(name, name)]
        return dt, shape

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self._set:
            return self._set[name]
        if name in self._deleted or name not in self._order_set():
            raise KeyError(name)
        dt, shape, begin, end = self._table[self._aliases.get(name, name)]
        a = np.empty(shape, dtype=dt)
        if end > begin:
            fd = os.open(self._path, os.O_RDONLY)
            try:
                view, done = memoryview(a.reshape(-1).view(np.uint8)), 0
                while done < end - begin:
                    got = os.preadv(fd, [view[done:]], begin + done)
                    if got <= 0:
                        raise OSError(f"{self._path}: short read of tensor {name!r}")
                    done += got
            finally:
                os.close(fd)
        return a

    def _order_set(self) -> set[str]:
        if not hasattr(self, "_names"):
            self._names = set(self._order)
        return self._names

    def __setitem__(self, name: str, value: Any) -> None:
        if name not in self._order_set() and name not in self._set:
            self._order.append(name)
            self._names.add(name)
        self._deleted.discard(name)
        self._set[name] = np.asarray(value)

    def __delitem__(self, name: str) -> None:
        if name not in self:
            raise KeyError(name)
        self._set.pop(name, None)
        self._deleted.add(name)

    def __contains__(self, name: object) -> bool:
        return (
            isinstance(name, str)
            and name not in self._deleted
            and (name in self._set or name in self._order_set())
        )

    def __iter__(self):
        return (n for n in self._order if n not in self._deleted)

    def __len__(self) -> int:
        return len(self._order) - len(self._deleted)


class _View(Mapping):
    """Part of a tensor mapping under shortened keys (``Golden.inputs`` and friends)."""

    def __init__(self, base: Mapping[str, Any], keys: dict[str, str]):
        self._base, self._keys = base, keys

    def __getitem__(self, k: str) -> Any:
        return self._base[self._keys[k]]

    def __iter__(self):
        return iter(self._keys)

    def __len__(self) -> int:
        return len(self._keys)


@dataclass
class Golden:
    """A golden case: ``tensors`` (name -> array, forward order, aliases resolved; read lazily
    from the file) and its ``manifest``."""

    path: str | None
    manifest: dict[str, Any]
    tensors: Mapping[str, np.ndarray]

    @property
    def inputs(self) -> Mapping[str, np.ndarray]:
        """Forward keywords -> arrays (the ``inputs.`` prefix removed)."""
        return _View(self.tensors, {k[7:]: k for k in self.tensors if k.startswith("inputs.")})

    @property
    def outputs(self) -> Mapping[str, np.ndarray]:
        """``outputs.<field>[.<i>]`` with the ``outputs.`` prefix removed."""
        return _View(self.tensors, {k[8:]: k for k in self.tensors if k.startswith("outputs.")})

    @property
    def intermediates(self) -> Mapping[str, np.ndarray]:
        """Traced tensors (neither inputs nor outputs), forward order."""
        return _View(self.tensors, {k: k for k in self.tensors if not k.startswith(("inputs.", "outputs."))})

    @property
    def aliases(self) -> dict[str, str]:
        """alias name -> stored name (empty for format version 1)."""
        return dict(self.manifest.get("aliases") or {})

    @property
    def selection(self) -> dict[str, Any]:
        """What the writer kept (``{"select": [...], "terms": [...]}``); all for version 1."""
        return dict(self.manifest.get("selection") or selection_spec(None))

    def is_selected(self, name: str) -> bool:
        """Whether ``name`` is inside this file's selection (see `is_selected`)."""
        return is_selected(self.manifest, name)

    def get(self, name: str, default: Any = None) -> Any:
        """The array of ``name`` (an alias resolves to its stored tensor), or ``default``."""
        return self.tensors[name] if name in self.tensors else default

    def info(self, name: str) -> tuple[np.dtype, tuple[int, ...]]:
        """(dtype, shape) of ``name`` without reading its data."""
        if isinstance(self.tensors, _Tensors):
            return self.tensors.info(name)
        a = np.asarray(self.tensors[name])
        return a.dtype, tuple(a.shape)

    def entry(self, name: str) -> dict[str, Any]:
        """The manifest entry of tensor ``name``."""
        for e in self.manifest.get("tensors", []):
            if e["name"] == name:
                return e
        raise KeyError(name)


def read(path: str | os.PathLike) -> Golden:
    """Read a golden file (version 1 or 2): manifest now, tensors lazily in forward order.

    The file is parsed and validated by `refimpl.checkpoints.read_safetensors`; the
    manifest is checked against it (`validate_manifest`). ``tensors`` resolves aliases
    and reads one tensor at a time from disk. A plain safetensors file without a manifest is
    read too (tensors in file order, empty manifest): handy for a port's candidate output.

    Raises:
        FileNotFoundError: no such file. CheckpointError (a ValueError): not a safetensors
            file, or a manifest that is not valid JSON or does not fit the file.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"no such file: {p}")
    meta, raw = read_safetensors(p)
    with open(p, "rb") as f:  # the header again, for the data offsets (already validated)
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n).decode("utf-8"))
    table = {}
    for name, t in raw.items():
        b, e = header[name]["data_offsets"]
        table[name] = (t.array.dtype, tuple(t.array.shape), 8 + n + b, 8 + n + e)
    manifest: dict[str, Any] = {}
    if MANIFEST_KEY in meta:
        try:
            manifest = read_json(
                meta[MANIFEST_KEY].encode("utf-8"), f"{p}: metadata {MANIFEST_KEY!r}", allow_nonfinite=True
            )
        except CheckpointError as e:
            raise CheckpointError(f"{e} (not a valid manifest)") from None
        validate_manifest(p, manifest, {k: (t.dtype, tuple(t.array.shape)) for k, t in raw.items()})
    order = [e["name"] for e in manifest.get("tensors", [])]
    seen = set(order)
    order += [k for k in raw if k not in seen]
    return Golden(p, manifest, _Tensors(p, table, order, manifest.get("aliases") or {}))
