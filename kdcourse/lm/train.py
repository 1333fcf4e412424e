"""Train, evaluate and cache the small language models of notebook 08.

`train_lm` is teacher-forced training on (inputs, targets) tensors with cross-entropy (``kind="ce"``)
or a token-level divergence to precomputed teacher logits; `exact_match` generates answers and
scores the final digit; `cached_lm` trains a model once per recipe and stores it with the same
checksummed, atomic cache as the image teachers (`kdcourse.teachers`).
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from ..cache import load_state, recipe_key, save_state
from ..utils import data_dir, eval_mode
from .losses import token_kd_loss
from .model import GPT, generate
from .task import completion, encode_examples, encode_prompts, is_correct, make_questions, scratchpad, tokenizer

__all__ = ["lr_at", "train_lm", "answer", "exact_match", "teacher_logits", "teacher_forced_accuracy", "tokens_per_answer",
           "cached_lm", "lm_cache_paths", "TEACHER_RECIPE", "get_lm_teacher", "train_student"]


def lr_at(step: int, *, steps: int, lr: float, warmup: int = 50, decay_from: float = 0.0) -> float:
    """Learning rate at `step`: linear warm-up, constant, then cosine decay to 0 over the last part.

    decay_from is the fraction of `steps` where the cosine starts: 0.0 = warm-up then cosine
    all the way, 1.0 = constant after warm-up (no decay).
    """
    if step < warmup:
        return lr * (step + 1) / warmup
    start = max(warmup, int(decay_from * steps))
    if step < start or steps <= start:
        return lr
    return lr * 0.5 * (1 + math.cos(math.pi * (step - start) / (steps - start)))


def train_lm(model: GPT, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch_size: int = 64,
             lr: float = 3e-3, warmup: int = 50, decay_from: float = 0.0, weight_decay: float = 0.01,
             seed: int = 0, kind: str = "ce", t_logits: torch.Tensor | None = None, alpha: float = 0.0,
             beta: float = 0.5, eval_every: int = 0, eval_fn: Callable | None = None) -> dict:
    """Train `model` on inputs x (N, L) and targets y (N, L) (-100 = no loss) with AdamW.

    kind "ce": next-token cross-entropy on y; "fkl" / "rkl" / "jsd": `token_kd_loss` to the teacher
    logits t_logits (N, L, V) (precomputed on the same x), with hard-label weight `alpha`. Batches
    are drawn from a torch.Generator seeded with `seed` (same seed, same batches). Returns a dict:
    loss (per step), eval_steps / evals (eval_fn(model) every `eval_every` steps and at the end), seconds.
    """
    if kind != "ce" and (t_logits is None or t_logits.shape[:2] != x.shape):
        raise ValueError(f"kind={kind!r} needs teacher logits t_logits of shape {tuple(x.shape)} + (V,)")
    if x.shape != y.shape or len(x) == 0:
        raise ValueError(f"x {tuple(x.shape)} and y {tuple(y.shape)} must be equal, non-empty (N, L)")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay, betas=(0.9, 0.98))
    g = torch.Generator().manual_seed(seed)
    hist, t0 = {"loss": [], "eval_steps": [], "evals": []}, time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps=steps, lr=lr, warmup=warmup, decay_from=decay_from)
        idx = torch.randint(0, len(x), (batch_size,), generator=g)
        logits = model(x[idx])
        if kind == "ce":
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y[idx].reshape(-1), ignore_index=-100)
        else:
            loss = token_kd_loss(logits, t_logits[idx].float(), y[idx], kind=kind, alpha=alpha, beta=beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        hist["loss"].append(loss.item())
        if eval_fn is not None and eval_every and ((step + 1) % eval_every == 0 or step + 1 == steps):
            hist["eval_steps"].append(step + 1)
            hist["evals"].append(eval_fn(model))
            model.train()
    model.eval()
    hist["seconds"] = time.perf_counter() - t0
    return hist


def answer(model: GPT, questions, *, temperature: float = 0.0, seed: int = 0, batch_size: int = 1000) -> list[str]:
    """The model's completions (text up to its EOS) for a list of question strings."""
    g, out = torch.Generator().manual_seed(seed), []
    for i in range(0, len(questions), batch_size):
        prompts, valid = encode_prompts(questions[i:i + batch_size])
        toks = generate(model, prompts, valid, temperature=temperature, generator=g)
        out += [tokenizer.decode(t) for t in toks]
    return out


