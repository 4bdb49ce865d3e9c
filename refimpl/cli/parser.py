"""The argument parser of ``refimpl`` and ``main``, which runs one command and turns every
failure into one line and an exit code."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence

from .. import __version__, backend
from .cases import CASE_SCHEMA
from .common import _one_line
from .compare import add_compare_parser
from .convert import cmd_convert
from .demo import cmd_demo
from .fuse_lilt import cmd_fuse_lilt
from .golden import cmd_golden
from .inspect import cmd_inspect
from .models import cmd_models

__all__ = ["build_parser", "main"]


#: what ``--strict`` refuses when a command loads a checkpoint (``from_pretrained(strict=True)``).
STRICT_HELP = (
    "load the checkpoint strictly: refuse weights the model does not use (a text model's lm_head.* "
    "that the original LiLT recipe keeps, a pooler a head model does not build, another class's head), "
    "naming every key, instead of ignoring them with one warning line as transformers does. Missing "
    "weights and shape mismatches are refused either way"
)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"{self.prog}: error: {message} (see {self.prog} --help)\n")
        sys.exit(2)


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of ``refimpl`` (subcommands golden, compare, inspect, convert,
    fuse-lilt, demo, models)."""
    p = _Parser(
        prog="refimpl",
        description="NumPy reference implementation of LiLT and LXMERT: golden outputs for porters.",
        epilog="Commands that write (golden, convert, fuse-lilt, demo, compare --report) write atomically, never over an input, "
        "a FIFO or a device, and replace an existing file that is not a golden file refimpl wrote only with "
        "--force.",
    )
    p.add_argument("--version", action="version", version=f"refimpl {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    g = sub.add_parser(
        "golden",
        help="run a checkpoint on inputs and write a golden file (every intermediate)",
        epilog=CASE_SCHEMA,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    g.add_argument("checkpoint", help="checkpoint directory (config.json + weights)")
    g.add_argument(
        "--inputs", required=True, help=".npz (forward keywords), .json (one case) or .jsonl (cases)"
    )
    g.add_argument(
        "--out",
        required=True,
        help="output .safetensors (for .jsonl: a dir or a pattern such as out/case-{index:04d}.safetensors: "
        "{index} with an optional zero-padded width of at most 2 digits, inside the pattern's directory)",
    )
    g.add_argument(
        "--dtype", choices=backend.DTYPES, default="float64", help="compute dtype (default float64)"
    )
    g.add_argument("--device", choices=backend.DEVICES, default="cpu")
    g.add_argument(
        "--select",
        action="append",
        metavar="WHAT",
        help="which tensors to keep (repeatable, combined): all (default), modules (every module "
        "output, no attention scores/probabilities), blocks (embeddings, layer outputs, poolers, "
        "heads, outputs), or a glob over names such as '*.attention.self.query'",
    )
    g.add_argument(
        "--grads",
        action="store_true",
        help="also write the gradients of one scalar L (the loss when the case has labels, else "
        "sum over the array outputs X of sum(X * G_X) with seeded standard-normal G_X stored as "
        "upstream.outputs.<field>): grad.<checkpoint key> for every parameter and grad.<name> for "
        "every floating forward tensor the file holds (see docs/golden-format.md)",
    )
    g.add_argument(
        "--seed",
        type=int,
        default=None,
        metavar="N",
        help="with --grads: the seed of the G_X, numpy.random.default_rng(N) (default 0)",
    )
    g.add_argument(
        "--shard", metavar="I/N", help="process every N-th case of a .jsonl, starting at case I (0-based)"
    )
    g.add_argument(
        "--force",
        action="store_true",
        help="replace an existing --out file that is not a golden file refimpl wrote (never an input, "
        "a FIFO, a device or a directory)",
    )
    g.add_argument("--strict", action="store_true", help=STRICT_HELP)
    g.add_argument("-q", "--quiet", action="store_true", help="no progress or summary")
    g.set_defaults(func=cmd_golden)

    add_compare_parser(sub)

    i = sub.add_parser("inspect", help="summarise a checkpoint directory or a golden file")
    i.add_argument("path")
    i.add_argument(
        "--verify",
        action="store_true",
        help="golden file: recompute every stored tensor's SHA-256 and check it against the manifest's "
        "tensor_sha256 (exit 2 naming the tensors that differ)",
    )
    i.set_defaults(func=cmd_inspect)

    v = sub.add_parser("convert", help="pytorch_model.bin -> model.safetensors without torch")
    v.add_argument("src", metavar="pytorch_model.bin")
    v.add_argument("dst", metavar="model.safetensors")
    v.add_argument(
        "--force",
        action="store_true",
        help="replace an existing destination file (never the source, a FIFO, a device or a directory)",
    )
    v.set_defaults(func=cmd_convert)

    f = sub.add_parser("fuse-lilt", help="LiLT = RoBERTa-like text model + lilt-only layout weights")
    f.add_argument("--text", required=True, help="text checkpoint dir (e.g. roberta-base)")
    f.add_argument("--layout", required=True, help="layout-only LiLT checkpoint dir (e.g. lilt-only-base)")
    f.add_argument("--out", required=True, help="output directory")
    f.add_argument("--no-tokenizer", action="store_true", help="do not copy the text model's tokenizer files")
    f.add_argument(
        "--force",
        action="store_true",
        help="replace files that already exist in --out (never a file of an input checkpoint)",
    )
    f.set_defaults(func=cmd_fuse_lilt)

    d = sub.add_parser("demo", help="run the bundled tiny LiLT and LXMERT on the bundled example")
    d.add_argument(
        "--out", default="refimpl-demo", help="where to write the golden files (default ./refimpl-demo)"
    )
    d.add_argument("--dtype", choices=backend.DTYPES, default="float64")
    d.add_argument(
        "--force",
        action="store_true",
        help="replace existing files of the demo's names in --out that are not golden files refimpl wrote",
    )
    d.add_argument("--strict", action="store_true", help=STRICT_HELP)
    d.add_argument("-q", "--quiet", action="store_true")
    d.set_defaults(func=cmd_demo)

    m = sub.add_parser("models", help="list the supported architectures")
    m.set_defaults(func=cmd_models)
    return p


_tuned = False


def _tune_process() -> None:
    """``backend.tune_allocator()`` and ``backend.quiet_blas_threads()``, once per process."""
    global _tuned
    if not _tuned:
        backend.tune_allocator()
        backend.quiet_blas_threads()
        _tuned = True


class _Terminated(BaseException):
    """SIGTERM arrived: unwind (every ``finally`` runs, so temp files are removed)."""


def _on_sigterm(signum, frame) -> None:
    raise _Terminated()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``refimpl`` console script; returns the exit code.

    SIGTERM (when ``main`` runs in the main thread) unwinds like Ctrl-C: the file being
    written is left as it was and its temp file removed; the exit code is 143."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help(sys.stderr)
        return 2
    func: Callable[[argparse.Namespace], int] = args.func
    # the command owns its process: keep freed memory for the next forward, and let OpenBLAS's
    # idle threads sleep after each product instead of taking a core from the elementwise work
    _tune_process()
    old = None
    if threading.current_thread() is threading.main_thread():
        old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        return int(func(args) or 0)
    except KeyboardInterrupt:
        sys.stderr.write("refimpl: interrupted\n")
        return 130
    except _Terminated:
        sys.stderr.write("refimpl: terminated (SIGTERM); nothing was replaced half-written\n")
        return 143
    except BrokenPipeError:
        return 0
    except Exception as e:  # every failure is one line, exit 2
        if os.environ.get("REFIMPL_DEBUG"):
            raise
        sys.stderr.write(f"refimpl {args.command}: error: {_one_line(e)}\n")
        return 2
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)
