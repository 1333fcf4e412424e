"""`make bench`: every speed and runtime target of the course, measured on this machine.

Usage: python benchmarks/run.py [--notebooks 01,05] [--skip-notebooks] [--skip-scripts] [--threads N]

1. Times a fixed reference workload: 200 Adam steps (batch 128) of the course's MNIST teacher CNN.
   Machines differ 3-5x in speed, so every notebook's run time is also printed in multiples of
   it ("ref units"); the runtime targets are set in those units, calibrated on the developers'
   machine (DEV_REFERENCE_S) so that its 60-180 s budgets keep their meaning.
2. Executes every notebook top to bottom in a fresh kernel (fast profile; figures go to a
   temporary folder, the checkout is not modified) and times it, kernel start included.
3. Checks the speed figures the notebooks record (latency ratios, training-time ratios).
4. Runs the speed benchmark scripts in this folder; each prints its table and exits non-zero
   when one of its targets misses.
Prints one table of every figure against its target and exits 1 when any target misses.
Timings depend on load: run it on a quiet machine (close other programs).
"""
from __future__ import annotations

import argparse
import json
import operator
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# Median seconds of the reference workload on the developers' 2-core machine (2 threads), the day
# the notebook budgets (metadata.kdcourse.budget_s, in seconds on that machine) were set.
DEV_REFERENCE_S = 4.75   # measured 2026-11-30 on the 2-core developers VM, quiet, 2 threads
REF_STEPS, REF_BATCH = 200, 128
SCRIPTS = ["pruning_speed.py", "quantization_speed.py", "pipeline_speed.py"]

