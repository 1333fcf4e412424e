"""Size, accuracy and latency of every int8 engine of notebook 06, at batch 1 and batch 256.

Usage: python benchmarks/quantization_speed.py [--width 16] [--threads 2] [--reps 50] [--no-compile-fp32]

Quantizes the course's MNIST teacher (or an untrained CNN of another --width; accuracy then
only shows that the engines agree with fp32) with each engine in kdcourse.quantization and
prints ratios to the fp32 model in eager PyTorch and to each int8 engine's own fp32 reference
(kdcourse.quantization.FP32_REFERENCE: compiled fp32 for pt2e, ONNX Runtime fp32 for ORT),
measured interleaved in one process. Compare ratios from one run, not milliseconds across runs
or machines.
"""
from __future__ import annotations

import argparse

import torch

import kdcourse as kd
from kdcourse import quantization as Q


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--width", type=int, default=16, help="CNN width; 16 is the cached teacher, others are untrained")
    ap.add_argument("--threads", type=int, default=kd.get_profile().threads)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--no-compile-fp32", action="store_true",
                    help="skip the fp32 model under torch.compile (the reference of the compiled int8 engines)")
    a = ap.parse_args()
    kd.set_threads(a.threads)
    data = kd.load_dataset("mnist")
    if a.width == 16:
        model = kd.get_teacher("mnist", progress=False).eval()
        y = data.y_test
    else:
        model = kd.build_model("cnn", data.in_shape, width=a.width, seed=0).eval()
        y = model(data.x_test).argmax(1)  # untrained: score agreement with fp32
    calib = data.x_train[:256]
    engines = {"fp32": model}
    makers = [lambda: Q.pt2e_int8(model, calib), lambda: Q.torchao_linear_int8(model),
              lambda: Q.torchao_linear_int8(model, compile=True, example=calib), lambda: Q.ort_fp32(model, calib[:2]),
              lambda: Q.ort_static_int8(model, calib), lambda: Q.ort_dynamic_int8(model, calib[:2])]
    if not a.no_compile_fp32:
        makers.insert(0, lambda: Q.compiled_fp32(model, calib))
    for make in makers:
        e = make()
        engines[e.name] = e
    rows = Q.compare_engines(engines, "fp32", data.x_test, y, batch_sizes=(1, 256), reps=a.reps)
    print(f"width {a.width}, {torch.get_num_threads()} threads, {a.reps} reps; ratios are to fp32 eager PyTorch")
    print(f"{'engine':24s} {'acc %':>6s} {'size':>6s} {'b1 ms':>7s} {'b1 ratio':>8s} {'b256 ms':>8s} "
          f"{'b256 ratio':>10s} {'own fp32 ref':>14s} {'own b1':>6s} {'own b256':>8s} "
          f"{'build s':>7s} {'compile s':>9s}")
    for name, row in rows.items():
        e = engines[name]
        build, comp = (e.build_seconds, e.compile_seconds) if isinstance(e, Q.Engine) else (0.0, 0.0)
        own = (f"{row['reference']:>14s} {row['own_ratio_b1']:6.2f} {row['own_ratio_b256']:8.2f}" if "reference" in row
               else f"{'-':>14s} {'-':>6s} {'-':>8s}")
        print(f"{name:24s} {row['acc']:6.1f} {row['size_ratio']:6.2f} {row['ms_b1']:7.3f} "
              f"{row['latency_ratio_b1']:8.2f} {row['ms_b256']:8.2f} {row['latency_ratio_b256']:10.2f} {own} "
              f"{build:7.1f} {comp:9.1f}")
    return check_targets(rows, a.width)


def check_targets(rows: dict, width: int) -> int:
    """Targets of notebook 06 (for the cached teacher): the fastest int8 engine at batch 256 is at most
    0.5x eager fp32's latency and 0.3x its size, within 0.3 pt of fp32. Returns the exit code."""
    if width != 16:
        return 0  # an untrained model of another width: no targets
    int8 = [n for n in rows if n in ("pt2e_x86", "torchao_linear", "torchao_linear_compiled", "ort_static", "ort_dynamic")]
    best = min(int8, key=lambda n: rows[n]["latency_ratio_b256"])
    r = rows[best]
    checks = [(f"{best} latency / eager fp32, b256", r["latency_ratio_b256"], "<=", 0.5),
              (f"{best} size / fp32", r["size_ratio"], "<=", 0.3),
              (f"{best} |acc - fp32 acc| (pt)", abs(r["acc"] - rows["fp32"]["acc"]), "<=", 0.3)]
    missed = 0
    for what, value, op, target in checks:
        ok = value <= target
        missed += not ok
        print(f"target: {what:40s} {value:6.2f} {op} {target:4.2f}  {'ok' if ok else 'MISSED'}")
    return 1 if missed else 0


if __name__ == "__main__":
    raise SystemExit(main())
