"""Feature distillation: FitNets hints, attention transfer, linear CKA. Introduced in notebook 02."""
from __future__ import annotations

__all__: list[str] = []
