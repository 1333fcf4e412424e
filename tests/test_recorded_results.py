"""Each notebook's headline figures (``kd.record``) exist and satisfy the claims it makes.

The claims live in tests/claims.py. Under ``make test`` the root conftest checks each notebook's
claims right after the notebook ran, on the figures it has just written (a temporary folder), as
an extra item of that notebook (``notebooks/<stem>.ipynb::claims``). Here, the committed
``data/results`` are checked, for notebooks not executed in this session (``make unit``).
"""
import inspect
import json
import re
from pathlib import Path

import pytest

from claims import CLAIMS, check

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stem", sorted(CLAIMS))
def test_committed_claims(stem, results_source):
    folder, this_run = results_source(stem)
    if this_run:
        pytest.skip(f"{stem} ran in this session: its claims were checked right after it, on its own figures")
    path = folder / f"{stem}.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: run `make notebooks` to record {stem}'s figures")
    check(stem, json.loads(path.read_text()), "the committed figures")


def test_every_notebook_has_claims():
    stems = {p.stem for p in (ROOT / "notebooks").glob("*.ipynb")}
    assert stems == set(CLAIMS), f"notebooks without claims: {sorted(stems - set(CLAIMS))}"


@pytest.mark.parametrize("stem", sorted(CLAIMS))
def test_every_key_a_check_reads_is_required(stem):
    required, claims = CLAIMS[stem]
    read = set(re.findall(r"""r\[["']([a-z0-9_]+)["']\]""", inspect.getsource(claims)))
    assert read and read <= set(required), f"{stem}: read but not required: {sorted(read - set(required))}"
