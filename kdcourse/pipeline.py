"""Chaining compression stages — distil, prune, quantize, export — and measuring every stage.

Introduced in notebook 07. Each stage reuses the package's own tools (``training.fit`` with
``losses.KD``, ``pruning.structured_prune``, the int8 engines of ``quantization``, and
``benchmark.measure_latency`` through ``quantization.compare_engines``); this module adds
what chaining needs: a transfer set of shifted copies for the teacher to label, one-call
student training and prune-and-recover stages, writing and reloading the exported files
(ONNX int8 for ONNX Runtime, a ``torch.export`` program), and the stage table with its
cumulative compression factors, its Pareto front and the smallest stage within a tolerance.
"""
from __future__ import annotations

import copy
import math
import os
import tempfile
from collections.abc import Callable, Sequence

import torch
from torch import nn

from .data import TensorLoader
from .losses import KD
from .pruning import structured_prune
from .training import fit
from .utils import as_number

__all__ = ["random_shifts", "transfer_set", "train_student", "prune_and_recover", "save_program",
           "load_program", "save_onnx_int8", "load_onnx", "cumulative_factors", "stage_table",
           "format_table", "pareto_front", "smallest_within"]


# ----------------------------------------------------------------------------- the transfer set
def random_shifts(x: torch.Tensor, *, max_shift: int, generator: torch.Generator | None = None,
                  fill: float | None = None) -> torch.Tensor:
    """Translate each image of x (N, C, H, W) by its own random (dy, dx) in [-max_shift, max_shift].

    Pixels shifted in from outside take the value `fill` (default: the smallest value of x, the
    background of standardised digits). Returns a new tensor of x's shape; max_shift=0 copies x.
    """
    if x.dim() != 4:
        raise ValueError(f"random_shifts needs images (N, C, H, W), got shape {tuple(x.shape)}")
    s = as_number(max_shift, "max_shift", integer=True)
    if not 0 <= s < min(x.shape[2:]):
        raise ValueError(f"max_shift must be in [0, {min(x.shape[2:])}) for images {tuple(x.shape[2:])}, got {s}")
    fill = float(x.min()) if fill is None else float(fill)
    n, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (s, s, s, s), value=fill)         # (N, C, H + 2s, W + 2s)
    dy, dx = (torch.randint(-s, s + 1, (2, n), generator=generator) if s else torch.zeros(2, n, dtype=torch.long))
    out = torch.empty_like(x)
    for a, b in torch.stack([dy, dx], 1).unique(dim=0).tolist():           # one slice per distinct shift
        idx = ((dy == a) & (dx == b)).nonzero().flatten()
        out[idx] = padded[idx, :, s - a:s - a + h, s - b:s - b + w]        # content moves by (+a, +b)
    return out


def transfer_set(x: torch.Tensor, *, copies: int, max_shift: int = 2, seed: int = 0) -> torch.Tensor:
    """The inputs x (N, C, H, W) followed by copies - 1 randomly shifted versions: (copies * N, C, H, W).

    A teacher labels them (soft labels, e.g. ``kd.predict(teacher, xs)``) for distillation on many
    more inputs than were labelled — what "patient and consistent" distillation does with
    augmentation (Beyer et al., "Knowledge distillation: A good teacher is patient and
    consistent", CVPR 2022). Row i of copy k is a shift of x[i]; the same seed gives the same set.
    """
    k = as_number(copies, "copies", integer=True)
    if k < 1:
        raise ValueError(f"copies must be >= 1, got {copies}")
    g = torch.Generator().manual_seed(seed)
    return torch.cat([x] + [random_shifts(x, max_shift=max_shift, generator=g) for _ in range(k - 1)])


