"""``refimpl compare``: check a port's dump against a golden file, and with ``--checkpoint``
isolate the culprit block; its arguments and its exit codes."""

from __future__ import annotations

import argparse

from .. import compare as C
from .common import CliError

__all__ = ["EPILOG", "add_compare_parser", "cmd_compare"]

EPILOG = """\
exit codes:
  0  ok: at least one tensor compared and every one within tolerance (with --checkpoint: every
     block locally right, at the candidate's precision)
  1  fail: a tensor out of tolerance, nothing compared, names that differ systematically, or
     (--checkpoint) a culprit block or accumulated drift
  2  usage or file error: a bad option, a reference that is not a golden file, an unreadable or
     non-regular file, a checkpoint that is not the one the golden file was made from
  3  inconclusive (--checkpoint): no checked block is wrong, but the blocks where the outputs
     diverge (or after it) are not in the candidate; they are named with the inputs they lack

names: golden names, and the names a forward hook on every module gives (name, name.1, name.2...;
a module called twice as its last call, name.0/name.1 or name#0/name#1; dropout ignored), are
understood with no option; --explain-names prints how each name was read.
precision: a float32 (or float64) tensor whose values are all bfloat16 (or float16) values is judged
as that dtype; --candidate-dtype states it. With --checkpoint, a float16/bfloat16 block is also
recomputed as a correct port in that dtype computes it, and fails when its local error exceeds
the precision factor times that expected error.
"""


def add_compare_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``compare`` subcommand and its options to ``sub``."""
    c = sub.add_parser(
        "compare",
        help="compare a candidate (a port's dump) with a reference golden file, tensor by tensor",
        description="Compare a port's dump with a golden file, tensor by tensor; with --checkpoint, name "
        "the block that is wrong.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    c.add_argument("reference", help="golden .safetensors file (refimpl golden / refimpl demo)")
    c.add_argument(
        "candidate",
        help="the port's dump: safetensors, .npz, or a directory of <tensor name>.npy files (detected by content)",
    )
    c.add_argument("--atol", type=float, default=None, help="override every float tensor's atol")
    c.add_argument("--rtol", type=float, default=None, help="override every float tensor's rtol")
    c.add_argument(
        "--rule",
        choices=C.RULES,
        default="max_abs",
        help="pass rule for float tensors, in the plain check and in isolation: max_abs |c-r| <= atol + "
        "rtol|r| (default); rel |c-r|/max(|r|, atol) <= rtol; nmse sum(c-r)^2/sum r^2 <= rtol^2; cosine "
        "1 - cos <= rtol^2/2 (default tolerances are never below the judged dtype's rounding)",
    )
    c.add_argument(
        "--candidate-dtype",
        choices=C.CANDIDATE_DTYPES,
        default=None,
        help="the precision the port computed in (default: found from the values: float32 arrays of "
        "bfloat16 or float16 values are judged as that dtype)",
    )
    c.add_argument("--strict", action="store_true", help="tensors missing in the candidate fail too")
    c.add_argument(
        "--only-failed", action="store_true", help="print only failing rows (missing ones only with --strict)"
    )
    c.add_argument("--explain-names", action="store_true", help="print how each candidate name was matched")
    c.add_argument(
        "--add-prefix", default="", metavar="P", help="prepend P to candidate names not in the reference"
    )
    c.add_argument(
        "--strip-prefix", default="", metavar="P", help="remove P from the start of candidate names"
    )
    c.add_argument(
        "--add-suffix", default="", metavar="S", help="append S to candidate names not in the reference"
    )
    c.add_argument("--strip-suffix", default="", metavar="S", help="remove S from the end of candidate names")
    c.add_argument("--slash-to-dot", action="store_true", help="read '/' in candidate names as '.'")
    c.add_argument(
        "--name-map",
        metavar="JSON",
        default=None,
        help='JSON object {"candidate name": "reference name"}; wins over the prefix/suffix options',
    )
    c.add_argument(
        "--checkpoint",
        metavar="DIR",
        default=None,
        help="isolation: recompute every block from the candidate's own inputs with this checkpoint (the "
        "one the golden file was made from; its weights hash is checked) and name the culprit block",
    )
    c.add_argument(
        "--strict-checkpoint",
        action="store_true",
        help="with --checkpoint: load it strictly, as golden --strict does: refuse weights the model does "
        "not use (a text model's lm_head.*, a pooler a head model does not build, another class's head), "
        "naming every key, instead of ignoring them with one warning line (--strict is taken: missing "
        "tensors fail)",
    )
    c.add_argument(
        "--report",
        metavar="HTML",
        default=None,
        help="also write a self-contained HTML page (verdict, error-by-depth plot, culprit details, "
        "sortable table); needs matplotlib (pip install 'refimpl[report]'). Written atomically, never over "
        "an input (the reference, the candidate, --name-map, a file of --checkpoint), a FIFO, a device or "
        "a directory; an existing file that is not a report page refimpl wrote only with --force",
    )
    c.add_argument(
        "--force",
        action="store_true",
        help="let --report replace an existing file that is not a report page refimpl wrote (never an input)",
    )
    c.set_defaults(func=cmd_compare)
    return c


def cmd_compare(args: argparse.Namespace) -> int:
    """``refimpl compare GOLDEN CANDIDATE``: print the report; the exit code follows `EPILOG`."""
    names = C.NameMap(
        add_prefix=args.add_prefix,
        strip_prefix=args.strip_prefix,
        add_suffix=args.add_suffix,
        strip_suffix=args.strip_suffix,
        slash_to_dot=args.slash_to_dot,
    )
    if args.name_map:
        names.mapping = C.NameMap.from_json(args.name_map).mapping
    kw = dict(
        atol=args.atol,
        rtol=args.rtol,
        strict=args.strict,
        rule=args.rule,
        names=names,
        candidate_dtype=getattr(args, "candidate_dtype", None),
    )
    report = getattr(args, "report", None)
    inputs = [args.reference, args.candidate, args.name_map, args.checkpoint]
    if report:  # checked before any work
        report = _report_module().check_report_destination(
            report, inputs, force=getattr(args, "force", False)
        )
    if getattr(args, "strict_checkpoint", False) and not args.checkpoint:
        raise CliError("--strict-checkpoint loads the --checkpoint of isolation: give --checkpoint DIR too")
    if args.checkpoint:
        iso = C.isolate(
            args.reference,
            args.candidate,
            args.checkpoint,
            strict_checkpoint=getattr(args, "strict_checkpoint", False),
            **kw,
        )
        if getattr(args, "explain_names", False):
            print(iso.plain.explain())
        print(iso.plain.report(only_failed=args.only_failed))
        print()
        print(iso.header())
        print(iso.table())
        for line in iso.inside_lines():
            print(line)
        print(iso.verdict_line())
        if report:
            _report_module().write_report(report, iso, force=getattr(args, "force", False), protected=inputs)
        return iso.exit_code
    res = C.compare(args.reference, args.candidate, **kw)
    if getattr(args, "explain_names", False):
        print(res.explain())
    print(res.report(only_failed=args.only_failed))
    if report:
        _report_module().write_report(report, res, force=getattr(args, "force", False), protected=inputs)
    return C.EXIT_CODES["ok"] if res.ok else C.EXIT_CODES["fail"]


def _report_module():
    """`refimpl.compare.html`, imported only when a report is asked for: matplotlib, which it
    draws with, is an optional extra."""
    from ..compare import html

    return html
