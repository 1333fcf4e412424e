"""Pruning helpers (notebook 05)."""
import io

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import kdcourse as kd
from kdcourse.pruning import (_sub_bn, _sub_conv, _sub_linear, check_amount, global_magnitude_prune,
                              l1_prune_conv_block, layerwise_magnitude_prune, make_permanent, prunable_layers,
                              prune_by_scores, sensitivity_scan, sparsity_report, structured_prune, taylor_scores,
                              unprunable_layers)


def _cnn(seed=0, shape=(1, 28, 28)):
    return kd.build_model("cnn", shape, width=4, depth=2, seed=seed)


def _r(*shape, seed=0, dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.9, 0.97])
def test_global_pruning_reaches_exactly_the_requested_sparsity(amount):
    m = global_magnitude_prune(_cnn(), amount)
    rep = sparsity_report(m)["global"]
    assert rep["zeros"] == round(amount * rep["total"])


def test_global_pruning_matches_torch_global_unstructured():
    a, b = _cnn(), _cnn()
    global_magnitude_prune(a, 0.6)
    params = [(mod, "weight") for mod in prunable_layers(b).values()]
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0.6)
    for (na, ma), (nb, mb) in zip(prunable_layers(a).items(), prunable_layers(b).items()):
        assert torch.equal(ma.weight_mask, mb.weight_mask), na


def test_layerwise_pruning_per_layer_amounts():
    m = layerwise_magnitude_prune(_cnn(), {"blocks.0.0": 0.5, "embed.1": 0.9})
    rep = sparsity_report(m)
    assert rep["blocks.0.0"]["sparsity"] == pytest.approx(0.5, abs=0.03)
    assert rep["embed.1"]["sparsity"] == pytest.approx(0.9, abs=0.001)
    assert rep["head"]["sparsity"] == 0.0
    m2 = layerwise_magnitude_prune(_cnn(), 0.5)
    assert all(v["sparsity"] == pytest.approx(0.5, abs=0.03) for v in sparsity_report(m2).values())


def test_make_permanent_leaves_no_masks_and_keeps_outputs():
    m = global_magnitude_prune(_cnn(), 0.8)
    x = torch.randn(3, 1, 28, 28)
    before = m.eval()(x)
    make_permanent(m)
    assert not any(name.endswith("_mask") for name, _ in m.named_buffers())
    assert not any(name.endswith("_orig") for name, _ in m.named_parameters())
    assert all(not mod._forward_pre_hooks for mod in m.modules())
    torch.testing.assert_close(m(x), before)
    assert sparsity_report(m)["global"]["sparsity"] == pytest.approx(0.8, abs=1e-3)


def test_prune_by_scores_masks_exactly_the_lowest_scores():
    m = _cnn()
    layers = prunable_layers(m)
    g = torch.Generator().manual_seed(0)
    scores = {n: torch.rand(l.weight.shape, generator=g) for n, l in layers.items()}
    flat = torch.cat([v.flatten() for v in scores.values()])
    threshold = flat.sort().values[round(0.3 * flat.numel())]   # distinct values: no ties
    prune_by_scores(m, {n: v.double() for n, v in scores.items()}, np.float64(0.3))
    for n, l in layers.items():
        assert torch.equal(l.weight_mask.bool(), scores[n] >= threshold), n
    assert sparsity_report(m)["global"]["zeros"] == round(0.3 * flat.numel())


def test_prune_by_scores_on_some_layers_and_combined_with_an_earlier_mask():
    m = _cnn()
    prune_by_scores(m, {"head": m.head.weight.abs()}, 0.5)
    prune_by_scores(m, {"head": -m.head.weight_orig.abs()}, 0.5)   # now the largest |w| go
    assert int(m.head.weight_mask.sum()) == 0                     # old and new masks combined
    assert sparsity_report(m)["embed.1"]["zeros"] == 0            # layers not scored are untouched


def test_prune_by_scores_rejects_mismatching_scores():
    m = _cnn()
    with pytest.raises(ValueError, match=r"layer 'head' have shape \(10, 15\) but its weight has shape \(10, 16\)"):
        prune_by_scores(m, {"head": torch.rand(10, 15)}, 0.5)
    with pytest.raises(KeyError, match=r"unknown or non-prunable layer\(s\) \['fc'\]"):
        prune_by_scores(m, {"fc": torch.rand(10, 16)}, 0.5)
    with pytest.raises(ValueError, match="at least one layer"):
        prune_by_scores(m, {}, 0.5)
    with pytest.raises(ValueError, match="layer 'head' contain NaN"):
        prune_by_scores(m, {"head": torch.full((10, 16), float("nan"))}, 0.5)
    with pytest.raises(TypeError, match="amount must be a number"):
        prune_by_scores(m, {"head": torch.rand(10, 16)}, True)
    assert sparsity_report(m)["global"]["zeros"] == 0 and not hasattr(m.head, "weight_mask")


