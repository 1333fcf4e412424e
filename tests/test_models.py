import pytest
import torch

import kdcourse as kd
from kdcourse.models import MLP, ConvNet


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


def test_width_and_depth_knobs_change_size():
    small = kd.build_model("cnn", (1, 28, 28), width=4, depth=2)
    wide = kd.build_model("cnn", (1, 28, 28), width=8, depth=2)
    assert kd.count_params(wide) > 2 * kd.count_params(small)
    mlp = kd.build_model("mlp", (1, 40), width=10, depth=3)
    assert len(mlp.blocks) == 2 and mlp.embed[0].out_features == 10
    # size on disk tracks the parameter count (4 bytes each plus a little overhead)
    assert 4 * kd.count_params(wide) < kd.model_size_bytes(wide) < 4 * kd.count_params(wide) + 20_000


def test_presets_cover_every_role_and_dataset():
    for ds, shape in kd.data.INPUT_SHAPES.items():
        for role in kd.models.ROLES:
            m = kd.build_model(in_shape=shape, **kd.preset(role, ds))
            assert m(torch.zeros(2, *shape)).shape == (2, 10)
    t, s = (kd.build_model(in_shape=(1, 40), **kd.preset(r, "mnist1d")) for r in ("teacher", "student"))
    assert kd.count_params(t) > 5 * kd.count_params(s)


def test_wrong_input_shape_names_the_expected_shape():
    m = kd.build_model("cnn", (1, 28, 28))
    with pytest.raises(ValueError, match=r"expects input of shape \(B, 1, 28, 28\), got \(4, 784\)"):
        m(torch.randn(4, 784))
    with pytest.raises(ValueError, match=r"MLP expects input of shape \(B, 1, 40\)"):
        MLP((1, 40))(torch.randn(4, 1, 41))


def test_bad_model_arguments():
    with pytest.raises(ValueError, match="unknown arch 'resnet'.*cnn"):
        kd.build_model("resnet", (1, 40))
    with pytest.raises(ValueError, match="width and depth must be >= 1"):
        kd.build_model("mlp", (1, 40), depth=0)
    with pytest.raises(ValueError, match="too many blocks"):
        ConvNet((1, 8, 8), widths=(4, 4, 4, 4))
    with pytest.raises(ValueError, match="unknown role"):
        kd.preset("professor", "mnist")
    with pytest.raises(ValueError, match="no model presets for dataset"):
        kd.preset("teacher", "imagenet")
