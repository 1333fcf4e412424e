"""One training loop for every method in the course. Introduced in notebook 00.

`fit` trains a model on mini-batches. Distillation is the same loop with a ``teacher``
and a loss ``loss_fn(student_out, teacher_out, targets, features)``: Hinton KD, FitNets,
attention transfer, RKD, chains, recovery after pruning and KD during QAT are all losses
(or models) plugged into this loop, never new loops.

Batches that are not ``(x, y[, teacher_out])`` tuples (dicts of a tokenizer, attention masks)
go through two hooks instead of a second loop:

    fit(model, loader, epochs=1, forward=lambda model, batch: model(**batch["inputs"]).logits,
        targets=lambda batch: batch["labels"])
"""
from __future__ import annotations

import time
from types import SimpleNamespace
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, nullcontext

import torch
from torch import nn

from .hooks import capture
from .losses import CE, Features
from .utils import as_number, eval_mode, get_device

__all__ = ["fit", "evaluate", "predict", "History"]


class History(dict):
    """What `fit` returns: per-epoch lists ``loss`` (mean train loss), ``test_acc`` (%, when a
    test set is given), ``epoch_seconds``, and the total ``seconds``."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as err:
            raise AttributeError(key) from err


def _to(batch, device: torch.device):
    """The batch on `device`: tensors moved, inside tuples/lists (returned as lists) and dicts too."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _to(v, device) for k, v in batch.items()}
    if isinstance(batch, (tuple, list)):
        return [_to(t, device) for t in batch]
    return batch


