"""Pruning: unstructured and structured, sparsity reports, sensitivity scans. Introduced in notebook 05."""
from __future__ import annotations

__all__: list[str] = []
