"""Notebook 07's pipeline (distil -> prune -> int8 -> ONNX file) measured against the targets of issue 14.

Usage: python benchmarks/pipeline_speed.py [--threads 2] [--reps 50] [--seeds 0,1,2] [--epochs 3] [--recover-epochs 2]

Rebuilds the pipeline of notebook 07 with the package (same recipe as its fast profile: a
width-8 CNN distilled from the cached MNIST teacher on the 4,000 training digits plus shifted
copies, half its channels removed with torch-pruning and recovered by distillation, static int8
with pt2e + torch.compile and with ONNX Runtime, the ONNX int8 file written and reloaded), then
prints the stage table and checks the targets:

* final file >= 20x smaller in bytes than the teacher's saved state_dict;
* >= 4x faster than the teacher (eager PyTorch) at batch 256 on at least one engine;
* final accuracy (mean over seeds, from the reloaded files) within 1 point of the teacher's.

Latencies are medians of interleaved repetitions in one process (kdcourse.benchmark); the run
is also printed against the teacher on the same engines. Exits 1 when a target misses.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

import torch

import kdcourse as kd
from kdcourse import pipeline
from kdcourse import quantization as Q
from kdcourse.stats import mean_std

TARGETS = {"size_factor": 20.0, "speedup_b256": 4.0, "max_drop_pts": 1.0}


def build_finals(data, teacher, seeds, a) -> tuple[dict, dict]:
    """Distil, prune and recover one student per seed; returns (students, pruned) by seed."""
    xs = pipeline.transfer_set(data.x_train, copies=a.copies, max_shift=a.max_shift, seed=0)
    ys = data.y_train.repeat(a.copies)
    t_xs = kd.predict(teacher, xs)
    students, pruned = {}, {}
    for s in seeds:
        m = kd.build_model("cnn", data.in_shape, width=a.width, seed=s)
        students[s] = pipeline.train_student(m, xs, y=ys, teacher_logits=t_xs, T=4.0, alpha=0.5, epochs=a.epochs,
                                             lr=3e-3, seed=s)
        pruned[s] = pipeline.prune_and_recover(students[s], data.x_test[:1], 0.5, x=xs, y=ys, teacher_logits=t_xs,
                                               T=4.0, alpha=0.5, epochs=a.recover_epochs, lr=3e-3, seed=s)
    return students, pruned


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=kd.get_profile().threads)
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--copies", type=int, default=2)
    ap.add_argument("--max-shift", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--recover-epochs", type=int, default=2)
    a = ap.parse_args()
    kd.set_threads(a.threads)
    seeds = [int(s) for s in a.seeds.split(",")]
    data = kd.load_dataset("mnist")
    teacher = kd.get_teacher("mnist", progress=False)
    test = (data.x_test, data.y_test)
    teacher_acc = kd.evaluate(teacher, test)
    students, pruned = build_finals(data, teacher, seeds, a)
    calib = data.x_train[torch.randperm(len(data.x_train), generator=torch.Generator().manual_seed(0))[:256]]
    final = pruned[seeds[0]]
    with tempfile.TemporaryDirectory() as tmp:
        files = {s: os.path.join(tmp, f"final{s}.onnx") for s in seeds}
        sizes = {s: pipeline.save_onnx_int8(pruned[s], calib, files[s]) for s in seeds}
        file_accs = [Q.engine_accuracy(pipeline.load_onnx(files[s]), *test) for s in seeds]
        engines = {"teacher": teacher, "teacher_ort_fp32": Q.ort_fp32(teacher, calib[:2]),
                   "student": students[seeds[0]], "pruned": final,
                   "pt2e_x86": Q.pt2e_int8(final, calib), "ort_static": Q.ort_static_int8(final, calib),
                   "onnx_file": pipeline.load_onnx(files[seeds[0]])}
        ms = {b: kd.benchmark.measure_latency(engines, data.x_test[:b], reps=a.reps * (5 if b == 1 else 1))
              for b in (1, 256)}
    n_final = kd.count_params(final)
    stages = [dict(stage="teacher", params=kd.count_params(teacher), size_bytes=kd.model_size_bytes(teacher),
                   accs=[teacher_acc], key="teacher"),
              dict(stage="(a) distilled student", params=kd.count_params(students[seeds[0]]),
                   size_bytes=kd.model_size_bytes(students[seeds[0]]),
                   accs=[kd.evaluate(students[s], test) for s in seeds], key="student"),
              dict(stage="(b) pruned + KD recovery", params=n_final, size_bytes=kd.model_size_bytes(final),
                   accs=[kd.evaluate(pruned[s], test) for s in seeds], key="pruned"),
              *[dict(stage=f"(c) int8 {name}", params=n_final, size_bytes=engines[name].size_bytes,
                     accs=[Q.engine_accuracy(engines[name], *test)], key=name) for name in ("pt2e_x86", "ort_static")],
              dict(stage="(d) ONNX int8 file", params=n_final, size_bytes=sizes[seeds[0]], accs=file_accs,
                   key="onnx_file")]
    for st in stages:
        st.update({f"ms_b{b}": ms[b][st["key"]] for b in (1, 256)})
    rows = pipeline.stage_table(stages)
    print(f"threads={torch.get_num_threads()} reps={a.reps} seeds={seeds}; "
          "speed-ups against the teacher in eager PyTorch")
    print(pipeline.format_table(rows))
    print(f"teacher in ONNX Runtime fp32: {ms[256]['teacher'] / ms[256]['teacher_ort_fp32']:.1f}x faster than eager at "
          f"batch 256; the final file is {ms[256]['teacher_ort_fp32'] / ms[256]['onnx_file']:.1f}x faster than that")
    final_row = rows[-1]
    speedups = {r["stage"]: r["speedup_b256"] for r in rows if r["stage"].startswith(("(c)", "(d)"))}
    best = max(speedups, key=speedups.get)
    acc, std = mean_std(file_accs)
    checks = [(f"final file size factor ({final_row['size_bytes']:,} bytes)", final_row["size_factor"], ">=",
               TARGETS["size_factor"], final_row["size_factor"] >= TARGETS["size_factor"]),
              (f"speed-up at batch 256, best final engine ({best})", speedups[best], ">=", TARGETS["speedup_b256"],
               speedups[best] >= TARGETS["speedup_b256"]),
              (f"accuracy drop vs teacher ({acc:.2f} ± {std:.2f} % vs {teacher_acc:.2f} %)", teacher_acc - acc, "<=",
               TARGETS["max_drop_pts"], teacher_acc - acc <= TARGETS["max_drop_pts"])]
    print(f"\n{'target':70s} {'measured':>9s}   {'target':>8s} ok")
    for what, value, op, target, ok in checks:
        print(f"{what[:70]:70s} {value:9.2f}   {op} {target:5.1f} {'yes' if ok else 'NO'}")
    return 0 if all(c[-1] for c in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