def _default_forward(model: nn.Module, batch):
    """model(x) for a batch ``(x, ...)`` or a tensor x; a dict batch needs a `forward` hook."""
    if isinstance(batch, torch.Tensor):
        return model(batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    raise TypeError(f"fit got a {type(batch).__name__} batch: pass forward=lambda model, batch: ... "
                    "(e.g. model(**batch['inputs'])) and targets=lambda batch: ... (e.g. batch['labels'])")


def _default_targets(batch):
    """y of a batch ``(x, y, ...)``; None for a tensor batch (no labels)."""
    if isinstance(batch, (tuple, list)):
        return batch[1] if len(batch) > 1 else None
    return None


@torch.no_grad()
def predict(model: nn.Module, data, *, device=None, batch_size: int = 1000,
            forward: Callable | None = None) -> torch.Tensor:
    """Return the model's outputs (B, C) on CPU for a tensor (B, ...) or an iterable of batches.

    The model runs in eval mode with gradients off; its train/eval mode is restored afterwards.
    forward: ``forward(model, batch) -> outputs`` for batches of any form (as in `fit`).
    """
    device = get_device(device) if device is not None else next(model.parameters()).device
    if forward is not None:
        batches = (data[i:i + batch_size] for i in range(0, len(data), batch_size)) \
            if isinstance(data, torch.Tensor) else data
        with eval_mode(model):
            return torch.cat([forward(model, _to(b, device)).float().cpu() for b in batches])
    batches = (data[i:i + batch_size] for i in range(0, len(data), batch_size)) \
        if isinstance(data, torch.Tensor) else (b[0] for b in data)
    with eval_mode(model):
        return torch.cat([model(x.to(device)).float().cpu() for x in batches])


@torch.no_grad()
def _evaluate_hooked(model, data, device, forward, targets) -> float:
    """Accuracy in % over the positions whose target is not -100, batch by batch (any batch form)."""
    device = get_device(device) if device is not None else next(model.parameters()).device
    forward, targets = forward or _default_forward, targets or _default_targets
    correct = total = 0
    with eval_mode(model):
        for batch in data:
            batch = _to(batch, device)
            y = targets(batch)
            keep = y != -100
            correct += int(((forward(model, batch).argmax(-1) == y) & keep).sum())
            total += int(keep.sum())
    if total == 0:
        raise ValueError("cannot evaluate on an empty dataset (or every target is -100)")
    return 100.0 * correct / total


def evaluate(model: nn.Module, data, *, device=None, forward: Callable | None = None,
             targets: Callable | None = None) -> float:
    """Accuracy in % of `model` on ``data``: a tuple (x, y) of tensors or an iterable of (x, y, ...).

    The model runs in eval mode (as in `predict`); its train/eval mode is restored afterwards.
    With `forward` / `targets` hooks (as in `fit`) batches may be dicts; the accuracy is then
    counted over the positions whose target is not -100 (tokens of a padded sequence).
    """
    if forward is not None or targets is not None:
        return _evaluate_hooked(model, data, device, forward, targets)
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        x, y = data
        logits = predict(model, x, device=device)
    else:
        batches = list(data)
        logits = predict(model, batches, device=device)
        y = torch.cat([b[1] for b in batches])
    if len(y) == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    return 100.0 * (logits.argmax(-1) == y.cpu()).float().mean().item()


def fit(model: nn.Module, train: Iterable, *, epochs: int, teacher: nn.Module | None = None,
        loss_fn: Callable | None = None, student_layers: Sequence[str] = (),
        teacher_layers: Sequence[str] = (), lr: float = 1e-3, weight_decay: float = 0.0,
        optimizer: torch.optim.Optimizer | None = None, test=None, seed: int = 0,
        device=None, progress: bool = True, on_epoch: Callable[[int], None] | None = None,
        desc: str = "train", forward: Callable | None = None, targets: Callable | None = None,
        student_select=None, teacher_select=None, amp: bool | torch.dtype = False,
        clip_grad_norm: float | None = None, scheduler=None) -> History:
    """Train `model` in place for `epochs` passes over `train` and return a `History`.

    train: re-iterable batches ``(x, y)`` or ``(x, y, teacher_out)`` (precomputed teacher
        outputs skip the teacher's forward pass; not with `forward`/`targets` hooks), e.g.
        ``Dataset.train_loader()``.
    teacher: frozen model run in eval mode under no_grad on each batch (when needed).
    loss_fn: ``loss_fn(student_out, teacher_out, targets, features) -> scalar``; default
        cross-entropy. An ``nn.Module`` loss is moved to the device and its parameters
        (e.g. a FitNets regressor) are trained with the student's.
    student_layers / teacher_layers: submodule names whose outputs are captured with forward
        hooks and passed as ``features.student`` / ``features.teacher`` (dicts).
    optimizer: default Adam(lr, weight_decay) over the model's and the loss's parameters, with
        PyTorch's fused kernel (``fused=True``) when every parameter is a float tensor on the CPU or
        a GPU: the same update rule in one pass over the parameters (measured ~16 % faster per step
        on the course's small MLP).
    test: evaluated after each epoch (accuracy in %) when given.
    on_epoch: called as ``on_epoch(epoch)`` before each epoch (e.g. a temperature schedule).
    seed: seeds torch's random generator for this run only (``torch.random.fork_rng``): the
        caller's global random state is the same after `fit` as before.
    progress: show a tqdm bar (epochs, loss, test accuracy).
    forward: ``forward(model, batch) -> outputs``, used for the student and the teacher (default
        ``model(batch[0])``, or ``model(batch)`` for a tensor batch); targets: ``targets(batch)``
        (default ``batch[1]`` when there is one). Batches may be tensors, tuples or dicts; every
        tensor in them is moved to the device. Both hooks also serve the `test` evaluation.
    student_select / teacher_select: passed to `capture` as ``select`` (pick the tensor out of
        the tuple or output object a transformer block returns).
    amp: mixed precision, ``torch.autocast(device.type, dtype)``: True means bfloat16, or pass
        a dtype (float16 adds a gradient scaler on CUDA). Off by default.
    clip_grad_norm: clip the gradient norm of all trained parameters to this value (off: None).
    scheduler: an LR scheduler, or ``scheduler(optimizer) -> scheduler``, stepped after every
        optimizer step (per batch, not per epoch). None: constant learning rate.

    The trained model is left in eval mode, ready for `predict` / `evaluate`; the teacher's
    train/eval mode is restored.
    """
    epochs, seed = as_number(epochs, "epochs", integer=True), as_number(seed, "seed", integer=True)
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    device = get_device(device)
    loss_fn = CE() if loss_fn is None else loss_fn
    model.to(device)
    params = list(model.parameters())
    if isinstance(loss_fn, nn.Module):
        loss_fn.to(device)
        params += list(loss_fn.parameters())
    if teacher is not None:
        teacher.to(device)
    elif teacher_layers:
        raise ValueError("teacher_layers were given but no teacher")
    if not any(p.requires_grad for p in params):
        raise ValueError(f"{type(model).__name__} has no trainable parameter (requires_grad is False everywhere, "
                         "e.g. a frozen teacher from get_teacher): call model.requires_grad_(True) on a copy first")
    if optimizer is None:
        fused = all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)
        optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=fused or None)
    if scheduler is not None and not hasattr(scheduler, "step"):
        scheduler = scheduler(optimizer)
    options = SimpleNamespace(  # the per-batch settings
        forward=forward or _default_forward, targets=targets or _default_targets,
        layers=(student_layers, teacher_layers), select=(student_select, teacher_select),
        amp=_amp_dtype(amp), clip=clip_grad_norm, scheduler=scheduler,
        hooked=forward is not None or targets is not None, eval_hooks={"forward": forward, "targets": targets})
    with _seeded(seed, device), eval_mode(teacher):
        hist = _train(model, train, epochs=epochs, teacher=teacher, loss_fn=loss_fn, optimizer=optimizer,
                      options=options, test=test, device=device, params=params,
                      progress=progress, on_epoch=on_epoch, desc=desc)
    model.eval()
    return hist


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's RNG of the CPU (and of `device` if CUDA) inside the block, restoring the caller's after.

    torch.random.fork_rng saves and restores the generators, so `fit` never changes the global
    random state; the seeded values are those of ``torch.manual_seed(seed)``.
    """
    cuda = [device.index if device.index is not None else torch.cuda.current_device()] \
        if device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):
        torch.random.default_generator.manual_seed(seed)
        for index in cuda:
            torch.cuda.default_generators[index].manual_seed(seed)
        yield


def _amp_dtype(amp) -> torch.dtype | None:
    """None when mixed precision is off; the autocast dtype otherwise (True: bfloat16)."""
    if amp is False or amp is None:
        return None
    if amp is True:
        return torch.bfloat16
    if amp in (torch.bfloat16, torch.float16):
        return amp
    raise ValueError(f"amp must be False, True, torch.bfloat16 or torch.float16, got {amp!r}")


def _update(model_loss, optimizer, params, options, scaler) -> None:
    """Backward pass, optional gradient clipping, optimizer step (with a scaler for float16)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is None:
        model_loss.backward()
    else:
        scaler.scale(model_loss).backward()
        scaler.unscale_(optimizer)
    if options.clip is not None:
        torch.nn.utils.clip_grad_norm_(params, options.clip)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)
        scaler.update()
    if options.scheduler is not None:
        options.scheduler.step()


