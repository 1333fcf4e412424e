"""Pruning: unstructured masks (torch.nn.utils.prune) and structured channel removal.

Introduced in notebook 05. Unstructured pruning zeroes individual weights through masks — the
tensors keep their shape, so nothing gets smaller or faster on ordinary hardware. Structured
pruning removes whole channels (hand-written for the course CNN, or with torch-pruning's
dependency graph for any model), which really shrinks the network.
"""
from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import prune

from .models import ConvNet
from .utils import as_number, eval_mode

__all__ = ["prunable_layers", "unprunable_layers", "check_amount", "sparsity_report", "global_magnitude_prune",
           "layerwise_magnitude_prune", "prune_by_scores", "taylor_scores", "make_permanent",
           "sensitivity_scan", "l1_prune_conv_block", "structured_prune"]

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


def l1_prune_conv_block(model: ConvNet, block: int, amount: float) -> ConvNet:
    """Remove the `amount` fraction of filters with the smallest L1 norm from conv block `block`.

    Returns a new, smaller course ConvNet: the block's conv loses output channels, its
    BatchNorm the same channels, and the next layer (the next block's conv, or the embed
    Linear whose input is the flattened feature map) the matching inputs. Li et al., "Pruning
    Filters for Efficient ConvNets", ICLR 2017.
    """
    check_amount(amount)
    if not isinstance(model, ConvNet) or not 0 <= block < len(model.blocks):
        raise ValueError(f"l1_prune_conv_block needs a course ConvNet and 0 <= block < {len(getattr(model, 'blocks', []))}")
    new = copy.deepcopy(model)
    conv, bn = new.blocks[block][0], new.blocks[block][1]
    n_keep = max(1, conv.out_channels - round(amount * conv.out_channels))
    keep = conv.weight.detach().abs().flatten(1).sum(1).topk(n_keep).indices.sort().values
    new.blocks[block][0] = _sub_conv(conv, out_idx=keep)
    new.blocks[block][1] = _sub_bn(bn, keep)
    if block + 1 < len(new.blocks):
        new.blocks[block + 1][0] = _sub_conv(new.blocks[block + 1][0], in_idx=keep)
    else:  # the flattened map feeds embed's Linear: keep the columns of the surviving channels
        lin = new.embed[1]
        per_channel = lin.in_features // conv.out_channels
        cols = (keep[:, None] * per_channel + torch.arange(per_channel, device=keep.device)).flatten()
        new.embed[1] = _sub_linear(lin, cols)
    return new