def test_taylor_scores_then_prune_by_scores():
    m = _cnn()
    x, y = _r(32, 1, 28, 28), torch.randint(0, 10, (32,))
    scores = taylor_scores(m, [(x, y)], n_batches=1)
    assert set(scores) == set(prunable_layers(m))
    assert all(s.shape == l.weight.shape for s, l in zip(scores.values(), prunable_layers(m).values()))
    prune_by_scores(m, scores, 0.5)
    assert sparsity_report(m)["global"]["sparsity"] == pytest.approx(0.5, abs=1e-3)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_taylor_scores_are_the_mean_squared_weight_times_gradient(dtype):
    m = _cnn().to(dtype).eval()  # taylor_scores evaluates in eval mode (BatchNorm running statistics)
    batches = [(_r(16, 1, 28, 28, seed=i, dtype=dtype), torch.randint(0, 10, (16,))) for i in range(3)]
    want = torch.zeros_like(m.head.weight)
    for x, y in batches:
        g, = torch.autograd.grad(torch.nn.functional.cross_entropy(m(x), y), m.head.weight)
        want += (m.head.weight.detach() * g) ** 2 / 3
    scores = taylor_scores(m, batches, n_batches=5)
    assert scores["head"].dtype == dtype and not any(mod.training for mod in m.modules())
    torch.testing.assert_close(scores["head"], want)
    with torch.no_grad():   # a caller's no_grad block does not silence it
        torch.testing.assert_close(taylor_scores(m, batches, n_batches=5)["head"], want)


def test_taylor_scores_restore_mode_and_weights_and_reject_frozen_models():
    m = _cnn().train()
    before = [p.clone() for p in m.parameters()]
    stats = m.blocks[0][1].running_mean.clone()
    taylor_scores(m, [(_r(8, 1, 28, 28), torch.randint(0, 10, (8,)))])
    assert all(mod.training for mod in m.modules())
    assert torch.equal(m.blocks[0][1].running_mean, stats)   # computed in eval mode
    assert all(torch.equal(a, b) for a, b in zip(before, m.parameters()))
    assert all(p.grad is None for p in m.parameters())
    m.requires_grad_(False)
    with pytest.raises(ValueError, match="requires_grad=False"):
        taylor_scores(m, [(_r(8, 1, 28, 28), torch.randint(0, 10, (8,)))])


def test_sensitivity_scan_values_are_the_pruned_copies_scores():
    m = _cnn().train()
    x = _r(50, 1, 28, 28)
    modes = []

    def score(mm):
        modes.append(mm.training)
        with torch.no_grad():
            return float(mm(x).sum())   # exact, and sensitive to every weight

    res = sensitivity_scan(m, score, [0.0, np.float64(0.5), 0.9], names=["blocks.0.0", "head"])
    assert set(res) == {"blocks.0.0", "head"} and len(modes) == 6 and not any(modes)   # copies in eval mode
    dense = score(_cnn().eval())
    for name in res:
        want = [score(layerwise_magnitude_prune(_cnn().eval(), {name: s})) for s in (0.0, 0.5, 0.9)]
        assert res[name] == pytest.approx(want) and res[name][0] == pytest.approx(dense)
        assert res[name][1] != pytest.approx(dense)
    assert all(mod.training for mod in m.modules())                 # the model keeps its mode
    assert sparsity_report(m)["global"]["zeros"] == 0 and not hasattr(m.head, "weight_mask")
    sensitivity_scan(m.eval(), score, [0.5], names=["head"])
    assert not any(mod.training for mod in m.modules())


def test_check_amount_accepts_numpy_and_tensor_fractions():
    assert check_amount(np.float64(0.25)) == 0.25 and check_amount(torch.tensor(0.5)) == 0.5
    assert check_amount(0) == 0.0 and isinstance(check_amount(np.int64(0)), float)
    for bad in (True, "0.5", None):
        with pytest.raises(TypeError, match="sparsity must be a number"):
            check_amount(bad, "sparsity")
    with pytest.raises(ValueError, match=r"ratio must be a fraction in \[0, 1\), got 1.0"):
        check_amount(1.0, "ratio")
    m = layerwise_magnitude_prune(_cnn(), {"head": torch.tensor(0.5)})
    assert sparsity_report(m)["head"]["sparsity"] == 0.5