# ----------------------------------------------------------------------------- training stages
def train_student(model: nn.Module, x: torch.Tensor, *, y: torch.Tensor | None = None,
                  teacher_logits: torch.Tensor | None = None, epochs: int, T: float = 4.0, alpha: float = 0.0,
                  lr: float = 1e-3, batch_size: int = 128, seed: int = 0) -> nn.Module:
    """Train `model` in place on x (N, ...) with ``kd.fit`` and return it (in eval mode).

    With teacher_logits (N, C): Hinton KD, L = alpha CE(y, s) + (1 - alpha) T^2 KL(p_t^T || p_s^T)
    (Hinton, Vinyals & Dean 2015; alpha=0 needs no labels). Without: cross-entropy on y (N,).
    Same seed, same batches: runs that differ only in the loss are paired.
    """
    if teacher_logits is None and y is None:
        raise ValueError("train_student needs labels y (cross-entropy) or teacher_logits (distillation)")
    for name, t in (("y", y), ("teacher_logits", teacher_logits)):
        if t is not None and len(t) != len(x):
            raise ValueError(f"{name} has {len(t)} rows but x has {len(x)}")
    if teacher_logits is not None and alpha > 0 and y is None:
        raise ValueError(f"alpha={alpha} weighs a hard-label loss: pass y, or use alpha=0")
    if teacher_logits is None:
        loader, loss = TensorLoader(x, y, batch_size=batch_size, seed=seed), None
    else:
        labels = y if y is not None else torch.full((len(x),), -100, dtype=torch.long)   # -100: ignored
        loader, loss = TensorLoader(x, labels, teacher_logits, batch_size=batch_size, seed=seed), KD(T=T, alpha=alpha)
    fit(model, loader, epochs=epochs, loss_fn=loss, lr=lr, seed=seed, progress=False)
    return model


def prune_and_recover(model: nn.Module, example: torch.Tensor, ratio: float, *, x: torch.Tensor,
                      teacher_logits: torch.Tensor | None = None, y: torch.Tensor | None = None,
                      epochs: int, T: float = 4.0, alpha: float = 0.0, lr: float = 1e-3,
                      batch_size: int = 128, seed: int = 0, ignored: Sequence[str] = ("head",)) -> nn.Module:
    """Remove `ratio` of the channels of every layer (``pruning.structured_prune``), then recover.

    Recovery is ``train_student`` on x with the teacher's logits (distillation) or labels y.
    Returns a new, smaller model; `model` is left unchanged. example: (1, *in_shape).
    """
    small = structured_prune(model, example, ratio, ignored=ignored)
    return train_student(small, x, y=y, teacher_logits=teacher_logits, epochs=epochs, T=T, alpha=alpha,
                         lr=lr, batch_size=batch_size, seed=seed)


