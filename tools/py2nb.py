"""Draft a notebook from a percent-format script (``# %%`` code cells, ``# %% [markdown]``).

Usage: python tools/py2nb.py draft.py notebooks/NN_name.ipynb [--budget 90]

For authors: write a notebook as plain Python in your editor, convert it once, then run
``python tools/execute_notebooks.py notebooks/NN_name.ipynb`` to fill in its outputs.
The .ipynb is the source of truth that is committed; the draft is not.
"""
from __future__ import annotations

import argparse
import re

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

_MARK = re.compile(r"^# %%(?P<md> \[markdown\])?.*$")


def convert(text: str, budget_s: float) -> nbformat.NotebookNode:
    """Split `text` at ``# %%`` markers into code and markdown cells."""
    cells, kind, lines = [], None, []

    def flush():
        body = "\n".join(lines).strip("\n")
        if kind == "markdown":
            body = "\n".join(re.sub(r"^# ?", "", ln) for ln in body.splitlines())
            cells.append(new_markdown_cell(body))
        elif kind == "code" and body.strip():
            cells.append(new_code_cell(body))

    for line in text.splitlines():
        m = _MARK.match(line)
        if m:
            flush()
            kind, lines = ("markdown" if m.group("md") else "code"), []
        else:
            lines.append(line)
    flush()
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    nb.metadata["kdcourse"] = {"budget_s": budget_s}
    return nb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--budget", type=float, default=90.0, help="time budget in seconds (fast profile)")
    a = ap.parse_args()
    with open(a.src) as f:
        nb = convert(f.read(), a.budget)
    nbformat.write(nb, a.dst)
    print(f"wrote {a.dst} ({len(nb.cells)} cells)")


if __name__ == "__main__":
    main()
