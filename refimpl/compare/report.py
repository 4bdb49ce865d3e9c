"""The results of a comparison and their text: `CompareResult` (the plain check) and
`IsolationResult` (per block, the plain and the local error, and the verdict)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .rules import CompareRow

__all__ = ["CompareResult", "BlockRow", "IsolationResult"]


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
    """One block output: ``plain`` (candidate vs reference) and ``local`` (candidate vs our
    float64 recomputation of the block from the candidate's own inputs; ``None`` when the
    candidate lacks an input). ``culprit`` marks the first block out of tolerance locally."""

    block: str
    output: str
    inputs: list[str]
    plain: CompareRow | None
    local: CompareRow | None
    culprit: bool = False


@dataclass
class IsolationResult:
    """Per block output (forward order) the plain and the local error, and the verdict:
    ``"ok"``, ``"culprit"`` (``culprit`` names the block), ``"drift"``, or ``"names"`` (nothing
    compared, or names that differ systematically)."""

    rows: list[BlockRow]
    plain: CompareResult
    verdict: str
    culprit: str | None = None

    @property
    def ok(self) -> bool:
        """Everything within tolerance."""
        return self.verdict == "ok"

    def verdict_line(self) -> str:
        """``culprit: <block> ...``, ``accumulated drift: ...`` or ``ok: ...``."""
        checked = sum(r.local is not None for r in self.rows)
        fd = self.plain.first_divergent
        if self.verdict == "culprit":
            row = next(r for r in self.rows if r.culprit)
            where = f"; plain comparison first diverged at {fd.name}" if fd is not None else ""
            return (
                f"culprit: {self.culprit} (its output {row.output} is off by {row.local.max_abs:.3e} when "
                f"recomputed from the candidate's own inputs{where})"
            )
        if self.verdict == "drift":
            first = fd.name if fd is not None else "-"
            return (
                f"accumulated drift: all {checked} checked blocks are locally within tolerance, but the outputs "
                f"diverge (first at {first}); no single block is wrong"
            )
        if self.verdict == "names":
            return "not checked: " + self.plain.summary()
        return f"ok: {checked} blocks checked locally, every tensor within tolerance"

    def table(self) -> str:
        """Block output, plain max_abs, local max_abs, tolerance, status."""
        w = max([len(r.output) for r in self.rows] + [12])
        head = f"{'block output':<{w}}  {'plain':>10} {'local':>10} {'atol':>8} {'rtol':>8}  status"
        lines = [head, "-" * len(head)]
        for r in self.rows:
            pl = f"{r.plain.max_abs:>10.3e}" if r.plain and r.plain.status != "missing" else f"{'-':>10}"
            lo = f"{r.local.max_abs:>10.3e}" if r.local else f"{'-':>10}"
            tol = r.local or r.plain
            a, t = (tol.atol, tol.rtol) if tol else (0.0, 0.0)
            if r.local is None:
                st = "not checked (missing " + ", ".join(r.inputs) + ")"
            else:
                st = "local ok" if r.local.ok else "LOCAL FAIL"
                if r.plain is not None and r.plain.status == "FAIL":
                    st += ", plain FAIL"
            mark = "  <== culprit" if r.culprit else ""
            lines.append(f"{r.output:<{w}}  {pl} {lo} {a:>8.1e} {t:>8.1e}  {st}{mark}")
        return "\n".join(lines)

    def report(self) -> str:
        """The plain report, the block table and the verdict line."""
        return "\n".join(
            [
                self.plain.report(only_failed=True),
                "",
                "isolation (local = recomputed from the candidate's own inputs):",
                self.table(),
                self.verdict_line(),
            ]
        )
