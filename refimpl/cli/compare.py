"""``refimpl compare``: check a port's dump against a golden file, and with ``--checkpoint``
isolate the culprit block."""

from __future__ import annotations

import argparse

from .. import compare as C

__all__ = ["cmd_compare"]


def cmd_compare(args: argparse.Namespace) -> int:
    """``refimpl compare GOLDEN CANDIDATE``: print the report; 0 when everything is within tolerance, else 1."""
    names = C.NameMap(
        add_prefix=args.add_prefix,
        strip_prefix=args.strip_prefix,
        add_suffix=args.add_suffix,
        strip_suffix=args.strip_suffix,
        slash_to_dot=args.slash_to_dot,
    )
    if args.name_map:
        m = C.NameMap.from_json(args.name_map)
        names.mapping = m.mapping
    kw = dict(atol=args.atol, rtol=args.rtol, strict=args.strict, rule=args.rule, names=names)
    if args.checkpoint:
        iso = C.isolate(args.reference, args.candidate, args.checkpoint, **kw)
        print("\n".join([*iso.plain.notes, iso.plain.table(only_failed=args.only_failed)]))
        print(iso.plain.tolerances())
        print(iso.plain.coverage())
        print(iso.plain.summary())
        print()
        print("isolation (local = the block recomputed in float64 from the candidate's own inputs):")
        print(iso.table())
        print(iso.verdict_line())
        return 0 if iso.ok else 1
    res = C.compare(args.reference, args.candidate, **kw)
    print(res.report(only_failed=args.only_failed))
    return 0 if res.ok else 1
