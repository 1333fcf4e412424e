"""tools/browser_test.py (`make browser-test`): it fails naming the notebook and cell when a cell raises
or a widget cannot render, and passes a tiny notebook whose figure, widget and slider work.

The browser run uses three tiny notebooks written here and a temporary copy of the course's notebook 00
broken after its first code cell (seconds each, not the course's minutes); it is skipped when Chromium or
the playwright package is missing (CI runs this file again after `make browser-test` has installed
Chromium); the helpers are tested without a browser.
"""
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("kdcourse_tools_browser_test", ROOT / "tools" / "browser_test.py")
bt = importlib.util.module_from_spec(_spec)
sys.modules[_spec.name] = bt
_spec.loader.exec_module(bt)

GOOD = [
    new_markdown_cell("# A notebook that works"),
    new_code_cell("import ipywidgets as widgets\nimport matplotlib.pyplot as plt\n"
                  "plt.figure(figsize=(2, 2)); plt.plot([0, 1], [0, 1]); plt.show()"),
    new_code_cell("def show(k=1.0):\n    plt.figure(figsize=(2, 2)); plt.plot([0, 1], [0, k]); plt.ylim(0, 5)\n"
                  "    plt.title(f'k = {k:.1f}'); plt.show()\n\n"
                  "widgets.interact(show, k=widgets.FloatSlider(value=1.0, min=0.0, max=5.0, step=0.1));"),
]
RAISES = [
    new_markdown_cell("# A notebook whose third cell raises"),
    new_code_cell("x = 1"),
    new_markdown_cell("Now it breaks:"),
    new_code_cell("raise ValueError('broken on purpose')"),
    new_code_cell("print('never runs')"),
]
BAD_WIDGET = [
    new_markdown_cell("# A widget whose front-end code does not exist"),
    new_code_cell("import ipywidgets as widgets\nfrom traitlets import Unicode\n\n"
                  "class Missing(widgets.DOMWidget):\n"
                  "    _view_name = Unicode('MissingView').tag(sync=True)\n"
                  "    _view_module = Unicode('kdcourse-no-such-widget-module').tag(sync=True)\n"
                  "    _view_module_version = Unicode('0.0.1').tag(sync=True)\n\n"
                  "Missing()"),
]


def _browser_missing() -> str | None:
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is not installed (make install: it is in the dev extra)"
    try:
        chromium = bt.find_chromium()
    except ValueError as err:
        return str(err)
    return None if chromium else "Chromium is not installed (Debian: apt-get install chromium; or set CHROMIUM)"


def _broken_course_copy(dest: Path) -> Path:
    """A temporary copy of the course's notebook 00 with a raising cell after its first code cell.

    Run all stops at the error, so only the import cell runs before it: seconds, not the notebook's minute.
    """
    nb = nbformat.read(ROOT / "notebooks" / "00_orientation.ipynb", as_version=4)
    first = next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    nb.cells.insert(first + 1, new_code_cell("raise RuntimeError('a broken copy of notebook 00')"))
    nbformat.write(nb, dest)
    return dest


@pytest.fixture(scope="module")
def browser_run(tmp_path_factory):
    """One run of tools/browser_test.py over the three tiny notebooks, two tabs at a time."""
    reason = _browser_missing()
    if reason:
        pytest.skip(f"browser test skipped: {reason}")
    folder = tmp_path_factory.mktemp("tiny_notebooks")
    paths = []
    for name, cells in (("good.ipynb", GOOD), ("raises.ipynb", RAISES), ("bad_widget.ipynb", BAD_WIDGET)):
        nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                                "language": "python"}})
        nbformat.write(nb, folder / name)
        paths.append(folder / name)
    paths.append(_broken_course_copy(folder / "broken_00.ipynb"))
    before = {p: p.read_bytes() for p in paths}
    shots = tmp_path_factory.mktemp("screenshots")
    env = {**os.environ, "KDCOURSE_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "browser_test.py"), "--jobs", "2", "--timeout", "3600",
                           "--out", str(shots), *map(str, paths)], capture_output=True, text=True, env=env, timeout=7200)
    out = proc.stdout + proc.stderr
    yield {"proc": proc, "out": out, "before": before, "folder": folder, "shots": shots}
    work = re.search(r"\(log (\S+)/jupyterlab\.log\)", out)  # the tool keeps its log after a failed run
    if work and Path(work.group(1)).name.startswith("kdcourse-browser-"):
        shutil.rmtree(work.group(1), ignore_errors=True)


