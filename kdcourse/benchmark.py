"""Measure latency and cost fairly: warm-up, repetitions, compared models interleaved in one process.

Introduced in notebook 05 (pruning) and reused in notebook 06 (quantization) and by the
scripts in ``benchmarks/``. Timings vary between machines and runs: compare ratios
measured together, not absolute milliseconds from different runs. `layer_macs` counts the
multiply-accumulates of each layer: arithmetic, a rough guide to where time goes, not a timing.
"""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch
from torch import nn

from .utils import as_number, eval_mode

__all__ = ["measure_latency", "layer_macs"]


def _device_of(x) -> torch.device | None:
    """The device of input `x` (None when it is not a tensor, e.g. a NumPy array for ONNX Runtime)."""
    return x.device if isinstance(x, torch.Tensor) else None


def _synchronizer(device: torch.device | None) -> Callable[[], None]:
    """A function that waits until `device` has finished its queued work (a no-op except on CUDA).

    CUDA kernels run asynchronously: without a synchronize, the clock would stop when the work
    was queued, not when it was done.
    """
    if device is not None and device.type == "cuda":
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def measure_latency(models: dict[str, Callable], x, *, warmup: int = 3, reps: int = 20) -> dict[str, float]:
    """Median wall-clock milliseconds of ``model(x)`` for each named model.

    models: name -> nn.Module or any callable taking `x` (e.g. an ONNX Runtime wrapper); modules
    run in eval mode and get their own train/eval modes back afterwards. All models are warmed up,
    then timed in interleaved rounds (A, B, C, B, C, A, ...), so a slow-down of the machine hits
    every model alike. Runs under torch.inference_mode; when `x` is on a CUDA device, the device
    is synchronized before the clock starts and before it stops.
    """
    if not models:
        raise ValueError("measure_latency needs at least one model")
    warmup, reps = as_number(warmup, "warmup", integer=True), as_number(reps, "reps", integer=True)
    if reps < 1 or warmup < 0:
        raise ValueError(f"reps must be >= 1 and warmup >= 0, got reps={reps}, warmup={warmup}")
    names = list(models)
    sync = _synchronizer(_device_of(x))
    times: dict[str, list[float]] = {n: [] for n in names}
    with eval_mode(*[m for m in models.values() if isinstance(m, nn.Module)]), torch.inference_mode():
        for _ in range(warmup):
            for n in names:
                models[n](x)
        for r in range(reps):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate who goes first
            for n in order:
                sync()
                t0 = time.perf_counter()
                models[n](x)
                sync()
                times[n].append(time.perf_counter() - t0)
    return {n: 1000.0 * statistics.median(ts) for n, ts in times.items()}


@torch.no_grad()
def layer_macs(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Multiply-accumulates per example of every Conv1d/2d/3d and Linear, for inputs like `x` (B, ...).

    Conv: output elements x (C_in / groups) x kernel size; Linear: in_features x out_features
    per row of the output. Returns {layer name: MACs}, counted by torch's FlopCounterMode on one
    example in eval mode (MACs = FLOPs / 2; a layer called twice counts twice; the model's modes
    are restored). Counts arithmetic only, not memory traffic or per-call overhead, so a layer's
    share of MACs is a rough guide to its share of the time, not a measurement.
    """
    from torch.utils.flop_counter import FlopCounterMode
    counter = FlopCounterMode(display=False)
    with eval_mode(model), counter:
        model(x[:1])
    flops = counter.get_flop_counts()  # keys: "<root class>.<module name>", nested modules included
    root = type(model).__name__
    keys = {name: f"{root}.{name}" if name else root for name, m in model.named_modules()
            if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear))}
    return {name: sum(flops[key].values()) // 2 for name, key in keys.items() if key in flops}
