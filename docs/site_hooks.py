"""MkDocs hooks that make the site readable offline: math rendered at build time, notebooks as pages.

* **Math.** ``pymdownx.arithmatex`` (generic mode) leaves every formula in the HTML as
  ``<span class="arithmatex">\\(...\\)</span>`` or ``<div class="arithmatex">\\[...\\]</div>``.
  `on_page_content` renders all of a page's formulas with the vendored KaTeX
  (``docs/assets/katex/katex.min.js``, run by ``node``, one process per page) and puts the
  rendered HTML in their place, so the built pages need no script at all to show math; the
  vendored ``katex.min.css`` and woff2 fonts style it. A formula KaTeX cannot parse fails the
  build, naming the page and the formula. Without ``node`` on the build machine the formulas
  are left in place and the same vendored KaTeX renders them in the browser (still offline).
* **Notebooks.** `on_files` turns each committed, executed ``notebooks/*.ipynb`` into a
  page ``notebooks/<name>.md``: markdown cells as they are, code cells as Python blocks, and
  the stored outputs (text, and images inlined as ``data:`` URIs). Nothing is executed at build
  time; ``tests/test_notebooks.py`` keeps the committed outputs in sync with the sources.
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import shutil
import subprocess

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File

log = logging.getLogger("mkdocs.hooks.site")

KATEX_DIR = "assets/katex"  # relative to docs/
_MATH = re.compile(r'<(span|div) class="arithmatex">(.*?)</\1>', re.S)

# Reads [[tex, display], ...] as JSON on stdin, writes [{"html": ...} | {"error": ...}, ...].
_RENDER_JS = r"""
const katex = require(process.argv[1]);
let data = "";
process.stdin.on("data", (d) => (data += d));
process.stdin.on("end", () => {
  const out = JSON.parse(data).map(([tex, display]) => {
    try {
      return {html: katex.renderToString(tex, {displayMode: display, throwOnError: true, strict: "error"})};
    } catch (e) {
      return {error: String(e.message)};
    }
  });
  process.stdout.write(JSON.stringify(out));
});
"""

# In-browser fallback (only when the build machine has no node): render the same elements.
_BROWSER_JS = """// Written by docs/site_hooks.py: renders formulas with the vendored KaTeX when the build could not.
document$.subscribe(() => {
  for (const el of document.querySelectorAll(".arithmatex")) {
    const display = el.tagName === "DIV";
    const tex = el.textContent.trim().slice(2, -2);
    katex.render(tex, el, {displayMode: display, throwOnError: false});
  }
});
"""


def _docs_dir(config) -> str:
    return config["docs_dir"]


def _root(config) -> str:
    return os.path.dirname(os.path.abspath(config["config_file_path"]))


def _node() -> str | None:
    return shutil.which("node")


def on_config(config):
    config["extra_css"] = [f"{KATEX_DIR}/katex.min.css", "assets/extra.css", *config["extra_css"]]
    if _node() is None:
        log.info("no `node` on this machine: math will be rendered in the browser by the vendored KaTeX")
        config["extra_javascript"] = [
            f"{KATEX_DIR}/katex.min.js",
            f"{KATEX_DIR}/render-in-browser.js",
            *config["extra_javascript"],
        ]
    return config


# --- notebooks ------------------------------------------------------------------------------


def _fence(text: str, lang: str, classes: str = "") -> str:
    ticks = "```"
    while ticks in text:
        ticks += "`"
    info = f"{{.{lang} {classes}}}" if classes else lang
    return f"{ticks}{info}\n{text.rstrip()}\n{ticks}\n"


#: Classes of a cell's output block: ``nb-output`` (docs/assets/extra.css wraps its long lines, so
#: a check line's result at the end stays on screen) and Material's ``no-copy`` (no copy button
#: over the block's top-right corner, where it used to hide the end of the first line).
OUTPUT_CLASSES = ".nb-output .no-copy"


def notebook_markdown(nb: dict, source_name: str) -> str:
    """One executed notebook (parsed ``.ipynb`` JSON) as a Markdown page.

    Args:
        nb: the notebook, as ``json.load`` returns it (nbformat 4).
        source_name: the notebook's name in the repository (``lilt_forward``), for the header.

    Returns:
        The page: a note naming the source files, then every cell in order with its stored
        outputs (streams and ``text/plain`` results as text blocks, ``image/png`` inline).
    """
    parts = [
        f'!!! note "Rendered from `notebooks/{source_name}.ipynb`"\n'
        f"    This page shows the committed notebook with the outputs it had when it was last run\n"
        f"    (`notebooks/build.py`); nothing runs when the site is built. Its source is the\n"
        f"    jupytext file `notebooks/{source_name}.py`. To run it yourself, see "
        f"[Notebooks](../notebooks.md).\n"
    ]
    for cell in nb["cells"]:
        src = "".join(cell.get("source", ""))
        if cell["cell_type"] == "markdown":
            # Links into docs/ are relative to notebooks/ in Jupyter; the page lives in docs/notebooks/.
            src = src.replace("](../docs/", "](../")
            # Jupyter accepts two $$ blocks on consecutive lines; Markdown needs a blank line between.
            src = re.sub(r"\$\$\n\$\$", "$$\n\n$$", src)
            parts.append(src.strip() + "\n")
        elif cell["cell_type"] == "code":
            parts.append(_fence(src, "python"))
            for out in cell.get("outputs", []):
                kind = out.get("output_type")
                if kind == "stream":
                    parts.append(_fence("".join(out.get("text", "")), "text", OUTPUT_CLASSES))
                elif kind in ("display_data", "execute_result"):
                    data = out.get("data", {})
                    if "image/png" in data:
                        png = "".join(data["image/png"]).replace("\n", "")
                        parts.append(f'<img alt="cell output" src="data:image/png;base64,{png}">\n')
                    elif "text/plain" in data:
                        parts.append(_fence("".join(data["text/plain"]), "text", OUTPUT_CLASSES))
                elif kind == "error":
                    parts.append(_fence("\n".join(out.get("traceback", [])), "text", OUTPUT_CLASSES))
    return "\n".join(parts)


def on_files(files, config):
    nb_dir = os.path.join(_root(config), "notebooks")
    for name in sorted(os.listdir(nb_dir)) if os.path.isdir(nb_dir) else []:
        if not name.endswith(".ipynb"):
            continue
        stem = name[: -len(".ipynb")]
        with open(os.path.join(nb_dir, name), encoding="utf-8") as f:
            nb = json.load(f)
        files.append(File.generated(config, f"notebooks/{stem}.md", content=notebook_markdown(nb, stem)))
    if _node() is None:
        files.append(File.generated(config, f"{KATEX_DIR}/render-in-browser.js", content=_BROWSER_JS))
    return files


# --- math -----------------------------------------------------------------------------------


def render_math(items: list[tuple[str, bool]], katex_js: str) -> list[dict]:
    """Render formulas with KaTeX under node.

    Args:
        items: ``(tex, display)`` pairs; ``display`` is True for a block formula.
        katex_js: path of the vendored ``katex.min.js``.

    Returns:
        One ``{"html": ...}`` or ``{"error": message}`` per item, in order.
    """
    proc = subprocess.run(
        [_node(), "-e", _RENDER_JS, katex_js],
        input=json.dumps(items),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise PluginError(f"KaTeX (node) failed:\n{proc.stderr}")
    return json.loads(proc.stdout)


def on_page_content(html_text, page, config, files):
    if _node() is None:
        return html_text
    found = list(_MATH.finditer(html_text))
    if not found:
        return html_text
    items = []
    for m in found:
        tex = html.unescape(m.group(2)).strip()
        display = m.group(1) == "div"
        opener, closer = ("\\[", "\\]") if display else ("\\(", "\\)")
        if not (tex.startswith(opener) and tex.endswith(closer)):
            raise PluginError(f"{page.file.src_path}: unexpected math markup {m.group(0)[:80]!r}")
        items.append((tex[2:-2], display))
    rendered = render_math(items, os.path.join(_docs_dir(config), KATEX_DIR, "katex.min.js"))
    errors = [f"  {tex!r}: {r['error']}" for (tex, _), r in zip(items, rendered, strict=True) if "error" in r]
    if errors:
        raise PluginError(f"{page.file.src_path}: KaTeX cannot render:\n" + "\n".join(errors))
    out, last = [], 0
    for m, r, (_, display) in zip(found, rendered, items, strict=True):
        out.append(html_text[last : m.start()])
        tag = "div" if display else "span"
        out.append(f'<{tag} class="arithmatex">{r["html"]}</{tag}>')
        last = m.end()
    out.append(html_text[last:])
    return "".join(out)
