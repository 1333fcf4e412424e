"""Unstructured pruning: masks through torch.nn.utils.prune, scores, sparsity reports and scans.

Introduced in notebook 05. Unstructured pruning zeroes individual weights through masks — the
tensors keep their shape, so nothing gets smaller or faster on ordinary hardware.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from ..utils import as_number, eval_mode

__all__ = ["prunable_layers", "unprunable_layers", "check_amount", "sparsity_report", "global_magnitude_prune",
           "layerwise_magnitude_prune", "prune_by_scores", "taylor_scores", "make_permanent", "sensitivity_scan"]

_PRUNABLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


def check_amount(amount: float, what: str = "amount") -> float:
    """Return `amount` as a float; ValueError unless 0 <= amount < 1 (the fraction to remove).

    Python numbers, NumPy scalars and one-element tensors are accepted; bools, strings and other
    non-numbers raise TypeError.
    """
    value = as_number(amount, what)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{what} must be a fraction in [0, 1), got {amount!r}")
    return value


def _inside_attention(model: nn.Module) -> set[str]:
    """Names of the children of every nn.MultiheadAttention in `model` (its out_proj)."""
    return {f"{name}.{child}" if name else child for name, m in model.named_modules()
            if isinstance(m, nn.MultiheadAttention) for child, _ in m.named_children()}


def prunable_layers(model: nn.Module, names: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """Conv and Linear layers of `model` by name (all of them, or the given `names`).

    The out_proj Linear of an nn.MultiheadAttention is not prunable: the attention reads its
    weight directly and never calls it, so a pruning mask would never be re-applied (see
    `unprunable_layers`). Unknown or non-prunable names raise KeyError listing the valid ones.
    """
    inside = _inside_attention(model)
    layers = {n: m for n, m in model.named_modules() if isinstance(m, _PRUNABLE) and n not in inside}
    if names is None:
        return layers
    names = list(names)
    bad = [n for n in names if n not in layers]
    if bad:
        why = unprunable_layers(model)
        reasons = "".join(f"; {n} is not prunable: {why[n]}" for n in bad if n in why)
        raise KeyError(f"unknown or non-prunable layer(s) {bad}{reasons}; prunable layers: {', '.join(layers)}")
    return {n: layers[n] for n in names}


def unprunable_layers(model: nn.Module) -> dict[str, str]:
    """Modules holding a weight matrix or kernel that the mask-based helpers leave unpruned: name -> reason.

    The magnitude, Taylor and sensitivity helpers prune Conv1d/Conv2d/Linear weights only. Left
    alone (listed here): nn.MultiheadAttention (its in_proj_weight is no layer's weight) and its
    out_proj (read directly, never called, so a mask would go stale and break the second backward
    pass), embeddings, and any other module with a parameter of 2+ dimensions (Conv3d, transposed
    convolutions, RNNs). Norm layers, biases and activations hold no such parameter. Empty for the
    course's models.
    """
    inside, layers, out = _inside_attention(model), prunable_layers(model), {}
    for name, m in model.named_modules():
        if name in layers or not any(p.dim() >= 2 for p in m.parameters(recurse=False)):
            continue
        if name in inside:
            out[name] = "projection of a MultiheadAttention, which reads its weight directly (never calls it)"
        elif isinstance(m, nn.MultiheadAttention):
            out[name] = "MultiheadAttention: its in_proj_weight is a parameter, not a layer's weight"
        elif isinstance(m, (nn.Embedding, nn.EmbeddingBag)):
            out[name] = f"{type(m).__name__}: a lookup table, not a Conv/Linear weight"
        else:
            out[name] = f"{type(m).__name__}: the helpers prune Conv1d, Conv2d and Linear only"
    return out


def _report_unpruned(model: nn.Module, verbose: bool) -> None:
    if verbose:
        left = unprunable_layers(model)
        print(f"{len(left)} module(s) with weights left unpruned" + "".join(f"\n  {n}: {r}" for n, r in left.items()))


def sparsity_report(model: nn.Module) -> dict[str, dict]:
    """Per prunable layer: zero weights, total weights and sparsity; plus a "global" entry.

    Reads the effective weight (``module.weight``, masked if pruning is active).
    """
    report, zeros, total = {}, 0, 0
    for name, m in prunable_layers(model).items():
        z, n = int((m.weight == 0).sum()), m.weight.numel()
        report[name] = {"zeros": z, "total": n, "sparsity": z / n}
        zeros, total = zeros + z, total + n
    report["global"] = {"zeros": zeros, "total": total, "sparsity": zeros / max(total, 1)}
    return report


def prune_by_scores(model: nn.Module, scores: dict[str, torch.Tensor], amount: float) -> nn.Module:
    """Globally mask the `amount` fraction of weights with the lowest scores (in place).

    scores: layer name -> tensor shaped like that layer's weight (any device). Exactly
    round(amount * N) weights are masked via ``prune.custom_from_mask``, the masks on each
    weight's device. Layers pruned before keep their old mask combined with the new one.
    An unknown layer name raises KeyError; an empty dict, a score tensor whose shape differs
    from its weight's, or NaN scores raise ValueError naming the layer.
    """
    amount = check_amount(amount)
    if not scores:
        raise ValueError("prune_by_scores needs scores for at least one layer")
    layers = prunable_layers(model, scores)
    for name, m in layers.items():
        if tuple(scores[name].shape) != tuple(m.weight.shape):
            raise ValueError(f"scores for layer {name!r} have shape {tuple(scores[name].shape)} but its "
                             f"weight has shape {tuple(m.weight.shape)}")
        if torch.isnan(scores[name]).any():
            raise ValueError(f"scores for layer {name!r} contain NaN")
    device = next(iter(layers.values())).weight.device
    flat = torch.cat([scores[n].detach().to(device).flatten().float() for n in layers])
    k = round(amount * flat.numel())
    keep = torch.ones_like(flat, dtype=torch.bool)
    if k:
        keep[torch.topk(flat, k, largest=False).indices] = False
    start = 0
    for name, m in layers.items():
        n = m.weight.numel()
        prune.custom_from_mask(m, "weight", keep[start:start + n].view_as(m.weight).to(m.weight.device))
        start += n
    return model


def global_magnitude_prune(model: nn.Module, amount: float, names: Sequence[str] | None = None, *,
                           verbose: bool = False) -> nn.Module:
    """Mask the `amount` fraction of smallest-|w| weights across all (or the named) layers, in place.

    Scores are |w|, compared across layers (Han et al., "Learning both Weights and Connections
    for Efficient Neural Networks", NeurIPS 2015). Equivalent to ``prune.global_unstructured``
    with ``prune.L1Unstructured``. Modules it cannot prune are skipped (`unprunable_layers`;
    `verbose` prints them).
    """
    layers = prunable_layers(model, names)
    _report_unpruned(model, verbose)
    return prune_by_scores(model, {n: m.weight.abs() for n, m in layers.items()}, amount)


def layerwise_magnitude_prune(model: nn.Module, amount: float | dict[str, float], *,
                              verbose: bool = False) -> nn.Module:
    """Mask the smallest-|w| fraction in each layer separately (``prune.l1_unstructured``), in place.

    amount: one fraction for every prunable layer, or a dict layer name -> fraction. Modules it
    cannot prune are skipped (`unprunable_layers`; `verbose` prints them).
    """
    amounts = amount if isinstance(amount, dict) else {n: amount for n in prunable_layers(model)}
    _report_unpruned(model, verbose)
    for name, m in prunable_layers(model, amounts).items():
        prune.l1_unstructured(m, "weight", amount=check_amount(amounts[name], f"amount for {name}"))
    return model


def taylor_scores(model: nn.Module, batches: Iterable, loss_fn: Callable | None = None,
                  n_batches: int = 8) -> dict[str, torch.Tensor]:
    """First-order Taylor importance of every weight, ``mean_b (w * dL_b/dw)^2`` over `n_batches`.

    ``dL_b/dw`` is the gradient of the mean loss of batch b; each score has the weight's shape.
    (w * g)^2 approximates the squared change of the loss when w is set to zero (Molchanov,
    Mallya, Tyree, Frosio, Kautz, "Importance Estimation for Neural Network Pruning", CVPR 2019,
    Eq. 3; LeCun, Denker & Solla's Optimal Brain Damage, NIPS 1989, used the second-order term).
    batches yield (x, y, ...), moved to the model's device; loss_fn defaults to cross-entropy.
    Scores are computed in eval mode and have each weight's device and dtype; the model's weights
    and train/eval mode are left as they were (its .grad fields are cleared to None).
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    layers = prunable_layers(model)
    weights = {n: m.weight_orig if hasattr(m, "weight_orig") else m.weight for n, m in layers.items()}
    frozen = [n for n, w in weights.items() if not w.requires_grad]
    if frozen:
        raise ValueError(f"taylor_scores needs gradients, but the weights of {frozen} have requires_grad=False "
                         "(e.g. a frozen teacher); call model.requires_grad_(True) on a copy first")
    scores = {n: torch.zeros_like(m.weight) for n, m in layers.items()}
    device = next(iter(weights.values())).device if weights else torch.device("cpu")
    seen = 0
    with eval_mode(model), torch.enable_grad():
        for batch in batches:
            if seen == n_batches:
                break
            model.zero_grad()
            loss_fn(model(batch[0].to(device)), batch[1].to(device)).backward()
            for n, w in weights.items():
                scores[n] += (w * w.grad).detach() ** 2
            seen += 1
        model.zero_grad()
    return {n: s / max(seen, 1) for n, s in scores.items()}


def make_permanent(model: nn.Module) -> nn.Module:
    """Fold every pruning mask into its weight and remove the re-parametrisation, in place.

    Afterwards the model has plain ``weight`` parameters (with zeros) and no ``*_mask`` buffers.
    """
    for m in model.modules():
        for hook in list(m._forward_pre_hooks.values()):
            if isinstance(hook, prune.BasePruningMethod):
                prune.remove(m, hook._tensor_name)
    return model


def sensitivity_scan(model: nn.Module, evaluate: Callable[[nn.Module], float], sparsities: Sequence[float],
                     names: Sequence[str] | None = None) -> dict[str, list[float]]:
    """Prune one layer at a time (magnitude, on a copy) and evaluate: name -> [metric per sparsity].

    For each layer and each sparsity s, a copy of `model` in eval mode gets the fraction s of
    that layer's smallest-|w| weights masked and is scored with ``evaluate(copy)``. `model`
    itself is left untouched (weights, masks and train/eval mode). Layers whose metric falls
    fast are sensitive and should be pruned less.
    """
    sparsities = [check_amount(s, "sparsity") for s in sparsities]
    layers = list(prunable_layers(model, names))
    result = {}
    with eval_mode(model):   # the copies start in eval mode
        for name in layers:
            result[name] = [evaluate(layerwise_magnitude_prune(copy.deepcopy(model), {name: s}))
                            for s in sparsities]
    return result