# ----------------------------------------------------------------------------- export and reload
def save_program(module: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> int:
    """Export `module` with ``torch.export`` (batch dimension dynamic) and save it; returns the file size.

    Works for plain models and for pt2e int8 graphs (``quantization.pt2e_int8(..., compile=False).fn``).
    example: (B >= 2, *in_shape). Reload with `load_program`.
    """
    batch = torch.export.Dim("batch", min=1, max=65536)
    if isinstance(module, torch.fx.GraphModule):
        module = _without_unused_tensors(module)
    else:
        module = copy.deepcopy(module).eval()
    example = example[:2].clone()          # a view would store its whole base tensor as the sample input
    program = torch.export.export(module, (example,), dynamic_shapes=({0: batch},))
    torch.export.save(program, str(path))
    return os.path.getsize(path)


def _without_unused_tensors(gm: torch.fx.GraphModule) -> torch.fx.GraphModule:
    """A copy of `gm` without the parameters and buffers its graph never reads.

    After ``convert_pt2e`` the fp32 weights stay attached next to the int8 ones that replaced them;
    exporting would store both.
    """
    gm = copy.deepcopy(gm)
    used = {node.target for node in gm.graph.nodes if node.op == "get_attr"}
    for name, _ in list(gm.named_parameters()) + list(gm.named_buffers()):
        if name not in used:
            owner, _, attr = name.rpartition(".")
            delattr(gm.get_submodule(owner) if owner else gm, attr)
    return gm


def load_program(path: str | os.PathLike) -> nn.Module:
    """Load a program written by `save_program` as a callable module (B, *in_shape) -> (B, C).

    An exported module refuses ``.eval()``/``.train()`` by default; they are re-enabled (as
    ``quantization.pt2e_int8`` does) so that ``kd.evaluate`` and ``kd.predict`` accept it.
    """
    if not os.path.exists(path):
        raise FileNotFoundError(f"no exported program at {path}")
    module = torch.export.load(str(path)).module()
    _allow_train_eval(module)
    return module


def _allow_train_eval(module: nn.Module) -> None:
    """Let an exported module accept .train()/.eval() (torchao's helper, imported with its log quietened)."""
    from .quantization.engines import _import_torchao
    _import_torchao()
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    allow_exported_model_train_eval(module)


def save_onnx_int8(model: nn.Module, calib_x: torch.Tensor, path: str | os.PathLike, *,
                   per_channel: bool = True, strip: bool = True) -> int:
    """Write `model` as a static-int8 ONNX file (QDQ, int8 weights and activations); returns its size.

    The recipe of ``quantization.ort_static_int8`` (export with ``quantization.export_onnx``, shape
    inference, calibration on calib_x (N, *in_shape)), but the int8 file is kept at `path`, so it
    can be shipped and reloaded with `load_onnx`. strip: drop what only debugging reads — the
    exporter's per-node provenance (``metadata_props``) and the intermediate shape annotations
    (``value_info``, which ONNX Runtime infers again) — which outweigh a small model's int8 weights.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .quantization import export_onnx
    from .quantization.onnx_runtime import _quantize_static_file
    if calib_x is None or len(calib_x) == 0:
        raise ValueError("save_onnx_int8 needs a non-empty calibration set calib_x of shape (N, *in_shape)")
    with tempfile.TemporaryDirectory() as tmp:
        src = export_onnx(model, calib_x[:2], os.path.join(tmp, "fp32.onnx"))
        quant_pre_process(src, os.path.join(tmp, "pre.onnx"))
        _quantize_static_file(os.path.join(tmp, "pre.onnx"), str(path), calib_x, per_channel=per_channel)
    if strip:
        _strip_onnx(path)
    return os.path.getsize(path)


def _strip_onnx(path: str | os.PathLike) -> None:
    """Remove per-node metadata, doc strings and value_info from the ONNX file at `path`, in place."""
    import onnx
    proto = onnx.load(str(path))
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    del proto.graph.value_info[:]
    onnx.save(proto, str(path))


def load_onnx(path: str | os.PathLike, *, threads: int | None = None) -> Callable:
    """An ONNX Runtime session for the file at `path`, as a callable torch (B, ...) -> (B, C)."""
    from .quantization import ort_model
    if not os.path.exists(path):
        raise FileNotFoundError(f"no ONNX file at {path}")
    with open(path, "rb") as f:
        return ort_model(f.read(), threads=threads)


# ----------------------------------------------------------------------------- the stage table
def cumulative_factors(sizes: Sequence[float]) -> list[float]:
    """Compression factor of each stage against the first: sizes[0] / sizes[i] (the first is 1.0).

    The product of the per-stage factors sizes[i-1] / sizes[i] telescopes to this.
    """
    vals = [as_number(s, "size") for s in sizes]
    if not vals or any(v <= 0 for v in vals):
        raise ValueError(f"sizes must be a non-empty list of positive numbers, got {list(sizes)}")
    return [vals[0] / v for v in vals]


def stage_table(stages: Sequence[dict], *, baseline: str | None = None) -> list[dict]:
    """One row per stage with mean ± std accuracy and its size and latency against the baseline.

    stages: dicts with ``stage`` (name), ``size_bytes``, ``accs`` (per-seed accuracies, %), and
    optionally ``params`` and ``ms_b<B>`` (milliseconds at batch B). baseline: the stage the
    ratios refer to (default: the first). Adds ``acc``, ``acc_std`` (sample std), ``size_ratio``,
    ``size_factor`` (baseline / this size), ``step_factor`` (previous stage / this size),
    ``latency_ratio_b<B>`` and ``speedup_b<B>`` (baseline ms / this ms).
    """
    from .stats import mean_std
    if not stages:
        raise ValueError("stage_table needs at least one stage")
    names = [s.get("stage") for s in stages]
    for s in stages:
        missing = [k for k in ("stage", "size_bytes", "accs") if k not in s]
        if missing:
            raise KeyError(f"stage {s.get('stage', '?')!r} lacks {missing}")
    base = stages[0] if baseline is None else next((s for s in stages if s["stage"] == baseline), None)
    if base is None:
        raise KeyError(f"baseline {baseline!r} is not a stage; stages: {names}")
    rows, prev = [], None
    for s in stages:
        row = dict(s)
        row["acc"], row["acc_std"] = mean_std(s["accs"])
        row["size_ratio"] = s["size_bytes"] / base["size_bytes"]
        row["size_factor"] = base["size_bytes"] / s["size_bytes"]
        row["step_factor"] = 1.0 if prev is None else prev["size_bytes"] / s["size_bytes"]
        for key in (k for k in s if k.startswith("ms_b")):
            if key in base:
                b = key[len("ms_b"):]
                row[f"latency_ratio_b{b}"] = s[key] / base[key]
                row[f"speedup_b{b}"] = base[key] / s[key]
        rows.append(row)
        prev = s
    return rows


def format_table(rows: Sequence[dict], batch_sizes: Sequence[int] = (1, 256)) -> str:
    """The rows of `stage_table` as a fixed-width text table (one line per stage)."""
    head = f"{'stage':28s} {'params':>8s} {'bytes':>9s} {'x smaller':>9s} {'acc % (mean ± std)':>19s}"
    head += "".join(f" {'speed-up b' + str(b):>13s}" for b in batch_sizes)
    lines = [head]
    for r in rows:
        params = f"{r['params']:8,d}" if r.get("params") is not None else f"{'-':>8s}"
        line = f"{r['stage']:28s} {params} {r['size_bytes']:9,d} {r['size_factor']:9.1f} " \
               f"{r['acc']:12.2f} ± {r['acc_std']:4.2f}"
        line += "".join(f" {r[f'speedup_b{b}']:12.1f}x" if f"speedup_b{b}" in r else f" {'-':>13s}"
                        for b in batch_sizes)
        lines.append(line)
    return "\n".join(lines)


def pareto_front(acc: Sequence[float], cost: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats: none has acc >= and cost <=, one of them strictly.

    acc: higher is better (accuracy); cost: lower is better (latency, bytes). Sorted by cost.
    """
    if len(acc) != len(cost) or not len(acc):
        raise ValueError(f"acc and cost must be non-empty and of equal length, got {len(acc)} and {len(cost)}")
    a, c = [float(v) for v in acc], [float(v) for v in cost]
    if not all(math.isfinite(v) for v in a + c):
        raise ValueError("acc and cost must be finite numbers")
    front = [i for i in range(len(a))
             if not any(a[j] >= a[i] and c[j] <= c[i] and (a[j] > a[i] or c[j] < c[i]) for j in range(len(a)))]
    return sorted(front, key=lambda i: (c[i], -a[i]))


def smallest_within(rows: Sequence[dict], *, reference_acc: float, max_drop: float,
                    key: str = "size_bytes") -> dict | None:
    """The row with the smallest `key` whose ``acc`` is at least reference_acc - max_drop (None if none).

    rows: e.g. from `stage_table`; ties on `key` go to the more accurate row.
    """
    if max_drop < 0:
        raise ValueError(f"max_drop must be >= 0 accuracy points, got {max_drop}")
    if any(key not in r or "acc" not in r for r in rows):
        raise KeyError(f"every row needs 'acc' and {key!r}")
    ok = [r for r in rows if r["acc"] >= reference_acc - max_drop]
    return min(ok, key=lambda r: (r[key], -r["acc"])) if ok else None
