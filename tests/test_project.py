"""Project-level checks: environment files agree, notebooks are committed executed and tidy."""
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
CONDA_TO_PIP = {"pytorch-cpu": "torch"}


def _pyproject_requirements() -> list[str]:
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return meta["dependencies"] + meta["optional-dependencies"]["dev"]


def _name(requirement: str) -> str:
    return re.match(r"[A-Za-z0-9_.\-]+", requirement).group(0).lower().replace("_", "-")


def _constraints() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not pinned with =="
            pins[_name(name)] = version
    return pins


def _conda_pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "environment.yml").read_text().splitlines():
        m = re.match(r"^\s*-\s+([A-Za-z0-9_.\-]+)\s*==?\s*([^\s#]+)", line)
        if m and m.group(1) != "python":
            pins[_name(CONDA_TO_PIP.get(m.group(1), m.group(1)))] = m.group(2)
    return pins


def test_dependencies_are_compatible_ranges_and_the_lock_satisfies_them():
    from packaging.requirements import Requirement
    pins = _constraints()
    for text in _pyproject_requirements():
        req = Requirement(text)
        uppers = [s for s in req.specifier if s.operator in ("<", "<=", "~=")]
        assert req.specifier and uppers, f"{text}: give a compatible range with an upper bound, not a pin"
        assert _name(req.name) in pins, f"{req.name} is not pinned in constraints.txt"
        assert req.specifier.contains(pins[_name(req.name)]), f"constraints.txt pins {req.name}=={pins[_name(req.name)]}, outside {text}"


def test_dev_tools_are_an_extra_not_runtime_requirements():
    runtime = {_name(d) for d in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]}
    assert not runtime & {"pytest", "nbval", "jupyterlab", "ipykernel", "nbclient"}


def test_environment_yml_pins_the_locked_versions():
    conda, pins = _conda_pins(), _constraints()
    direct = {_name(r) for r in _pyproject_requirements()}
    assert set(conda) == direct, f"environment.yml and pyproject.toml name different packages: {set(conda) ^ direct}"
    assert {k: pins[k] for k in conda} == conda


def test_requires_python_matches_the_readme():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    readme = (ROOT / "README.md").read_text()
    version = meta["requires-python"].removeprefix(">=")
    assert f"Python {version}+" in readme


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make lab" in readme
    assert re.search(r"^make test$", ci, re.M)
    assert "git status --porcelain" in ci  # CI also fails when the test run left the checkout modified


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
    assert 0 < nb["metadata"].get("kdcourse", {}).get("budget_s", 90) <= 180  # checked by make bench
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


def test_no_package_module_is_over_about_300_lines():
    """One small module per concept family: a module that grows past ~300 lines gets split."""
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / "kdcourse").rglob("*.py")
            if (n := len(p.read_text().splitlines())) > 320}
    assert not long, f"split these modules by concept: {long}"


def test_the_readme_course_map_lists_every_notebook_with_its_budget():
    rows = {m.group(1): m.group(2) for m in re.finditer(r"^\| (\d\d) [^\n]*\| (\d+) s[^|\n]*\|$",
                                                        (ROOT / "README.md").read_text(), re.M)}
    budgets = {p.stem[:2]: json.loads(p.read_text())["metadata"]["kdcourse"]["budget_s"] for p in NOTEBOOKS}
    assert list(rows) == sorted(rows), "the course map lists the notebooks out of order"
    assert {k: int(v) for k, v in rows.items()} == {k: int(b) for k, b in budgets.items()}, \
        "README course map budgets differ from the notebooks' metadata.kdcourse.budget_s"