def _train(model, train, *, epochs, teacher, loss_fn, optimizer, options, test, device, params, progress,
           on_epoch, desc) -> History:
    """The epoch loop of `fit` (RNG already seeded, teacher already in eval mode)."""
    from tqdm.auto import tqdm

    plain = options.amp is None and options.clip is None and options.scheduler is None
    scaler = torch.amp.GradScaler(device.type) if options.amp == torch.float16 and device.type == "cuda" else None
    hist = History(loss=[], test_acc=[], epoch_seconds=[], seconds=0.0)
    bar = tqdm(range(epochs), desc=desc, leave=False, disable=not progress)
    for epoch in bar:
        if on_epoch is not None:
            on_epoch(epoch)
        t0, total, count = time.perf_counter(), 0.0, 0
        model.train()
        if isinstance(loss_fn, nn.Module):
            loss_fn.train()
        for batch in train:
            loss = _step(model, teacher, loss_fn, _to(batch, device), options, device)
            if plain:   # the course's path, unchanged
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            else:
                _update(loss, optimizer, params, options, scaler)
            total, count = total + loss.item(), count + 1
        if count == 0:
            raise ValueError("the training data yielded no batches")
        hist["loss"].append(total / count)
        if test is not None:
            hist["test_acc"].append(evaluate(model, test, device=device, **options.eval_hooks))
        hist["epoch_seconds"].append(time.perf_counter() - t0)
        bar.set_postfix(loss=f"{hist['loss'][-1]:.3f}",
                        **({"test_acc": f"{hist['test_acc'][-1]:.1f}"} if hist["test_acc"] else {}))
    hist["seconds"] = sum(hist["epoch_seconds"])
    return hist


def _step(model, teacher, loss_fn, batch, options, device) -> torch.Tensor:
    """Forward the student (and the teacher if needed) on one batch and return the loss."""
    student_layers, teacher_layers = options.layers
    y = options.targets(batch)
    t_out = batch[2] if isinstance(batch, (tuple, list)) and len(batch) > 2 and not options.hooked else None
    t_feats: dict = {}
    autocast = nullcontext() if options.amp is None else torch.autocast(device.type, dtype=options.amp)
    with autocast:
        if teacher is not None and (t_out is None or teacher_layers):
            with torch.no_grad(), capture(teacher, teacher_layers, select=options.select[1]) as t_feats:
                out = options.forward(teacher, batch)
            t_out = out if t_out is None else t_out
        with capture(model, student_layers, select=options.select[0]) as s_feats:
            s_out = options.forward(model, batch)
        loss = loss_fn(s_out, t_out, y, Features(student=s_feats, teacher=t_feats))
    if not torch.isfinite(loss):
        raise FloatingPointError(f"training loss became {loss.item()}; lower the learning rate")
    return loss
