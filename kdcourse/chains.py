"""Teacher-assistant chains and the capacity gap. Introduced in notebook 04."""
from __future__ import annotations

__all__: list[str] = []
