"""Builders for tests/test_safety.py (issue 20): small checkpoints to fuse, hand-made zip
archives whose members declare gigabytes, a filesystem that fills, and runners for the CLI in
a subprocess under an address-space limit or while it is killed mid-write.

Every hostile file is built by hand here, with each edit named, from bytes the reference
writers produce (torch.save, json, zlib)."""

from __future__ import annotations

import errno
import io
import json
import os
import resource
import shutil
import struct
import subprocess
import sys
import time
import zipfile
import zlib
from contextlib import contextmanager

import numpy as np

import refimpl
from refimpl.checkpoints import load_raw_state_dict, save_safetensors

LILT_TINY = os.path.join(os.path.dirname(refimpl.__file__), "data", "lilt-tiny")
EXAMPLE = os.path.join(os.path.dirname(refimpl.__file__), "data", "example")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

#: the address-space limit of the memory-bound tests (the issue's 1.5 GB).
AS_LIMIT = 1536 << 20

# The layout-only part of a LiLT checkpoint (jpWang/LiLT's lilt-only-base holds these).
_LAYOUT_PARTS = (
    "layout_embeddings.",
    ".layout_",
    "attention.layout_output.",
    "layout_intermediate.",
    "layout_output.",
)


def fuse_inputs(root) -> tuple[str, str]:
    """A RoBERTa-like text checkpoint and a layout-only LiLT checkpoint cut from the bundled
    lilt-tiny (so that `fuse-lilt` of the two gives lilt-tiny's base weights back)."""
    sd = {k: np.array(v.array) for k, v in load_raw_state_dict(LILT_TINY).items()}
    with open(os.path.join(LILT_TINY, "config.json")) as f:
        cfg = json.load(f)
    text, layout = os.path.join(root, "text"), os.path.join(root, "layout")
    os.makedirs(text)
    os.makedirs(layout)
    lay = {k: v for k, v in sd.items() if k.startswith("lilt.") and any(p in k for p in _LAYOUT_PARTS)}
    txt = {"roberta." + k[5:]: v for k, v in sd.items() if k.startswith("lilt.") and k not in lay}
    h = cfg["hidden_size"]  # lilt-tiny is a token classifier without a pooler; a RoBERTa has one
    rng = np.random.default_rng(0)
    txt["roberta.pooler.dense.weight"] = rng.standard_normal((h, h)).astype(np.float32)
    txt["roberta.pooler.dense.bias"] = np.zeros(h, np.float32)
    save_safetensors(os.path.join(layout, "model.safetensors"), lay)
    save_safetensors(os.path.join(text, "model.safetensors"), txt)
    with open(os.path.join(layout, "config.json"), "w") as f:
        json.dump(cfg, f)
    with open(os.path.join(text, "config.json"), "w") as f:
        json.dump({**cfg, "model_type": "roberta", "architectures": ["RobertaModel"]}, f)
    for n in (
        "vocab.json",
        "merges.txt",
        "tokenizer.json",
        "tokenizer_config.json",
        "special_tokens_map.json",
    ):
        shutil.copy(os.path.join(LILT_TINY, n), os.path.join(text, n))
    return text, layout


def snapshot(path) -> dict[str, bytes]:
    """name -> bytes of every file directly in a directory (or of one file, under "")."""
    p = os.fspath(path)
    if os.path.isfile(p):
        with open(p, "rb") as f:
            return {"": f.read()}
    out = {}
    for n in sorted(os.listdir(p)):
        q = os.path.join(p, n)
        if os.path.isfile(q):
            with open(q, "rb") as f:
                out[n] = f.read()
    return out


def deflate_zeros(n_bytes: int, block: int = 1 << 20) -> bytes:
    """A raw deflate stream that inflates to ``n_bytes`` zero bytes (``n_bytes`` a multiple of
    ``block``), built in milliseconds: after a full flush the compressor starts afresh, so one
    compressed block repeated ``n_bytes / block`` times, then the final empty block."""
    c = zlib.compressobj(9, zlib.DEFLATED, -15)
    c.compress(bytes(block))
    c.flush(zlib.Z_FULL_FLUSH)
    one = c.compress(bytes(block)) + c.flush(zlib.Z_FULL_FLUSH)
    assert n_bytes % block == 0
    return one * (n_bytes // block) + c.flush()


def raw_zip(members: list[tuple[str, bytes, int, int, int]]) -> bytes:
    """A zip archive written by hand: ``(name, stored bytes, method, declared size, crc)`` per
    member (method 0 stored, 8 deflated; sizes below 4 GiB, no zip64)."""
    out, central = io.BytesIO(), []
    for name, data, method, size, crc in members:
        nb = name.encode()
        offset = out.tell()
        out.write(
            struct.pack("<4sHHHHHIIIHH", b"PK\x03\x04", 20, 0, method, 0, 0, crc, len(data), size, len(nb), 0)
        )
        out.write(nb)
        out.write(data)
        central.append(
            struct.pack(
                "<4sHHHHHHIIIHHHHHII",
                b"PK\x01\x02",
                20,
                20,
                0,
                method,
                0,
                0,
                crc,
                len(data),
                size,
                len(nb),
                0,
                0,
                0,
                0,
                0,
                offset,
            )
            + nb  # fmt: skip
        )
    start = out.tell()
    for c in central:
        out.write(c)
    end = out.tell()
    out.write(
        struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(central), len(central), end - start, start, 0)
    )
    return out.getvalue()


def stored(name: str, data: bytes) -> tuple[str, bytes, int, int, int]:
    return name, data, zipfile.ZIP_STORED, len(data), zlib.crc32(data)


