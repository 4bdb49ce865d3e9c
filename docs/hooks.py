"""MkDocs hooks: splice files that live outside docs/ into pages at build time.

* ``<!-- refimpl:include PATH -->`` in a page is replaced by the contents of ``PATH``
  (relative to the repository root), or by a note when the file does not exist yet.
  The benchmarks page uses it for ``benchmarks/results.md``, which the benchmark scripts
  write, so the site always shows the latest committed numbers without a copy in docs/.
* ``<!-- refimpl:value NAME -->`` is replaced by a number or sentence computed from the committed
  benchmark results (``VALUES`` below: ``benchmarks/results.json`` and ``benchmarks/sweep.json``),
  so that prose quoting a measurement (the float32 difference on the Golden outputs page, the
  speed summary on the home page) cannot drift from the results it quotes.
* ``golden-format.md`` is written by the golden-file tooling; if a checkout lacks it, a
  short placeholder page is generated so that the nav (and ``--strict``) still hold.
"""

from __future__ import annotations

import json
import os
import re

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

_INCLUDE = re.compile(r"<!--\s*refimpl:include\s+(\S+)\s*-->")
_VALUE = re.compile(r"<!--\s*refimpl:value\s+([\w-]+)\s*-->")
RESULTS = "benchmarks/results.json"
SWEEP = "benchmarks/sweep.json"


def _root(config) -> str:
    return os.path.dirname(os.path.abspath(config["config_file_path"]))


def _load(root: str, rel: str) -> dict:
    path = os.path.join(root, rel)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise PluginError(f"docs/hooks.py: cannot read {rel}: {e}") from e


def _rows(data: dict, rel: str, key: str, **match) -> list[dict]:
    """The rows of ``data[key]`` whose fields equal ``match``; an error naming the file if none do."""
    rows = [r for r in data.get(key, []) if all(r.get(k) == v for k, v in match.items())]
    if not rows:
        raise PluginError(f"docs/hooks.py: {rel} has no {key} row with {match}")
    return rows


def lilt_base_float32_diff(root: str) -> str:
    """Largest |refimpl - transformers| of LiLT base's last_hidden_state, 1 x 512 float32, in results.json."""
    rows = _rows(_load(root, RESULTS), RESULTS, "rows", case="lilt", device="cpu", dtype="float32")
    return f"{max(r['max_abs_diff_vs_torch'] for r in rows):.1e}".replace("e-0", "e-")


def _cpu(machine: dict) -> str:
    name = re.sub(r"\((R|TM)\)", "", machine.get("cpu", "unknown CPU")).replace(" Processor", "")
    return f"{name}, {machine.get('cores', '?')} cores"


def _case(case: str) -> str:
    model, shape = case.split(":", 1)
    return f"{ {'lilt': 'LiLT', 'lxmert': 'LXMERT'}.get(model, model) } {shape}"


def cpu_speed_summary(root: str) -> str:
    """One sentence: the float32 time ratios ours / torch of the latest sweep (both libraries at their
    defaults, all cores) and the peak-memory ratios of the latest results, with the CPU they ran on."""
    sweep = _load(root, SWEEP)
    workers = _rows(sweep, SWEEP, "workers", config="f32", setting="defaults")
    ratios = {r["case"]: r["ratio_median"] for w in workers for r in w["rows"]}
    slower = [v for v in ratios.values() if v >= 1.0]
    faster = sorted((c, v) for c, v in ratios.items() if v < 1.0)
    peaks = [
        r["peak_ratio"] for r in _rows(_load(root, RESULTS), RESULTS, "rows", device="cpu", dtype="float32")
    ]
    parts = []
    if slower:
        parts.append(
            f"takes {min(slower):.2f} to {max(slower):.2f} times as long as transformers on torch eager"
            f" at {len(slower)} of the {len(ratios)} shapes"
        )
    if faster:
        shapes = ", ".join(f"{_case(c)} ({v:.2f})" for c, v in faster)
        parts.append(f"is faster {'only ' if slower else ''}at {shapes}")
    return (
        f"on the CPU of the latest sweep ({_cpu(sweep.get('machine', {}))}), in float32 with both libraries"
        f" at their defaults, refimpl {' and '.join(parts)}; its peak memory is {min(peaks):.2f} to"
        f" {max(peaks):.2f} of torch's"
    )


#: ``<!-- refimpl:value NAME -->`` markers: NAME -> function of the repository root.
VALUES = {
    "lilt-base-float32-diff": lilt_base_float32_diff,
    "cpu-speed-summary": cpu_speed_summary,
}


def on_files(files, config):
    if files.get_file_from_path("golden-format.md") is None:
        files.append(
            File.generated(
                config,
                "golden-format.md",
                content="# Golden file format\n\nThis page is written by the golden-file tooling "
                "(`refimpl/golden/`); this checkout does not have it yet. See "
                "[Golden outputs](golden.md).\n",
            )
        )
    return files


def on_page_markdown(markdown, page, config, files):
    root = _root(config)

    def splice(m: re.Match) -> str:
        rel = m.group(1)
        path = os.path.join(root, rel)
        if not os.path.isfile(path):
            return f'!!! note "Not generated yet"\n    `{rel}` does not exist in this checkout yet.\n'
        with open(path, encoding="utf-8") as f:
            text = f.read()
        # Nest the included file under the heading that precedes the marker: its "#" becomes
        # one level below that heading.
        above = re.findall(r"^(#{1,6}) ", markdown[: m.start()], flags=re.M)
        shift = len(above[-1]) if above else 1
        return re.sub(r"^(#{1,6}) ", lambda h: "#" * min(6, len(h.group(1)) + shift) + " ", text, flags=re.M)

    def value(m: re.Match) -> str:
        name = m.group(1)
        if name not in VALUES:
            raise PluginError(
                f"{page.file.src_path}: unknown refimpl:value {name!r} (known: {sorted(VALUES)})"
            )
        return VALUES[name](root)

    return _VALUE.sub(value, _INCLUDE.sub(splice, markdown))
