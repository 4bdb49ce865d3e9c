"""The results of a comparison and their text: `CompareResult` (the plain check) and
`IsolationResult` (per block, the plain and the local error, and the verdict)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .rules import CompareRow

__all__ = ["EXIT_CODES", "CompareResult", "BlockRow", "IsolationResult"]

#: ``refimpl compare``'s exit codes: 0 ok, 1 a failure (a tensor out of tolerance, nothing
#: compared, a culprit block, accumulated drift), 2 a usage or file error, 3 inconclusive
#: (isolation could not check the blocks where the outputs diverge).
EXIT_CODES = {"ok": 0, "fail": 1, "usage": 2, "inconclusive": 3}


@dataclass
class CompareResult:
    """All rows in the reference's forward order, the coverage and the verdict.

    ``notes`` are lines to print before the table (a model mismatch, a naming hint).
    ``ok`` is False when a tensor fails, when nothing was compared at all, and (``strict``)
    when a reference tensor is missing in the candidate.
    """

    rows: list[CompareRow]
    extra: list[str] = field(default_factory=list)
    strict: bool = False
    notes: list[str] = field(default_factory=list)
    rule: str = "max_abs"
    candidate_format: str = ""
    name_mismatch: bool = False
    matches: list[Any] = field(default_factory=list)
    candidate_path: str | None = None
    reference_path: str | None = None

    @property
    def failed(self) -> list[CompareRow]:
        """Rows out of tolerance or misshaped (and missing ones when ``strict``)."""
        bad = ("FAIL", "shape", "missing") if self.strict else ("FAIL", "shape")
        return [r for r in self.rows if r.status in bad]

    @property
    def missing(self) -> list[CompareRow]:
        """Reference tensors the candidate lacks."""
        return [r for r in self.rows if r.status == "missing"]

    @property
    def compared(self) -> list[CompareRow]:
        """Rows actually compared (present in both)."""
        return [r for r in self.rows if r.status != "missing"]

    @property
    def first_divergent(self) -> CompareRow | None:
        """The first tensor in forward order that is out of tolerance (or misshaped)."""
        for r in self.rows:
            if r.first_divergent:
                return r
        return None

    @property
    def ok(self) -> bool:
        """Nothing failed, at least one tensor was compared and no systematic naming difference
        (a name hint) left tensors uncompared."""
        return not self.failed and bool(self.compared) and not self.name_mismatch

    def coverage(self) -> str:
        """``coverage: C compared of R in reference; M missing in candidate; E extra in candidate``."""
        return (
            f"coverage: {len(self.compared)} compared of {len(self.rows)} in reference; "
            f"{len(self.missing)} missing in candidate; {len(self.extra)} extra in candidate (not compared)"
            + (" [--strict: missing tensors fail]" if self.strict else "")
        )

    def tolerances(self) -> str:
        """One line per candidate dtype: how many tensors and the tolerances used."""
        by: dict[str, list[CompareRow]] = {}
        for r in self.compared:
            by.setdefault(r.dtype or "?", []).append(r)
        parts = []
        for dt, rows in by.items():
            if rows[0].atol == 0 and rows[0].rtol == 0 and all(r.atol == 0 and r.rtol == 0 for r in rows):
                parts.append(f"{dt} ({len(rows)}): exact")
                continue
            atols = sorted({r.atol for r in rows})
            a = f"{atols[0]:.2e}" if len(atols) == 1 else f"{atols[0]:.2e}..{atols[-1]:.2e}"
            parts.append(f"{dt} ({len(rows)}): atol {a}, rtol {max(r.rtol for r in rows):.2e}")
        return f"candidate dtypes and tolerances (rule {self.rule}): " + ("; ".join(parts) or "none")

    def table(self, only_failed: bool = False) -> str:
        """The per-tensor table, forward order, the first divergent tensor marked; ``only_failed``:
        just the failing rows (missing ones only under ``strict``)."""
        w = max([len(r.name) for r in self.rows] + [6])
        head = (
            f"{'tensor':<{w}}  {'shape':<16} {'dtype':<8} {'max_abs':>10} {'max_rel':>10} {'nmse':>9} "
            f"{'cosine':>10} {'atol':>8} {'rtol':>8}  status"
        )
        lines = [head, "-" * len(head)]
        failed = {id(r) for r in self.failed}
        for r in self.rows:
            if only_failed and id(r) not in failed:
                continue
            shape = "x".join(str(s) for s in r.shape) or "scalar"
            if r.status == "missing":
                nums = f"{'-':>10} {'-':>10} {'-':>9} {'-':>10}"
            else:
                nums = f"{r.max_abs:>10.3e} {r.max_rel:>10.3e} {r.nmse:>9.2e} {r.cosine:>10.7f}"
            mark = "  <== first divergence" if r.first_divergent else ""
            extra = f" ({r.detail})" if r.detail else ""
            lines.append(
                f"{r.name:<{w}}  {shape:<16} {r.dtype or '-':<8} {nums} {r.atol:>8.1e} {r.rtol:>8.1e}  "
                f"{r.status}{extra}{mark}"
            )
        return "\n".join(lines)

    def summary(self) -> str:
        """One line: counts and the first divergent tensor."""
        n = len(self.rows)
        parts = [f"{sum(r.ok for r in self.rows)}/{n} tensors within tolerance"]
        if not self.compared:
            parts.append("NOTHING COMPARED: the candidate shares no tensor name with the reference")
        elif self.name_mismatch:
            parts.append("NAMES DIFFER: candidate tensors were left uncompared (see the name hint)")
        if self.missing:
            parts.append(f"{len(self.missing)} missing in candidate")
        if self.extra:
            parts.append(f"{len(self.extra)} extra in candidate")
        fd = self.first_divergent
        if fd is not None:
            parts.append(f"first divergence: {fd.name} (max_abs {fd.max_abs:.3e}, {fd.status})")
        return "; ".join(parts) + ("  => OK" if self.ok else "  => NOT OK")

    def explain(self) -> str:
        """How each candidate name was read (``--explain-names``): one line per name, in the
        dump's order: ``name -> golden name (how)`` or ``name: why it is not compared``."""
        if not self.matches:
            return "candidate names: none"
        n = sum(m.golden is not None for m in self.matches)
        lines = [f"candidate names ({n} of {len(self.matches)} compared):"]
        lines += ["  " + m.line() for m in self.matches]
        return "\n".join(lines)

    def report(self, only_failed: bool = False) -> str:
        """Notes, table, tolerances, coverage and summary, as ``refimpl compare`` prints them."""
        lines = [*self.notes, self.table(only_failed), self.tolerances(), self.coverage()]
        if self.extra:
            lines.append(
                f"extra tensors in candidate (not compared): {', '.join(self.extra[:10])}"
                + (" ..." if len(self.extra) > 10 else "")
            )
        lines.append(self.summary())
        return "\n".join(lines)


