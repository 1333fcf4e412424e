"""Test-run rules for the notebooks (collected by nbval from notebooks/*.ipynb).

* Each notebook has a time budget in the fast profile: ``metadata.kdcourse.budget_s`` in the
  notebook, else 90 s. The time counted is the kernel start plus every cell.
* ``--all-notebooks`` (used by ``make test``) fails the run unless every notebook in
  notebooks/ was executed.
"""
from __future__ import annotations

import json
import os
from collections import defaultdict
from pathlib import Path

NOTEBOOK_DIR = Path(__file__).resolve().parent / "notebooks"
DEFAULT_BUDGET_S = 90.0
_seconds: dict[str, float] = defaultdict(float)
_problems: list[str] = []


def pytest_addoption(parser):
    parser.addoption("--all-notebooks", action="store_true", default=False,
                     help="fail unless every notebook in notebooks/ was executed")


def _budget(path: Path) -> float:
    meta = json.loads(path.read_text()).get("metadata", {})
    return float(meta.get("kdcourse", {}).get("budget_s", DEFAULT_BUDGET_S))


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[Path(path).name] += report.duration


def pytest_sessionfinish(session, exitstatus):
    fast = os.environ.get("KDCOURSE_PROFILE", "fast") == "fast"
    for name, secs in sorted(_seconds.items()):
        budget = _budget(NOTEBOOK_DIR / name)
        if fast and secs > budget:
            _problems.append(f"{name} took {secs:.0f} s, over its budget of {budget:.0f} s (fast profile)")
    if session.config.getoption("--all-notebooks"):
        missing = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb") if p.name not in _seconds)
        if missing:
            _problems.append(f"notebooks not executed: {', '.join(missing)}")
    if _problems and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _seconds:
        terminalreporter.section("notebook run times")
        for name, secs in sorted(_seconds.items()):
            budget = _budget(NOTEBOOK_DIR / name)
            terminalreporter.write_line(f"{name:45s} {secs:6.1f} s  (budget {budget:.0f} s)")
    for line in _problems:
        terminalreporter.write_line(f"FAILED: {line}", red=True)