def test_a_cell_that_raises_fails_the_run_naming_notebook_and_cell(browser_run):
    assert browser_run["proc"].returncode == 1, browser_run["out"]
    assert "FAILED: raises.ipynb: cell 3: error output ValueError: broken on purpose" in browser_run["out"]
    assert "raises.ipynb: cell 4" not in browser_run["out"]  # skipped after the error: not a second problem


def test_a_broken_copy_of_a_course_notebook_fails_naming_it_and_the_cell(browser_run):
    nb = nbformat.read(ROOT / "notebooks" / "00_orientation.ipynb", as_version=4)
    cell = 1 + next(i for i, c in enumerate(nb.cells) if c.cell_type == "code")
    assert (f"FAILED: broken_00.ipynb: cell {cell}: error output RuntimeError: a broken copy of notebook 00"
            in browser_run["out"]), browser_run["out"]


def test_a_widget_that_cannot_render_fails_the_run_naming_notebook_and_cell(browser_run):
    assert ("FAILED: bad_widget.ipynb: cell 1: widget not rendered: Failed to load view class 'MissingView' "
            "from module 'kdcourse-no-such-widget-module'") in browser_run["out"]


def test_a_working_notebook_passes_with_its_figure_widget_and_slider(browser_run):
    line = next(l for l in browser_run["out"].splitlines() if "good.ipynb" in l)
    assert line.startswith("ok") and "1 figure(s), 1 widget(s), 1 slider(s) moved" in line, browser_run["out"]
    assert "FAILED: good.ipynb" not in browser_run["out"]


def test_screenshots_are_written_and_their_folder_printed(browser_run):
    assert f"screenshots in {browser_run['shots']}" in browser_run["out"]
    for stem in ("good", "raises", "bad_widget"):
        assert (browser_run["shots"] / f"{stem}.png").stat().st_size > 1000


def test_the_notebooks_under_test_are_never_modified(browser_run):
    for path, data in browser_run["before"].items():
        assert path.read_bytes() == data
    assert sorted(p.name for p in browser_run["folder"].iterdir()) == ["bad_widget.ipynb", "broken_00.ipynb",
                                                                       "good.ipynb", "raises.ipynb"]


# ------------------------------------------------------------- helpers, no browser needed

def test_notebooks_are_selected_by_number_stem_or_path(tmp_path):
    for name in ("00_intro.ipynb", "05_pruning.ipynb", "10_more.ipynb"):
        (tmp_path / name).write_text("{}")
    pick = lambda *specs: [p.name for p in bt.select_notebooks(list(specs), notebook_dir=tmp_path)]  # noqa: E731
    assert pick() == ["00_intro.ipynb", "05_pruning.ipynb", "10_more.ipynb"]
    assert pick("00,5") == ["00_intro.ipynb", "05_pruning.ipynb"] == pick("0", "05_pruning")
    assert pick(str(tmp_path / "10_more.ipynb")) == ["10_more.ipynb"]
    with pytest.raises(ValueError, match="'7' matches 0 notebooks"):
        pick("7")
    with pytest.raises(ValueError, match="no notebook at"):
        pick(str(tmp_path / "gone.ipynb"))


def _cell(index, **kw):
    cell = {"index": index, "type": "code", "source": True, "count": index + 1, "prompt": "", "errors": [],
            "figures": 0, "widgets": 0, "shown_images": 0, "broken_images": 0, "shown_widgets": 0, "text": ""}
    return {**cell, **kw}


