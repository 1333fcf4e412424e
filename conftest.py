"""Test-run rules for `make test` (unit tests in tests/, notebooks/*.ipynb through nbval).

* Notebooks under test record their figures into a temporary folder: ``KDCOURSE_RESULTS`` is set
  in this process before the first kernel starts, and kernels inherit it. The committed
  ``data/results/*.json`` change only through ``make notebooks``.
* Each notebook's recorded claims (tests/claims.py) are checked right after its last cell, on the
  figures it has just written, by an extra item of the notebook: ``notebooks/<stem>.ipynb::claims``.
  Being part of the notebook's file, it runs in the same pytest-xdist work unit
  (``--dist loadfile``, as ``make test`` runs it), after the cells. Notebooks not executed in a
  session are checked on their committed figures (tests/test_recorded_results.py).
* ``--all-notebooks`` (used by ``make test``) fails the run unless every notebook in notebooks/
  was executed.
* In a git checkout the run must leave ``git status`` as it found it: a last test checks it
  (with pytest-xdist, the controller checks it when the session ends).
* Speed is never checked here: run times are printed for information; ``make bench`` measures them
  against targets.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import tempfile
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent
NOTEBOOK_DIR = ROOT / "notebooks"
COMMITTED_RESULTS = ROOT / "data" / "results"
_RUN = pytest.StashKey[dict]()
_seconds: dict[str, float] = defaultdict(float)
_problems: list[str] = []


def pytest_addoption(parser):
    parser.addoption("--all-notebooks", action="store_true", default=False,
                     help="fail unless every notebook in notebooks/ was executed")


def _git_status() -> str | None:
    """`git status --porcelain` of the checkout (untracked files included), or None outside git."""
    try:
        out = subprocess.run(["git", "status", "--porcelain", "--untracked-files=all"], cwd=ROOT,
                             capture_output=True, text=True, timeout=600)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _is_worker(config) -> bool:
    return hasattr(config, "workerinput")


def _stem(item) -> str | None:
    path = Path(str(item.path))
    return path.stem if path.suffix == ".ipynb" else None


def _claims():
    """The CLAIMS table of tests/claims.py (loaded by path: tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("kdcourse_test_claims", ROOT / "tests" / "claims.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pytest_configure(config):
    config.stash[_RUN] = {"git_before": _git_status(), "results_dir": None, "owned": False, "executed": set()}


def pytest_collection_modifyitems(session, config, items):
    """Send notebook figures to a temporary folder; add each notebook's claims after its last cell."""
    run = config.stash[_RUN]
    stems = [s for s in dict.fromkeys(_stem(i) for i in items) if s]
    if stems and not os.environ.get("KDCOURSE_RESULTS"):
        run["results_dir"] = Path(tempfile.mkdtemp(prefix="kdcourse-results-"))
        run["owned"] = True
        os.environ["KDCOURSE_RESULTS"] = str(run["results_dir"])  # inherited by every kernel
    elif stems:
        run["results_dir"] = Path(os.environ["KDCOURSE_RESULTS"])
    run["executed"] = set(stems)
    has_claims = (ROOT / "tests" / "claims.py").exists()
    last_cell = {_stem(i): i for i in items if _stem(i)}
    ordered = []
    for item in items:
        ordered.append(item)
        stem = _stem(item)
        if has_claims and stem and last_cell[stem] is item:
            ordered.append(ClaimsItem.from_parent(item.parent, name="claims", stem=stem))
    if run["git_before"] is not None and not _is_worker(config):
        ordered.append(CleanCheckoutItem.from_parent(session, name="test_run_changed_no_tracked_file"))
    items[:] = ordered


@pytest.fixture
def results_source(request):
    """Function stem -> (folder with that notebook's figures for this run, whether it ran in this run)."""
    run = request.config.stash[_RUN]

    def source(stem: str) -> tuple[Path, bool]:
        if stem in run["executed"] and run["results_dir"] is not None:
            return run["results_dir"], True
        return COMMITTED_RESULTS, False
    return source


class ClaimsItem(pytest.Item):
    """A notebook's recorded claims (tests/claims.py), checked on the figures this run just wrote."""

    def __init__(self, *, stem: str, **kwargs):
        super().__init__(**kwargs)
        self.stem = stem

    def runtest(self):
        path = self.config.stash[_RUN]["results_dir"] / f"{self.stem}.json"
        if not path.exists():
            raise AssertionError(f"{self.stem}.ipynb recorded no figures in this run ({path} is missing)")
        claims = _claims()
        if self.stem not in claims.CLAIMS:
            raise AssertionError(f"{self.stem}.ipynb has no claims in tests/claims.py")
        claims.check(self.stem, json.loads(path.read_text()), "this run of the notebook")

    def reportinfo(self):
        return self.path, None, f"claims of {self.stem} on this run's figures"


class CleanCheckoutItem(pytest.Item):
    """Fails when the test run added, changed or deleted a file that git sees."""

    def runtest(self):
        before, after = self.config.stash[_RUN]["git_before"], _git_status()
        if after is not None and after != before:
            new = sorted(set(after.splitlines()) - set(before.splitlines()))
            gone = sorted(set(before.splitlines()) - set(after.splitlines()))
            raise AssertionError(f"the test run changed the checkout: now {new}, no longer {gone}")

    def reportinfo(self):
        return self.path, None, "git status unchanged by the test run"


def pytest_runtest_logreport(report):
    path = report.nodeid.split("::")[0]
    if path.endswith(".ipynb"):
        _seconds[Path(path).name] += report.duration


def pytest_sessionfinish(session, exitstatus):
    run = session.config.stash.get(_RUN, None)
    if run and run["owned"]:
        if os.environ.get("KDCOURSE_KEEP_RESULTS") == "1":
            print(f"\nthis run's notebook figures are kept in {run['results_dir']}")
        else:
            shutil.rmtree(run["results_dir"], ignore_errors=True)
    if _is_worker(session.config):
        return  # the controller sees every report and checks the whole run
    if run and getattr(session.config.option, "numprocesses", None) and run["git_before"] is not None:
        after = _git_status()  # with xdist the controller collects nothing: check here
        if after is not None and after != run["git_before"]:
            _problems.append(f"the test run changed the checkout (git status --porcelain):\n{after}")
    if session.config.getoption("--all-notebooks"):
        missing = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb") if p.name not in _seconds)
        if missing:
            _problems.append(f"notebooks not executed: {', '.join(missing)}")
    if _problems and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if _seconds:
        terminalreporter.section("notebook run times (information only; `make bench` checks speed)")
        for name, secs in sorted(_seconds.items()):
            terminalreporter.write_line(f"{name:45s} {secs:6.1f} s")
    for line in _problems:
        terminalreporter.write_line(f"FAILED: {line}", red=True)
