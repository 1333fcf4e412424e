import numpy as np
import pytest
import torch

import kdcourse as kd
from kdcourse.models import ARCHS, MLP, ConvNet, check_input


@pytest.mark.parametrize("arch", ["cnn", "mlp"])
@pytest.mark.parametrize("shape", [(1, 40), (1, 28, 28), (1, 8, 8), (3, 32, 32)])
def test_models_map_inputs_to_logits(arch, shape):
    m = kd.build_model(arch, shape, width=4, depth=2, n_classes=7)
    out = m(torch.randn(5, *shape))
    assert out.shape == (5, 7)
    names = kd.hooks.layer_names(m)
    assert {"blocks.0", "embed", "head"} <= set(names) or arch == "mlp" and {"embed", "head"} <= set(names)


def test_same_seed_same_initial_weights():
    a = kd.build_model("cnn", (1, 40), seed=3)
    b = kd.build_model("cnn", (1, 40), seed=3)
    c = kd.build_model("cnn", (1, 40), seed=4)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not all(torch.equal(p, q) for p, q in zip(a.parameters(), c.parameters()))


def test_seeded_build_leaves_the_global_rng_alone_and_equals_manual_seed():
    torch.manual_seed(11)
    before = torch.get_rng_state()
    m = kd.build_model("mlp", (1, 40), width=8, depth=2, seed=5)
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(5)   # the weights are those of the documented recipe: seed, then construct
    ref = MLP((1, 40), hidden=[8, 8])
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), ref.parameters()))
    same = kd.build_model("mlp", (1, 40), width=np.int64(8), depth=np.int64(2), seed=torch.tensor(5))
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), same.parameters()))


def test_unseeded_build_draws_from_the_global_rng():
    torch.manual_seed(0)
    a = kd.build_model("cnn", (1, 40), width=4)
    b = kd.build_model("cnn", (1, 40), width=4)   # the global generator moved on: new weights
    torch.manual_seed(0)
    c = kd.build_model("cnn", (1, 40), width=4)
    assert not torch.equal(a.head.weight, b.head.weight) and torch.equal(a.head.weight, c.head.weight)


def test_width_and_depth_knobs_change_size():
    cnn = kd.build_model("cnn", (1, 28, 28), width=4, depth=3)
    assert [b[0].out_channels for b in cnn.blocks] == [4, 8, 8] and cnn.embed[1].out_features == 16
    # closed form: convs 3x3 with bias, BN (2 per channel), embed Linear from 8 x 3 x 3, head
    convs = (1 * 9 + 1) * 4 + (4 * 9 + 1) * 8 + (8 * 9 + 1) * 8
    bns = 2 * (4 + 8 + 8)
    assert kd.count_params(cnn) == convs + bns + (72 + 1) * 16 + (16 + 1) * 10
    mlp = kd.build_model("mlp", (1, 40), width=10, depth=3)
    assert len(mlp.blocks) == 2 and mlp.embed[0].out_features == 10
    assert kd.count_params(mlp) == 41 * 10 + 11 * 10 + 11 * 10 + 11 * 10
    mlp.head.requires_grad_(False)
    assert kd.count_params(mlp, trainable_only=True) == kd.count_params(mlp) - 110
    # size on disk: 4 bytes per parameter plus BN buffers and a little overhead
    assert 4 * kd.count_params(cnn) < kd.model_size_bytes(cnn) < 4 * kd.count_params(cnn) + 20_000
    assert kd.model_size_bytes(cnn.double()) > 8 * kd.count_params(cnn)   # float64 doubles it


def test_presets_cover_every_role_and_dataset():
    for ds, shape in kd.data.INPUT_SHAPES.items():
        for role in kd.models.ROLES:
            m = kd.build_model(in_shape=shape, **kd.preset(role, ds))
            assert m(torch.zeros(2, *shape)).shape == (2, 10)
    t, s = (kd.build_model(in_shape=(1, 40), **kd.preset(r, "mnist1d")) for r in ("teacher", "student"))
    assert kd.count_params(t) > 5 * kd.count_params(s)


def test_wrong_input_shape_names_the_expected_shape():
    check_input(torch.zeros(2, 1, 40), (1, 40), "net")   # the right shape passes
    with pytest.raises(ValueError, match=r"net expects input of shape \(B, 1, 40\), got \(1, 40\)"):
        check_input(torch.zeros(1, 40), (1, 40), "net")
    m = kd.build_model("cnn", (1, 28, 28))
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, 28, 28\), got \(4, 784\)"):
        m(torch.randn(4, 784))
    with pytest.raises(ValueError, match=r"MLP expects input of shape \(B, 1, 40\)"):
        MLP((1, 40))(torch.randn(4, 1, 41))


def test_bad_model_arguments():
    assert ARCHS == ("cnn", "mlp")
    with pytest.raises(ValueError, match="unknown arch 'resnet'.*cnn"):
        kd.build_model("resnet", (1, 40))
    with pytest.raises(ValueError, match="width and depth must be >= 1"):
        kd.build_model("mlp", (1, 40), depth=0)
    with pytest.raises(TypeError, match="width must be a number"):
        kd.build_model("mlp", (1, 40), width="8")
    with pytest.raises(ValueError, match="too many blocks"):
        ConvNet((1, 8, 8), widths=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="unknown role"):
        kd.preset("professor", "mnist")
    with pytest.raises(ValueError, match="no model presets for dataset"):
        kd.preset("teacher", "imagenet")
