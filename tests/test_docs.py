"""The documentation site builds strictly, covers every module, and every public function is documented.

* ``mkdocs build --strict`` (into a temporary directory) must pass: a broken link, a nav entry
  without a page, or a ``::: refimpl.x.y`` that no longer resolves fails CI. Skipped only when
  mkdocs itself is not installed (``pip install -e ".[docs]"``).
* Every name in ``__all__`` of every ``refimpl`` module has a docstring; functions that take
  arrays say their shapes (``[batch, seq, hidden]``-style, or the word "shape").
* The API page has one ``::: module`` line per public module, so a new module shows up there.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import pkgutil
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import refimpl

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _modules() -> list[str]:
    names = ["refimpl"]
    for info in pkgutil.walk_packages(refimpl.__path__, prefix="refimpl."):
        leaf = info.name.rsplit(".", 1)[-1]
        if leaf.startswith("_"):
            continue  # private modules and __main__
        names.append(info.name)
    return sorted(names)


# --- the site ------------------------------------------------------------------------------


_NO_MKDOCS = importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The site, built once for this module with ``mkdocs build --strict``."""
    if _NO_MKDOCS:
        pytest.skip('mkdocs is not installed (pip install -e ".[docs]")')
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_mkdocs_build_strict(site):
    # The pages of the nav were written, and the LiLT page carries the rendered source of the
    # layout attention (so a reader reaches the exact line from the page).
    for page in ("index.html", "lilt/index.html", "lxmert/index.html", "quirks/index.html", "api/index.html"):
        assert (site / page).is_file(), f"{page} missing from the built site"
    lilt = (site / "lilt" / "index.html").read_text(encoding="utf-8")
    assert "layout_attention_probs" in lilt, "the LiLT page no longer shows the layout attention's source"


