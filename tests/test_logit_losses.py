"""The maths of DKD and DIST (notebook 09): hand-made inputs, the KD identity, invariances."""
import math

import pytest
import torch

from kdcourse.losses import kd_loss
from kdcourse.logit_losses import (DIST, DKD, binary_target_probs, dist_loss, dkd_loss, dkd_terms,
                                   non_target_log_probs, pearson_rows)


def _logits(*shape, seed=0, scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_binary_and_non_target_probabilities_by_hand():
    z, y = torch.tensor([[math.log(2.0), 0.0, math.log(3.0)]]), torch.tensor([0])   # softmax = [2, 1, 3] / 6
    torch.testing.assert_close(binary_target_probs(z, y), torch.tensor([[2 / 6, 4 / 6]]))
    torch.testing.assert_close(non_target_log_probs(z, y).exp(), torch.tensor([[1 / 4, 3 / 4]]))


def test_dkd_terms_on_a_hand_made_example():
    s, t, y = torch.zeros(1, 3), torch.tensor([[math.log(2.0), 0.0, math.log(3.0)]]), torch.tensor([0])
    tckd, nckd = dkd_terms(s, t, y, T=1.0)
    b_t, b_s = torch.tensor([2 / 6, 4 / 6]), torch.tensor([1 / 3, 2 / 3])
    q_t, q_s = torch.tensor([1 / 4, 3 / 4]), torch.tensor([1 / 2, 1 / 2])
    torch.testing.assert_close(tckd, (b_t * (b_t / b_s).log()).sum().reshape(1))
    torch.testing.assert_close(nckd, (q_t * (q_t / q_s).log()).sum().reshape(1))
    assert tckd.item() == pytest.approx(0.0, abs=1e-6) and nckd.item() > 0.1


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_dkd_with_teacher_non_target_mass_equals_classic_kd(T):
    s, t, y = _logits(16, 10), _logits(16, 10, seed=1), torch.randint(0, 10, (16,))
    p_target = torch.softmax(t / T, 1).gather(1, y[:, None]).squeeze(1)
    got = dkd_loss(s, t, y, tckd_weight=1.0, nckd_weight=1.0 - p_target, T=T)
    torch.testing.assert_close(got, kd_loss(s, t, T=T, alpha=0.0))


def test_dkd_is_zero_for_equal_logits_and_weights_scale_its_terms():
    s, t, y = _logits(8, 10), _logits(8, 10, seed=1), torch.randint(0, 10, (8,))
    assert dkd_loss(s, s.clone(), y).item() == pytest.approx(0.0, abs=1e-6)
    tckd, nckd = dkd_terms(s, t, y, T=2.0)
    torch.testing.assert_close(dkd_loss(s, t, y, tckd_weight=3.0, nckd_weight=0.0, T=2.0), 4 * 3.0 * tckd.mean())
    torch.testing.assert_close(dkd_loss(s, t, y, tckd_weight=0.0, nckd_weight=5.0, T=2.0), 4 * 5.0 * nckd.mean())


def test_dkd_module_adds_cross_entropy_and_rejects_bad_input():
    s, t, y = _logits(8, 10), _logits(8, 10, seed=1), torch.randint(0, 10, (8,))
    loss = DKD(tckd_weight=1.0, nckd_weight=8.0, T=4.0)
    ce = torch.nn.functional.cross_entropy(s, y)
    torch.testing.assert_close(loss(s, t, y), ce + dkd_loss(s, t, y, nckd_weight=8.0, T=4.0))
    with pytest.raises(ValueError, match="targets"):
        dkd_loss(s, t, torch.full((8,), 10))
    with pytest.raises(ValueError, match="teacher"):
        loss(s, None, y)
    with pytest.raises(ValueError, match="nckd_weight"):
        dkd_loss(s, t, y, nckd_weight=torch.ones(3))


def test_pearson_rows_by_hand_and_invariant_to_shift_and_scale():
    a = torch.tensor([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    b = torch.tensor([[2.0, 4.0, 6.0], [3.0, 2.0, 1.0]])
    torch.testing.assert_close(pearson_rows(a, b), torch.tensor([1.0, -1.0]))
    x, z = _logits(5, 7), _logits(5, 7, seed=1)
    torch.testing.assert_close(pearson_rows(x, z), pearson_rows(3 * x + 2, z - 1), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        pearson_rows(x, z[:, :3])


def test_dist_matches_its_formula_and_vanishes_for_equal_predictions():
    s, t, T = _logits(16, 10), _logits(16, 10, seed=1), 2.0
    p_s, p_t = torch.softmax(s / T, 1), torch.softmax(t / T, 1)

    def corr(u, v):   # written independently: torch.corrcoef per row
        return torch.tensor([float(torch.corrcoef(torch.stack([u[i], v[i]]))[0, 1]) for i in range(len(u))])

    want = T * T * ((1 - corr(p_s, p_t).mean()) + 0.5 * (1 - corr(p_s.T, p_t.T).mean()))
    torch.testing.assert_close(dist_loss(s, t, T=T, intra_weight=0.5), want.float(), atol=1e-5, rtol=1e-5)
    assert dist_loss(s, s.clone()).item() == pytest.approx(0.0, abs=1e-5)
    assert dist_loss(s, -s).item() > 1.0   # reversed rankings: far from the teacher


def test_dist_module_adds_cross_entropy_and_rejects_a_single_example():
    s, t, y = _logits(8, 10), _logits(8, 10, seed=1), torch.randint(0, 10, (8,))
    torch.testing.assert_close(DIST(T=1.0)(s, t, y), torch.nn.functional.cross_entropy(s, y) + dist_loss(s, t))
    with pytest.raises(ValueError, match="B >= 2"):
        dist_loss(s[:1], t[:1])
    with pytest.raises(ValueError, match="temperature"):
        DIST(T=0.0)


def test_teacher_gets_no_gradient_from_either_loss():
    s, t, y = _logits(8, 10).requires_grad_(), _logits(8, 10, seed=1).requires_grad_(), torch.randint(0, 10, (8,))
    (dkd_loss(s, t, y) + dist_loss(s, t)).backward()
    assert t.grad is None and s.grad.abs().sum() > 0