@dataclass
class BlockRow:
    """One block output.

    Attributes:
        block, output, inputs: the block, this output's golden name, the golden names it reads.
        plain: the candidate's output against the reference (``None``: not in the reference).
        local: the candidate's output against refimpl's float64 recomputation of the block
            from the candidate's own inputs (``None``: not checked; ``missing`` names why).
        expected: the emulated recomputation at the candidate's precision against the float64
            one (``None`` unless the output is float16 or bfloat16).
        chain: the emulated chain (every block at that precision, from the model inputs)
            against the reference: how far a correct port drifts by here.
        dtype: the reduced precision judged at, or ``None``.
        measure, local_stat, expected_stat, ratio, precision_ok: the precision test (see
            `refimpl.compare.isolation.precision_stat`).
        chain_stat, drift_explained: the plain error judged against the emulated chain's.
        culprit: the first block output that fails locally.
        order: the output's position in the reference's forward order.
    """

    block: str
    output: str
    inputs: list[str]
    plain: CompareRow | None
    local: CompareRow | None
    culprit: bool = False
    order: int = 0
    missing: list[str] = field(default_factory=list)
    expected: CompareRow | None = None
    chain: CompareRow | None = None
    dtype: str | None = None
    measure: str = "rms"
    local_stat: float | None = None
    expected_stat: float | None = None
    ratio: float | None = None
    precision_ok: bool | None = None
    chain_stat: float | None = None
    drift_explained: bool | None = None

    @property
    def checked(self) -> bool:
        """The block was recomputed from the candidate's inputs."""
        return self.local is not None

    @property
    def local_ok(self) -> bool:
        """Within the rule's tolerance and (reduced precision) the precision test."""
        return self.local is not None and self.local.ok and self.precision_ok is not False

    @property
    def plain_fine(self) -> bool:
        """The plain comparison passed, or its error is a correct reduced-precision port's drift."""
        if self.plain is None or self.plain.status == "missing":
            return False
        return self.plain.ok or bool(self.drift_explained)

    def status(self) -> str:
        """One phrase: local verdict, then the plain one."""
        if self.local is None:
            return "not checked (missing " + ", ".join(self.missing) + ")"
        if not self.local.ok:
            st = "LOCAL FAIL (tolerance)"
        elif self.precision_ok is False:
            st = f"LOCAL FAIL ({self.ratio:.1f}x a correct {self.dtype} port)"
        else:
            st = "local ok"
        if self.plain is not None and self.plain.status == "FAIL":
            st += f", plain drift as {self.dtype}" if self.drift_explained else ", plain FAIL"
        return st


