"""Project-level checks: environment files agree, notebooks are committed executed and tidy."""
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONDA_TO_PIP = {"pytorch-cpu": "torch"}


def _pyproject_pins() -> dict[str, str]:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    return dict(d.split("==") for d in deps)


def _conda_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"^\s*-\s+([A-Za-z0-9_.\-]+)\s*==?\s*([^\s#]+)", line)
        if m and m.group(1) != "python":
            pins[CONDA_TO_PIP.get(m.group(1), m.group(1))] = m.group(2)
    return pins


def test_every_dependency_is_pinned_exactly():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert all(re.fullmatch(r"[A-Za-z0-9_.\-]+==[\w.]+", d) for d in deps), deps


def test_environment_yml_names_the_same_packages_and_versions():
    assert _conda_pins() == _pyproject_pins()


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make lab" in readme
    assert re.search(r"^make test$", ci, re.M)


def test_there_are_notebooks():
    assert any(p.name.startswith("00_") for p in NOTEBOOKS)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_committed_notebook_was_executed_top_to_bottom_and_is_clean(path):
    nb = json.loads(path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    counts = [c.get("execution_count") for c in code]
    assert all(counts), f"{path.name}: some code cells were never executed"
    assert counts == sorted(counts), f"{path.name}: cells were run out of order"
    assert not any(o.get("output_type") == "error" for c in code for o in c.get("outputs", []))
    assert "widgets" not in nb["metadata"], "widget state is volatile: run tools/execute_notebooks.py"
    assert nb["metadata"]["kernelspec"]["name"] == "python3"
    assert 0 < nb["metadata"].get("kdcourse", {}).get("budget_s", 90) <= 90
    src = "".join("".join(c["source"]) for c in code)
    assert "import *" not in src and "import kdcourse as kd" in src


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_has_the_course_shape(path):
    nb = json.loads(path.read_text())
    md = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown").lower()
    for part in ("what you will learn", "runtime", "summary", "further reading"):
        assert part in md, f"{path.name} lacks a '{part}' section"
    if not path.name.startswith("00_"):
        assert "exercise" in md, f"{path.name} has no exercises"
    code = "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")
    assert "get_profile(" in code, f"{path.name} has no parameter cell with the profile"
