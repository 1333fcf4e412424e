"""Capture intermediate outputs of any nn.Module with forward hooks (no model rewriting).

Introduced in notebook 02; the training loop uses it to hand features to a loss.

    with capture(model, ["blocks.0", "embed"]) as feats:
        logits = model(x)
    feats["blocks.0"]  # (B, C, H, W), still attached to the autograd graph

Transformer blocks often return a tuple or an output object; ``select`` picks the tensor:

    with capture(model, ["transformer.h.0"], select=0) as feats:  # first element of the tuple
        model(**inputs)
"""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["capture", "layer_names", "select_output"]


def layer_names(model: nn.Module) -> list[str]:
    """Names of every submodule of `model` that `capture` accepts, in definition order."""
    return [name for name, _ in model.named_modules() if name]


Selector = int | str | Callable | None


def select_output(output, select: Selector, name: str = "output"):
    """Pick one tensor out of a module's output: ``select`` an int (tuple/list index), a str
    (dict key or attribute, e.g. ``"last_hidden_state"`` of a Hugging Face output) or a callable
    ``output -> tensor``; None returns `output` unchanged.

    Raises TypeError naming the output's type when the selector does not apply to it (an int or
    str on a plain tensor, a key the output lacks, a result that is not a tensor).
    """
    if select is None:
        return output
    kind = type(output).__name__
    if callable(select):
        picked = select(output)
    elif isinstance(select, int) and isinstance(output, (tuple, list)) and -len(output) <= select < len(output):
        picked = output[select]
    elif isinstance(select, str) and isinstance(output, Mapping) and select in output:
        picked = output[select]
    elif isinstance(select, str) and not isinstance(output, (torch.Tensor, Mapping)) and hasattr(output, select):
        picked = getattr(output, select)
    else:
        size = f" of length {len(output)}" if isinstance(output, (tuple, list)) else ""
        raise TypeError(f"{name} returned a {kind}{size}; select={select!r} cannot pick a tensor from it "
                        "(use an int for a tuple/list, a key or attribute name for a dict/output object, "
                        "a callable, or select=None for a tensor)")
    if not isinstance(picked, torch.Tensor):
        raise TypeError(f"select={select!r} picked a {type(picked).__name__} from {name}'s {kind}, not a tensor")
    return picked


@contextmanager
def capture(model: nn.Module, names: Iterable[str], *,
            select: Selector | Mapping[str, Selector] = None) -> Iterator[dict[str, torch.Tensor]]:
    """Record the outputs of the named submodules during the forward passes inside the block.

    Yields a dict name -> output tensor (the last forward's output). Works on any nn.Module
    (course models, torchvision models, your own). Unknown names raise KeyError listing the
    valid ones; hooks are always removed on exit, even after an error.
    select: how to get a tensor from outputs that are tuples or output objects (transformer
    blocks): one selector for every name, or a dict name -> selector; see `select_output`.
    None (default) records the output as it is.
    """
    names = list(names)
    if isinstance(select, Mapping):
        extra = sorted(set(select) - set(names))
        if extra:
            raise KeyError(f"select names layers that are not captured: {extra} (captured: {names})")
        selectors = {n: select.get(n) for n in names}
    else:
        selectors = {n: select for n in names}
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
            out[_name] = select_output(output, selectors[_name], f"layer {_name!r}")
        handles.append(modules[n].register_forward_hook(hook))
    try:
        yield out
    finally:
        for h in handles:
            h.remove()
