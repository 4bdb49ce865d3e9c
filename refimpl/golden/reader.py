"""Reading golden files: `read` validates the manifest against the file and returns a
`Golden` whose tensors are read from disk one at a time; `Golden.verify` checks the data
against the manifest's ``tensor_sha256``; `is_golden_file` tells a file refimpl wrote."""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..checkpoints import read_safetensors
from ..files import MAX_HEADER_BYTES, CheckpointError, open_regular, read_json
from .format import DIGEST_KEY, FORMAT, MANIFEST_KEY
from .manifest import validate_manifest
from .selection import check_selection, is_selected, selection_spec

__all__ = ["Golden", "read", "is_golden_file"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def _identity(st: os.stat_result) -> tuple[int, int, int, int]:
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns


def _open_same(path: str, identity: tuple[int, int, int, int]) -> int:
    """A descriptor of ``path``, refused when the file was replaced since it was read."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
    if _identity(os.fstat(fd)) != identity:
        os.close(fd)
        raise CheckpointError(f"{path}: the file was replaced or changed since it was read; read it again")
    return fd


class _Tensors(MutableMapping):
    """A golden file's tensors by name (aliases resolved), read from disk one at a time.

    Each lookup reads that tensor's bytes from the file into a fresh array (nothing is cached,
    so a comparison's memory is one tensor pair at a time). Assigning a name keeps the new
    value in memory (for building a perturbed copy in tests and tools).
    """

    def __init__(
        self,
        path: str,
        table: dict[str, tuple[np.dtype, tuple[int, ...], int, int]],
        order,
        aliases,
        identity: tuple[int, int, int, int] | None = None,
    ):
        self._path, self._table, self._aliases = path, table, dict(aliases)
        self._identity = identity
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
            fd = self._open()
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

    def _open(self) -> int:
        if self._identity is None:
            return os.open(self._path, os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
        return _open_same(self._path, self._identity)

    def stored_names(self) -> list[str]:
        """The names stored in the file (aliases excluded)."""
        return list(self._table)

    def sha256(self, name: str, chunk: int = 16 << 20) -> str:
        """Hex SHA-256 of a stored tensor's bytes as they are in the file."""
        _, _, begin, end = self._table[name]
        h = hashlib.sha256()
        fd = self._open()
        try:
            pos = begin
            while pos < end:
                block = os.pread(fd, min(chunk, end - pos), pos)
                if not block:
                    raise CheckpointError(f"{self._path}: short read of tensor {name!r}")
                h.update(block)
                pos += len(block)
        finally:
            os.close(fd)
        return h.hexdigest()

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
        """Traced tensors (neither inputs nor outputs nor gradients), forward order."""
        skip = ("inputs.", "outputs.", "grad.", "upstream.")
        return _View(self.tensors, {k: k for k in self.tensors if not k.startswith(skip)})

    @property
    def gradients(self) -> Mapping[str, np.ndarray]:
        """``grad.<checkpoint key>`` and ``grad.<tensor name>`` with the ``grad.`` prefix removed
        (empty unless written with ``--grads``)."""
        return _View(self.tensors, {k[5:]: k for k in self.tensors if k.startswith("grad.")})

    @property
    def upstream(self) -> Mapping[str, np.ndarray]:
        """The upstream ``G_X`` (``upstream.outputs.<field>``) with the ``upstream.`` prefix
        removed (empty when ``L`` is the loss, or without ``--grads``)."""
        return _View(self.tensors, {k[9:]: k for k in self.tensors if k.startswith("upstream.")})

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

    def verify(self) -> list[str]:
        """Recompute every stored tensor's SHA-256 and compare it with the manifest's
        ``tensor_sha256`` (what `refimpl inspect --verify` and a resumed batch run do).

        Returns:
            the stored names whose bytes differ, or that have no digest (empty: the data is
            intact).

        Raises:
            CheckpointError: the file records no digests (written by a refimpl before they
                were added, or not a golden file), or was replaced since it was read.
        """
        digests = self.manifest.get(DIGEST_KEY)
        if not isinstance(digests, dict) or not isinstance(self.tensors, _Tensors):
            raise CheckpointError(
                f"{self.path}: records no {DIGEST_KEY} (written by an older refimpl): its data cannot be verified"
            )
        return [n for n in self.tensors.stored_names() if self.tensors.sha256(n) != digests.get(n)]

    def entry(self, name: str) -> dict[str, Any]:
        """The manifest entry of tensor ``name``."""
        for e in self.manifest.get("tensors", []):
            if e["name"] == name:
                return e
        raise KeyError(name)


def _check_digests(p: str, digests: Any, stored: Mapping[str, Any]) -> None:
    """``tensor_sha256`` must map names of stored tensors to 64 hex digits (a stored tensor
    without one fails `Golden.verify`)."""
    if not isinstance(digests, dict):
        raise CheckpointError(f"{p}: golden manifest field {DIGEST_KEY} must be an object")
    for k, v in digests.items():
        if k not in stored:
            raise CheckpointError(
                f"{p}: golden manifest field {DIGEST_KEY} names {k!r}, not stored in the file"
            )
        if not (isinstance(v, str) and _HEX64.fullmatch(v)):
            raise CheckpointError(f"{p}: golden manifest field {DIGEST_KEY}[{k!r}] must be 64 hex digits")


def read(path: str | os.PathLike) -> Golden:
    """Read a golden file (version 1 or 2): manifest now, tensors lazily in forward order.

    The file is parsed and validated by `refimpl.checkpoints.read_safetensors`; the
    manifest is checked against it (`validate_manifest`; its selection bounded first by
    `check_selection`). ``tensors`` resolves aliases and reads one tensor at a time from
    disk; a read after the file was replaced raises instead of mixing two files. A plain
    safetensors file without a manifest is read too (tensors in file order, empty manifest):
    handy for a port's candidate output.

    Raises:
        FileNotFoundError: no such file. CheckpointError (a ValueError): not a safetensors
            file, or a manifest that is not valid JSON or does not fit the file.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise FileNotFoundError(f"no such file: {p}")
    for _ in range(3):  # a writer may rename a new file over it meanwhile: read one file whole
        with open_regular(p, "golden file") as f:
            before = _identity(os.fstat(f.fileno()))
            n = int.from_bytes(f.read(8), "little")
            head = f.read(n) if 0 <= n <= MAX_HEADER_BYTES else b""
        meta, raw = read_safetensors(p)
        if _identity(os.stat(p)) == before:
            break
    else:
        raise CheckpointError(f"{p}: the file keeps being replaced while it is read")
    header = read_json(head, f"{p}: corrupt safetensors header", max_bytes=MAX_HEADER_BYTES, max_depth=4)
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
        if isinstance(manifest, dict) and isinstance(manifest.get("selection"), dict):
            try:
                check_selection(manifest["selection"], f"{p}: golden manifest field selection")
            except ValueError as e:
                raise CheckpointError(str(e)) from None
        validate_manifest(p, manifest, {k: (t.dtype, tuple(t.array.shape)) for k, t in raw.items()})
        if DIGEST_KEY in manifest:
            _check_digests(p, manifest[DIGEST_KEY], raw)
    order = [e["name"] for e in manifest.get("tensors", [])]
    seen = set(order)
    order += [k for k in raw if k not in seen]
    return Golden(p, manifest, _Tensors(p, table, order, manifest.get("aliases") or {}, before))


def is_golden_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is recognisably a golden file refimpl wrote: a regular file whose
    safetensors header carries a ``refimpl_manifest`` of format ``refimpl-golden`` (only the
    header is read; its data may be damaged: `Golden.verify` tells). Such a file may be
    replaced by ``refimpl golden`` and ``refimpl demo`` without ``--force``."""
    p = os.fspath(path)
    try:
        with open_regular(p, "golden file") as f:
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(f.read(8), "little")
            if not 2 <= n <= min(MAX_HEADER_BYTES, size - 8):
                return False
            head = f.read(n)
        header = read_json(head, p, max_bytes=MAX_HEADER_BYTES, max_depth=4)
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        text = meta.get(MANIFEST_KEY) if isinstance(meta, dict) else None
        if not isinstance(text, str):
            return False
        manifest = read_json(text.encode("utf-8"), p, allow_nonfinite=True)
        return isinstance(manifest, dict) and manifest.get("format") == FORMAT
    except (OSError, ValueError):
        return False
