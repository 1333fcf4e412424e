"""tools/workshop_check.py runs the core path only, and names the notebook and cell that fail."""
import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("workshop_check", ROOT / "tools" / "workshop_check.py")
wc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(wc)


def _nb(path: Path, cells):
    path.write_text(json.dumps({
        "cells": [{"cell_type": "code", "id": f"c{i}", "metadata": {"tags": tags}, "source": [src], "outputs": [],
                   "execution_count": None} for i, (src, tags) in enumerate(cells)],
        "metadata": {"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}},
        "nbformat": 4, "nbformat_minor": 5}))


def _project(tmp_path, core_raises: bool):
    (tmp_path / "notebooks").mkdir()
    _nb(tmp_path / "notebooks" / "00_a.ipynb", [("x = 1", []), ("raise RuntimeError('optional boom')", ["optional"]),
                                                ("raise RuntimeError('solution boom')", ["solution"]),
                                                ("assert x == 1" + ("\nraise ValueError('core boom')" if core_raises else ""), [])])
    (tmp_path / "WORKSHOP.md").write_text("Block 1: [orientation](notebooks/00_a.ipynb), again notebooks/00_a.ipynb\n")
    return tmp_path / "WORKSHOP.md"


def test_core_path_reads_workshop_md_in_order_without_repeats(tmp_path):
    md = _project(tmp_path, core_raises=False)
    assert [p.name for p in wc.core_path(md)] == ["00_a.ipynb"]


def test_optional_and_solution_cells_are_left_out_and_the_run_passes(tmp_path, capsys):
    md = _project(tmp_path, core_raises=False)
    assert wc.main(["--workshop", str(md), "--target-min", "10"]) == 0
    assert "core path" in capsys.readouterr().out


def test_a_failing_core_cell_is_named(tmp_path, capsys):
    md = _project(tmp_path, core_raises=True)
    assert wc.main(["--workshop", str(md)]) == 1
    out = capsys.readouterr().out
    assert "00_a.ipynb" in out and "[3]" in out and "core boom" in out


def test_over_target_is_a_miss(tmp_path, capsys):
    md = _project(tmp_path, core_raises=False)
    assert wc.main(["--workshop", str(md), "--target-min", "0"]) == 1
    assert "MISS" in capsys.readouterr().out


def test_workshop_md_without_notebooks_is_refused(tmp_path):
    (tmp_path / "WORKSHOP.md").write_text("nothing here\n")
    with pytest.raises(SystemExit, match="links no notebooks"):
        wc.core_path(tmp_path / "WORKSHOP.md")


def test_the_real_workshop_path_links_notebooks_and_marks_optional_sections():
    paths = wc.core_path(ROOT / "WORKSHOP.md")
    assert paths and all(p.exists() for p in paths), [p.name for p in paths if not p.exists()]
    for p in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for i, c in enumerate(json.loads(p.read_text())["cells"]):
            text = "".join(c["source"])
            if "optional" in c["metadata"].get("tags", []) and c["cell_type"] == "markdown" and text.startswith("#"):
                assert "Optional in the 90-minute workshop path" in text, f"{p.name} [{i}]: optional section without its banner"
