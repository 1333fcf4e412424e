"""Measure what pruning buys on this CPU: parameters, saved size and latency at batch 1 and 256.

Usage: python benchmarks/pruning_speed.py [--threads 2] [--reps 50]

Compares the course's MNIST CNN (dense) with a 90 %-sparse copy (unstructured, masks made
permanent) and a copy with 50 % of its channels removed by torch-pruning. Latencies are
medians of interleaved repetitions in one process (kdcourse.benchmark.measure_latency), so
the ratios are comparable; absolute milliseconds depend on the machine. Targets from
issue 6: structured param ratio <= 0.3 and batch-256 latency ratio <= 0.6; unstructured
latency ratio ~ 1.
"""
from __future__ import annotations

import argparse
import copy

import kdcourse as kd
from kdcourse import pruning


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--reps", type=int, default=50)
    args = ap.parse_args()
    kd.set_threads(args.threads)
    data = kd.load_dataset("mnist")
    dense = kd.get_teacher("mnist", progress=False)
    sparse = pruning.make_permanent(pruning.global_magnitude_prune(copy.deepcopy(dense), 0.9))
    structured = pruning.structured_prune(dense, data.x_test[:1], 0.5)
    models = {"dense": dense, "unstructured90": sparse, "structured50": structured}
    print(f"threads={args.threads} reps={args.reps}")
    print(f"{'model':15s} {'params':>9s} {'bytes':>9s} {'acc %':>6s} {'b1 ms':>8s} {'b256 ms':>8s} {'b1 ratio':>9s} {'b256 ratio':>10s}")
    lat = {b: kd.benchmark.measure_latency(models, data.x_test[:b], reps=args.reps) for b in (1, 256)}
    for name, m in models.items():
        print(f"{name:15s} {kd.count_params(m):9,d} {kd.model_size_bytes(m):9,d} {kd.evaluate(m, data.test_loader()):6.1f} "
              f"{lat[1][name]:8.3f} {lat[256][name]:8.2f} {lat[1][name] / lat[1]['dense']:9.2f} "
              f"{lat[256][name] / lat[256]['dense']:10.2f}")
    checks = [("structured50 params / dense", kd.count_params(structured) / kd.count_params(dense), "<=", 0.3),
              ("structured50 latency / dense, b256", lat[256]["structured50"] / lat[256]["dense"], "<=", 0.6),
              ("unstructured90 latency / dense, b256 (no speed-up)", lat[256]["unstructured90"] / lat[256]["dense"], ">=", 0.75)]
    missed = 0
    for what, value, op, target in checks:
        ok = value <= target if op == "<=" else value >= target
        missed += not ok
        print(f"target: {what:50s} {value:6.2f} {op} {target:4.2f}  {'ok' if ok else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
