"""Every exercise has a reference solution that CI runs, and a check that rejects a known wrong answer.

Exercise blocks start at a markdown cell with "**Exercise" and end at the next exercise or heading.
A closed exercise needs, in its block, a code cell tagged ``solution`` that JupyterLab hides by
default (``metadata.jupyter.source_hidden``) and that shows a wrong answer being rejected
(``... is False`` / ``assert not ...``); nbval runs those cells in `make test`. An open exercise
(marked "(open)" or "(experiment)") needs an expected result or a rubric instead.
"""
import json
import re
from pathlib import Path

import pytest

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("*.ipynb"))
REJECTS = re.compile(r"is False|assert not |verbose=False\)\s*is False")
OPEN = re.compile(r"\*\*Exercise[^*]*\((open|experiment)", re.I)


def _blocks(path: Path):
    cells, blocks = json.loads(path.read_text())["cells"], []
    for i, c in enumerate(cells):
        text = "".join(c["source"])
        if c["cell_type"] == "markdown" and "**Exercise" in text:
            blocks.append([(i, c)])
        elif blocks and c["cell_type"] == "markdown" and re.search(r"^#+ ", text, re.M):
            blocks.append(None)                       # a heading closes the last block
        elif blocks and blocks[-1] is not None:
            blocks[-1].append((i, c))
    return [b for b in blocks if b]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_exercise_has_a_hidden_tested_solution_or_a_rubric(path):
    problems = []
    for block in _blocks(path):
        first = "".join(block[0][1]["source"])
        title = re.search(r"\*\*Exercise[^*]*\*\*", first).group(0)
        if OPEN.search(first):
            prose = " ".join("".join(c["source"]) for _, c in block if c["cell_type"] == "markdown")
            if not re.search(r"rubric|expected result|you should see", prose, re.I):
                problems.append(f"{title} (open) has no expected result or rubric")
            continue
        sols = [(i, c) for i, c in block if "solution" in c.get("metadata", {}).get("tags", [])]
        if not sols:
            problems.append(f"{title} has no code cell tagged 'solution'")
            continue
        if not all(c["metadata"].get("jupyter", {}).get("source_hidden") for _, c in sols):
            problems.append(f"{title}: the solution cell is not hidden by default (metadata.jupyter.source_hidden)")
        code = "\n".join("".join(c["source"]) for _, c in block if c["cell_type"] == "code")
        if not REJECTS.search(code):
            problems.append(f"{title}: no known wrong answer is shown to fail the check")
    assert not problems, f"{path.name}: " + "; ".join(problems)


def test_the_rule_finds_exercises_and_flags_a_missing_solution(tmp_path):
    nb = {"cells": [{"cell_type": "markdown", "metadata": {}, "source": ["**Exercise 1.** Write f."]},
                    {"cell_type": "code", "metadata": {}, "source": ["kd.check(f, ref)"], "outputs": []},
                    {"cell_type": "markdown", "metadata": {}, "source": ["## Further reading"]}],
          "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    p = tmp_path / "x.ipynb"
    p.write_text(json.dumps(nb))
    assert len(_blocks(p)) == 1
    with pytest.raises(AssertionError, match="no code cell tagged 'solution'"):
        test_every_exercise_has_a_hidden_tested_solution_or_a_rubric(p)