def test_cell_problems_name_the_cell_and_what_went_wrong():
    cells = [{"index": 0, "type": "markdown"}, _cell(1, figures=2, shown_images=1),
             _cell(2, widgets=1, text="Error displaying widget: model not found"),
             _cell(3, widgets=1, shown_widgets=0), _cell(4, count=None, prompt="[ ]:"),
             _cell(5, errors=["ValueError: bad"]), _cell(6, count=None),
             _cell(7, widgets=1, shown_widgets=1, error_widgets=["Failed to load view class 'V' from module 'm'"])]
    assert bt.cell_problems("nb.ipynb", cells) == [
        "nb.ipynb: cell 1: 2 figure(s) in the outputs, 1 shown as an image",
        "nb.ipynb: cell 2: widget not rendered: Error displaying widget: model not found",
        "nb.ipynb: cell 3: 1 widget output(s), none rendered",
        "nb.ipynb: cell 4: was not executed (prompt [ ]:)",
        "nb.ipynb: cell 5: error output ValueError: bad",
        "nb.ipynb: cell 7: widget not rendered: Failed to load view class 'V' from module 'm'"]
    assert bt.cell_problems("nb.ipynb", [_cell(1, figures=1, shown_images=1, widgets=1, shown_widgets=3)]) == []


def test_kernels_get_the_fast_profile_one_thread_and_a_temporary_results_folder(tmp_path):
    env = bt.kernel_environment({"PATH": "/bin", "MPLBACKEND": "Agg", "KDCOURSE_PROFILE": "full"},
                                results_dir=tmp_path / "r", jupyter_dir=tmp_path / "j")
    assert (env["KDCOURSE_PROFILE"], env["KDCOURSE_THREADS"], env["KDCOURSE_RESULTS"]) == ("fast", "1", str(tmp_path / "r"))
    assert "MPLBACKEND" not in env and env["JUPYTER_CONFIG_DIR"].startswith(str(tmp_path / "j"))
    assert bt.kernel_environment({"KDCOURSE_THREADS": "2"}, results_dir=tmp_path, jupyter_dir=tmp_path)["KDCOURSE_THREADS"] == "2"


def test_jupyterlab_listens_on_localhost_with_the_token(tmp_path):
    kw = dict(port=4242, token="s3cret", root_dir=tmp_path, settings_dir=tmp_path, workspaces_dir=tmp_path)
    cmd = bt.lab_command(is_root=False, **kw)
    assert "--ip=127.0.0.1" in cmd and "--port=4242" in cmd and "--IdentityProvider.token=s3cret" in cmd
    assert "--allow-root" not in cmd and "--allow-root" in bt.lab_command(is_root=True, **kw)


def test_missing_chromium_is_installed_with_apt_only_as_root(tmp_path):
    (tmp_path / "apt-get").write_text("#!/bin/sh\n")
    (tmp_path / "apt-get").chmod(0o755)
    env, calls = {"PATH": str(tmp_path)}, []
    with pytest.raises(bt.ChromiumMissing, match="apt-get install chromium"):
        bt.ensure_chromium(env=env, is_root=False, run=lambda *a, **k: calls.append(a))
    assert calls == []

    def fake_apt(cmd, **kw):  # "installs" chromium into the PATH
        calls.append(cmd)
        if "install" in cmd:
            (tmp_path / "chromium").write_text("#!/bin/sh\n")
            (tmp_path / "chromium").chmod(0o755)
    assert bt.ensure_chromium(env=env, is_root=True, run=fake_apt) == tmp_path / "chromium"
    assert calls[0][1:] == ["update"] and "chromium" in calls[1]


def test_a_failing_apt_get_is_a_clear_error(tmp_path):
    (tmp_path / "apt-get").write_text("#!/bin/sh\n")
    (tmp_path / "apt-get").chmod(0o755)

    def offline(cmd, **kw):
        raise subprocess.CalledProcessError(100, cmd)
    with pytest.raises(bt.ChromiumMissing, match="apt-get update' failed .*install Debian's chromium package by hand"):
        bt.ensure_chromium(env={"PATH": str(tmp_path)}, is_root=True, run=offline)


def test_a_bad_chromium_variable_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="CHROMIUM=.* is not an executable file"):
        bt.find_chromium({"CHROMIUM": str(tmp_path / "nope")})


def test_lab_settings_keep_every_cell_in_the_page(tmp_path):
    bt.write_lab_settings(tmp_path)
    path = tmp_path / "@jupyterlab" / "notebook-extension" / "tracker.jupyterlab-settings"
    assert '"windowingMode": "none"' in path.read_text()
