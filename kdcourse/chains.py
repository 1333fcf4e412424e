"""Teacher-assistant chains and the capacity gap. Introduced in notebook 04.

A distillation chain trains each model from the one before it:
``teacher -> assistant_1 -> ... -> assistant_k -> student``. With no assistant it is
plain (direct) distillation. Paper: "Improved Knowledge Distillation via Teacher
Assistant", Mirzadeh et al., AAAI 2020 (TAKD). Every link is one call of
`kdcourse.training.fit` with a KD loss on precomputed teacher outputs.
"""
from __future__ import annotations

import copy
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .data import TensorLoader
from .losses import KD, check_temperature
from .models import count_params
from .training import evaluate, fit, predict
from .utils import as_number

__all__ = ["ChainLink", "run_chain", "cosine_schedule", "chain_seconds", "time_epochs", "target_entropy",
           "SCHEDULES"]

SCHEDULES = ("constant", "cosine")


@dataclass
class ChainLink:
    """One trained link of a chain: its `model`, test accuracy (%), training seconds
    (total wall time, and per epoch), size in parameters, and (with ``run_chain(curve=True)``)
    the test accuracy after every epoch, the last entry equal to `test_acc`."""
    name: str
    model: nn.Module
    test_acc: float
    seconds: float
    params: int
    epoch_seconds: tuple = ()
    test_curve: tuple = ()


def run_chain(teacher: nn.Module, models: Sequence[nn.Module], x_train: torch.Tensor,
              y_train: torch.Tensor, *, test, epochs: int | Sequence[int], T: float = 4.0,
              alpha: float = 0.5, batch_size: int = 128, lr: float = 1e-3, seed: int = 0,
              names: Sequence[str] | None = None, device=None, progress: bool = False,
              curve: bool = False, schedule: str = "constant") -> list[ChainLink]:
    """Distil `teacher` into ``models[0]``, then ``models[0]`` into ``models[1]``, and so on.

    models: untrained models, assistants first and the student last (one model = direct KD).
    x_train (N, ...), y_train (N,): training set; each link's targets are its predecessor's
    logits (N, C) on x_train, computed once with the predecessor in eval mode (no_grad).
    test: (x, y) or a loader, for each link's accuracy. epochs: one int for every link or one
    per link. Loss of each link: Hinton KD, ``alpha*CE + (1-alpha)*T^2*KL`` (`losses.KD`).
    curve=True also evaluates `test` after every epoch (``ChainLink.test_curve``, to check
    that a run has plateaued); training is unchanged, the epoch times include the evaluation.
    schedule: "constant" (Adam at `lr` throughout) or "cosine" (each link's learning rate falls
    from `lr` to 0 along a half cosine over its optimizer steps, `cosine_schedule`).
    Returns one `ChainLink` per model, in order; the models are trained in place.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    models = list(models)
    if not models:
        raise ValueError("run_chain needs at least one model to train (the student)")
    epochs = list(epochs) if isinstance(epochs, (list, tuple)) else [epochs] * len(models)
    names = list(names) if names is not None else [f"link{i + 1}" for i in range(len(models))]
    if len(epochs) != len(models) or len(names) != len(models):
        raise ValueError(f"got {len(models)} models but {len(epochs)} epochs values and "
                         f"{len(names)} names; give one per model (or a single int for epochs)")
    if len(x_train) != len(y_train):
        raise ValueError(f"x_train has {len(x_train)} examples but y_train has {len(y_train)}")
    links, previous = [], teacher
    for model, n_epochs, name in zip(models, epochs, names):
        t_out = predict(previous, x_train, device=device)  # (N, C) soft targets of this link
        loader = TensorLoader(x_train, y_train, t_out, batch_size=batch_size, seed=seed)
        sched = cosine_schedule(n_epochs * len(loader)) if schedule == "cosine" else None
        hist = fit(model, loader, epochs=n_epochs, loss_fn=KD(T=T, alpha=alpha), lr=lr, seed=seed,
                   test=test if curve else None, device=device, progress=progress, desc=f"chain {name}",
                   scheduler=sched)
        links.append(ChainLink(name, model, evaluate(model, test, device=device), hist["seconds"],
                               count_params(model), tuple(hist["epoch_seconds"]), tuple(hist["test_acc"])))
        previous = model
    return links


def cosine_schedule(total_steps: int):
    """A `fit` scheduler factory: the learning rate follows a half cosine from its start value to 0.

    lr_k = lr_0 * (1 + cos(pi * k / total_steps)) / 2 after k optimizer steps (SGDR without
    restarts: Loshchilov & Hutter, ICLR 2017), so the last epochs take small steps and a run ends
    on a flat stretch of its test curve instead of wherever a constant step leaves it.
    """
    total_steps = as_number(total_steps, "total_steps", integer=True)
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}")
    return lambda optimizer: torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total_steps)


def chain_seconds(links: Sequence[ChainLink], *, robust: bool = False) -> float:
    """Total training seconds of a chain's links (the teacher's own training not included).

    robust=True sums, per link, the median epoch time times the number of epochs: a busy
    machine that stalls a few epochs then barely changes the figure.
    """
    if robust:
        return float(sum(statistics.median(link.epoch_seconds) * len(link.epoch_seconds)
                         for link in links if link.epoch_seconds))
    return float(sum(link.seconds for link in links))


def time_epochs(models: dict[str, nn.Module], x_train: torch.Tensor, y_train: torch.Tensor, *,
                n_classes: int = 10, reps: int = 3, batch_size: int = 128, device=None) -> dict[str, float]:
    """Median seconds of one KD training epoch of each model, timed interleaved.

    models: name -> model (copied, never modified); x_train (N, ...), y_train (N,). Round r
    trains one epoch of every model in turn, so a slow spell of a shared machine hits all of
    them alike; the median over `reps` rounds drops stalls. Chain cost = sum over links of
    epochs x epoch time, comparable across chains even when wall-clock totals are noisy.
    """
    if not models or reps < 1:
        raise ValueError(f"need at least one model and reps >= 1, got {len(models)} models, reps={reps}")
    t_out = torch.zeros(len(x_train), n_classes)  # (N, C) dummy teacher logits: same work as real ones
    times: dict[str, list[float]] = {name: [] for name in models}
    for r in range(reps):
        for name, model in models.items():
            loader = TensorLoader(x_train, y_train, t_out, batch_size=batch_size, seed=r)
            hist = fit(copy.deepcopy(model), loader, epochs=1, loss_fn=KD(), seed=r, device=device,
                       progress=False)
            times[name].append(hist["seconds"])
    return {name: statistics.median(ts) for name, ts in times.items()}


def target_entropy(logits: torch.Tensor, T: float = 1.0) -> float:
    """Mean entropy (nats) of the soft targets softmax(logits / T); logits (N, C).

    H = -(1/N) sum_i sum_c p_ic log p_ic, between 0 (one-hot targets) and log C (uniform).
    A teacher that fits its training set perfectly gives low-entropy, nearly hard targets.
    """
    T = check_temperature(T)
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise ValueError(f"logits must have shape (N, C) with N > 0, got {tuple(logits.shape)}")
    log_p = F.log_softmax(logits.float() / T, dim=-1)
    return float(-(log_p.exp() * log_p).sum(-1).mean())