# A script, stylesheet or font fetched from the network: <script src=http..>, <link href=http..>
# (stylesheets, preloads, fonts), CSS @import / url(http..), and the Google Fonts host anywhere.
_REMOTE = [
    re.compile(r"<script\b[^>]*\bsrc\s*=\s*[\"']?(?:https?:)?//", re.I),
    re.compile(
        r"<link\b(?=[^>]*\brel\s*=\s*[\"']?(?:stylesheet|preload|preconnect|font))[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//",
        re.I,
    ),
    re.compile(
        r"<link\b[^>]*\bhref\s*=\s*[\"']?(?:https?:)?//[^>]*\brel\s*=\s*[\"']?(?:stylesheet|preload|preconnect|font)",
        re.I,
    ),
    re.compile(r"@import\s+(?:url\()?\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"url\(\s*[\"']?(?:https?:)?//", re.I),
    re.compile(r"fonts\.(?:googleapis|gstatic)\.com", re.I),
]


def remote_references(text: str) -> list[str]:
    """The snippets of ``text`` (HTML or CSS) that load a script, stylesheet or font from the network."""
    return [m.group(0)[:120] for rx in _REMOTE for m in rx.finditer(text)]


def test_remote_reference_detector():
    """The detector used below catches each kind of network load (and not plain links)."""
    for bad in (
        '<script src="https://cdn.jsdelivr.net/npm/mathjax@3/es5/tex-mml-chtml.js"></script>',
        '<link rel="stylesheet" href="https://fonts.googleapis.com/css?family=Roboto">',
        '<link href="//cdn.example.org/x.css" rel="stylesheet">',
        "@import url(https://example.org/x.css);",
        "@font-face{src:url(https://example.org/f.woff2)}",
    ):
        assert remote_references(bad), bad
    assert not remote_references('<a href="https://github.com/huggingface/transformers">oracle</a>')
    assert not remote_references('<script src="../assets/javascripts/bundle.js"></script>')


def test_site_loads_nothing_from_the_network(site):
    """Offline reading: no page or stylesheet fetches a script, stylesheet or font over http(s)."""
    found = []
    for path in sorted(site.rglob("*")):
        if path.suffix in (".html", ".css", ".js") and path.is_file():
            text = path.read_text(encoding="utf-8", errors="replace")
            if path.suffix == ".js":  # scripts: only a Google Fonts host would be a font load
                found += [f"{path.relative_to(site)}: {r}" for r in remote_references(text) if "fonts." in r]
            else:
                found += [f"{path.relative_to(site)}: {r}" for r in remote_references(text)]
    assert not found, "the built site loads from the network:\n  " + "\n  ".join(found[:20])


@pytest.mark.parametrize(
    "page, figures",
    [
        ("lilt", ["lilt-architecture.svg", "lilt-attention.svg", "lilt-page.svg"]),
        ("lxmert", ["lxmert-architecture.svg", "lxmert-cross-attention.svg"]),
        ("golden-format", []),
        ("backward", ["lilt-layer-backward.svg"]),
    ],
)
def test_model_pages_have_rendered_math_and_figures(site, page, figures):
    html = (site / page / "index.html").read_text(encoding="utf-8")
    if shutil.which("node") is None:
        pytest.skip("no node: math is rendered in the browser, not at build time")
    rendered = html.count('class="katex-display"') + html.count('class="katex"')
    assert rendered >= 5, f"{page}: only {rendered} formulas rendered by KaTeX"
    # No formula is left as TeX source: arithmatex's delimiters survive only where KaTeX did not run.
    raw = re.findall(r'class="arithmatex">\s*(?:\\\(|\\\[|\$\$)', html)
    assert not raw, f"{page}: {len(raw)} formulas left as raw TeX"
    assert "\\_" not in re.sub(r"<annotation[^>]*>.*?</annotation>", "", html, flags=re.S), (
        f"{page}: a literal \\_ is shown"
    )
    for fig in figures:
        assert re.search(rf'<img[^>]*src="\.\./figures/{re.escape(fig)}"', html), (
            f"{page}: figure {fig} not shown"
        )
        assert (site / "figures" / fig).is_file(), f"figures/{fig} not in the built site"


def test_notebooks_are_pages_of_the_site(site):
    for name in ("lilt_forward", "lxmert_forward", "lilt_backward", "lilt_finetune"):
        html = (site / "notebooks" / name / "index.html").read_text(encoding="utf-8")
        assert 'src="data:image/png;base64,' in html, f"{name}: the stored plots are not on the page"
        assert html.count('class="language-python') >= 5 or html.count("highlight") >= 5, (
            f"{name}: no code cells"
        )
    for page in ("lilt", "lxmert"):
        html = (site / page / "index.html").read_text(encoding="utf-8")
        assert "../notebooks/" in html, f"the {page} page does not link its notebook"
    backward = (site / "backward" / "index.html").read_text(encoding="utf-8")
    for name in ("lilt_backward", "lilt_finetune"):
        assert f"../notebooks/{name}/" in backward, f"the backward page does not link notebooks/{name}"
    notebooks = (site / "notebooks" / "index.html").read_text(encoding="utf-8")
    assert re.search(r'<img[^>]*src="\.\./figures/notebooks/lilt-finetune-loss\.svg"', notebooks), (
        "the Notebooks page does not show the fine-tuning loss plot"
    )


def test_figures_are_up_to_date():
    """docs/figures/*.svg are what docs/figures.py draws (the SVG bytes depend on matplotlib's version)."""
    matplotlib = pytest.importorskip("matplotlib")
    sys.path.insert(0, str(DOCS))
    try:
        import figures
    finally:
        sys.path.remove(str(DOCS))
    if matplotlib.__version__ != figures.MATPLOTLIB_VERSION:
        pytest.skip(
            f"figures were drawn with matplotlib {figures.MATPLOTLIB_VERSION}, not {matplotlib.__version__}"
        )
    proc = subprocess.run(
        [sys.executable, str(DOCS / "figures.py"), "--check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_figure_size_guard_fails_on_small_labels_and_wide_figures():
    """docs/figures.py refuses a figure wider than the docs' text column or with a label under 8 pt."""
    pytest.importorskip("matplotlib")
    sys.path.insert(0, str(DOCS))
    try:
        import figures
    finally:
        sys.path.remove(str(DOCS))
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(figures.MAX_WIDTH_IN, 3))
    ax.set_title("fine", fontsize=figures.MIN_LABEL_PT)
    figures.check_sizes(fig, "ok")
    ax.text(0.5, 0.5, "too small", fontsize=6)
    with pytest.raises(ValueError, match="too small"):
        figures.check_sizes(fig, "small label")
    plt.close(fig)
    fig = plt.figure(figsize=(figures.MAX_WIDTH_IN + 2, 3))
    with pytest.raises(ValueError, match="wide"):
        figures.check_sizes(fig, "wide figure")
    plt.close(fig)


def test_committed_figures_fit_the_text_column():
    """Every docs/figures/*.svg is at most 7.1 in (682 CSS px) wide: shown unscaled in the 688-px column."""
    for svg in sorted((DOCS / "figures").glob("*.svg")):
        width = re.search(r'<svg[^>]*\bwidth="([\d.]+)pt"', svg.read_text(encoding="utf-8"))
        assert width, f"{svg.name}: no width in pt"
        assert float(width.group(1)) / 72 <= 7.1 + 1e-6, (
            f"{svg.name} is {float(width.group(1)) / 72:.2f} in wide"
        )


def _notebook_outputs(name: str) -> list[dict]:
    import json

    nb = json.loads((ROOT / "notebooks" / f"{name}.ipynb").read_text(encoding="utf-8"))
    return [o for c in nb["cells"] for o in c.get("outputs", [])]


@pytest.mark.parametrize("name", ["lilt_forward", "lxmert_forward", "lilt_backward", "lilt_finetune"])
def test_notebook_figures_are_100_dpi_and_fit_the_text_column(name):
    """The stored plots are >= 100 dpi (PNG pHYs) and at most 688 px wide, so the page shows them unscaled
    (the notebooks draw their labels at 8 pt or more: 11 px and up at 100 dpi)."""
    import base64
    import struct

    pngs = [
        base64.b64decode("".join(o["data"]["image/png"]))
        for o in _notebook_outputs(name)
        if "image/png" in o.get("data", {})
    ]
    assert pngs, f"{name}: no figures"
    for i, png in enumerate(pngs):
        width = struct.unpack(">I", png[16:20])[0]
        at = png.find(b"pHYs")
        assert at > 0, f"{name} figure {i}: no pHYs (resolution) chunk"
        per_m, _, unit = struct.unpack(">IIB", png[at + 4 : at + 13])
        assert unit == 1 and per_m * 0.0254 >= 99.5, f"{name} figure {i}: {per_m * 0.0254:.0f} dpi"
        assert width <= 688, f"{name} figure {i}: {width} px wide, more than the docs' 688-px column"


@pytest.mark.parametrize("name", ["lilt_forward", "lxmert_forward", "lilt_backward"])
def test_notebook_check_lines_start_with_the_result(name):
    """A check line opens with its max |diff| (a narrow screen cuts the end, never the result), and no mask
    prints as -0.0000e+000 / -1.7977e+308."""
    text = "".join(
        "".join(o.get("text", "")) for o in _notebook_outputs(name) if o.get("output_type") == "stream"
    )
    lines = [line for line in text.splitlines() if "max |diff|" in line]
    assert len(lines) >= 10, f"{name}: only {len(lines)} check lines"
    late = [line for line in lines if not line.startswith("max |diff| = ")]
    assert not late, f"{name}: check lines that do not start with the result: {late[:3]}"
    assert "-0.0000e+000" not in text and "e+308 -" not in text, f"{name}: a mask printed as raw floats"


def test_notebook_outputs_wrap_and_have_no_copy_button(site):
    """Cell outputs are marked nb-output (extra.css wraps them) and no-copy (no button over their end)."""
    css = (DOCS / "assets" / "extra.css").read_text(encoding="utf-8")
    assert re.search(r"\.nb-output pre > code \{[^}]*white-space: pre-wrap", css), (
        "extra.css no longer wraps outputs"
    )
    for name in ("lilt_forward", "lxmert_forward"):
        html = (site / "notebooks" / name / "index.html").read_text(encoding="utf-8")
        outputs = re.findall(r'<div class="([^"]*\bnb-output\b[^"]*)"', html)
        assert len(outputs) >= 10, f"{name}: {len(outputs)} output blocks marked nb-output"
        assert all("no-copy" in c for c in outputs), f"{name}: an output block has a copy button"
        assert "max |diff|" in html


def test_pages_quote_the_committed_benchmark_results(site):
    """The Golden outputs page's float32 difference and the home page's speed summary are spliced from
    benchmarks/results.json and sweep.json at build time (docs/hooks.py), not typed into the pages."""
    import json

    results = json.loads((ROOT / "benchmarks" / "results.json").read_text(encoding="utf-8"))
    diff = max(
        r["max_abs_diff_vs_torch"]
        for r in results["rows"]
        if r["case"] == "lilt" and r["dtype"] == "float32" and r["device"] == "cpu"
    )
    golden = (site / "golden" / "index.html").read_text(encoding="utf-8")
    assert f"is {diff:.1e}".replace("e-0", "e-") in golden, (
        "golden.md does not quote results.json's LiLT diff"
    )
    marker = "<!-- refimpl:value lilt-base-float32-diff -->"
    assert marker in (DOCS / "golden.md").read_text(encoding="utf-8"), "golden.md types the number in"
    sweep = json.loads((ROOT / "benchmarks" / "sweep.json").read_text(encoding="utf-8"))
    ratios = [
        r["ratio_median"]
        for w in sweep["workers"]
        if w["config"] == "f32" and w["setting"] == "defaults"
        for r in w["rows"]
    ]
    home = (site / "index.html").read_text(encoding="utf-8")
    slower = [v for v in ratios if v >= 1.0]
    if slower:
        assert f"{min(slower):.2f} to {max(slower):.2f} times as long" in home, "home page speed summary"
        assert f"at {len(slower)} of the {len(ratios)} shapes" in home
    for faster in (v for v in ratios if v < 1.0):
        assert f"({faster:.2f})" in home, f"home page: the shape at {faster:.2f} is not named"
    cpu = re.sub(r"\((R|TM)\)", "", sweep["machine"]["cpu"]).replace(" Processor", "")
    assert cpu in home, f"the home page does not name the sweep's CPU {cpu!r}"


def test_gelu_tanh_gap_is_quoted_from_first_principles():
    """golden-format.md's max |gelu_exact - gelu_tanh| is the true maximum, computed here on a fine grid."""
    import math

    import numpy as np

    x = np.linspace(-8.0, 8.0, 160_001)
    erf = np.array([math.erf(v) for v in (x / math.sqrt(2.0)).tolist()])
    exact = x / 2 * (1 + erf)
    tanh = x / 2 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))
    gap = np.abs(exact - tanh)
    at = abs(x[gap.argmax()])
    text = (DOCS / "golden-format.md").read_text(encoding="utf-8")
    assert f"up to {gap.max():.1e}".replace("e-0", "e-") in text, f"max gap is {gap.max():.3e}"
    assert f"|x| \\approx {at:.2f}" in text, f"at |x| = {at:.3f}"


def _generated(page: str) -> bool:
    """Pages the hooks generate: golden-format.md (placeholder) and notebooks/<name>.md (from the .ipynb)."""
    if page == "golden-format.md":
        return True
    return page.startswith("notebooks/") and (ROOT / page).with_suffix(".ipynb").is_file()


def test_nav_pages_exist():
    """Every page named in mkdocs.yml's nav exists in docs/ or is generated by a hook."""
    nav = re.findall(r":\s*([\w./-]+\.md)\s*$", (ROOT / "mkdocs.yml").read_text(encoding="utf-8"), flags=re.M)
    assert nav, "mkdocs.yml has no nav"
    missing = [p for p in nav if not (DOCS / p).is_file() and not _generated(p)]
    assert not missing, f"nav pages missing from docs/: {missing}"


def test_home_page_shows_the_readme_setup_commands():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = [c.strip() for c in re.findall(r"```bash\n(.*?)```", setup, flags=re.S)]
    assert len(commands) == 2, commands
    home = (DOCS / "index.md").read_text(encoding="utf-8")
    for c in commands:
        assert c in home, f"docs/index.md does not show the README's set-up command {c!r}"


def _examples(text: str) -> dict[str, str]:
    """``## Example: X`` section -> its python code block."""
    out = {}
    for section in text.split("\n## Example: ")[1:]:
        title = section.split("\n", 1)[0].strip()
        blocks = re.findall(r"```python\n(.*?)```", section.split("\n## ", 1)[0], flags=re.S)
        assert len(blocks) == 1, f"example {title!r} should have one python block"
        out[title] = blocks[0]
    return out


def test_readme_examples_run_and_match_the_home_page(capsys):
    readme = _examples((ROOT / "README.md").read_text(encoding="utf-8"))
    home = _examples((DOCS / "index.md").read_text(encoding="utf-8"))
    assert set(readme) == {"LiLT", "LXMERT"}, sorted(readme)
    assert home == readme, "docs/index.md's examples differ from the README's"
    for title, code in readme.items():
        assert len(code.strip().splitlines()) <= 12, f"the {title} example should stay about 10 lines"
        exec(compile(code, f"README example: {title}", "exec"), {"__name__": "__readme__"})
    printed = capsys.readouterr().out
    assert "(1, 31, 7)" in printed and "(1, 11, 233) (1, 2) (1, 10)" in printed, printed


def test_api_page_lists_every_public_module():
    api = (DOCS / "api.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^:::\s*([\w.]+)", api, flags=re.M))
    missing = [m for m in _modules() if m not in listed]
    assert not missing, f"docs/api.md needs a '::: module' line for: {missing}"
    stale = [m for m in listed if importlib.util.find_spec(m) is None]
    assert not stale, f"docs/api.md lists modules that do not exist: {stale}"


