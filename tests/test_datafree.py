"""Data-free synthesis, ensembles and mutual learning (notebook 09)."""
import pytest
import torch
from torch import nn

import kdcourse as kd
from kdcourse.datafree import (Cohort, Ensemble, MutualLoss, bn_penalty, bn_statistics, mix_views, model_digest,
                               random_shift, synthesize, synthesize_cached, total_variation)
from kdcourse.losses import soft_kl


def _bn(c=3, mean=0.0, var=1.0):
    bn = nn.BatchNorm2d(c)
    bn.running_mean.fill_(mean)
    bn.running_var.fill_(var)
    return bn


def test_bn_penalty_closed_form():
    x = torch.zeros(2, 3, 4, 4)
    x[0], x[1] = 1.0, 3.0                      # per channel: mean 2, biased variance 1
    assert bn_penalty(x, _bn(mean=2.0, var=1.0)).item() == pytest.approx(0.0, abs=1e-6)
    # mean off by 2 in each of 3 channels, variance off by 3: sqrt(3 * 4) + sqrt(3 * 9)
    assert bn_penalty(x, _bn(mean=0.0, var=4.0)).item() == pytest.approx(12 ** 0.5 + 27 ** 0.5, rel=1e-6)
    with pytest.raises(ValueError, match="expected"):
        bn_penalty(torch.zeros(2, 5, 4, 4), _bn())
    with pytest.raises(TypeError, match="BatchNorm"):
        bn_penalty(x, nn.Linear(3, 3))


def test_bn_statistics_hooks_every_bn_layer_once_per_forward_and_cleans_up():
    model = kd.build_model("cnn", (1, 8, 8), width=4, depth=2, seed=0).eval()
    with bn_statistics(model) as penalties:
        model(torch.randn(5, 1, 8, 8))
        assert len(penalties) == 2
        model(torch.randn(5, 1, 8, 8))
        assert len(penalties) == 4
    model(torch.randn(5, 1, 8, 8))
    assert len(penalties) == 4                  # hooks removed on exit
    with pytest.raises(ValueError, match="no BatchNorm"):
        with bn_statistics(kd.build_model("mlp", (1, 8, 8), seed=0)):
            pass


def test_total_variation_by_hand_and_zero_for_constants():
    assert total_variation(torch.full((2, 1, 5, 5), 3.0)).item() == 0.0
    x = torch.tensor([[[0.0, 1.0, 3.0]]])       # (1, 1, 3): differences 1 and 2
    assert total_variation(x).item() == pytest.approx((1 + 4) / 2)
    img = torch.zeros(1, 1, 2, 2)
    img[..., 0, 0] = 2.0                         # two vertical and two horizontal differences, one each of 2
    assert total_variation(img).item() == pytest.approx(2 * (4 / 2))
    with pytest.raises(ValueError, match="total_variation"):
        total_variation(torch.zeros(3, 4))


def test_random_shift_is_a_roll_within_bounds():
    x = torch.arange(10.0).reshape(1, 1, 10)
    for seed in range(5):
        y = random_shift(x, 2, torch.Generator().manual_seed(seed))
        assert any(torch.equal(y, torch.roll(x, k, dims=2)) for k in range(-2, 3))
    assert torch.equal(random_shift(x, 0, torch.Generator()), x)


def _bn_teacher():
    torch.manual_seed(0)
    teacher = kd.build_model("cnn", (1, 8, 8), width=4, depth=2, seed=0)
    with torch.no_grad():                        # give the BN layers non-trivial running statistics
        teacher.train()
        for _ in range(20):
            teacher(torch.rand(64, 1, 8, 8) * 3 + 1)
    return teacher.eval()


def test_synthesize_lowers_the_bn_mismatch_and_hits_the_targets():
    teacher = _bn_teacher()
    before = [p.clone() for p in teacher.parameters()]

    def bn_term(x):
        with torch.no_grad(), bn_statistics(teacher) as pen:
            teacher(x)
        return float(sum(pen))

    x0, y = synthesize(teacher, 40, in_shape=(1, 8, 8), steps=0, batch_size=20, seed=3)
    x1, y1 = synthesize(teacher, 40, in_shape=(1, 8, 8), steps=60, batch_size=20, lr=0.1, seed=3)
    assert x1.shape == (40, 1, 8, 8) and torch.equal(y, y1) and torch.equal(y.bincount(), torch.full((10,), 4))
    assert bn_term(x1) < 0.5 * bn_term(x0)
    with torch.no_grad():
        assert (teacher(x1).argmax(1) == y).float().mean() > (teacher(x0).argmax(1) == y).float().mean()
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))   # teacher unchanged
    with pytest.raises(ValueError, match="steps"):
        synthesize(teacher, 4, in_shape=(1, 8, 8), steps=-1)