def test_hand_written_filter_pruning_keeps_the_largest_l1_filters():
    m = _cnn().eval()
    conv = m.blocks[0][0]
    l1 = conv.weight.detach().abs().flatten(1).sum(1)
    keep = l1.topk(2).indices.sort().values
    small = l1_prune_conv_block(m, 0, 0.5)
    torch.testing.assert_close(small.blocks[0][0].weight, conv.weight[keep])
    torch.testing.assert_close(small.blocks[0][1].running_var, m.blocks[0][1].running_var[keep])
    torch.testing.assert_close(small.blocks[1][0].weight, m.blocks[1][0].weight[:, keep])
    # the pruned block's outputs are the kept channels of the original block's outputs
    x = _r(3, 1, 28, 28)
    torch.testing.assert_close(small.blocks[0](x), m.blocks[0](x)[:, keep])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_hand_written_filter_pruning_keeps_dtype_and_mode(dtype):
    m = _cnn().to(dtype).train()
    small = l1_prune_conv_block(m, 1, 0.5)
    assert all(p.dtype == dtype for p in small.parameters()) and all(mod.training for mod in small.modules())
    zero = l1_prune_conv_block(m.eval(), 1, 0.0)
    assert not any(mod.training for mod in zero.modules())
    x = _r(4, 1, 28, 28, dtype=dtype)
    torch.testing.assert_close(zero(x), m(x), rtol=0, atol=0)   # removing nothing is the same function


def test_hand_written_filter_pruning_on_meta_tensors_stays_on_meta():
    m = _cnn().to("meta")
    small = l1_prune_conv_block(m, 1, 0.5)
    assert all(t.is_meta for t in [*small.parameters(), *small.buffers()])
    assert small.blocks[1][0].out_channels == 4 and small.embed[1].in_features == 4 * 7 * 7


def test_sub_conv_keeps_every_conv_attribute():
    conv = nn.Conv2d(3, 6, 3, stride=2, padding=2, dilation=2, padding_mode="reflect").double().eval()
    idx = torch.tensor([0, 2, 5])
    sub = _sub_conv(conv, out_idx=idx)
    for attr in ("stride", "padding", "dilation", "groups", "padding_mode", "kernel_size"):
        assert getattr(sub, attr) == getattr(conv, attr), attr
    assert sub.weight.dtype == torch.float64 and not sub.training
    x = _r(2, 3, 9, 9, dtype=torch.float64)
    torch.testing.assert_close(sub(x), conv(x)[:, idx])
    inp = _sub_conv(conv, in_idx=torch.tensor([1, 2]))
    torch.testing.assert_close(inp(x[:, 1:]), conv(torch.cat([torch.zeros_like(x[:, :1]), x[:, 1:]], 1)))
    frozen = nn.Conv1d(4, 4, 3, bias=False).requires_grad_(False)
    sub1 = _sub_conv(frozen, out_idx=torch.tensor([1]))
    assert sub1.bias is None and not sub1.weight.requires_grad
    with pytest.raises(ValueError, match="grouped convolution \\(groups=2\\)"):
        _sub_conv(nn.Conv2d(4, 4, 3, groups=2), out_idx=torch.tensor([0]))


@pytest.mark.parametrize("affine,track", [(True, True), (False, True), (True, False), (False, False)])
def test_sub_bn_keeps_every_batchnorm_setting(affine, track):
    bn = nn.BatchNorm2d(5, eps=1e-3, momentum=0.3, affine=affine, track_running_stats=track).double()
    bn(_r(8, 5, 4, 4, dtype=torch.float64))   # one training step: non-trivial running statistics
    with torch.no_grad():
        for p in bn.parameters():
            p.copy_(_r(5, seed=3, dtype=torch.float64))
    idx = torch.tensor([4, 1])
    for mode in (True, False):
        bn.train(mode)
        sub = _sub_bn(bn, idx)
        assert (sub.eps, sub.momentum, sub.affine, sub.track_running_stats) == (1e-3, 0.3, affine, track)
        assert sub.training == mode and all(t.dtype == torch.float64 for t in sub.parameters())
        if mode is False:
            x = _r(3, 5, 2, 2, seed=4, dtype=torch.float64)
            torch.testing.assert_close(sub(x[:, idx]), bn(x)[:, idx])
    if track:
        assert int(sub.num_batches_tracked) == 1


def test_sub_linear_keeps_the_selected_inputs():
    lin = nn.Linear(6, 3).double()
    idx = torch.tensor([0, 3, 4])
    sub = _sub_linear(lin, idx)
    x = _r(2, 6, dtype=torch.float64)
    x[:, [1, 2, 5]] = 0.0   # the dropped inputs carry nothing
    torch.testing.assert_close(sub(x[:, idx]), lin(x))
    assert sub.weight.dtype == torch.float64
    assert _sub_linear(nn.Linear(4, 2, bias=False), torch.tensor([1])).bias is None


