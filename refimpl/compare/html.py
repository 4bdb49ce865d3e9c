"""``refimpl compare --report report.html``: one self-contained page to look at.

The page holds everything inline (plots as SVG drawn by matplotlib, a few lines of CSS and
of JavaScript for sorting): it loads nothing from the network and reads the same offline.
From the top: the verdict and the coverage; an error-by-depth plot (per block output, in
forward order: the plain error against the reference, the local error against refimpl's
recomputation from the candidate's inputs and, at reduced precision, the error a correct port
in that precision shows; log scale, the culprit marked); the culprit's own steps; a heat map
of |difference| averaged over heads for the culprit block's attention probabilities; and a
sortable table of every tensor.

matplotlib is an optional extra (``pip install 'refimpl[report]'``); this module imports it
and is imported only when a report is asked for.
"""

from __future__ import annotations

import html
import io
import os
import re
from collections.abc import Iterable
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from ..files import atomic_write, check_destination, open_regular  # noqa: E402
from ..golden.masks import keep_mask  # noqa: E402
from .report import CompareResult, IsolationResult  # noqa: E402

__all__ = ["GENERATOR", "render_report", "is_report_file", "check_report_destination", "write_report"]

#: the ``<meta name="generator">`` of every report page: how ``--report`` recognises its own files.
GENERATOR = "refimpl compare --report"
_MARK = f"<meta name='generator' content='{GENERATOR}'>".encode()

_CSS = """
body{font-family:system-ui,-apple-system,'Segoe UI',sans-serif;margin:1.5em auto;max-width:1100px;color:#222}
h1{font-size:1.35em} h2{font-size:1.1em;margin-top:1.6em;border-bottom:1px solid #ddd}
.verdict{font-size:1.1em;padding:.7em 1em;border-radius:6px;font-family:ui-monospace,monospace;white-space:pre-wrap}
.ok{background:#e6f4ea}.fail{background:#fde7e9}.inconclusive{background:#fff4ce}
.meta{color:#555;font-size:.9em} .meta code{font-size:.95em}
table{border-collapse:collapse;font-size:.82em;font-family:ui-monospace,monospace}
th,td{padding:2px 8px;border-bottom:1px solid #eee;text-align:right} td:first-child,th:first-child{text-align:left}
th{cursor:pointer;background:#f6f6f6;position:sticky;top:0} tr.bad td{color:#b00020} tr.culprit td{background:#fde7e9;font-weight:bold}
svg{max-width:100%;height:auto}
"""

_JS = """
document.querySelectorAll('table.sortable th').forEach(function(th, i){
  th.addEventListener('click', function(){
    var tb = th.closest('table').tBodies[0], rows = Array.prototype.slice.call(tb.rows);
    var asc = th.dataset.asc !== '1'; th.dataset.asc = asc ? '1' : '0';
    rows.sort(function(a, b){
      var x = a.cells[i].dataset.v || a.cells[i].textContent, y = b.cells[i].dataset.v || b.cells[i].textContent;
      var nx = parseFloat(x), ny = parseFloat(y);
      var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? c : -c;
    });
    rows.forEach(function(r){ tb.appendChild(r); });
  });
});
"""


def _svg(fig: Any) -> str:
    """A figure as inline SVG text (no XML prolog, no DOCTYPE, nothing external)."""
    buf = io.StringIO()
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(buf, format="svg", bbox_inches="tight")
    plt.close(fig)
    text = buf.getvalue()
    text = text[text.index("<svg") :]
    text = re.sub(r"<metadata>.*?</metadata>", "", text, flags=re.S)
    return re.sub(r"<!--.*?-->", "", text, flags=re.S)


