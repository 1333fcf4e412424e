"""Relation distillation losses and retrieval (notebook 03)."""
import math

import pytest
import torch
import torch.nn.functional as F

import kdcourse as kd
from kdcourse.losses import Features
from kdcourse.relations import (Relational, embed, pairwise_distances, pkt_loss, recall_at_1, rkd_angle_loss,
                                rkd_distance_loss, sp_loss)


def _r(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _rotation(d, seed=1):
    q, _ = torch.linalg.qr(_r(d, d, seed=seed))
    return q


def test_pairwise_distances_hand_example():
    e = torch.tensor([[0.0, 0.0], [3.0, 4.0], [0.0, 1.0]])
    want = torch.tensor([[0.0, 5.0, 1.0], [5.0, 0.0, math.sqrt(18)], [1.0, math.sqrt(18), 0.0]])
    torch.testing.assert_close(pairwise_distances(e), want)


def test_rkd_distance_hand_example():
    # teacher: equilateral-ish triangle; student: same triangle scaled by 2 -> loss 0
    t = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    assert rkd_distance_loss(2 * t, t).item() == pytest.approx(0.0, abs=1e-6)
    # student distances (1, 1, 2) vs teacher (1, 1, 1): normalised (0.75, 0.75, 1.5) vs (1, 1, 1)
    s = torch.tensor([[0.0], [1.0], [2.0]])
    te = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.5, math.sqrt(3) / 2]])
    diffs = torch.tensor([0.25, 0.25, 0.5])
    want = (0.5 * diffs ** 2).mean()  # Huber with delta 1 on differences < 1
    assert rkd_distance_loss(s, te).item() == pytest.approx(want.item(), rel=1e-4)


@pytest.mark.parametrize("loss", [rkd_distance_loss, rkd_angle_loss])
def test_rkd_invariant_to_rotation_translation_and_scale(loss):
    t, s = _r(16, 8), _r(16, 5, seed=2)
    base = loss(s, t)
    moved = loss(3.0 * s @ _rotation(5) + 7.0, 0.5 * t @ _rotation(8, seed=3) - 2.0)
    torch.testing.assert_close(base, moved, atol=1e-5, rtol=1e-4)
    assert loss(t @ _rotation(8) * 2.0, t).item() == pytest.approx(0.0, abs=1e-6)


def test_angle_loss_with_anchor_subsampling_is_close_on_average():
    s, t = _r(32, 6), _r(32, 6, seed=1)
    full = rkd_angle_loss(s, t)
    sub = torch.stack([rkd_angle_loss(s, t, max_anchors=8, generator=torch.Generator().manual_seed(i)) for i in range(64)])
    assert sub.mean().item() == pytest.approx(full.item(), rel=0.05)


def test_sp_invariant_to_permuting_channels_and_zero_when_equal():
    s, t = _r(10, 12), _r(10, 7, seed=1)
    perm = torch.randperm(12, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(sp_loss(s[:, perm], t), sp_loss(s, t))
    assert sp_loss(t, t.clone()).item() == pytest.approx(0.0, abs=1e-7)
    fs, ft = _r(10, 3, 4, 4), _r(10, 8, 2, 2, seed=1)   # conv features are flattened to (B, -1)
    torch.testing.assert_close(sp_loss(fs, ft), sp_loss(fs.flatten(1), ft.flatten(1)))


@pytest.mark.parametrize("loss", [sp_loss, pkt_loss])
def test_sp_and_pkt_invariant_to_rotation_and_scale_but_not_shift(loss):
    t, s = _r(16, 8), _r(16, 5, seed=2)
    base = loss(s, t)
    torch.testing.assert_close(loss(3.0 * s @ _rotation(5), 0.5 * t @ _rotation(8, seed=3)), base, atol=1e-6, rtol=1e-4)
    assert abs(loss(s + 1.0, t).item() - base.item()) > 1e-3 * base.item()
    assert loss(t @ _rotation(8) * 2.0, t).item() == pytest.approx(0.0, abs=1e-6)


def test_pkt_scales_like_one_over_batch_size():
    # same geometry repeated: each row's KL is unchanged, but the mean over B^2 entries divides it by B
    t, s = _r(8, 5), _r(8, 5, seed=3)
    torch.testing.assert_close(pkt_loss(s.repeat(4, 1), t.repeat(4, 1)) * 4, pkt_loss(s, t), atol=1e-6, rtol=1e-3)


def test_sp_hand_example():
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])   # G_s = I -> rows already unit
    t = torch.tensor([[1.0], [1.0]])             # G_t = all ones -> rows (1,1)/sqrt2
    g = torch.eye(2) - torch.full((2, 2), 1 / math.sqrt(2))
    assert sp_loss(s, t).item() == pytest.approx(float(g.pow(2).sum() / 4), rel=1e-5)


def test_pkt_zero_when_equal_and_positive_otherwise():
    t = _r(12, 5)
    assert pkt_loss(t * 3.0, t).item() == pytest.approx(0.0, abs=1e-6)   # cosine: scale-free
    assert pkt_loss(_r(12, 5, seed=4), t).item() > 0


