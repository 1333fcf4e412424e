"""Record a notebook's headline figures so tests, benchmarks and the README read the same numbers.

Introduced in notebook 00. ``record("01_soft_labels", transfer_kd_acc=79.1)`` merges the
figures into ``data/results/01_soft_labels.json``, a flat JSON object name -> number.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

from .utils import atomic_write_bytes, data_dir

__all__ = ["record", "load_results", "results_path"]

_STEM = re.compile(r"^\d\d_[a-z0-9_]+$")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")


def results_path(notebook: str, results_dir: str | Path | None = None) -> Path:
    """Path of a notebook's results file; `notebook` is its stem, e.g. "00_orientation"."""
    if not _STEM.match(notebook):
        raise ValueError(f"notebook must be a notebook stem like '01_soft_labels', got {notebook!r}")
    return (Path(results_dir) if results_dir else data_dir() / "results") / f"{notebook}.json"


def load_results(notebook: str, results_dir: str | Path | None = None) -> dict[str, float]:
    """Return the recorded figures of a notebook ({} if none were recorded yet)."""
    path = results_path(notebook, results_dir)
    return json.loads(path.read_text()) if path.exists() else {}


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