# --- docstrings ----------------------------------------------------------------------------

# Parameter names that carry arrays in this code base (inputs, weights, intermediates).
_ARRAY_PARAM = re.compile(
    r"^(x|y|ids|input|inputs|target|targets|weight|bias|query|key|value|context|"
    r"bbox|boxes|scores|probs|logits|labels|ans|positions|"
    r".*_ids|.*_states|.*_mask|.*_embeds|.*_feats|.*_pos|.*_output|.*_logits|.*_labels|.*_positions|"
    r".*_tensor|.*_scores|.*_probs|.*_layer|.*_weight|.*_embedding)$"
)
# A shape in brackets, or words that state the shape contract ("any shape", "0-d", "elementwise").
_SHAPE = re.compile(r"\[[^\]\n]*\]|\bshape|\bscalar|\b0-d\b|element", re.I)


def _public_callables():
    """(qualified name, object) for every function/class in ``__all__`` and every public method."""
    seen = set()
    for modname in _modules():
        mod = importlib.import_module(modname)
        for name in getattr(mod, "__all__", ()):
            obj = getattr(mod, name, None)
            if obj is None or id(obj) in seen:
                continue
            if inspect.isfunction(obj):
                seen.add(id(obj))
                yield f"{modname}.{name}", obj
            elif inspect.isclass(obj) and obj.__module__.startswith("refimpl"):
                seen.add(id(obj))
                yield f"{modname}.{name}", obj
                for mname, member in vars(obj).items():
                    if mname.startswith("_"):
                        continue
                    fn = member.__func__ if isinstance(member, classmethod | staticmethod) else member
                    if inspect.isfunction(fn) and id(fn) not in seen:
                        seen.add(id(fn))
                        yield f"{modname}.{name}.{mname}", fn


