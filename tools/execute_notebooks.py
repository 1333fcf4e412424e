"""Execute notebooks in place (fast profile by default) and clean volatile metadata.

Usage: python tools/execute_notebooks.py notebooks/01_soft_labels.ipynb [...]

The committed notebooks carry the outputs of such a run, so learners browsing the
repository see real figures; timestamps and widget state are removed so re-runs give
small diffs. Prints each notebook's wall time.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def clean(nb) -> None:
    """Drop per-run metadata (execution timestamps, widget state)."""
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("execution", None)


def main(paths: list[str]) -> int:
    os.environ.setdefault("KDCOURSE_PROFILE", "fast")
    for p in map(Path, paths):
        nb = nbformat.read(p, as_version=4)
        t0 = time.perf_counter()
        NotebookClient(nb, timeout=14400, kernel_name="python3",
                       resources={"metadata": {"path": str(p.parent)}}).execute()
        clean(nb)
        nbformat.write(nb, p)
        print(f"{p}: executed in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
