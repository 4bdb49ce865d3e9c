"""Copy LXMERT's public label vocabularies into refimpl/data/lxmert-vocab/ from pinned git commits.

    python scripts/vendor_lxmert_vocab.py --lxmert PATH --bua PATH            # write the files
    python scripts/vendor_lxmert_vocab.py --lxmert PATH --bua PATH --check    # compare, write nothing

``PATH`` is a clone (work tree, ``.git`` or bare) of github.com/airsplay/lxmert (``--lxmert``)
and of github.com/airsplay/py-bottom-up-attention (``--bua``); ``--upstream`` optionally names a
clone of github.com/peteanderson80/bottom-up-attention, whose two vocabulary files must then
be the very same git blobs. Every file is read with ``git show COMMIT:PATH`` at the commits
pinned below, so what is bundled is exactly what those commits hold, byte for byte:

* ``vqa_trainval_label2ans.json``, ``gqa_trainval_label2ans.json``, ``objects_vocab.txt``,
  ``attributes_vocab.txt``: verbatim copies;
* ``lxmert_all_ans.json.gz``: ``data/lxmert/all_ans.json`` (986,576 bytes) gzip-compressed
  (level 9, mtime 0, no file name) to keep the package small; its decompressed bytes are the
  original's;
* ``LICENSE.*``: the licence texts of the source repositories, which must travel with the data.

The sha256 of every file (and of ``all_ans.json`` decompressed) is printed; README.md in that
folder records them, and tests/test_vocabulary.py checks the bundled files against README.md.
Dev-time only: refimpl itself never imports this.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import os
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "refimpl", "data", "lxmert-vocab")

LXMERT_COMMIT = "0db1182b9030da3ce41f17717cc628e1cd0a95d5"  # airsplay/lxmert, 2020-12-04
BUA_COMMIT = "85ec9b77bb57c125d6d604305bb525d9f50692be"  # airsplay/py-bottom-up-attention, 2020-12-04
UPSTREAM_COMMIT = "514e561b7179be38f7f93ada102cdf98a5e32c72"  # peteanderson80/bottom-up-attention

# bundled name -> (repository option, commit, path in the repository, gzip it)
FILES = {
    "vqa_trainval_label2ans.json": ("lxmert", LXMERT_COMMIT, "data/vqa/trainval_label2ans.json", False),
    "gqa_trainval_label2ans.json": ("lxmert", LXMERT_COMMIT, "data/gqa/trainval_label2ans.json", False),
    "lxmert_all_ans.json.gz": ("lxmert", LXMERT_COMMIT, "data/lxmert/all_ans.json", True),
    "objects_vocab.txt": ("bua", BUA_COMMIT, "demo/data/genome/1600-400-20/objects_vocab.txt", False),
    "attributes_vocab.txt": ("bua", BUA_COMMIT, "demo/data/genome/1600-400-20/attributes_vocab.txt", False),
    "LICENSE.airsplay-lxmert": ("lxmert", LXMERT_COMMIT, "LICENSE", False),
    "LICENSE.airsplay-py-bottom-up-attention": ("bua", BUA_COMMIT, "LICENSE", False),
}
UPSTREAM_FILES = {
    "LICENSE.peteanderson80-bottom-up-attention": "LICENSE",
}
# the same vocabulary files in peteanderson80/bottom-up-attention (checked blob for blob)
UPSTREAM_SAME = {
    "demo/data/genome/1600-400-20/objects_vocab.txt": "data/genome/1600-400-20/objects_vocab.txt",
    "demo/data/genome/1600-400-20/attributes_vocab.txt": "data/genome/1600-400-20/attributes_vocab.txt",
}
SIZES = {
    "vqa_trainval_label2ans.json": 3129,
    "gqa_trainval_label2ans.json": 1842,
    "lxmert_all_ans.json.gz": 9500,
    "objects_vocab.txt": 1600,
    "attributes_vocab.txt": 400,
}


def git_show(repo: str, commit: str, path: str) -> bytes:
    """The bytes of ``path`` at ``commit`` in the clone ``repo`` (raises if either is missing)."""
    return subprocess.run(
        ["git", "-C", repo, "show", f"{commit}:{path}"], check=True, capture_output=True
    ).stdout


def git_blob(repo: str, commit: str, path: str) -> str:
    """The git blob id of ``path`` at ``commit``."""
    out = subprocess.run(
        ["git", "-C", repo, "rev-parse", f"{commit}:{path}"], check=True, capture_output=True, text=True
    )
    return out.stdout.strip()


def count(name: str, raw: bytes) -> int:
    """Entries in one vocabulary file (raw, uncompressed bytes)."""
    if name.endswith(".txt"):
        return len(raw.decode("utf-8").splitlines())
    return len(json.loads(raw))


def build(repos: dict[str, str]) -> dict[str, tuple[bytes, bytes]]:
    """bundled name -> (bytes to write, original bytes)."""
    out = {}
    for name, (which, commit, path, compress) in FILES.items():
        raw = git_show(repos[which], commit, path)
        out[name] = (gzip.compress(raw, compresslevel=9, mtime=0) if compress else raw, raw)
        if name in SIZES and count(name, raw) != SIZES[name]:
            raise SystemExit(f"{path}@{commit}: {count(name, raw)} entries, expected {SIZES[name]}")
    if repos.get("upstream"):
        for name, path in UPSTREAM_FILES.items():
            raw = git_show(repos["upstream"], UPSTREAM_COMMIT, path)
            out[name] = (raw, raw)
        for ours, theirs in UPSTREAM_SAME.items():
            a, b = (
                git_blob(repos["bua"], BUA_COMMIT, ours),
                git_blob(repos["upstream"], UPSTREAM_COMMIT, theirs),
            )
            if a != b:
                raise SystemExit(f"{ours}: blob {a} differs from upstream {theirs} blob {b}")
            print(f"{ours}: same git blob {a} as peteanderson80/bottom-up-attention {theirs}")
    return out


def write_atomic(path: str, data: bytes) -> None:
    """Write through a temp file in the same folder, then rename over ``path``."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600; package data must be readable by all
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lxmert", required=True, help="clone of airsplay/lxmert")
    p.add_argument("--bua", required=True, help="clone of airsplay/py-bottom-up-attention")
    p.add_argument("--upstream", help="clone of peteanderson80/bottom-up-attention (optional)")
    p.add_argument(
        "--check", action="store_true", help="compare with refimpl/data/lxmert-vocab, write nothing"
    )
    p.add_argument("--out", default=OUT)
    args = p.parse_args(argv)
    files = build({"lxmert": args.lxmert, "bua": args.bua, "upstream": args.upstream})
    bad = []
    os.makedirs(args.out, exist_ok=True)
    for name, (data, raw) in files.items():
        path = os.path.join(args.out, name)
        if args.check:
            have = open(path, "rb").read() if os.path.isfile(path) else None
            if have is None or (gzip.decompress(have) if name.endswith(".gz") else have) != raw:
                bad.append(name)
        else:
            write_atomic(path, data)
        line = f"{name:<45} {len(data):>7} bytes  sha256 {hashlib.sha256(data).hexdigest()}"
        if name.endswith(".gz"):
            line += f"  (decompressed {len(raw)} bytes, sha256 {hashlib.sha256(raw).hexdigest()})"
        print(line)
    if bad:
        print("differs from the pinned commits: " + ", ".join(bad))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