def _takes_arrays(fn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return any(_ARRAY_PARAM.match(p) for p in params if p not in ("self", "cls"))


def _doc(name: str, obj) -> str:
    """The docstring, inherited from a base class's method of the same name when absent
    (``inspect.getdoc`` does that for plain methods but not for classmethods)."""
    doc = inspect.getdoc(obj) or ""
    if doc.strip() or not inspect.isfunction(obj):
        return doc
    rest = name.rsplit(".", 2)  # module, class, method
    cls = getattr(importlib.import_module(rest[0]), rest[1], None) if len(rest) == 3 else None
    for base in getattr(cls, "__mro__", ())[1:]:
        member = vars(base).get(obj.__name__)
        fn = member.__func__ if isinstance(member, classmethod | staticmethod) else member
        if fn is not None and (getattr(fn, "__doc__", None) or "").strip():
            return fn.__doc__
    return ""


def test_every_public_callable_has_a_docstring():
    undocumented = [name for name, obj in _public_callables() if not _doc(name, obj).strip()]
    assert not undocumented, "public functions/classes/methods without a docstring:\n  " + "\n  ".join(
        undocumented
    )


def test_functions_taking_arrays_document_shapes():
    from refimpl.ops import ACT2FN

    activations = [getattr(f, "func", f) for f in ACT2FN.values()]
    no_shapes = []
    for name, obj in _public_callables():
        if "tokenization" in getattr(obj, "__module__", ""):
            continue  # tokenizers take Python lists of words / ids, not arrays
        if any(obj is fn for fn in activations):
            continue  # the ACT2FN activations are elementwise: same shape out as in
        if inspect.isfunction(obj) and _takes_arrays(obj):
            doc = obj.__doc__ or ""
            if not _SHAPE.search(doc):
                no_shapes.append(name)
    assert not no_shapes, (
        "functions that take arrays but whose docstring gives no shape ([batch, seq, hidden] style):\n  "
        + "\n  ".join(no_shapes)
    )


#: Sphinx/reST markup that mkdocstrings (Google style, Markdown) does not render: roles such as
#: :func:`x` and a paragraph ending in "::" (reST's literal-block marker).
SPHINX_MARKUP = re.compile(r":(?:py:)?(?:func|class|mod|meth|data|attr|exc|obj|ref):(?:`|<code>)|\w::\s*</p>")


def test_sphinx_markup_detector():
    """The detector finds both kinds of markup as they appear in built HTML, and not Python's `::`."""
    assert SPHINX_MARKUP.search("<p>see :func:`refimpl.ops.linear` here</p>")
    assert SPHINX_MARKUP.search("<p>see :class:<code>LiltModel</code> here</p>")
    assert SPHINX_MARKUP.search("<p>Typical use::</p>")
    assert not SPHINX_MARKUP.search("<code>x[::2]</code> and <p>Typical use:</p>")


def test_no_sphinx_markup_in_the_built_site(site):
    """Docstrings render in one style: no Sphinx role or reST '::' leaks into any page."""
    found = []
    for path in sorted(site.rglob("*.html")):
        text = path.read_text(encoding="utf-8")
        found += [
            f"{path.relative_to(site)}: ...{text[max(0, m.start() - 40) : m.end() + 20]}..."
            for m in SPHINX_MARKUP.finditer(text)
        ]
    assert not found, "Sphinx markup in the built site:\n  " + "\n  ".join(found[:20])
