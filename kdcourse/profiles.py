"""Run profiles: "fast" (default; each notebook in about a minute on a 2-core CPU) and "full".

Introduced in notebook 00. Pick one with the environment variable KDCOURSE_PROFILE
(``KDCOURSE_PROFILE=full make lab``) or ``get_profile("full")``. Sizes shared across
notebooks (teacher training, seeds, epochs) live here, so every notebook trains the same
cached teachers; a notebook's own sizes come from ``profile.pick(fast=..., full=...)``
in its parameter cell.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace

__all__ = ["Profile", "PROFILES", "get_profile"]


@dataclass(frozen=True)
class Profile:
    """Sizes for one run of the course.

    seeds: seeds for mean +- std comparisons; epochs / teacher_epochs: training epochs of a
    student / of the cached teacher, per dataset; batch_size: mini-batch size; n_unlabeled:
    size of the MNIST-1D unlabeled transfer pool; threads: torch CPU threads (the
    environment variable KDCOURSE_THREADS overrides it).
    """
    name: str
    seeds: tuple[int, ...]
    epochs: dict
    teacher_epochs: dict
    batch_size: int
    n_unlabeled: int
    threads: int

    def pick(self, *, fast, full):
        """Return `fast` in the fast profile and `full` in the full one."""
        return fast if self.name == "fast" else full


PROFILES = {
    "fast": Profile(name="fast", seeds=(0, 1, 2),
                    epochs={"mnist": 10, "mnist1d": 60, "digits": 40},
                    teacher_epochs={"mnist": 8, "mnist1d": 40, "digits": 30},
                    batch_size=128, n_unlabeled=20_000, threads=2),
    "full": Profile(name="full", seeds=(0, 1, 2, 3, 4),
                    epochs={"mnist": 30, "mnist1d": 150, "digits": 100},
                    teacher_epochs={"mnist": 20, "mnist1d": 80, "digits": 60},
                    batch_size=128, n_unlabeled=40_000, threads=2),
}


def get_profile(name: str | None = None) -> Profile:
    """Return the named profile, or the one in $KDCOURSE_PROFILE (default "fast")."""
    name = name or os.environ.get("KDCOURSE_PROFILE") or "fast"
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {tuple(PROFILES)} "
                         "(set KDCOURSE_PROFILE or pass the name)")
    threads = os.environ.get("KDCOURSE_THREADS")
    if threads is not None:
        if not threads.isdigit() or int(threads) < 1:
            raise ValueError(f"KDCOURSE_THREADS must be a positive integer, got {threads!r}")
        return replace(PROFILES[name], threads=int(threads))
    return PROFILES[name]
