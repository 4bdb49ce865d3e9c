"""MkDocs hooks: splice files that live outside docs/ into pages at build time.

* ``<!-- refimpl:include PATH -->`` in a page is replaced by the contents of ``PATH``
  (relative to the repository root), or by a note when the file does not exist yet.
  The benchmarks page uses it for ``benchmarks/results.md``, which the benchmark scripts
  write, so the site always shows the latest committed numbers without a copy in docs/.
* ``golden-format.md`` is written by the golden-file tooling; if a checkout lacks it, a
  short placeholder page is generated so that the nav (and ``--strict``) still hold.
"""

from __future__ import annotations

import os
import re

from mkdocs.structure.files import File

_INCLUDE = re.compile(r"<!--\s*refimpl:include\s+(\S+)\s*-->")


def _root(config) -> str:
    return os.path.dirname(os.path.abspath(config["config_file_path"]))


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

    return _INCLUDE.sub(splice, markdown)
