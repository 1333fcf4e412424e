"""The root conftest checks a notebook's claims on the figures of *this* run, right after it ran.

A throw-away project (the real conftest.py, one notebook, one claims test) is run with pytest in a
subprocess: a notebook whose recorded figure falls below the bar fails the same run, even though
the committed figures (stale, passing) would satisfy the claim and the notebook itself asserts
nothing; and the committed figures are left untouched.
"""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
CLAIMS = '''
import json
import pytest

@pytest.mark.parametrize("stem", ["00_demo"])
def test_claims(stem, results_source):
    folder, this_run = results_source(stem)
    r = json.loads((folder / f"{stem}.json").read_text())
    assert r["gain"] >= 8, f"gain {r['gain']} below the bar ({'this run' if this_run else 'committed'})"
'''


def _project(tmp_path: Path, gain: float) -> Path:
    proj = tmp_path / "proj"
    (proj / "notebooks").mkdir(parents=True)
    (proj / "tests").mkdir()
    (proj / "data" / "results").mkdir(parents=True)
    shutil.copy(ROOT / "conftest.py", proj / "conftest.py")
    (proj / "tests" / "test_recorded_results.py").write_text(CLAIMS)
    (proj / "data" / "results" / "00_demo.json").write_text(json.dumps({"gain": 9.0}))  # stale, passing
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(f'import kdcourse as kd\nkd.record("00_demo", gain={gain})')]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, proj / "notebooks" / "00_demo.ipynb")
    return proj


def _run(proj: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("KDCOURSE_RESULTS", "PYTEST_ADDOPTS")}
    env["KDCOURSE_DATA"] = str(proj / "data")
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval-lax",
                           "--nbval-current-env", "-v", "tests", "notebooks", "--all-notebooks"],
                          cwd=proj, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("gain,passes", [(3.0, False), (12.0, True)])
def test_a_claim_is_checked_on_this_runs_figures_right_after_its_notebook(tmp_path, gain, passes):
    proj = _project(tmp_path, gain)
    out = _run(proj)
    lines = [ln for ln in out.stdout.splitlines() if ln.endswith("%]") and ("PASSED" in ln or "FAILED" in ln)]
    assert len(lines) == 2 and "Cell 0" in lines[0] and "test_claims[00_demo]" in lines[1], out.stdout
    assert (out.returncode == 0) == passes, out.stdout + out.stderr
    if not passes:
        assert "gain 3.0 below the bar (this run)" in out.stdout
    assert json.loads((proj / "data" / "results" / "00_demo.json").read_text()) == {"gain": 9.0}
