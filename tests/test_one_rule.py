"""One significance rule in the whole course: the paired t interval of kdcourse.stats.

Every comparison of runs is printed with `kd.stats.describe_difference` / judged with
`kd.stats.paired_difference`. The ad-hoc rules the course used before must not come back.
"""
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
RETIRED = {
    "compare_runs": re.compile(r"\bcompare_runs\b"),
    "2 SE of a mean over n seeds": re.compile(r"2\s*\*\s*\w*sd\w*\s*/\s*\w+\s*\*\*\s*0?\.5"),
    "largest std / SD": re.compile(r"largest (std|sd)\b", re.I),
    "gain beyond the seed spread": re.compile(r"seed[- ]to[- ]seed spread|beyond the seed spread", re.I),
}


def _text(path: Path) -> str:
    return "\n".join("".join(c["source"]) for c in json.loads(path.read_text())["cells"])


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_retired_significance_rule_in_any_notebook(path):
    text = _text(path)
    found = [name for name, rx in RETIRED.items() if rx.search(text)]
    assert not found, f"{path.name} still uses {found}: compare runs with kd.stats.describe_difference"


def test_the_package_has_no_second_rule():
    src = "\n".join(p.read_text() for p in (ROOT / "kdcourse").rglob("*.py"))
    assert not RETIRED["compare_runs"].search(src), "kdcourse still defines or uses compare_runs"


def test_the_patterns_catch_what_they_retire():
    assert RETIRED["2 SE of a mean over n seeds"].search("abs(g) <= 2 * sd / n ** 0.5")
    assert RETIRED["2 SE of a mean over n seeds"].search("± {2 * g1d_sd / n ** 0.5:.1f}")
    assert RETIRED["largest std / SD"].search("(largest std 1.6)")
    assert RETIRED["compare_runs"].search("from kdcourse.stats import compare_runs, mean_std")