def _depth_plot(iso: IsolationResult) -> str:
    """Plain, local and expected error per block output (log scale), culprit marked."""
    rows = iso.rows
    x = np.arange(len(rows))
    measure = next((r.measure for r in rows if r.dtype), "rms")

    def series(get):
        return np.array([v if (v is not None and v > 0) else np.nan for v in map(get, rows)], float)

    plain = series(
        lambda r: r.plain.rms if r.plain is not None and r.plain.status not in ("missing", "shape") else None
    )
    local = series(lambda r: r.local.rms if r.local is not None else None)
    expected = series(lambda r: r.expected.rms if r.expected is not None else None)
    chain = series(lambda r: r.chain.rms if r.chain is not None else None)
    fig, ax = plt.subplots(figsize=(max(6.5, 0.42 * len(rows) + 2), 3.8), dpi=100)
    ax.semilogy(x, plain, "o-", color="#1f77b4", label="plain: candidate vs reference")
    ax.semilogy(x, local, "s-", color="#d62728", label="local: candidate vs its block recomputed")
    if np.isfinite(expected).any():
        dt = iso.precision
        ax.semilogy(x, expected, "^--", color="#2ca02c", label=f"expected local error of a correct {dt} port")
        ax.semilogy(
            x, expected * iso.factor, ":", color="#2ca02c", lw=1, label=f"limit ({iso.factor:g}x expected)"
        )
    if np.isfinite(chain).any():
        ax.semilogy(x, chain, "v:", color="#7f7f7f", label=f"plain error of a correct {iso.precision} port")
    for i, r in enumerate(rows):
        if r.culprit:
            ax.axvline(i, color="#d62728", alpha=0.25, lw=8)
            ax.annotate("culprit", (i, np.nanmax(local[i : i + 1]) if np.isfinite(local[i]) else 1), color="#d62728",
                        textcoords="offset points", xytext=(4, 6), fontsize=9)  # fmt: skip
        if not r.checked:
            ax.axvline(i, color="#bbbbbb", ls="--", lw=1)
    ax.set_xticks(x)
    ax.set_xticklabels([r.output for r in rows], rotation=60, ha="right", fontsize=8)
    ax.set_ylabel(f"{measure} error (log)" if measure != "rms" else "RMS error (log)")
    ax.set_title("error by depth, block by block (dashed grey: not checked)", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _svg(fig)


def _plain_plot(res: CompareResult) -> str:
    """max_abs per compared tensor in forward order (log scale), the first divergence marked."""
    rows = [r for r in res.rows if r.status not in ("missing",)]
    fig, ax = plt.subplots(figsize=(7.0, 3.4), dpi=100)
    y = np.array([r.max_abs if r.max_abs > 0 else np.nan for r in rows], float)
    ax.semilogy(np.arange(len(rows)), y, ".-", color="#1f77b4", label="max |candidate - reference|")
    ax.semilogy(np.arange(len(rows)), [r.atol for r in rows], ":", color="#2ca02c", label="atol")
    for i, r in enumerate(rows):
        if r.first_divergent:
            ax.axvline(i, color="#d62728", alpha=0.3, lw=6)
            ax.annotate(f"first divergence: {r.name}", (i, 1), xycoords=("data", "axes fraction"),
                        xytext=(4, -12), textcoords="offset points", fontsize=8, color="#d62728")  # fmt: skip
    ax.set_xlabel("tensor (forward order)")
    ax.set_ylabel("max abs error (log)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _svg(fig)


def _heat_map(iso: IsolationResult, cand_tensors: Any, ref: Any) -> str | None:
    """|difference| averaged over heads of the culprit block's attention probabilities."""
    probs = [(n, r) for n, r in iso.inside if "attention_probs" in n and len(r.shape) == 4]
    if not probs:
        return None
    name, row = max(probs, key=lambda t: t[1].max_abs)
    diff = np.abs(np.asarray(cand_tensors[name], np.float64) - np.asarray(ref.tensors[name], np.float64))
    specs = next((e.get("masks") for e in ref.manifest.get("tensors", []) if e.get("name") == name), None)
    if specs:  # padded queries and keys are not compared: left blank
        diff = np.where(keep_mask(diff.shape, specs, ref.tensors), diff, np.nan)
    per_head = diff.mean(axis=1)  # [b, q, k]; the masks do not depend on the head
    b = int(np.nanargmax(np.nanmax(per_head.reshape(per_head.shape[0], -1), axis=1)))
    fig, ax = plt.subplots(figsize=(5.2, 4.2), dpi=100)
    im = ax.imshow(per_head[b], cmap="magma", aspect="auto")
    fig.colorbar(im, ax=ax, label="|candidate - reference|, mean over heads")
    ax.set_xlabel("key position")
    ax.set_ylabel("query position")
    ax.set_title(f"{name}\n(batch row {b}; blank: padded, not compared)", fontsize=8)
    return _svg(fig)


def _fmt(v: float | None) -> str:
    return "-" if v is None else f"{v:.3e}"


def _td(v: float | None) -> str:
    return f'<td data-v="{"" if v is None else repr(float(v))}">{_fmt(v)}</td>'


def _tensor_table(res: CompareResult, iso: IsolationResult | None) -> str:
    local = {r.output: r for r in iso.rows} if iso else {}
    culprit = iso.culprit if iso else None
    head = "<tr><th>#</th><th>tensor</th><th>shape</th><th>dtype</th><th>max_abs</th><th>rms</th><th>max_rel</th>"
    head += "<th>local max_abs</th><th>expected rms</th><th>status</th></tr>"
    body = []
    for i, r in enumerate(res.rows):
        b = local.get(r.name)
        cls = "culprit" if r.name == culprit else ("bad" if r.status in ("FAIL", "shape") else "")
        miss = r.status == "missing"
        body.append(
            f'<tr class="{cls}"><td data-v="{i}">{i}</td><td style="text-align:left">{html.escape(r.name)}</td>'
            f"<td>{'x'.join(map(str, r.shape)) or 'scalar'}</td><td>{html.escape(r.dtype or '-')}</td>"
            + (_td(None) * 3 if miss else _td(r.max_abs) + _td(r.rms) + _td(r.max_rel))
            + _td(b.local.max_abs if b is not None and b.local is not None else None)
            + _td(b.expected_stat if b is not None else None)
            + f"<td>{html.escape(b.status() if b is not None else r.status)}</td></tr>"
        )
    return f'<table class="sortable" id="tensors"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


def render_report(
    result: IsolationResult | CompareResult, reference: Any = None, candidate: Any = None
) -> str:
    """The report page as one HTML string (see the module text).

    Args:
        result: an `IsolationResult` (``compare --checkpoint``) or a `CompareResult`.
        reference: the reference `refimpl.golden.Golden` (for the heat map; read from the
            result's path when ``None``).
        candidate: the candidate's tensors under golden names (for the heat map).
    """
    iso = result if isinstance(result, IsolationResult) else None
    res = iso.plain if iso else result
    verdict = iso.verdict_line() if iso else res.summary()
    kind = "ok" if result.ok else ("inconclusive" if iso and iso.verdict == "inconclusive" else "fail")
    parts = [
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta name='generator' content='{GENERATOR}'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>refimpl compare: {html.escape(verdict[:80])}</title><style>{_CSS}</style></head><body>",
        "<h1>refimpl compare</h1>",
        f'<div class="verdict {kind}" id="verdict">{html.escape(verdict)}</div>',
        f'<p class="meta" id="coverage">{html.escape(res.coverage())}<br>'
        f"reference <code>{html.escape(str(res.reference_path))}</code>, candidate "
        f"<code>{html.escape(str(res.candidate_path))}</code><br>{html.escape(res.tolerances())}</p>",
    ]
    if res.notes:
        parts.append("<ul class='meta'>" + "".join(f"<li>{html.escape(n)}</li>" for n in res.notes) + "</ul>")
    if iso:
        parts += ["<h2>Error by depth</h2>", f'<div id="depth-plot">{_depth_plot(iso)}</div>']
        parts.append(f"<p class='meta'>{html.escape(iso.header())}</p>")
        if iso.inside:
            first = next((n for n, r in iso.inside if not r.ok), None)
            rows = "".join(
                f'<tr class="{"culprit" if n == first else ("bad" if not r.ok else "")}"><td style="text-align:left">'
                f"{html.escape(n)}</td>{_td(r.max_abs)}{_td(r.rms)}<td>{r.status}</td></tr>"
                for n, r in iso.inside
            )
            parts += [
                f"<h2>Inside the culprit: {html.escape(iso.culprit or '')}</h2>",
                "<p class='meta'>each step of the block recomputed in float64 from the candidate's inputs, against the "
                "candidate's own value of it; the first one off is highlighted</p>",
                f'<table class="sortable" id="culprit-steps"><thead><tr><th>step</th><th>local max_abs</th>'
                f"<th>local rms</th><th>status</th></tr></thead><tbody>{rows}</tbody></table>",
            ]
            ref = reference if reference is not None else iso.reference
            cand = candidate if candidate is not None else getattr(iso.candidate, "tensors", None)
            if cand is not None and ref is not None:
                heat = _heat_map(iso, cand, ref)
                if heat:
                    parts += [
                        "<h2>Attention probabilities of the culprit block</h2>",
                        f'<div id="heat-map">{heat}</div>',
                    ]
    else:
        parts += ["<h2>Error by tensor</h2>", f'<div id="depth-plot">{_plain_plot(res)}</div>']
    parts += ["<h2>Every tensor</h2>", "<p class='meta'>click a column to sort</p>", _tensor_table(res, iso)]
    parts += [f"<script>{_JS}</script></body></html>"]
    return "\n".join(parts)


def is_report_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a regular file that starts as a report page refimpl wrote (its
    first bytes carry the ``generator`` meta tag): ``--report`` may replace it without ``--force``."""
    try:
        with open_regular(path, "report") as f:
            head = f.read(1024)
    except (OSError, ValueError):
        return False
    return head.startswith(b"<!DOCTYPE html>") and _MARK in head


def check_report_destination(
    path: str | os.PathLike, protected: Iterable[str | os.PathLike | None] = (), force: bool = False
) -> str:
    """Check, before any work, that ``--report`` may be written (`refimpl.files.check_destination`):
    never one of ``protected`` (the command's inputs: the reference, the candidate, a name map,
    the checkpoint directory and its files), never a FIFO, device or directory, and an existing
    file only when it is a report refimpl wrote (`is_report_file`) or ``force`` is given.
    Returns the path to write."""
    return check_destination(
        path, protected, force=force, ours=is_report_file, what="--report", kind="a report page refimpl wrote"
    )


def write_report(
    path: str | os.PathLike,
    result: IsolationResult | CompareResult,
    reference: Any = None,
    candidate: Any = None,
    force: bool = False,
    protected: Iterable[str | os.PathLike | None] = (),
) -> str:
    """Write `render_report` to ``path`` with the project's one atomic writer
    (`refimpl.files.atomic_write`: a unique temp file in its directory, fsynced, renamed over
    it), after `check_report_destination` (``protected`` and ``force`` as there; the result's
    reference and candidate are always protected).

    Returns:
        the path written (a symlink's target).

    Raises:
        refimpl.files.DestinationError: ``path`` may not be written (nothing is).
        OSError: naming ``path`` (a full disk: ``path`` keeps its old bytes).
    """
    res = result.plain if isinstance(result, IsolationResult) else result
    own = [getattr(res, "reference_path", None), getattr(res, "candidate_path", None)]
    p = check_report_destination(path, [*own, *protected], force=force)
    data = render_report(result, reference, candidate).encode("utf-8")
    with atomic_write(p) as f:
        f.write(data)
    return p
