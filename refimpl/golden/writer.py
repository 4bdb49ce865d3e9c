"""Writing golden files: `GoldenWriter` streams a traced forward pass to disk; `write` stores
tensors already in memory; `write_case` traces one case and writes it. Every golden file is
written here, through `refimpl.files.atomic_write` (temp file, fsync, rename, directory
fsync), to a destination checked first by `refimpl.files.check_destination`: never an
input, never a FIFO, device or directory, and an existing file only when it is a golden
file refimpl wrote (`is_golden_file`) or ``force`` is given."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from .. import switch, trace
from ..files import atomic_write, check_destination, full_disk_error, input_identities
from .capture import _iter_outputs, document_inputs, document_outputs, forward_keywords, prepare_inputs
from .format import _CODE, DIGEST_KEY, FORMAT, FORMAT_VERSION, MANIFEST_KEY, MASK_INPUTS, _jsonable, _to_numpy
from .grads import DEFAULT_SEED, GRAD_PREFIX, UPSTREAM_PREFIX, mark_gradient_entries, record_gradients
from .manifest import _entries, _manifest, inputs_hash
from .reader import Golden, is_golden_file, read
from .selection import SelectionError, is_selected, matching_terms, selection_spec, wants_attentions

__all__ = ["GoldenWriter", "write", "write_case"]


class GoldenWriter(trace.Recorder):
    """A `refimpl.trace.Recorder` that streams a golden file to disk.

    Each recorded tensor is checked against the selection, hashed (SHA-256 of its bytes: the
    manifest's ``tensor_sha256``, and with its dtype and shape the key that finds a repeat)
    and, unless a bit-identical tensor is already stored (confirmed by a byte compare),
    appended to a spill file next to ``path``; otherwise its name becomes an alias. Nothing is
    kept in memory but names, shapes and hashes. `finish` writes the safetensors header with
    the manifest, streams the spill files after it and renames the result to ``path``
    atomically; `abort` removes the spill files.

    ``path`` is checked when the writer is made, before any work, and again in `finish`
    (`refimpl.files.check_destination`).

    The data is grouped by element size (8-byte types first, then 4, 2, 1), so every tensor
    stays aligned for a zero-copy memory map; the manifest keeps the forward order.

    Args:
        path: the golden file to write.
        select: ``--select`` values (see `selection_spec`). When given, each value must keep
            at least one tensor, or `finish` refuses to write.
        dedup: store bit-identical tensors once (default).
        force: replace an existing file that is not a golden file refimpl wrote.
        inputs: files and directories the caller read (never written over, even with ``force``).
    """

    def __init__(
        self,
        path: str | os.PathLike,
        select: str | Sequence[str] | None = None,
        dedup: bool = True,
        force: bool = False,
        inputs: Iterable[str | os.PathLike | None] = (),
    ):
        super().__init__(copy=False)
        self.force = force
        self.inputs = input_identities(inputs)
        self.path = self._check(os.fspath(path))
        self.parent = os.path.dirname(os.path.abspath(self.path))
        os.makedirs(self.parent, exist_ok=True)
        self.selection = selection_spec(select)
        self.strict_selection = select is not None
        self._hits: set[int] = set()
        self._recorded, self._example = 0, None  # for the message of a select that kept nothing
        self.digests: dict[str, str] = {}  # stored name -> hex SHA-256
        self.dedup = dedup
        self.meta: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}  # every kept name, forward order
        self.aliases: dict[str, str] = {}  # alias -> stored name
        self.masks: dict[str, tuple[int, ...]] = {}
        self.stored_bytes = 0
        self._stored: dict[str, tuple[str, tuple[int, ...], int, int, int]] = {}  # code, shape, size, off, n
        self._by_key: dict[tuple[str, tuple[int, ...], bytes], list[str]] = {}
        self._spill: dict[int, Any] = {}
        self._pos: dict[int, int] = {}
        self.in_forward = False

    def _check(self, path: str) -> str:
        return check_destination(
            path, self.inputs, force=self.force, ours=is_golden_file, what="golden file",
            kind="a golden file refimpl wrote",
        )  # fmt: skip

    def _spill_file(self, size: int):
        if size not in self._spill:
            self._spill[size] = tempfile.TemporaryFile(dir=self.parent, prefix=".golden-spill-")
            self._pos[size] = 0
        return self._spill[size]

    def _find_equal(self, a: np.ndarray, key: tuple) -> str | None:
        raw = a.reshape(-1).view(np.uint8)
        for cand in self._by_key.get(key, []):
            _, _, size, off, n = self._stored[cand]
            f = self._spill[size]
            try:
                f.flush()
            except OSError as e:
                raise full_disk_error(e, self.path) from None
            if np.array_equal(np.frombuffer(os.pread(f.fileno(), n, off), np.uint8), raw):
                return cand
        return None

    def wants(self, name: str) -> bool:
        """Whether the selection keeps ``name`` (a fast kernel that would skip it gives way to its formula)."""
        return is_selected(self.selection, name)

    def store(self, name: str, value: Any, aliases: tuple[str, ...] = ()) -> None:
        """Spill ``value`` (or alias it to an equal stored tensor) under the selected names.

        Args:
            name: the full name; ``aliases``: other full names of the same value.
            value: an array of any shape (or a scalar); stored with its dtype and shape.
        """
        if self.in_forward:
            for n in (name, *aliases):
                if n.startswith(("inputs.", "outputs.", GRAD_PREFIX, UPSTREAM_PREFIX)):
                    raise ValueError(f"trace name {n!r} clashes with the golden naming scheme")
        self._recorded += 1
        if self._example is None and not name.startswith("inputs."):
            self._example = name
        names = [n for n in (name, *aliases) if is_selected(self.selection, n)]
        if not names or value is None:
            return
        if self.strict_selection:
            for n in names:
                self._hits.update(matching_terms(self.selection, n))
        a = _to_numpy(value)
        if a.dtype.name not in _CODE:
            raise ValueError(f"tensor {name!r}: dtype {a.dtype} cannot be stored (allowed: {sorted(_CODE)})")
        shape = tuple(int(s) for s in a.shape)
        if names[0].startswith("inputs.") and names[0][7:] in MASK_INPUTS and np.any(a == 0):
            self.masks[names[0]] = shape
        for n in names:
            self.meta[n] = (a.dtype, shape)
        target = None
        digest = hashlib.sha256(memoryview(a.reshape(-1).view(np.uint8))).hexdigest()
        key = (a.dtype.str, shape, digest)
        if self.dedup:
            target = self._find_equal(a, key)
        if target is None:
            target, rest = names[0], names[1:]
            size = a.dtype.itemsize
            f = self._spill_file(size)
            n = a.nbytes
            if n:
                try:
                    f.write(memoryview(a.reshape(-1).view(np.uint8)))
                except OSError as e:
                    raise full_disk_error(e, self.path) from None
            self.digests[target] = digest
            self._stored[target] = (_CODE[a.dtype.name], shape, size, self._pos[size], n)
            self._pos[size] += n
            self.stored_bytes += n
            if self.dedup:
                self._by_key.setdefault(key, []).append(target)
        else:
            rest = names
        for n in rest:
            self.aliases[n] = target

    def manifest_entries(self) -> list[dict[str, Any]]:
        """The manifest's ``tensors`` list of what was recorded so far (forward order)."""
        return _entries(self.meta, self.masks)

    def unmatched_selection(self) -> list[str]:
        """The ``select`` values that kept no tensor so far (only when ``select`` was given)."""
        if not self.strict_selection:
            return []
        return [v for i, v in enumerate(self.selection["select"]) if i not in self._hits]

    def finish(self, manifest: Mapping[str, Any]) -> str:
        """Write the file: 8-byte header length, the JSON header (tensor table and
        ``__metadata__`` manifest with ``tensor_sha256`` added, padded to 8 bytes), then the
        spilled data; written atomically (`refimpl.files.atomic_write`).

        Raises:
            SelectionError: a ``select`` value kept no tensor (nothing is written).
            refimpl.files.DestinationError: ``path`` may no longer be written.
            OSError: naming ``path`` (a full disk: ``path`` keeps its old bytes).
        """
        try:
            missed = self.unmatched_selection()
            if missed:
                raise SelectionError(
                    f"select {', '.join(map(repr, missed))} matched no tensor of the {self._recorded} recorded "
                    f"(names look like {self._example!r}; see refimpl inspect on a full file); "
                    f"nothing was written to {self.path}"
                )
            self._check(self.path)
            sizes = sorted(self._spill, reverse=True)
            base, at = {}, 0
            for s in sizes:
                base[s] = at
                at += self._pos[s]
            full = {**manifest, DIGEST_KEY: {n: self.digests[n] for n in self._stored}}
            header: dict[str, Any] = {"__metadata__": {MANIFEST_KEY: json.dumps(full)}}
            for name, (code, shape, size, off, n) in self._stored.items():
                header[name] = {
                    "dtype": code,
                    "shape": list(shape),
                    "data_offsets": [base[size] + off, base[size] + off + n],
                }
            hb = json.dumps(header, separators=(",", ":")).encode("utf-8")
            hb += b" " * (-(8 + len(hb)) % 8)
            try:
                for s in sizes:
                    self._spill[s].flush()
                with atomic_write(self.path) as out:
                    out.write(len(hb).to_bytes(8, "little"))
                    out.write(hb)
                    for s in sizes:
                        f = self._spill[s]
                        f.seek(0)
                        shutil.copyfileobj(f, out, 16 << 20)
            except OSError as e:
                raise full_disk_error(e, self.path) from None
        finally:
            self.abort()
        return self.path

    def abort(self) -> None:
        """Close and remove the spill files (nothing is written to ``path``)."""
        for f in self._spill.values():
            try:
                f.close()  # flushes what is buffered: on a full disk that fails, and is discarded
            except OSError:
                pass
        self._spill.clear()


def write(
    path: str | os.PathLike,
    tensors: Mapping[str, np.ndarray],
    manifest: Mapping[str, Any],
    select: str | Sequence[str] | None = None,
    force: bool = False,
) -> str:
    """Write ``tensors`` and ``manifest`` to one golden file (parent dirs created).

    The manifest's ``tensors`` list must name exactly the keys of ``tensors``. Bit-identical
    tensors are stored once: the alias table is recomputed from the values (the manifest's own
    ``aliases`` is replaced), so a changed copy of a tensor is stored on its own. The selection
    is kept from the manifest unless ``select`` is given; ``tensor_sha256`` is recomputed.
    An existing ``path`` is replaced only when it is a golden file or ``force`` is given.
    """
    listed = [e["name"] for e in manifest["tensors"]]
    if set(listed) != set(tensors) or len(listed) != len(tensors):
        raise ValueError("manifest['tensors'] must list every tensor exactly once")
    sel = manifest.get("selection") or selection_spec(select)
    w = GoldenWriter(path, select=None, force=force)
    if select is not None:
        w.selection = selection_spec(select)
        w.strict_selection = True
    try:
        for name in listed:
            w.store(name, tensors[name])
        kept = {e["name"]: e for e in manifest["tensors"] if e["name"] in w.meta}
        out = dict(manifest)
        out["format"], out["format_version"] = FORMAT, FORMAT_VERSION
        out["selection"] = sel if select is None else w.selection
        out["aliases"] = w.aliases
        out["tensors"] = list(kept.values())
        return w.finish(_jsonable(out))
    except BaseException:
        w.abort()
        raise


def write_case(
    path: str | os.PathLike,
    model: Any,
    inputs: Mapping[str, Any],
    checkpoint: str | os.PathLike | None = None,
    inputs_source: Mapping[str, Any] | None = None,
    select: str | Sequence[str] | None = None,
    weights: list[dict[str, Any]] | None = None,
    force: bool = False,
    inputs_files: Iterable[str | os.PathLike | None] = (),
    grads: bool = False,
    seed: int = DEFAULT_SEED,
) -> Golden:
    """Trace one forward pass of ``model`` on ``inputs`` and stream it to a golden file
    (with ``grads``, also the gradients of one scalar ``L``: `refimpl.golden.grads`).

    Tensors go to disk as they are recorded (`GoldenWriter`), so memory stays at the
    model's weights plus one forward pass's working set.

    Args:
        path: output ``.safetensors`` file.
        model: a refimpl model.
        inputs: forward keywords -> arrays, e.g. ``input_ids [batch, seq]``, ``bbox
            [batch, seq, 4]``, ``visual_feats [batch, boxes, feat_dim]`` (see `trace_forward`),
            flags, and documents (the original LiLT relation extraction's ``entities`` and
            ``relations``: kept as JSON in the manifest's ``inputs_json``; the output's
            ``pred_relations`` go to its ``outputs_json``).
        checkpoint: the model's checkpoint directory, for the weight hashes.
        inputs_source: provenance of the inputs, stored in the manifest.
        select: which tensors to keep (`selection_spec`; default all).
        weights: precomputed `weight_entries` of ``checkpoint`` (batch runs).
        force: replace an existing ``path`` that is not a golden file refimpl wrote.
        inputs_files: the files the inputs were read from; with every file of ``checkpoint``
            they are never written over (see `GoldenWriter`).
        grads: also write ``upstream.outputs.<field>`` (without labels), ``grad.<checkpoint
            key>`` and ``grad.<tensor name>`` (`refimpl.golden.grads.record_gradients`), and
            the manifest's ``gradients`` object (``L``, the seed, the tolerance rule).
        seed: the seed of the upstream ``G_X`` (``grads`` without labels).

    Returns:
        the written case as a `Golden` (read back lazily from ``path``).
    """
    arrays, flags = prepare_inputs(model, inputs)
    w = GoldenWriter(path, select=select, force=force, inputs=[checkpoint, *inputs_files])
    docs = document_inputs(flags)  # entities, relations: JSON in the manifest, not tensors
    fwd = {k: v for k, v in flags.items() if k not in docs}
    # a selection without attention outputs need not hold every layer's probabilities until
    # the forward returns (12 x [1, 12, 512, 512] float64 for LiLT base: 300 MB per stream)
    fwd.setdefault("output_attentions", wants_attentions(w.selection))
    fwd.setdefault("output_hidden_states", True)
    try:
        model_kw = {**forward_keywords(arrays), **{k: flags[k] for k in docs}}
    except ValueError as e:
        w.abort()
        raise ValueError(f"inputs: {e}") from None
    kwargs = {**model_kw, **fwd}
    digest = inputs_hash(arrays, {**fwd, **docs})
    mode = switch.mode()
    try:
        for k, v in arrays.items():
            w.add(f"inputs.{k}", v)
        w.in_forward = True
        with trace.tracing(recorder=w):
            out = model(**kwargs)
        w.in_forward = False
        for name, v in _iter_outputs(out):
            w.add(name, v)
        out_docs = document_outputs(out)
        del out
        section, atols = None, {}
        if grads:
            flags_ = {k: fwd[k] for k in ("output_attentions", "output_hidden_states")}
            plain = {k: v for k, v in fwd.items() if k not in flags_}
            section, atols = record_gradients(w, model, {**model_kw, **plain}, flags_, seed)
        manifest = _manifest(
            mark_gradient_entries(w.manifest_entries(), atols),
            w.aliases,
            w.selection,
            model=model,
            checkpoint=checkpoint,
            inputs_source=inputs_source,
            forward_kwargs=fwd,
            weights=weights,
            inputs_sha256=digest,
            inputs_json=docs,
            outputs_json=out_docs,
            mode=mode,
        )
        if section is not None:
            manifest["gradients"] = section
        path = w.finish(manifest)
    except BaseException:
        w.abort()
        raise
    return read(path)
