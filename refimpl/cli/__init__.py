"""The ``refimpl`` command line:

    refimpl golden CHECKPOINT --inputs FILE --out FILE [--dtype float64] [--device cpu]
                   [--select all|modules|blocks|GLOB ...] [--grads [--seed N]] [--shard I/N] [--force] [-q]
    refimpl compare GOLDEN CANDIDATE [--atol A --rtol R] [--rule R] [--strict] [--checkpoint DIR]
    refimpl inspect PATH [--verify]
    refimpl convert pytorch_model.bin model.safetensors [--force]
    refimpl fuse-lilt --text TEXT_CKPT --layout LILT_ONLY_CKPT --out DIR [--force]
    refimpl demo [--out DIR] [--force]
    refimpl models
    refimpl --version

Exit codes: 0 success; 1 ``compare`` found a tensor out of tolerance; 2 a usage error, a
missing or unreadable file or a checkpoint that does not fit (one line on stderr, no
traceback; set ``REFIMPL_DEBUG=1`` to see the traceback); 143 SIGTERM (the file being written
is left as it was, its temp removed). Every write is atomic and checked first
(`refimpl.files.check_destination`): never over an input, a FIFO or a device, and over a
file that is not a golden file refimpl wrote only with ``--force``.

Modules: `parser` (the parser and `main`), one module per command (`golden`, `compare`,
`inspect`, `convert`, `fuse_lilt`, `models`, `demo`), `cases` (the ``--inputs`` formats) and
`npz_case` (the members of an ``.npz`` case, labels included) and `common` (what every
command shares).
"""

from .cases import encode_case, read_cases
from .common import CliError
from .parser import build_parser, main

__all__ = ["main", "build_parser", "read_cases", "encode_case", "CliError"]
