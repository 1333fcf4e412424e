"""Pruning helpers (notebook 05)."""
import copy
import io

import pytest
import torch
from torch.nn.utils import prune

import kdcourse as kd
from kdcourse.pruning import (global_magnitude_prune, l1_prune_conv_block, layerwise_magnitude_prune,
                              make_permanent, prunable_layers, prune_by_scores, sensitivity_scan, sparsity_report,
                              structured_prune, taylor_scores)


def _cnn(seed=0, shape=(1, 28, 28)):
    return kd.build_model("cnn", shape, width=4, depth=2, seed=seed)


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


def test_taylor_scores_and_prune_by_scores():
    m = _cnn()
    x, y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    scores = taylor_scores(m, [(x, y)], n_batches=1)
    assert m.training, "taylor_scores must leave the train/eval mode as it was"
    assert set(scores) == set(prunable_layers(m)) and all(s.shape == l.weight.shape for s, l in zip(scores.values(), prunable_layers(m).values()))
    prune_by_scores(m, scores, 0.5)
    assert sparsity_report(m)["global"]["sparsity"] == pytest.approx(0.5, abs=1e-3)


def test_taylor_scores_are_the_mean_squared_weight_times_gradient():
    m = _cnn().eval()  # taylor_scores evaluates in eval mode (BatchNorm running statistics)
    batches = [(torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))) for _ in range(3)]
    want = torch.zeros_like(m.head.weight)
    for x, y in batches:
        g, = torch.autograd.grad(torch.nn.functional.cross_entropy(m(x), y), m.head.weight)
        want += (m.head.weight.detach() * g) ** 2 / 3
    torch.testing.assert_close(taylor_scores(m, batches, n_batches=5)["head"], want)


def test_sensitivity_scan_shapes_and_leaves_model_untouched():
    m = _cnn()
    x, y = torch.randn(50, 1, 28, 28), torch.randint(0, 10, (50,))
    res = sensitivity_scan(m, lambda mm: kd.evaluate(mm, (x, y)), [0.5, 0.9], names=["blocks.0.0", "head"])
    assert set(res) == {"blocks.0.0", "head"} and all(len(v) == 2 for v in res.values())
    assert sparsity_report(m)["global"]["zeros"] == 0


@pytest.mark.parametrize("shape,block", [((1, 28, 28), 0), ((1, 28, 28), 1), ((1, 40), 1)])
def test_hand_written_filter_pruning_keeps_the_model_runnable(shape, block):
    m = _cnn(shape=shape).eval()
    small = l1_prune_conv_block(m, block, 0.5).eval()
    x = torch.randn(5, *shape)
    assert small(x).shape == (5, 10) and kd.count_params(small) < kd.count_params(m)
    assert small.blocks[block][0].out_channels == m.blocks[block][0].out_channels // 2


def test_hand_written_filter_pruning_at_zero_is_the_same_function():
    m = _cnn().eval()
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(l1_prune_conv_block(m, 1, 0.0).eval()(x), m(x))


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
