"""The root conftest checks a notebook's claims on the figures of *this* run, right after it ran.

A throw-away project (the real conftest.py, one notebook, one claims test) is run with pytest in a
subprocess: a notebook whose recorded figure falls below the bar fails the same run, even though
the committed figures (stale, passing) would satisfy the claim and the notebook itself asserts
nothing; and the committed figures are left untouched.
"""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = '''
def _claims(r):
    assert r["gain"] >= 8, f"gain {r['gain']} below the bar"

CLAIMS = {"00_demo": (["gain"], _claims)}

def check(stem, figures, where):
    required, claims = CLAIMS[stem]
    assert all(k in figures for k in required)
    claims(figures)
'''


def _project(tmp_path: Path, gain: float) -> Path:
    proj = tmp_path / "proj"
    (proj / "notebooks").mkdir(parents=True)
    (proj / "tests").mkdir()
    (proj / "data" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "conftest.py", proj / "conftest.py")
    (proj / "tests" / "claims.py").write_text(CLAIMS)
    (proj / "data" / "results" / "00_demo.json").write_text(json.dumps({"gain": 9.0}))  # stale, passing
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f'import kdcourse as kd\nkd.record("00_demo", gain={gain})')]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, proj / "notebooks" / "00_demo.ipynb")
    return proj


def _run(proj: Path, workers: int = 0) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("KDCOURSE_RESULTS", "PYTEST_ADDOPTS")}
    env["KDCOURSE_DATA"] = str(proj / "data")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", "-v", "tests", "notebooks", "--all-notebooks",
                           *(["-n", str(workers), "--dist", "loadfile"] if workers else [])],
                          cwd=proj, env=env, capture_output=True, text=True, timeout=3600)  # a hang guard, not a speed check


@pytest.mark.parametrize("gain,passes,workers", [(3.0, False, 0), (12.0, True, 0), (3.0, False, 2)])
def test_a_claim_is_checked_on_this_runs_figures_right_after_its_notebook(tmp_path, gain, passes, workers):
    proj = _project(tmp_path, gain)
    out = _run(proj, workers)
    runs = re.findall(r"(?:(\S+::\S+(?: \d+)?) (?:PASSED|FAILED))|(?:(?:PASSED|FAILED) (\S+::\S+(?: \d+)?))",
                      out.stdout.split("= FAILURES =")[0].split("short test summary")[0])
    order = [(a or b).replace("::ipynb", ".ipynb") for a, b in runs]  # nbval shows "00_demo::ipynb"
    assert order == ["notebooks/00_demo.ipynb::Cell 0", "notebooks/00_demo.ipynb::claims"], out.stdout
    assert (out.returncode == 0) == passes, out.stdout + out.stderr
    if not passes:
        assert "gain 3.0 below the bar" in out.stdout
    assert json.loads((proj / "data" / "results" / "00_demo.json").read_text()) == {"gain": 9.0}
