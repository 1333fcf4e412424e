"""Relation distillation: RKD distance/angle, similarity-preserving KD, PKT, retrieval recall@1. Introduced in notebook 03."""
from __future__ import annotations

__all__: list[str] = []
