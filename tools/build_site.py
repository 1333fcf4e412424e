"""`make site`: render the committed notebooks, with their outputs, to a static site (nothing is executed).

Usage: python tools/build_site.py [--notebooks notebooks] [--out site]

Writes ``<out>/<stem>.html`` for every notebook (nbconvert's lab template; figures embedded) and
``<out>/index.html``, the course map (number, title, one-line promise, budget, link). Links between
notebooks (``01_soft_labels.ipynb#Summary``) are rewritten to the pages; each page gets a
"course map / previous / next" bar. Then every internal link of every page (``href``/``src`` that
is not a URL with a scheme: other pages, ``#anchors``, files) is checked, and the build exits 1
naming each page and broken link. Nothing is fetched while building; the pages load MathJax from
a CDN to typeset formulas when the reader is online (offline, formulas show as LaTeX source).
"""
from __future__ import annotations

import argparse
import copy
import html
import re
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import nbformat

ROOT = Path(__file__).resolve().parents[1]
MARKER = ".kdcourse-site"  # written into the output folder: only such a folder is ever wiped
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"
WIDGET_NOTE = ('<p class="kdcourse-widget-note"><em>Interactive widget: it runs only in JupyterLab '
               '(<code>make lab</code>); the static figure next to it shows the same idea.</em></p>')
_SCHEME = re.compile(r"^[a-zA-Z][a-zA-Z0-9+.-]*:|^//")
_NOTEBOOK_LINK = re.compile(r'(\b(?:href|src)=")(?![a-zA-Z][a-zA-Z0-9+.-]*:|//)([^"#?]*?)\.ipynb(?=["#?])')


def notebook_summary(nb) -> dict:
    """Title (the first ``# `` heading) and one-line promise (the ``*italic*`` paragraph right after it)."""
    for cell in nb.cells:
        m = re.search(r"^# (.+)$", cell.source, re.M) if cell.cell_type == "markdown" else None
        if m:
            paragraphs = [p.strip() for p in re.split(r"\n\s*\n", cell.source[m.end():]) if p.strip()]
            first = " ".join(line.strip() for line in paragraphs[0].splitlines()) if paragraphs else ""
            promise = first[1:-1].strip() if re.fullmatch(r"\*[^*].*[^*]\*", first) else ""
            return {"title": m.group(1).strip(), "promise": promise}
    raise ValueError("the notebook has no '# Title' heading in its markdown cells")


def widget_placeholders(nb):
    """A copy of the notebook whose widget outputs (no state is committed, so they cannot render) show a note."""
    nb = copy.deepcopy(nb)
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if WIDGET_MIME in out.get("data", {}):
                out["data"] = {"text/html": WIDGET_NOTE}
    return nb


def rewrite_notebook_links(page: str) -> str:
    """Point relative ``*.ipynb`` links (with or without ``#anchor``) at the rendered ``*.html`` pages.

    Links with a scheme (``https://github.com/.../x.ipynb``) are left alone.
    """
    return _NOTEBOOK_LINK.sub(lambda m: f"{m.group(1)}{m.group(2)}.html", page)


def add_navigation(page: str, *, prev: str | None, next_: str | None) -> str:
    """Insert a bar with links to the course map and the previous / next page right after ``<body>``."""
    links = ['<a href="index.html">course map</a>']
    links += [f'<a href="{html.escape(p)}">{label}</a>' for p, label in ((prev, "&larr; previous"), (next_, "next &rarr;")) if p]
    bar = f'<nav class="kdcourse-nav" style="padding:0.5em 1em;font-family:sans-serif">{" · ".join(links)}</nav>'
    new, n = re.subn(r"(<body[^>]*>)", lambda m: m.group(1) + bar, page, count=1)
    if n != 1:
        raise ValueError("the rendered page has no <body> tag")
    return new


def render_notebook(path: Path, *, exporter, prev: str | None, next_: str | None) -> tuple[str, dict]:
    """HTML of one notebook (outputs as committed, widgets replaced by a note) and its summary."""
    nb = nbformat.read(path, as_version=4)
    summary = notebook_summary(nb)
    body, _ = exporter.from_notebook_node(widget_placeholders(nb), resources={"metadata": {"name": summary["title"]}})
    budget = nb.metadata.get("kdcourse", {}).get("budget_s")
    summary.update(page=f"{path.stem}.html", budget_s=budget)
    return add_navigation(rewrite_notebook_links(body), prev=prev, next_=next_), summary


def _budget(seconds) -> str:
    return "" if seconds is None else f"{float(seconds):g} s"