def test_first_bn_scale_weights_the_first_layer_only():
    teacher = _bn_teacher()

    def per_layer(x):
        with torch.no_grad(), bn_statistics(teacher) as pen:
            teacher(x)
        return [float(p) for p in pen]

    kw = dict(in_shape=(1, 8, 8), steps=40, batch_size=20, lr=0.1, seed=3)
    x1, _ = synthesize(teacher, 20, **kw)
    assert torch.equal(x1, synthesize(teacher, 20, first_bn_scale=1.0, **kw)[0])   # 1 is the plain BN term
    x0, _ = synthesize(teacher, 20, first_bn_scale=0.0, **kw)                    # drops the first layer's term
    (a1, b1), (a0, b0) = per_layer(x1), per_layer(x0)
    # without its term the first layer is matched far worse; the second, which keeps its term, much less so
    assert a0 / a1 > 2 * (b0 / b1), (a1, b1, a0, b0)
    with pytest.raises(ValueError, match="first_bn_scale"):
        synthesize(teacher, 4, first_bn_scale=-1.0, **kw)


def test_mix_views_are_convex_mixes_of_two_inputs():
    n = 6
    x = torch.eye(n).reshape(n, 1, n)             # input i is the basis vector e_i
    out = mix_views(x, 3, seed=0)
    assert out.shape == (3 * n, 1, n)
    flat = out.reshape(3 * n, n)
    torch.testing.assert_close(flat.sum(1), torch.ones(3 * n))     # lam + (1 - lam) = 1
    assert (flat >= 0).all() and ((flat > 0).sum(1) <= 2).all()   # at most two inputs in each mix
    own = flat[torch.arange(3 * n), torch.arange(3 * n) % n]      # view k, row i mixes x_i with a partner
    assert (own > 0).all()
    assert torch.equal(out, mix_views(x, 3, seed=0)) and not torch.equal(out, mix_views(x, 3, seed=1))
    with pytest.raises(ValueError, match="n_views"):
        mix_views(x, 0)


def test_ensemble_averages_logits():
    a, b = nn.Linear(4, 3), nn.Linear(4, 3)
    x = torch.randn(5, 4)
    torch.testing.assert_close(Ensemble([a, b])(x), (a(x) + b(x)) / 2)
    with pytest.raises(ValueError, match="at least one"):
        Ensemble([])


def test_mutual_loss_formula_and_gradients_stay_with_each_student():
    z = torch.randn(6, 2, 5, requires_grad=True)
    y = torch.randint(0, 5, (6,))
    ce = torch.nn.functional.cross_entropy
    want = (ce(z[:, 0], y) + soft_kl(z[:, 0], z[:, 1]) + ce(z[:, 1], y) + soft_kl(z[:, 1], z[:, 0]))
    got = MutualLoss()(z, None, y)
    torch.testing.assert_close(got, want)
    # student 0's gradient is that of its own term only (the peer is a fixed target)
    g0, = torch.autograd.grad(ce(z[:, 0], y) + soft_kl(z[:, 0], z[:, 1].detach()), z)
    g, = torch.autograd.grad(MutualLoss()(z, None, y), z)
    torch.testing.assert_close(g[:, 0], g0[:, 0])
    with pytest.raises(ValueError, match="K >= 2"):
        MutualLoss()(torch.randn(6, 1, 5), None, y)


def test_cohort_trains_with_fit_and_members_learn():
    data = kd.load_dataset("digits")
    cohort = Cohort([kd.build_model("mlp", data.in_shape, width=16, seed=s) for s in (0, 1)])
    assert cohort(data.x_test[:3]).shape == (3, 2, 10)
    kd.fit(cohort, data.train_loader(64), epochs=8, lr=1e-2, loss_fn=MutualLoss(), progress=False)
    for m in cohort.members:
        assert kd.evaluate(m, data.test_loader()) > 70
    with pytest.raises(ValueError, match="at least 2"):
        Cohort([nn.Linear(2, 2)])


def test_synthesize_cached_loads_the_same_set_and_rebuilds_a_corrupt_file(tmp_path):
    teacher = kd.build_model("cnn", (1, 8, 8), width=4, depth=2, seed=0).eval()
    kw = dict(in_shape=(1, 8, 8), steps=2, batch_size=10, seed=1, cache_dir=tmp_path)
    x, y, loaded = synthesize_cached(teacher, 10, **kw)
    x2, y2, loaded2 = synthesize_cached(teacher, 10, **kw)
    assert not loaded and loaded2 and torch.equal(x, x2) and torch.equal(y, y2)
    ref, _ = synthesize(teacher, 10, in_shape=(1, 8, 8), steps=2, batch_size=10, seed=1)
    torch.testing.assert_close(x, ref)
    _, _, other = synthesize_cached(teacher, 10, **{**kw, "steps": 3})
    assert not other                                            # another recipe, another file
    for pt in tmp_path.glob("deepinversion-*.pt"):
        pt.write_bytes(b"garbage")                              # corrupt every cached set
    with pytest.warns(UserWarning, match="unusable"):
        x3, _, loaded3 = synthesize_cached(teacher, 10, **kw)
    assert not loaded3 and torch.equal(x3, x)                   # rebuilt, never loaded
    assert synthesize_cached(teacher, 10, **kw)[2]


def test_model_digest_changes_with_the_weights():
    a = kd.build_model("mlp", (1, 8, 8), seed=0)
    assert model_digest(a) == model_digest(kd.build_model("mlp", (1, 8, 8), seed=0))
    assert model_digest(a) != model_digest(kd.build_model("mlp", (1, 8, 8), seed=1))
