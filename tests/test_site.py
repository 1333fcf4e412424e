"""tools/build_site.py (`make site`): pages, the course-map index and the internal link check.

The site is built from tiny notebooks written here (not the course's), into a temporary folder.
"""
import base64
import importlib.util
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kdcourse_tools_build_site", ROOT / "tools" / "build_site.py")
site = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = site
_spec.loader.exec_module(site)

# a 1x1 PNG
PNG = base64.b64encode(bytes.fromhex(
    "89504e470d0a1a0a0000000d4948445200000001000000010806000000"
    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")).decode()
WIDGET = {"model_id": "abc", "version_major": 2, "version_minor": 0}


def _write(folder: Path, name: str, cells, budget=None) -> Path:
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    if budget:
        nb.metadata["kdcourse"] = {"budget_s": budget}
    path = folder / name
    nbformat.write(nb, path)
    return path


@pytest.fixture
def tiny_course(tmp_path):
    """Two notebooks that link to each other, one broken file link and one broken anchor."""
    nbs = tmp_path / "nbs"
    nbs.mkdir()
    plot = new_code_cell("plot()", execution_count=1, outputs=[
        new_output("display_data", data={"image/png": PNG, "text/plain": "<Figure>"}),
        new_output("display_data", data={"application/vnd.jupyter.widget-view+json": WIDGET,
                                         "text/plain": "interactive(children=(FloatSlider(value=1.0)...))"})])
    _write(nbs, "00_intro.ipynb", [
        new_markdown_cell("# 00 · Intro to things\n\n*What this notebook promises, in one line.*\n\n**What you will learn**"),
        plot,
        new_markdown_cell("Next: [the next one](01_next.ipynb), its [second section](01_next.ipynb#Section-two), "
                          "[the source](https://github.com/x/y/blob/main/01_next.ipynb) and [a gone one](02_gone.ipynb)."),
    ], budget=60.0)
    _write(nbs, "01_next.ipynb", [
        new_markdown_cell("# 01 · The next one\n\n*Second promise.*"),
        new_markdown_cell("## Section two\n\nBack to [the intro](00_intro.ipynb#nowhere) or [its top](00_intro.ipynb)."),
    ])
    return nbs, tmp_path / "site"


def test_every_notebook_gets_a_page_and_the_index_maps_the_course(tiny_course):
    nbs, out = tiny_course
    site.build_site(notebook_dir=nbs, out_dir=out)
    assert sorted(p.name for p in out.glob("*.html")) == ["00_intro.html", "01_next.html", "index.html"]
    index = (out / "index.html").read_text()
    assert index.index('href="00_intro.html"') < index.index('href="01_next.html"')
    for text in ("00 · Intro to things", "What this notebook promises, in one line.", "Second promise.", "60 s"):
        assert text in index


def test_notebook_links_point_at_pages_and_external_links_are_kept(tiny_course):
    nbs, out = tiny_course
    site.build_site(notebook_dir=nbs, out_dir=out)
    page = (out / "00_intro.html").read_text()
    assert 'href="01_next.html"' in page and 'href="01_next.html#Section-two"' in page
    assert 'href="https://github.com/x/y/blob/main/01_next.ipynb"' in page
    assert 'href="index.html"' in page and "next &rarr;" in page  # the navigation bar


def test_outputs_are_rendered_as_committed_and_widgets_get_a_note(tiny_course):
    nbs, out = tiny_course
    site.build_site(notebook_dir=nbs, out_dir=out)
    page = (out / "00_intro.html").read_text()
    assert f"data:image/png;base64,{PNG}" in page
    assert "Interactive widget" in page and "interactive(children=" not in page


def test_broken_links_are_reported_with_page_and_link(tiny_course):
    nbs, out = tiny_course
    problems = site.build_site(notebook_dir=nbs, out_dir=out)
    assert len(problems) == 2, problems
    gone = next(p for p in problems if "02_gone" in p)
    assert gone.startswith("00_intro.html: broken link '02_gone.html'") and "does not exist" in gone
    anchor = next(p for p in problems if "nowhere" in p)
    assert anchor.startswith("01_next.html: broken link '00_intro.html#nowhere'") and "no id 'nowhere'" in anchor


def test_main_fails_naming_the_broken_link_and_passes_once_fixed(tiny_course, capsys):
    nbs, out = tiny_course
    assert site.main(["--notebooks", str(nbs), "--out", str(out)]) == 1
    assert "BROKEN LINK 00_intro.html: broken link '02_gone.html'" in capsys.readouterr().err
    for name, old, new in (("00_intro.ipynb", "[a gone one](02_gone.ipynb)", "no more"),
                           ("01_next.ipynb", "00_intro.ipynb#nowhere", "00_intro.ipynb")):
        nb = nbformat.read(nbs / name, as_version=4)
        for cell in nb.cells:
            cell.source = cell.source.replace(old, new)
        nbformat.write(nb, nbs / name)
    assert site.main(["--notebooks", str(nbs), "--out", str(out)]) == 0
    assert "3 pages" in capsys.readouterr().out


def test_check_links_resolves_encoded_anchors_and_ignores_urls(tmp_path):
    (tmp_path / "a.html").write_text('<h2 id="6.-A-$T-\\times$-sweep">x</h2><a href="#6.-A-$T-%5Ctimes$-sweep">s</a>'
                                     '<h1 id="00-%C2%B7-Intro">t</h1><a href="#00-%C2%B7-Intro">t</a>'
                                     '<img src="data:image/png;base64,xx"><a href="mailto:a@b.c">m</a>'
                                     '<a href="//cdn.example/x.js">c</a><a href="b.html#top">b</a>')
    (tmp_path / "b.html").write_text('<a name="top"></a><img src="img/missing.png"><a href="../outside.html">o</a>')
    problems = site.check_links(tmp_path)
    assert problems == ["b.html: broken link 'img/missing.png' (img/missing.png does not exist)",
                        f"b.html: broken link '../outside.html' (points outside the site, to {tmp_path.parent / 'outside.html'})"]


def test_rewrite_touches_only_relative_notebook_links():
    page = ('<a href="01_x.ipynb">a</a><a href="sub/02_y.ipynb#Sec">b</a><a href="https://h/03.ipynb">c</a>'
            '<a href="notes.ipynb.txt">d</a><p>01_x.ipynb</p>')
    assert site.rewrite_notebook_links(page) == ('<a href="01_x.html">a</a><a href="sub/02_y.html#Sec">b</a>'
                                                 '<a href="https://h/03.ipynb">c</a><a href="notes.ipynb.txt">d</a>'
                                                 '<p>01_x.ipynb</p>')


def test_summary_needs_a_title():
    nb = new_notebook(cells=[new_markdown_cell("# 07 · Title\n\n*Promise here,\nover two lines.*\n\n**Bold line**")])
    assert site.notebook_summary(nb) == {"title": "07 · Title", "promise": "Promise here, over two lines."}
    nb = new_notebook(cells=[new_markdown_cell("intro"), new_markdown_cell("# 08 · T\n\n**What you will learn**")])
    assert site.notebook_summary(nb) == {"title": "08 · T", "promise": ""}
    with pytest.raises(ValueError, match="Title"):
        site.notebook_summary(new_notebook(cells=[new_markdown_cell("no heading")]))


def test_the_output_folder_is_wiped_only_when_the_builder_made_it(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("precious")
    with pytest.raises(ValueError, match="not made by build_site.py"):
        site.prepare_output(foreign)
    assert (foreign / "thesis.tex").exists()
    built = tmp_path / "site"
    site.prepare_output(built)
    (built / "stale.html").write_text("old page")
    site.prepare_output(built)
    assert not (built / "stale.html").exists()


def test_every_committed_notebook_has_a_title_for_the_course_map():
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        summary = site.notebook_summary(nbformat.read(path, as_version=4))
        assert summary["title"][:2] == path.name[:2] and summary["promise"], path.name
