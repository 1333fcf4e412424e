"""Record a notebook's headline figures so tests, benchmarks and the README read the same numbers.

Introduced in notebook 00. ``record("01_soft_labels", transfer_kd_acc=79.1)`` merges the
figures into ``data/results/01_soft_labels.json``, a flat JSON object name -> number.
The folder is ``$KDCOURSE_RESULTS`` when set (``make test`` points it at a temporary folder,
so a test run never rewrites the committed figures), else ``results/`` in the data folder.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .utils import atomic_write_bytes, data_dir

__all__ = ["record", "load_results", "results_path", "results_dir"]

_STEM = re.compile(r"^\d\d_[a-z0-9_]+$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def results_dir() -> Path:
    """The folder of the results files: $KDCOURSE_RESULTS, else ``data_dir() / "results"``."""
    env = os.environ.get("KDCOURSE_RESULTS")
    return Path(env) if env else data_dir() / "results"


def results_path(notebook: str, results_dir: str | Path | None = None) -> Path:
    """Path of a notebook's results file; `notebook` is its stem, e.g. "00_orientation"."""
    if not _STEM.match(notebook):
        raise ValueError(f"notebook must be a notebook stem like '01_soft_labels', got {notebook!r}")
    folder = Path(results_dir) if results_dir else _default_dir()
    return folder / f"{notebook}.json"


def _default_dir() -> Path:
    return results_dir()


def load_results(notebook: str, results_dir: str | Path | None = None) -> dict[str, float]:
    """Return the recorded figures of a notebook ({} if none were recorded yet).

    A file that is not a JSON object of numbers raises ValueError naming the file (delete it, or
    re-run the notebook, to rebuild it).
    """
    path = results_path(notebook, results_dir)
    if not path.exists():
        return {}
    try:
        figures = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"results file {path} is corrupt ({err}); delete it or re-run {notebook}.ipynb") from err
    if not isinstance(figures, dict):
        raise ValueError(f"results file {path} must hold a JSON object name -> number, "
                         f"got {type(figures).__name__}; delete it or re-run {notebook}.ipynb")
    return figures


def record(notebook: str, results_dir: str | Path | None = None, **figures: float) -> dict[str, float]:
    """Merge finite numeric `figures` into the notebook's results file (atomic write).

    Names are lower_snake_case; values must be finite ints or floats (bools are rejected).
    Returns the figures written by this call only, so a notebook cell shows what *this* run
    measured; ``load_results`` returns the whole file.
    """
    if not figures:
        raise ValueError("record() needs at least one figure, e.g. record('00_orientation', acc=97.1)")
    clean = {}
    for name, value in figures.items():
        if not _NAME.match(name):
            raise ValueError(f"figure name {name!r} must be lower_snake_case")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ValueError(f"figure {name!r} must be a finite number, got {value!r}")
        clean[name] = float(value) if isinstance(value, float) else int(value)
    merged = {**load_results(notebook, results_dir), **clean}
    text = json.dumps(dict(sorted(merged.items())), indent=1) + "\n"
    atomic_write_bytes(results_path(notebook, results_dir), text.encode())
    return clean