def _names(rows: list[BlockRow]) -> str:
    """``block (missing a, b)`` for each distinct block, in order."""
    seen: dict[str, list[str]] = {}
    for r in rows:
        seen.setdefault(r.block, [])
        seen[r.block] += [m for m in r.missing if m not in seen[r.block]]
    return ", ".join(f"{b} (missing {', '.join(m)})" for b, m in seen.items())


@dataclass
class IsolationResult:
    """Per block output (forward order) the plain, local and expected errors, and the verdict:
    ``"ok"``, ``"culprit"`` (``culprit`` names the block output), ``"drift"``,
    ``"inconclusive"`` (``unchecked`` lists the blocks it could not check), ``"missing"``
    (``--strict`` and tensors missing), or ``"names"`` (nothing compared, or names that differ
    systematically). ``exit_code`` follows `EXIT_CODES`."""

    rows: list[BlockRow]
    plain: CompareResult
    verdict: str = "ok"
    culprit: str | None = None
    factor: float = 1.0
    rule: str = "max_abs"
    unchecked: list[BlockRow] = field(default_factory=list)
    unheld: bool = False
    divergence: str | None = None
    inside: list[tuple[str, CompareRow]] = field(default_factory=list)
    reference: Any = field(default=None, repr=False)
    candidate: Any = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """Everything within tolerance."""
        return self.verdict == "ok"

    @property
    def exit_code(self) -> int:
        """0 ok, 3 inconclusive, 1 anything else (see `EXIT_CODES`)."""
        return EXIT_CODES["ok" if self.ok else "inconclusive" if self.verdict == "inconclusive" else "fail"]

    @property
    def precision(self) -> str | None:
        """The reduced precision the blocks were judged at (the first one found), or ``None``."""
        return next((r.dtype for r in self.rows if r.dtype), None)

    def _divergence(self) -> tuple[float, str] | None:
        """Where the outputs start to diverge: (forward position, name), or ``None``."""
        if self.precision is not None:  # at reduced precision: a block output beyond the drift
            for r in self.rows:
                if r.plain is not None and r.plain.status in ("FAIL", "shape") and not r.drift_explained:
                    return r.order, r.output
            return None
        fd = self.plain.first_divergent
        if fd is None:
            return None
        pos = next((r.order for r in self.rows if r.output == fd.name), None)
        if pos is None:  # a tensor inside a block: its position in the reference's order
            names = [row.name for row in self.plain.rows]
            pos = names.index(fd.name) if fd.name in names else 0
        return pos, fd.name

    def decide(self) -> IsolationResult:
        """Set ``verdict``, ``culprit``, ``unchecked``; returns ``self``."""
        if not self.plain.compared or self.plain.name_mismatch:
            self.verdict = "names"
            return self
        bad = next((r for r in self.rows if r.checked and not r.local_ok), None)
        if bad is not None:
            bad.culprit = True
            self.verdict, self.culprit = "culprit", bad.output
            return self
        div = self._divergence()
        if div is None:
            if self.precision is None and not self.plain.ok:
                self.verdict = "missing"
            else:
                self.verdict = "ok"
                self.unchecked = [r for r in self.rows if not r.checked]
            return self
        pos, self.divergence = div
        last_fine = max((r.order for r in self.rows if r.order < pos and r.plain_fine), default=-1)
        first_at = next((r.order for r in self.rows if r.order >= pos), math.inf)
        suspects = [r for r in self.rows if last_fine < r.order <= first_at]
        unheld = [r for r in suspects if not r.checked]
        later = [r for r in self.rows if r.order > first_at and not r.checked]
        if unheld or later:
            self.verdict, self.unheld, self.unchecked = "inconclusive", bool(unheld), unheld or later
        else:
            self.verdict = "drift"
        return self

    def verdict_line(self) -> str:
        """The verdict in one line: ``culprit: ...``, ``inconclusive: ...``, ``accumulated
        drift: ...``, ``ok: ...`` or ``not checked: ...``."""
        checked = sum(r.checked for r in self.rows)
        fd = self.plain.first_divergent
        dt = self.precision
        if self.verdict == "culprit":
            row = next(r for r in self.rows if r.culprit)
            why = ""
            if row.local.ok and row.ratio is not None:
                why = (
                    f"; local {row.measure} {row.local_stat:.3e} is {row.ratio:.1f}x the {row.expected_stat:.3e} a "
                    f"correct {row.dtype} port shows (limit {self.factor:g}x)"
                )
            where = f"; plain comparison first diverged at {fd.name}" if fd is not None else ""
            return (
                f"culprit: {self.culprit} (its output {row.output} is off by {row.local.max_abs:.3e} when "
                f"recomputed from the candidate's own inputs{why}{where})"
            )
        if self.verdict == "inconclusive":
            if self.unheld:
                return (
                    "inconclusive: the first divergence lies in blocks the candidate does not hold: "
                    + _names(self.unchecked)
                )
            n = len({r.block for r in self.unchecked})
            return (
                f"inconclusive: no checked block is wrong, but {n} block(s) between the first divergence "
                f"({self.divergence}) and the end could not be checked: " + _names(self.unchecked)
            )
        if self.verdict == "drift":
            beyond = f", beyond what a correct {dt} port drifts" if dt else ""
            return (
                f"accumulated drift: all {checked} checked blocks are locally within tolerance, but the outputs "
                f"diverge (first at {self.divergence}{beyond}); no single block is wrong"
            )
        if self.verdict == "names":
            return "not checked: " + self.plain.summary()
        if self.verdict == "missing":
            return f"not ok: {len(self.plain.missing)} reference tensors missing in the candidate (--strict)"
        skipped = (
            f" ({len({r.block for r in self.unchecked})} not checked: {_names(self.unchecked)})"
            if self.unchecked
            else ""
        )
        if dt is not None:
            return (
                f"ok: {checked} blocks checked locally at {dt} precision{skipped}; every block within "
                f"{self.factor:g}x of a correct {dt} port's error, and the outputs drift as one does"
            )
        return f"ok: {checked} blocks checked locally{skipped}, every tensor within tolerance"

    def table(self) -> str:
        """Per block output: plain max_abs, local max_abs, and at reduced precision the local
        and expected error of the precision test and their ratio; the status."""
        w = max([len(r.output) for r in self.rows] + [12])
        m = next((r.measure for r in self.rows if r.dtype), "rms")
        head = (
            f"{'block output':<{w}}  {'plain':>10} {'local':>10} {'local ' + m:>11} {'expected':>10} "
            f"{'ratio':>6} {'atol':>8}  status"
        )
        lines = [head, "-" * len(head)]
        for r in self.rows:
            pl = f"{r.plain.max_abs:>10.3e}" if r.plain and r.plain.status != "missing" else f"{'-':>10}"
            lo = f"{r.local.max_abs:>10.3e}" if r.local else f"{'-':>10}"
            ls = f"{r.local_stat:>11.3e}" if r.local_stat is not None else f"{'-':>11}"
            ex = f"{r.expected_stat:>10.3e}" if r.expected_stat is not None else f"{'-':>10}"
            ra = f"{r.ratio:>6.2f}" if r.ratio is not None else f"{'-':>6}"
            tol = r.local or r.plain
            a = tol.atol if tol else 0.0
            mark = "  <== culprit" if r.culprit else ""
            lines.append(f"{r.output:<{w}}  {pl} {lo} {ls} {ex} {ra} {a:>8.1e}  {r.status()}{mark}")
        return "\n".join(lines)

    def header(self) -> str:
        """What the local and expected columns mean."""
        dt = self.precision
        text = "isolation (local = the block recomputed in float64 from the candidate's own inputs"
        if dt:
            text += (
                f"; expected = the same block recomputed as a correct {dt} port (weights, inputs and each op rounded); "
                f"a block fails when its local {next(r.measure for r in self.rows if r.dtype)} exceeds "
                f"{self.factor:g}x the expected"
            )
        return text + "):"

    def inside_lines(self) -> list[str]:
        """The culprit's own sub-tensors, each against the block recomputed in float64 from
        the candidate's inputs (local errors), the first out of tolerance marked."""
        if not self.inside:
            return []
        first = next((n for n, r in self.inside if not r.ok), None)
        lines = [f"inside {self.culprit} (local error of each of its steps the candidate holds):"]
        for n, r in self.inside:
            mark = "  <== first step off" if n == first else ""
            lines.append(f"  {n:<60} max_abs {r.max_abs:.3e}  rms {r.rms:.3e}  {r.status}{mark}")
        return lines

    def report(self, only_failed: bool = True) -> str:
        """The plain report, the block table, the culprit's steps and the verdict line."""
        return "\n".join(
            [
                self.plain.report(only_failed=only_failed),
                "",
                self.header(),
                self.table(),
                *self.inside_lines(),
                self.verdict_line(),
            ]
        )
