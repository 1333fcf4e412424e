"""Quantization: affine maths, observers, fake quantization, QAT, int8 engines. Introduced in notebook 06."""
from __future__ import annotations

__all__: list[str] = []