def exact_match(model: GPT, questions, *, temperature: float = 0.0, seed: int = 0) -> float:
    """Exact-match accuracy (%) of the final answers the model generates for `questions`."""
    if not questions:
        raise ValueError("exact_match needs at least one question")
    texts = answer(model, questions, temperature=temperature, seed=seed)
    return 100.0 * sum(is_correct(q, t) for q, t in zip(questions, texts)) / len(questions)


@torch.no_grad()
def teacher_forced_accuracy(model: GPT, questions, *, cot: bool = True) -> float:
    """Share (%) of answer tokens the model predicts right when fed the true prefix (teacher forcing)."""
    x, y = encode_examples(questions, [completion(q, cot=cot) for q in questions],
                           length=max(len(q) + len(completion(q, cot=cot)) - 1 for q in questions))
    with eval_mode(model):
        pred = model(x).argmax(-1)
    mask = y != -100
    return 100.0 * (pred[mask] == y[mask]).float().mean().item()


def tokens_per_answer(texts) -> float:
    """Mean number of generated tokens per completion, EOS included."""
    return sum(len(tokenizer.encode(t)) for t in texts) / len(texts)


@torch.no_grad()
def teacher_logits(teacher: GPT, x: torch.Tensor, *, batch_size: int = 2000) -> torch.Tensor:
    """The teacher's next-token logits (N, L, V) on teacher-forced inputs x (N, L), computed once."""
    with eval_mode(teacher):
        return torch.cat([teacher(x[i:i + batch_size]) for i in range(0, len(x), batch_size)])


def lm_cache_paths(config: dict, cache_dir: str | Path | None = None) -> tuple[Path, Path]:
    """(checkpoint path, metadata path) of a cached model, named by `config["name"]` and a hash of the recipe."""
    key = recipe_key(config)
    root = Path(cache_dir) if cache_dir else data_dir() / "cache"
    return root / f"lm-{config['name']}-{key}.pt", root / f"lm-{config['name']}-{key}.json"


def cached_lm(config: dict, train: Callable[[GPT], dict], *, vocab_size: int = len(tokenizer),
              cache_dir: str | Path | None = None) -> tuple[GPT, dict]:
    """Build GPT(config["model"]), load it from the cache or run `train(model)` and cache it.

    `config` is a JSON-able recipe with "name", "model" (GPT keyword arguments) and anything else
    that determines the result (data, steps, lr, seed, ...). `train(model)` returns a JSON-able dict
    (e.g. the training history) stored with the checkpoint. Returns (model in eval mode, info) where
    info = that dict + "loaded" (bool) and "seconds" (this call). The checkpoint is written atomically
    with its SHA-256; a corrupt or mismatching file is reported and rebuilt, never loaded.
    """
    config = json.loads(json.dumps(config))              # the form it has after a round trip through JSON
    if "name" not in config or "model" not in config:
        raise KeyError("config needs a 'name' and 'model' (GPT keyword arguments)")
    t0 = time.perf_counter()
    model = GPT(vocab_size, **config["model"])
    ckpt, _ = lm_cache_paths(config, cache_dir)
    meta = load_state(model, ckpt, expect={"config": config}, what="cached model", then="retraining it")
    loaded = meta is not None
    if not loaded:
        info = train(model)
        meta = save_state(model, ckpt, {"config": config, "info": info})
    model.eval()
    return model, {**meta["info"], "loaded": loaded, "seconds": time.perf_counter() - t0}