def npy_header(shape: tuple[int, ...], dtype: str = "<f8") -> bytes:
    """The bytes of a ``.npy`` version-1 header for ``shape`` (written by NumPy itself)."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": dtype, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def npz_of_zero_members(n_members: int, member_bytes: int) -> bytes:
    """An ``.npz`` of ``n_members`` float64 arrays of zeros, each ``member_bytes`` declared and
    truly inflating to that (a zero header is not needed to make the point; the CRC is left 0,
    never reached by a reader that refuses first)."""
    stream = deflate_zeros(member_bytes)
    return raw_zip([(f"a{i}.npy", stream, zipfile.ZIP_DEFLATED, member_bytes, 0) for i in range(n_members)])


def bin_with_huge_deflated_storage(storage_bytes: int = 1 << 31) -> bytes:
    """A torch zip checkpoint holding ``w = zeros(4)`` whose storage the pickle declares as
    ``storage_bytes / 4`` floats, in a deflated member that truly inflates to ``storage_bytes``
    zero bytes (a compression ratio of ~1011, inside the 1100 limit). Edits of torch.save's
    bytes: the storage's element count in the pickle (``K\\x04`` -> ``J`` + int32), the
    storage member replaced by the deflate stream (CRC left 0)."""
    import torch

    b = io.BytesIO()
    torch.save({"w": torch.zeros(4)}, b)
    with zipfile.ZipFile(io.BytesIO(b.getvalue())) as z:
        pkl = z.read("archive/data.pkl")
    old = b"cpuq\x06K\x04t"
    assert old in pkl
    pkl = pkl.replace(old, b"cpuq\x06J" + struct.pack("<i", storage_bytes // 4) + b"t")
    return raw_zip(
        [
            stored("archive/data.pkl", pkl),
            stored("archive/byteorder", b"little"),
            ("archive/data/0", deflate_zeros(storage_bytes), zipfile.ZIP_DEFLATED, storage_bytes, 0),
        ]
    )


# ---------------------------------------------------------------------------------------------
# running the CLI: bounded, or killed mid-write
# ---------------------------------------------------------------------------------------------
_TIMED = (
    "import sys, time\n"
    "from refimpl.cli import main\n"
    "t = time.perf_counter()\n"
    "rc = main(sys.argv[1:])\n"
    "sys.stderr.write(f'\\nELAPSED {time.perf_counter() - t:.3f}\\n')\n"
    "sys.exit(rc)\n"
)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env["OMP_NUM_THREADS"] = env["OPENBLAS_NUM_THREADS"] = "1"
    env.pop("REFIMPL_DEBUG", None)
    return env


def run_bounded(*argv, timeout: float = 60) -> tuple[int, str, float]:
    """``refimpl ARGV`` in a subprocess under ``RLIMIT_AS`` = 1.5 GB.

    Returns:
        (exit code, stderr without the timing line, seconds the command itself ran).
    """

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (AS_LIMIT, AS_LIMIT))

    p = subprocess.run(
        [sys.executable, "-c", _TIMED, *map(str, argv)],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
    )
    err, _, t = p.stderr.rpartition("\nELAPSED ")
    seconds = float(t) if t.strip() else float("inf")
    return p.returncode, (err if t.strip() else p.stderr), seconds


_SLOW = (
    "import sys, time\n"
    "import refimpl.files.writing as F\n"
    "orig = getattr(F, '_write', None)\n"
    "def slow(fd, data):\n"
    "    time.sleep(0.02)\n"
    "    return orig(fd, data[:32768])\n"
    "if orig is not None:\n"
    "    F._write = slow\n"
    "from refimpl.cli import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def start_slow_writer(*argv) -> subprocess.Popen:
    """``refimpl ARGV`` in a subprocess whose writes go 32 KiB per 20 ms (so that it can be
    killed mid-write)."""
    return subprocess.Popen(
        [sys.executable, "-c", _SLOW, *map(str, argv)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )


def wait_for_new_file(directory, before: set[str], proc: subprocess.Popen, timeout: float = 60) -> str | None:
    """The first file that appears in ``directory`` beyond ``before`` (a temp being written),
    or None when ``proc`` ends first."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        new = {n for n in os.listdir(directory) if not n.startswith(".golden-spill-")} - before
        if new:
            return sorted(new)[0]
        if proc.poll() is not None:
            return None
        time.sleep(0.005)
    return None


# ---------------------------------------------------------------------------------------------
# a filesystem that fills
# ---------------------------------------------------------------------------------------------
@contextmanager
def small_filesystem(path, size_bytes: int, monkeypatch):
    """A directory on a filesystem that fills after about ``size_bytes``: a tmpfs of that
    size when this user may mount one; otherwise a plain directory where refimpl's writes
    (`refimpl.files.writing._write`) raise ``ENOSPC`` once ``size_bytes`` were written in all.

    Yields:
        ``(directory, "tmpfs" | "injected")``.
    """
    os.makedirs(path)
    r = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size_bytes}", "tmpfs", str(path)],
        capture_output=True,
    )
    if r.returncode == 0:
        try:
            yield str(path), "tmpfs"
        finally:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)
        return
    import refimpl.files.writing as F

    used = [0]

    def write(fd, data):
        if used[0] + len(data) > size_bytes:
            raise OSError(errno.ENOSPC, "No space left on device")
        used[0] += len(data)
        return os.write(fd, data)

    monkeypatch.setattr(F, "_write", write)
    yield str(path), "injected"
