"""Measure latency and size fairly: warm-up, repetitions, compared models interleaved in one process.

Introduced in notebook 05 (pruning) and reused in notebook 06 (quantization) and by the
scripts in ``benchmarks/``. Timings vary between machines and runs: compare ratios
measured together, not absolute milliseconds from different runs.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

__all__ = ["measure_latency", "latency_ratio"]


def _as_callable(model) -> Callable:
    if isinstance(model, nn.Module):
        model.eval()
    return model


def measure_latency(models: dict[str, Callable], x, *, warmup: int = 3, reps: int = 20) -> dict[str, float]:
    """Median wall-clock milliseconds of ``model(x)`` for each named model.

    models: name -> nn.Module or any callable taking `x` (e.g. an ONNX Runtime wrapper).
    All models are warmed up, then timed in interleaved rounds (A, B, C, B, C, A, ...), so a
    slow-down of the machine hits every model alike. Runs under torch.inference_mode.
    """
    if not models:
        raise ValueError("measure_latency needs at least one model")
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    fns = {name: _as_callable(m) for name, m in models.items()}
    names = list(fns)
    times: dict[str, list[float]] = {n: [] for n in names}
    with torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                fns[n](x)
        for r in range(reps):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
            for n in order:
                t0 = time.perf_counter()
                fns[n](x)
                times[n].append(time.perf_counter() - t0)
    return {n: 1000.0 * statistics.median(ts) for n, ts in times.items()}


def latency_ratio(candidate, baseline, x, *, warmup: int = 3, reps: int = 20) -> float:
    """Median latency of `candidate` divided by that of `baseline` (< 1: candidate is faster)."""
    ms = measure_latency({"candidate": candidate, "baseline": baseline}, x, warmup=warmup, reps=reps)
    return ms["candidate"] / ms["baseline"]