# Speed figures recorded by notebooks: (notebook, description, function of its figures, op, target).
SPEED_CLAIMS = [
    ("03_relation_distillation", "angle loss with anchors / full, largest batch (time ratio)",
     lambda r: r["angle_anchor_ms"] / r["angle_full_ms"], "<", 1.0),
    ("04_teacher_assistants", "cheapest chain / direct KD training time",
     lambda r: r["chain_min_cost_ratio"], ">", 1.2),
    ("04_teacher_assistants", "assistant (4.3x the params) epoch / student epoch (time)",
     lambda r: r["assistant_over_student_epoch"], ">", 1.2),
    ("05_pruning", "unstructured 90 % / dense latency (no real speed-up)",
     lambda r: r["unstructured90_latency_ratio"], "<", 1.3),
    ("05_pruning", "unstructured 90 % / dense latency (not faster either)",
     lambda r: r["unstructured90_latency_ratio"], ">", 0.75),
    ("05_pruning", "structured 50 % / dense latency, batch 256",
     lambda r: r["structured50_latency_ratio_b256"], "<=", 0.6),
    ("06_quantization", "best int8 / eager fp32 latency, batch 256",
     lambda r: r["int8_latency_ratio_b256"], "<=", 0.5),
    ("07_compression_pipeline", "final model latency / teacher, batch 256 (target: >= 4x faster)",
     lambda r: r["final_latency_ratio_b256"], "<=", 0.25),
    ("08_llm_distillation", "student latency / teacher, batch 1",
     lambda r: r["student_latency_ratio"], "<", 1.0),
    ("06_quantization", "int8 speed-up: wide model's ratio / narrow model's ratio",
     lambda r: r["wide_ort_static_over_fp32_b256"] / r["ort_static_own_ratio_b256"], "<", 0.9),
]
OPS = {"<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge}


def reference_seconds(threads: int, repeats: int = 3) -> float:
    """Median seconds of REF_STEPS Adam steps of the MNIST teacher CNN on fixed random inputs."""
    import torch
    import kdcourse as kd
    torch.set_num_threads(threads)
    p = kd.preset("teacher", "mnist")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(REF_BATCH, 1, 28, 28, generator=g), torch.randint(0, 10, (REF_BATCH,), generator=g)
    times = []
    for _ in range(repeats):
        model = kd.build_model(p["arch"], (1, 28, 28), width=p["width"], depth=p["depth"], seed=0)
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        t0 = time.perf_counter()
        for _ in range(REF_STEPS):
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_notebook(path: Path, results_dir: Path) -> float:
    """Execute a notebook in a fresh kernel (nothing written back); return wall seconds."""
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(path, as_version=4)
    os.environ["KDCOURSE_RESULTS"] = str(results_dir)
    t0 = time.perf_counter()
    NotebookClient(nb, timeout=14400, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()
    return time.perf_counter() - t0


def budget(path: Path) -> float:
    return float(json.loads(path.read_text())["metadata"].get("kdcourse", {}).get("budget_s", 90))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebooks", default="", help="comma-separated stem prefixes, e.g. 01,05 (default: all)")
    ap.add_argument("--skip-notebooks", action="store_true")
    ap.add_argument("--skip-scripts", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: the profile's)")
    a = ap.parse_args()
    os.environ.setdefault("KDCOURSE_PROFILE", "fast")
    if a.threads:
        os.environ["KDCOURSE_THREADS"] = str(a.threads)
    import kdcourse as kd
    threads = kd.get_profile().threads
    rows: list[tuple[str, float, str, float, str, bool]] = []  # what, value, op, target, unit, ok
    ref = reference_seconds(threads)
    print(f"reference workload ({REF_STEPS} Adam steps of the MNIST teacher, batch {REF_BATCH}, {threads} threads): "
          f"{ref:.2f} s = {ref / DEV_REFERENCE_S:.2f}x the developers' machine", flush=True)
    results = Path(tempfile.mkdtemp(prefix="kdcourse-bench-"))
    ran = []
    if not a.skip_notebooks:
        wanted = [s for s in a.notebooks.split(",") if s]
        for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
            if wanted and not any(path.stem.startswith(w) for w in wanted):
                continue
            secs = run_notebook(path, results)
            units, target = secs / ref, budget(path) / DEV_REFERENCE_S
            rows.append((f"notebook {path.stem} ({secs:.0f} s)", units, "<=", target, "ref units", units <= target))
            ran.append(path.stem)
            print(f"{path.name}: {secs:.1f} s = {units:.1f} ref units (target <= {target:.1f})", flush=True)
        for stem, what, fn, op, target in SPEED_CLAIMS:
            if stem not in ran:
                continue
            try:
                value = fn(kd.load_results(stem, results_dir=results))
            except KeyError as err:
                rows.append((f"{stem}: {what} [missing figure {err}]", float("nan"), op, target, "", False))
                continue
            rows.append((f"{stem}: {what}", value, op, target, "ratio", OPS[op](value, target)))
    if not a.skip_scripts:
        for script in SCRIPTS:
            path = ROOT / "benchmarks" / script
            if not path.exists():
                continue
            print(f"\n$ python benchmarks/{script}", flush=True)
            code = subprocess.call([sys.executable, str(path), "--threads", str(threads)], cwd=ROOT)
            rows.append((f"benchmarks/{script} (its own targets)", code, "==", 0, "exit code", code == 0))
    total = sum(r[1] for r in rows if r[0].startswith("notebook")) * ref
    print(f"\n{'figure':72s} {'measured':>9s}   {'target':>10s}  {'unit':10s} ok")
    for what, value, op, target, unit, ok in rows:
        print(f"{what[:72]:72s} {value:9.2f}   {op:>2s} {target:7.2f}  {unit:10s} {'yes' if ok else 'NO'}")
    if ran:
        print(f"\nnotebooks: {total:.0f} s in all here ({total / ref:.0f} ref units); on another machine expect "
              f"about {total / ref:.0f} x its reference time (the first line of `make bench`)")
    missed = [r for r in rows if not r[5]]
    print(f"\n{len(rows) - len(missed)} targets met, {len(missed)} missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
