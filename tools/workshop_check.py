"""Run exactly the workshop's core path and report its compute time.

Usage: python tools/workshop_check.py [--target-min 15] [--workshop WORKSHOP.md]

The core path is every notebook that WORKSHOP.md links (``notebooks/NN_name.ipynb``), in that
order, with the cells tagged ``optional`` (and the hidden ``solution`` cells) left out. Each
notebook runs in a fresh kernel from a temporary copy, with its figures recorded into a temporary
folder, so the checkout is not touched. Prints one line per notebook and the total against the
target; exits 1 when a core cell fails (naming the notebook and cell) or the total is over target.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from pathlib import Path

import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = Path(__file__).resolve().parent.parent
SKIPPED_TAGS = {"optional", "solution"}


def core_path(workshop_md: Path) -> list[Path]:
    """The notebooks WORKSHOP.md links, in order of first mention, without repeats."""
    names = re.findall(r"notebooks/(\d\d_[\w-]+\.ipynb)", workshop_md.read_text())
    seen: list[str] = []
    for n in names:
        if n not in seen:
            seen.append(n)
    if not seen:
        raise SystemExit(f"{workshop_md} links no notebooks/NN_name.ipynb: nothing to check")
    return [workshop_md.parent / "notebooks" / n for n in seen]


def core_cells(nb) -> list[int]:
    """Indices of the cells of the core path: all but those tagged optional or solution."""
    return [i for i, c in enumerate(nb.cells) if not SKIPPED_TAGS & set(c.metadata.get("tags", []))]


def run_core(path: Path) -> float:
    """Execute `path`'s core cells in a fresh kernel (cwd = a copy's folder); return seconds."""
    nb = nbformat.read(path, as_version=4)
    keep = core_cells(nb)
    nb.cells = [nb.cells[i] for i in keep]
    t0 = time.perf_counter()
    try:
        NotebookClient(nb, timeout=14400, startup_timeout=900, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    except CellExecutionError as err:
        failed = next((keep[j] for j, c in enumerate(nb.cells)
                       if any(o.get("output_type") == "error" for o in c.get("outputs", []))), "?")
        raise RuntimeError(f"{path.name}: core cell [{failed}] failed: {str(err).splitlines()[-1] if str(err) else err}")
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workshop", type=Path, default=ROOT / "WORKSHOP.md")
    ap.add_argument("--target-min", type=float, default=15.0)
    a = ap.parse_args(argv)
    os.environ.setdefault("KDCOURSE_PROFILE", "fast")
    total = 0.0
    with tempfile.TemporaryDirectory(prefix="kdcourse-workshop-") as tmp:
        os.environ["KDCOURSE_RESULTS"] = tmp
        for path in core_path(a.workshop):
            try:
                secs = run_core(path)
            except RuntimeError as err:
                print(f"FAIL {err}")
                return 1
            total += secs
            print(f"{path.name:36s} core path {secs:6.1f} s")
    verdict = "ok" if total <= 60 * a.target_min else "MISS"
    print(f"workshop core path: {total / 60:.1f} min of compute (target <= {a.target_min:g} min): {verdict}")
    return 0 if verdict == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