@pytest.mark.parametrize("fn", [rkd_distance_loss, rkd_angle_loss, sp_loss, pkt_loss])
def test_gradient_flows_to_the_student_only(fn):
    s, t = _r(8, 4).requires_grad_(True), _r(8, 6, seed=1).requires_grad_(True)
    fn(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


@pytest.mark.parametrize("fn", [rkd_distance_loss, rkd_angle_loss, sp_loss, pkt_loss])
def test_errors(fn):
    with pytest.raises(ValueError, match="batch sizes differ"):
        fn(_r(8, 4), _r(7, 4))
    with pytest.raises(ValueError, match="shape \\(B, D\\)"):
        fn(_r(8), _r(8))
    with pytest.raises(ValueError, match="at least 2"):
        fn(_r(1, 4), _r(1, 4))
    with pytest.raises(ValueError, match="at least 2"):
        fn(_r(0, 4), _r(0, 4))


def test_relational_module_combines_terms_and_errors():
    s, t, y = _r(8, 4), _r(8, 6, seed=1), torch.randint(0, 3, (8,))
    logits = _r(8, 3)
    rel = Relational(w_dist=2.0, w_sp=3.0, base=None)
    feats = Features({"embed": s}, {"embed": t})
    torch.testing.assert_close(rel(logits, None, y, feats), 2 * rkd_distance_loss(s, t) + 3 * sp_loss(s, t))
    with_ce = Relational(w_pkt=1.0)(logits, None, y, feats)
    torch.testing.assert_close(with_ce, F.cross_entropy(logits, y) + pkt_loss(s, t))
    with pytest.raises(ValueError, match="at least one non-zero weight"):
        Relational()


def test_recall_at_1():
    emb = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    assert recall_at_1(emb, torch.tensor([0, 0, 1, 1])) == 100.0
    assert recall_at_1(emb, torch.tensor([0, 1, 0, 1])) == 0.0
    with pytest.raises(ValueError):
        recall_at_1(emb, torch.tensor([0, 1]))


def test_relational_names_an_uncaptured_layer():
    rel = Relational(student_layer="embed", teacher_layer="blocks.1", w_dist=1.0, base=None)
    with pytest.raises(KeyError, match="Relational: no captured teacher feature 'blocks.1'.*teacher_layers"):
        rel(None, None, None, Features({"embed": _r(4, 3)}, {"embed": _r(4, 3)}))
    with pytest.raises(KeyError, match="no captured student feature 'embed'.*student_layers"):
        rel(None, None, None, Features({}, {"blocks.1": _r(4, 3)}))


def test_relational_in_fit_brings_the_student_geometry_closer_to_the_teacher():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(128, 1, 40, generator=g), torch.randint(0, 10, (128,), generator=g)
    teacher = kd.build_model("cnn", (1, 40), width=4, depth=2, seed=1).eval()
    student = kd.build_model("mlp", (1, 40), width=8, seed=2)
    gap = lambda: rkd_distance_loss(embed(student, x), embed(teacher, x)).item()  # noqa: E731
    before = gap()
    h = kd.fit(student, kd.data.TensorLoader(x, y, batch_size=32), epochs=10, lr=1e-2, teacher=teacher,
               loss_fn=Relational(w_dist=1.0, w_angle=1.0, max_anchors=4, base=None),
               student_layers=["embed"], teacher_layers=["embed"], progress=False)
    assert h.loss[-1] < h.loss[0] and gap() < 0.5 * before


def test_embed_matches_the_captured_layer_in_any_batch_size():
    m = kd.build_model("cnn", (1, 40), width=4, seed=0).eval()
    x = _r(23, 1, 40)
    with torch.no_grad(), kd.capture(m, ["embed", "blocks.1"]) as f:
        m(x)
    torch.testing.assert_close(embed(m, x), f["embed"])
    torch.testing.assert_close(embed(m, x, batch_size=5), f["embed"])
    conv = embed(m, x, layer="blocks.1", batch_size=7)   # conv features come back flattened
    assert conv.shape == (23, 8 * 10)
    torch.testing.assert_close(conv, f["blocks.1"].flatten(1))
    assert not embed(m, x).requires_grad
    with pytest.raises(KeyError, match="unknown layer name"):
        embed(m, x, layer="fc")


def test_embed_runs_in_eval_mode_and_restores_the_mode():
    m = kd.build_model("cnn", (1, 40), width=4, seed=0).train()
    bn = m.blocks[0][1]
    stats = bn.running_mean.clone()
    embed(m, _r(16, 1, 40))
    assert torch.equal(bn.running_mean, stats) and all(mod.training for mod in m.modules())
    m.eval()
    embed(m, _r(16, 1, 40))
    assert not any(mod.training for mod in m.modules())


def test_relational_on_hidden_states_pools_the_real_tokens_and_ignores_padding():
    s, t = _r(4, 5, 6), _r(4, 5, 3, seed=1)
    y = torch.tensor([[1, 2, -100, -100, -100], [1, 2, 3, 4, 5], [1, -100, -100, -100, -100], [1, 2, 3, -100, -100]])
    rel = Relational(w_dist=1.0, w_angle=0.5, base=None, layout="channels_last")
    got = rel(None, None, y, Features({"embed": s}, {"embed": t}))
    keep = (y != -100).float()[..., None]
    ps, pt = (s * keep).sum(1) / keep.sum(1), (t * keep).sum(1) / keep.sum(1)
    torch.testing.assert_close(got, rkd_distance_loss(ps, pt) + 0.5 * rkd_angle_loss(ps, pt))
    s2 = s.clone()
    s2[y == -100] = 99.0                                                   # padded hidden states
    torch.testing.assert_close(rel(None, None, y, Features({"embed": s2}, {"embed": t})), got)
    with pytest.raises(ValueError, match="layout must be one of"):
        Relational(w_dist=1.0, layout="tokens")