def _sub_conv(conv, out_idx=None, in_idx=None):
    """Copy of a conv layer keeping the output channels `out_idx` and input channels `in_idx`.

    Stride, padding, dilation, padding_mode, bias, device, dtype, requires_grad and train/eval
    mode are kept. Grouped convolutions (groups > 1) cannot lose channels here.
    """
    if conv.groups != 1 and (out_idx is not None or in_idx is not None):
        raise ValueError(f"cannot remove channels of a grouped convolution (groups={conv.groups}); "
                         "use structured_prune, whose dependency graph handles groups")
    w = conv.weight.detach()
    w = w[out_idx] if out_idx is not None else w
    w = w[:, in_idx] if in_idx is not None else w
    new = type(conv)(w.shape[1] * conv.groups, w.shape[0], conv.kernel_size, stride=conv.stride,
                     padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                     bias=conv.bias is not None, padding_mode=conv.padding_mode,
                     device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        if conv.bias is not None:
            new.bias.copy_(conv.bias[out_idx] if out_idx is not None else conv.bias)
    return _like(new, conv)


def _sub_bn(bn, idx):
    """Copy of a BatchNorm layer keeping the channels `idx`, with its eps, momentum, affine,
    track_running_stats, statistics, device, dtype and train/eval mode."""
    ref = bn.weight if bn.affine else bn.running_mean
    new = type(bn)(len(idx), eps=bn.eps, momentum=bn.momentum, affine=bn.affine,
                   track_running_stats=bn.track_running_stats,
                   device=None if ref is None else ref.device, dtype=None if ref is None else ref.dtype)
    names = (("weight", "bias") if bn.affine else ()) + \
        (("running_mean", "running_var") if bn.track_running_stats else ())
    with torch.no_grad():
        for name in names:
            getattr(new, name).copy_(getattr(bn, name)[idx])
        if bn.track_running_stats:
            new.num_batches_tracked.copy_(bn.num_batches_tracked)
    return _like(new, bn)


def _sub_linear(lin, in_idx):
    """Copy of a Linear layer keeping the input features `in_idx` (device, dtype, bias kept)."""
    new = nn.Linear(len(in_idx), lin.out_features, bias=lin.bias is not None,
                    device=lin.weight.device, dtype=lin.weight.dtype)
    with torch.no_grad():
        new.weight.copy_(lin.weight[:, in_idx])
        if lin.bias is not None:
            new.bias.copy_(lin.bias)
    return _like(new, lin)


def _like(new: nn.Module, old: nn.Module) -> nn.Module:
    """Give `new` the train/eval mode and the parameters' requires_grad flags of `old`."""
    for (_, p_new), (_, p_old) in zip(new.named_parameters(), old.named_parameters()):
        p_new.requires_grad_(p_old.requires_grad)
    return new.train(old.training)


def structured_prune(model: nn.Module, example_inputs: torch.Tensor, ratio: float, *,
                     ignored: Sequence[str] = ("head",), importance: str = "l1") -> nn.Module:
    """Remove `ratio` of the channels of every prunable layer with torch-pruning; returns a copy.

    torch-pruning builds a dependency graph (Fang et al., "DepGraph: Towards Any Structural
    Pruning", CVPR 2023) so that coupled layers (conv -> BN -> next conv, flatten -> Linear,
    residual additions) lose the same channels. Layers named in `ignored` (the classifier)
    keep their outputs. importance: "l1" or "l2" filter norm. `model` is not changed; the
    pruned copy comes back in eval mode with every parameter trainable (requires_grad=True).
    The copy is run once on `example_inputs`: a copy that fails there, or changes the output
    shape (e.g. a hand-written attention whose heads come from a .view), raises ValueError
    instead of surfacing later.
    """
    import torch_pruning as tp
    check_amount(ratio, "ratio")
    if importance not in ("l1", "l2"):
        raise ValueError(f"importance must be 'l1' or 'l2', got {importance!r}")
    new = copy.deepcopy(model).eval()
    for p in new.parameters():
        p.requires_grad_(True)
    modules = dict(new.named_modules())
    bad = [n for n in ignored if n not in modules]
    if bad:
        raise KeyError(f"unknown layer(s) {bad} in ignored; valid names include: {', '.join(list(modules)[1:30])}")
    pruner = tp.pruner.MagnitudePruner(new, example_inputs, importance=tp.importance.MagnitudeImportance(p=1 if importance == "l1" else 2),
                                       pruning_ratio=ratio, ignored_layers=[modules[n] for n in ignored])
    pruner.step()
    _check_still_runs(model, new, example_inputs)
    return new


def _check_still_runs(model: nn.Module, pruned: nn.Module, example_inputs: torch.Tensor) -> None:
    """ValueError unless the pruned copy runs on `example_inputs` and keeps the output shape of `model`."""
    with torch.no_grad(), eval_mode(model):
        ref = model(example_inputs)
        try:
            out = pruned(example_inputs)
        except RuntimeError as err:
            out = err
    if isinstance(out, Exception) or (isinstance(ref, torch.Tensor) and getattr(out, "shape", None) != ref.shape):
        what = (f"fails ({out})" if isinstance(out, Exception)
                else f"returns shape {tuple(out.shape)}, not {tuple(ref.shape)}")
        raise ValueError(f"the pruned copy {what}: torch-pruning's dependency graph does not see couplings made in "
                         "forward code, such as q, k, v split into heads with .view (hand-written attention; "
                         "nn.MultiheadAttention is handled). List such layers in `ignored`, or prune a part of the "
                         "model that has no such coupling (e.g. a CNN, or the MLPs)")