def render_index(entries: list[dict]) -> str:
    """The course map: one row per notebook with its title (linked), promise and fast-profile budget."""
    rows = "\n".join(
        f'<tr><td><a href="{html.escape(e["page"])}">{html.escape(e["title"])}</a></td>'
        f'<td>{html.escape(e["promise"])}</td><td>{_budget(e["budget_s"])}</td></tr>'
        for e in entries)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>kdcourse: the course map</title>
<style>body{{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}}
td,th{{padding:0.4em 0.8em;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}}</style></head>
<body><h1>kdcourse: knowledge distillation and model compression, hands-on</h1>
<p>The notebooks as committed, with the outputs of a fast-profile run. Read them in order; to run them,
clone the repository and use <code>make lab</code>.</p>
<table><tr><th>notebook</th><th>what it promises</th><th>fast-profile budget</th></tr>
{rows}
</table></body></html>
"""


class _Links(HTMLParser):
    """Collects every href/src value and every id/name of one HTML page."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.links: list[str] = []
        self.ids: set[str] = set()

    def handle_starttag(self, tag, attrs):
        for key, value in attrs:
            if key in ("href", "src") and value is not None:
                self.links.append(value)
            elif key in ("id", "name") and value is not None:
                self.ids.add(value)


def _parse(path: Path) -> _Links:
    parser = _Links()
    parser.feed(path.read_text(encoding="utf-8"))
    return parser


def is_internal(url: str) -> bool:
    """True for links inside the site: no scheme (``https:``, ``data:``, ``mailto:``) and not ``//host``."""
    return bool(url.strip()) and not _SCHEME.match(url.strip())


def check_links(site_dir: Path) -> list[str]:
    """One line per broken internal link of the site's pages: the page, the link and what is missing."""
    site_dir = Path(site_dir).resolve()
    pages = {p: _parse(p) for p in sorted(site_dir.rglob("*.html"))}
    problems = []
    for page, parsed in pages.items():
        for url in parsed.links:
            if not is_internal(url):
                continue
            parts = urlsplit(url.strip())
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            where = f"{page.relative_to(site_dir)}: broken link {url!r}"
            if site_dir not in target.parents and target != site_dir:
                problems.append(f"{where} (points outside the site, to {target})")
            elif not target.exists():
                problems.append(f"{where} ({target.relative_to(site_dir)} does not exist)")
            elif parts.fragment and target.suffix == ".html":
                ids = pages[target].ids if target in pages else _parse(target).ids
                if parts.fragment not in ids and unquote(parts.fragment) not in ids:  # as browsers look ids up
                    problems.append(f"{where} (no id {unquote(parts.fragment)!r} in {target.name})")
    return problems


def prepare_output(out_dir: Path) -> None:
    """Empty the output folder, refusing to wipe a folder this tool did not create."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not (out_dir / MARKER).exists():
            raise ValueError(f"{out_dir} is not empty and was not made by build_site.py: choose another --out")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MARKER).write_text("made by tools/build_site.py; wiped on each build\n")


def build_site(*, notebook_dir: Path, out_dir: Path) -> list[str]:
    """Render every ``*.ipynb`` of `notebook_dir` and the index into `out_dir`; return the broken links."""
    from nbconvert import HTMLExporter
    paths = sorted(Path(notebook_dir).glob("*.ipynb"))
    if not paths:
        raise ValueError(f"no notebooks in {notebook_dir}")
    prepare_output(out_dir)
    exporter, entries = HTMLExporter(template_name="lab"), []
    pages = [f"{p.stem}.html" for p in paths]
    for k, path in enumerate(paths):
        page, summary = render_notebook(path, exporter=exporter, prev=pages[k - 1] if k else None,
                                        next_=pages[k + 1] if k + 1 < len(pages) else None)
        (Path(out_dir) / summary["page"]).write_text(page, encoding="utf-8")
        entries.append(summary)
    (Path(out_dir) / "index.html").write_text(render_index(entries), encoding="utf-8")
    return check_links(Path(out_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--notebooks", type=Path, default=ROOT / "notebooks", help="folder of the notebooks")
    parser.add_argument("--out", type=Path, default=ROOT / "site", help="output folder (wiped and rebuilt)")
    args = parser.parse_args(argv)
    problems = build_site(notebook_dir=args.notebooks, out_dir=args.out)
    for line in problems:
        print(f"BROKEN LINK {line}", file=sys.stderr)
    if problems:
        print(f"site: {len(problems)} broken internal link(s) in {args.out}", file=sys.stderr)
        return 1
    print(f"site: {len(list(args.out.glob('*.html')))} pages in {args.out}; open {args.out / 'index.html'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
