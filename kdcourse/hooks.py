"""Capture intermediate outputs of any nn.Module with forward hooks (no model rewriting).

Introduced in notebook 02; the training loop uses it to hand features to a loss.

    with capture(model, ["blocks.0", "embed"]) as feats:
        logits = model(x)
    feats["blocks.0"]  # (B, C, H, W), still attached to the autograd graph
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["capture", "layer_names"]


def layer_names(model: nn.Module) -> list[str]:
    """Names of every submodule of `model` that `capture` accepts, in definition order."""
    return [name for name, _ in model.named_modules() if name]


@contextmanager
def capture(model: nn.Module, names: Iterable[str]) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named submodules during the forward passes inside the block.

    Yields a dict name -> output tensor (the last forward's output). Works on any nn.Module
    (course models, torchvision models, your own). Unknown names raise KeyError listing the
    valid ones; hooks are always removed on exit, even after an error.
    """
    names = list(names)
    modules = dict(model.named_modules())
    unknown = [n for n in names if n not in modules or not n]
    if unknown:
        valid = layer_names(model)
        shown = ", ".join(valid[:40]) + (" ..." if len(valid) > 40 else "")
        raise KeyError(f"unknown layer name(s) {unknown} in {type(model).__name__}; valid names: {shown}")
    out: dict[str, torch.Tensor] = {}
    handles = []
    for n in names:
        def hook(_module, _inputs, output, _name=n):
            out[_name] = output
        handles.append(modules[n].register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