@pytest.mark.parametrize("shape,block", [((1, 28, 28), 0), ((1, 28, 28), 1), ((1, 40), 1)])
def test_hand_written_filter_pruning_keeps_the_model_runnable(shape, block):
    m = _cnn(shape=shape).eval()
    small = l1_prune_conv_block(m, block, 0.5).eval()
    x = torch.randn(5, *shape)
    assert small(x).shape == (5, 10) and kd.count_params(small) < kd.count_params(m)
    assert small.blocks[block][0].out_channels == m.blocks[block][0].out_channels // 2


def test_structured_prune_shrinks_and_keeps_output_shape_and_saves():
    m = _cnn().eval()
    x = torch.randn(2, 1, 28, 28)
    small = structured_prune(m, x, 0.5)
    assert small(x).shape == m(x).shape == (2, 10)
    assert kd.count_params(small) < 0.4 * kd.count_params(m)
    assert kd.count_params(m) == kd.count_params(_cnn())  # original untouched
    buf = io.BytesIO()
    torch.save(small, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded.eval()(x), small(x))


def test_structured_prune_on_a_torchvision_model():
    import torchvision
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    small = structured_prune(net, x, 0.5, ignored=("fc",))
    assert small(x).shape == (1, 10) and kd.count_params(small) < 0.35 * kd.count_params(net)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: global_magnitude_prune(_cnn(), 1.0), ValueError, r"in \[0, 1\)"),
    (lambda: global_magnitude_prune(_cnn(), -0.1), ValueError, r"in \[0, 1\)"),
    (lambda: layerwise_magnitude_prune(_cnn(), {"embed.1": 1.5}), ValueError, r"amount for embed.1"),
    (lambda: layerwise_magnitude_prune(_cnn(), {"conv9": 0.5}), KeyError, "prunable layers: blocks.0.0"),
    (lambda: global_magnitude_prune(_cnn(), 0.5, names=["blocks.0.1"]), KeyError, "non-prunable"),
    (lambda: structured_prune(_cnn(), torch.randn(1, 1, 28, 28), 1.2), ValueError, "ratio"),
    (lambda: structured_prune(_cnn(), torch.randn(1, 1, 28, 28), 0.5, ignored=("fc",)), KeyError, "unknown layer"),
    (lambda: l1_prune_conv_block(_cnn(), 5, 0.5), ValueError, "block"),
    (lambda: sensitivity_scan(_cnn(), lambda m: 0.0, [0.5, 1.0]), ValueError, "sparsity"),
])
def test_errors(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


# ----------------------------------------------------------------------------- what the mask-based helpers skip
class _Attention(nn.Module):
    """tokens (B, L) -> logits (B, L, V): Embedding, nn.MultiheadAttention, Linear head."""

    def __init__(self, vocab=7, d=8):
        super().__init__()
        torch.manual_seed(0)
        self.tok, self.attn, self.head = nn.Embedding(vocab, d), nn.MultiheadAttention(d, 2, batch_first=True), \
            nn.Linear(d, vocab)

    def forward(self, idx):
        h = self.tok(idx)
        return self.head(h + self.attn(h, h, h, need_weights=False)[0])


def test_magnitude_pruning_skips_attention_projections_and_training_still_works(capsys):
    model = _Attention()
    assert list(prunable_layers(model)) == ["head"]
    assert set(unprunable_layers(model)) == {"tok", "attn", "attn.out_proj"}
    assert unprunable_layers(_cnn()) == {}
    global_magnitude_prune(model, 0.5, verbose=True)
    assert "3 module(s) with weights left unpruned" in capsys.readouterr().out
    assert sparsity_report(model)["head"]["sparsity"] == pytest.approx(0.5, abs=0.02)
    idx = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(0))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(2):   # a mask on out_proj used to break the second backward pass (MHA never calls out_proj)
        loss = model(idx).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert (model.head.weight == 0).float().mean() == pytest.approx(0.5, abs=0.02)
    layerwise_magnitude_prune(_Attention(), 0.3)
    with pytest.raises(KeyError, match="attn.out_proj is not prunable: projection of a MultiheadAttention"):
        layerwise_magnitude_prune(_Attention(), {"attn.out_proj": 0.5})


def test_structured_prune_refuses_a_copy_that_no_longer_runs():
    from kdcourse.lm import GPT
    lm, idx = GPT(vocab_size=16, d_model=16, n_layers=1, seed=0).eval(), torch.randint(1, 16, (2, 6))
    before = {n: p.clone() for n, p in lm.state_dict().items()}
    with pytest.raises(ValueError, match=r"pruned copy fails .*q, k, v split into heads"):   # used to return it broken
        structured_prune(lm, idx, 0.5)
    assert all(torch.equal(before[n], p) for n, p in lm.state_dict().items())   # the model itself is untouched
