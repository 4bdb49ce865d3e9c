"""Builders of hostile and broken files for tests/test_hostile.py and tests/test_fuzz_files.py.

Valid files come from their reference writers (torch.save, the safetensors library, json);
the hostile ones are those bytes edited by hand, with every edit named here."""

from __future__ import annotations

import io
import json
import struct
import zipfile

import torch

# The outcomes a file reader may have: valid data, or one of the documented errors.
DOCUMENTED = (ValueError, OSError)  # CheckpointError is a ValueError; checked exactly in the tests


def st_bytes(header, data: bytes = b"") -> bytes:
    """A safetensors file with a hand-made header: ``u64 len | JSON | data`` (header a dict or raw bytes)."""
    h = header if isinstance(header, bytes) else json.dumps(header).encode()
    return len(h).to_bytes(8, "little") + h + data


def torch_bytes(obj, zip_format: bool = True) -> bytes:
    """What ``torch.save(obj)`` writes, in the zip or the legacy format."""
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=zip_format)
    return buf.getvalue()


def rezip(
    data: bytes, compression: int = zipfile.ZIP_DEFLATED, replace: dict[str, bytes] | None = None
) -> bytes:
    """The same archive with every member re-compressed (and some replaced), as a user's zip tool might."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w", compression) as dst:
        for info in src.infolist():
            dst.writestr(info.filename, (replace or {}).get(info.filename, src.read(info)))
    return out.getvalue()


def patch_member(
    data: bytes,
    name_suffix: str,
    file_size: int | None = None,
    method: int | None = None,
    flags: int | None = None,
) -> bytes:
    """Edit a member's declared uncompressed size, compression method or flag bits in both its
    local header and its central-directory entry (the CRC is left as it is)."""
    b = bytearray(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(name_suffix))
    lh = info.header_offset
    cd = b.find(b"PK\x01\x02")
    while cd >= 0:
        n = struct.unpack_from("<H", b, cd + 28)[0]
        if b[cd + 46 : cd + 46 + n].decode() == info.filename:
            break
        cd = b.find(b"PK\x01\x02", cd + 4)
    assert cd >= 0
    if flags is not None:
        struct.pack_into("<H", b, lh + 6, flags)
        struct.pack_into("<H", b, cd + 8, flags)
    if method is not None:
        struct.pack_into("<H", b, lh + 8, method)
        struct.pack_into("<H", b, cd + 10, method)
    if file_size is not None:
        struct.pack_into("<I", b, lh + 22, file_size)
        struct.pack_into("<I", b, cd + 24, file_size)
    return bytes(b)


class Reduce:
    """Pickles as ``func(*args)``: how a hand-made pickle names a global."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


def build_pickle_bytes(target_module: str, target_name: str, state) -> bytes:
    """Protocol-2 pickle: ``GLOBAL target`` then ``BUILD state`` then a valid empty state dict.

    Written opcode by opcode: ``c<module>\\n<name>\\n``, the pickled state, ``b`` (BUILD),
    ``0`` (POP), then ``}`` (an empty dict) and ``.``."""
    state_ops = pickle_ops(state)
    return b"\x80\x02c" + target_module.encode() + b"\n" + target_name.encode() + b"\n" + state_ops + b"b0}."


def pickle_ops(obj) -> bytes:
    """The opcodes that push ``obj`` (protocol 2, no PROTO, no STOP, no memo)."""
    import pickle
    import pickletools

    raw = pickle.dumps(obj, protocol=2)
    raw = pickletools.optimize(raw)  # drops the unused memo PUTs
    assert raw[:2] == b"\x80\x02" and raw[-1:] == b"."
    return raw[2:-1]


def zip_with_pickle(pkl: bytes, archive: str = "archive") -> bytes:
    """A torch-style zip holding just ``<archive>/data.pkl`` (and ``byteorder``)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{archive}/data.pkl", pkl)
        z.writestr(f"{archive}/byteorder", b"little")
    return out.getvalue()