TEACHER_RECIPE = {"name": "teacher", "model": {"d_model": 64, "n_layers": 4, "n_heads": 4, "max_len": 32},
                  "n_ops": 5, "n_train": 50_000, "data_seed": 0, "steps": 1000, "batch_size": 64,
                  "lr": 3e-3, "warmup": 100, "seed": 0, "version": 1}


def get_lm_teacher(*, cache_dir: str | Path | None = None, **overrides) -> tuple[GPT, dict]:
    """The notebook-08 teacher: a GPT trained on ground-truth scratchpads, trained once and cached.

    `TEACHER_RECIPE` (updated with `overrides`) fixes the task, data, model and schedule. Returns
    (model in eval mode, info with "train_seconds", "loaded", "seconds"); see `cached_lm`.
    """
    unknown = set(overrides) - set(TEACHER_RECIPE)
    if unknown:
        raise KeyError(f"unknown teacher recipe keys {sorted(unknown)}; known: {sorted(TEACHER_RECIPE)}")
    cfg = {**TEACHER_RECIPE, **overrides}

    def train(model):
        qs = make_questions(cfg["n_train"], n_ops=cfg["n_ops"], seed=cfg["data_seed"])
        x, y = encode_examples(qs, [scratchpad(q) for q in qs], length=cfg["model"]["max_len"] - 1)
        h = train_lm(model, x, y, steps=cfg["steps"], batch_size=cfg["batch_size"], lr=cfg["lr"],
                     warmup=cfg["warmup"], seed=cfg["seed"])
        return {"train_seconds": h["seconds"], "final_loss": h["loss"][-1]}

    model, info = cached_lm(cfg, train, cache_dir=cache_dir)
    for p in model.parameters():
        p.requires_grad_(False)
    return model, info


def _digest(*tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        if t is not None:
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def train_student(name: str, x: torch.Tensor, y: torch.Tensor, *, model: dict, seed: int, steps: int,
                  lr: float = 3e-3, warmup: int = 50, decay_from: float = 0.0, batch_size: int = 64,
                  kind: str = "ce", t_logits: torch.Tensor | None = None, beta: float = 0.5,
                  curve_questions=None, eval_every: int = 100,
                  cache_dir: str | Path | None = None) -> tuple[GPT, dict]:
    """Train (or load from the cache) a student GPT(**model, seed=seed) with `train_lm` on (x, y).

    The cache key holds the recipe, the seed and a SHA-256 of the data (x, y, t_logits, curve
    questions), so another recipe, seed or data set is trained, never confused with this one.
    info: "curve_steps" / "curve" (exact match (%) on `curve_questions` every `eval_every` steps),
    "tf_curve" (`teacher_forced_accuracy` (%) at the same steps), "final_loss", "train_seconds" (when it was trained), "loaded", "seconds".
    """
    curve_questions = list(curve_questions or [])
    cfg = {"name": name, "model": {**model, "seed": seed}, "seed": seed, "steps": steps, "lr": lr,
           "warmup": warmup, "decay_from": decay_from, "batch_size": batch_size, "kind": kind, "beta": beta,
           "eval_every": eval_every, "data": _digest(x, y, t_logits),
           "curve_questions": hashlib.sha256("|".join(curve_questions).encode()).hexdigest()[:16]}

    def train(net):
        ev = (lambda m: [exact_match(m, curve_questions), teacher_forced_accuracy(m, curve_questions)]) \
            if curve_questions else None
        h = train_lm(net, x, y, steps=steps, batch_size=batch_size, lr=lr, warmup=warmup, decay_from=decay_from,
                     seed=seed, kind=kind, t_logits=t_logits, beta=beta, eval_every=eval_every, eval_fn=ev)
        return {"curve_steps": h["eval_steps"], "curve": [e[0] for e in h["evals"]],
                "tf_curve": [e[1] for e in h["evals"]], "final_loss": h["loss"][-1], "train_seconds": h["seconds"]}

    return cached_lm(cfg, train, cache_dir=cache_dir)
