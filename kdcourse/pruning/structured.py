"""Structured pruning: remove whole channels, so the network really gets smaller and faster.

Introduced in notebook 05: by hand for the course CNN (`l1_prune_conv_block`), and with
torch-pruning's dependency graph for any model (`structured_prune`).
"""
from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from ..models import ConvNet
from ..utils import eval_mode
from .unstructured import check_amount

__all__ = ["l1_prune_conv_block", "structured_prune"]


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
