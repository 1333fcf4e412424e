"""The maths of the distillation losses (notebook 01)."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kdcourse as kd
from kdcourse.losses import (check_logits, check_temperature, class_bias_for_share, kd_loss, soft_cross_entropy,
                             soft_kl, softmax_with_temperature, temperature_schedule)


def _logits(*shape, seed=0, scale=3.0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)) * scale


def test_zero_when_student_equals_teacher():
    z = _logits(16, 10)
    assert kd_loss(z, z.clone(), T=4.0, alpha=0.0).item() == pytest.approx(0.0, abs=1e-6)


def test_unchanged_by_adding_a_constant_to_all_logits():
    s, t, y = _logits(8, 10), _logits(8, 10, seed=1), torch.randint(0, 10, (8,))
    base = kd_loss(s, t, y, T=3.0, alpha=0.3)
    shifted = kd_loss(s + 5.0, t - 2.0, y, T=3.0, alpha=0.3)
    torch.testing.assert_close(base, shifted)


def test_matches_kl_div_batchmean():
    s, t = _logits(32, 10), _logits(32, 10, seed=1)
    for T in (1.0, 2.0, 7.5):
        ref = F.kl_div(F.log_softmax(s / T, -1), F.softmax(t / T, -1), reduction="batchmean")
        torch.testing.assert_close(soft_kl(s, t, T), ref)
        torch.testing.assert_close(kd_loss(s, t, T=T, alpha=0.0), ref * T * T)


def test_hand_computed_two_class_example():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[2.0, 0.0]])  # T = 2: p_t = softmax([1, 0])
    p = torch.tensor([1.0, 0.0]).exp() / (1 + torch.e)
    want = (p * (p / 0.5).log()).sum() * 4  # KL(p || uniform) * T^2
    torch.testing.assert_close(kd_loss(s, t, T=2.0, alpha=0.0), want)


def test_alpha_extremes_are_plain_ce_and_plain_kd():
    s, t, y = _logits(8, 5), _logits(8, 5, seed=1), torch.randint(0, 5, (8,))
    torch.testing.assert_close(kd_loss(s, t, y, T=4, alpha=1.0), F.cross_entropy(s, y))
    torch.testing.assert_close(kd_loss(s, t, y, T=4, alpha=0.0), 16 * soft_kl(s, t, 4))
    mid = kd_loss(s, t, y, T=4, alpha=0.25)
    torch.testing.assert_close(mid, 0.25 * F.cross_entropy(s, y) + 0.75 * 16 * soft_kl(s, t, 4))


def _soft_grad(s, t, T, scaled):
    s = s.clone().requires_grad_(True)
    loss = kd_loss(s, t, T=T, alpha=0.0) if scaled else soft_kl(s, t, T)
    loss.backward()
    return s.grad.norm().item()


def test_soft_gradients_shrink_like_one_over_T_squared_and_T2_restores_them():
    # In the high-T limit with zero-mean logits, dKL/dz_s ~ (z_s - z_t) / (C T^2).
    s, t = _logits(64, 10, scale=0.5), _logits(64, 10, seed=1, scale=0.5)
    s, t = s - s.mean(-1, keepdim=True), t - t.mean(-1, keepdim=True)
    g10, g20 = _soft_grad(s, t, 10.0, False), _soft_grad(s, t, 20.0, False)
    assert g10 / g20 == pytest.approx(4.0, rel=0.02)
    s10, s20 = _soft_grad(s, t, 10.0, True), _soft_grad(s, t, 20.0, True)
    assert s10 / s20 == pytest.approx(1.0, rel=0.02)


def test_cross_entropy_form_and_kl_form_give_equal_gradients():
    s, t = _logits(16, 10), _logits(16, 10, seed=1)
    grads = []
    for fn in (soft_kl, soft_cross_entropy):
        x = s.clone().requires_grad_(True)
        fn(x, t, 3.0).backward()
        grads.append(x.grad)
    torch.testing.assert_close(grads[0], grads[1])
    ent = -(F.softmax(t / 3, -1) * F.log_softmax(t / 3, -1)).sum(-1).mean()
    torch.testing.assert_close(soft_cross_entropy(s, t, 3.0), soft_kl(s, t, 3.0) + ent)


def test_token_level_logits():
    s, t = _logits(4, 6, 10), _logits(4, 6, 10, seed=1)
    y = torch.randint(0, 10, (4, 6))
    flat = kd_loss(s.reshape(24, 10), t.reshape(24, 10), y.reshape(24), T=2.0, alpha=0.5)
    torch.testing.assert_close(kd_loss(s, t, y, T=2.0, alpha=0.5), flat)


def test_unlabeled_targets_are_ignored():
    s, t = _logits(6, 4), _logits(6, 4, seed=1)
    y = torch.tensor([0, 1, -100, -100, 2, 3])
    keep = y != -100
    torch.testing.assert_close(kd_loss(s, t, y, alpha=1.0), F.cross_entropy(s[keep], y[keep]))


def test_softmax_with_temperature():
    z = _logits(3, 5)
    torch.testing.assert_close(softmax_with_temperature(z, 1.0), torch.softmax(z, -1))
    ent = lambda p: -(p * p.log()).sum(-1)  # noqa: E731
    assert (ent(softmax_with_temperature(z, 10.0)) > ent(softmax_with_temperature(z, 1.0))).all()


def test_temperature_schedules_closed_forms():
    const = temperature_schedule("constant", T0=8.0, epochs=9)
    expo = temperature_schedule("exponential", T0=8.0, epochs=9, T_end=1.0)
    step = temperature_schedule("step", T0=8.0, epochs=9, T_end=1.0)
    assert [const(e) for e in range(9)] == [8.0] * 9
    # 8 * (1/8) ** (e / 8): 8 at the start, 1 at the end, geometric in between
    assert [expo(e) for e in range(9)] == pytest.approx([8.0 * 2 ** (-3 * e / 8) for e in range(9)])
    assert [step(e) for e in range(9)] == [8.0, 8.0, 8.0, 4.0, 4.0, 4.0, 2.0, 2.0, 2.0]
    floor = temperature_schedule("step", T0=4.0, epochs=3, T_end=3.0)
    assert [floor(e) for e in range(3)] == [4.0, 3.0, 3.0]   # never below T_end
    assert temperature_schedule("exponential", T0=5.0, epochs=1)(0) == 5.0  # one epoch: T0


def test_class_bias_for_share_hits_the_share():
    logits = _logits(1000, 10)
    logits[:, 3] -= 10  # class 3 almost never predicted
    d = class_bias_for_share(logits, 3, 0.1)
    share = ((logits + d * F.one_hot(torch.tensor(3), 10)).argmax(1) == 3).float().mean().item()
    assert d > 0 and share == pytest.approx(0.1, abs=0.005)
    shifts = [class_bias_for_share(logits, 3, s) for s in (0.05, 0.1, 0.3, 0.6)]
    assert shifts == sorted(shifts) and shifts[0] < shifts[-1]   # a larger share needs a larger shift


def test_class_bias_for_share_keeps_the_logits_dtype_and_accepts_numpy_scalars():
    logits = _logits(500, 6)
    logits[:, 2] -= 8
    d32 = class_bias_for_share(logits, 2, 0.25)   # 0.25: exact in float32 and float64
    d64 = class_bias_for_share(logits.double(), np.int64(2), np.float64(0.25))
    assert d64 == pytest.approx(d32, abs=1e-3)
    assert class_bias_for_share(logits, torch.tensor(2), torch.tensor(0.25)) == d32
    with pytest.raises(TypeError, match="cls must be a number"):
        class_bias_for_share(logits, True, 0.25)


def test_loss_modules_for_fit():
    s, t, y = _logits(8, 10), _logits(8, 10, seed=1), torch.randint(0, 10, (8,))
    torch.testing.assert_close(kd.losses.KD(T=2, alpha=0.5)(s, t, y, None), kd_loss(s, t, y, T=2, alpha=0.5))
    torch.testing.assert_close(kd.losses.CE()(s, None, y, None), F.cross_entropy(s, y))


@pytest.mark.parametrize("fn", [lambda s, t: kd_loss(s, t, T=2.0, alpha=0.0),
                                lambda s, t: kd_loss(s, t, torch.tensor([0, 1, 2, 0]), T=2.0, alpha=0.5),
                                lambda s, t: soft_kl(s, t, 2.0), lambda s, t: soft_cross_entropy(s, t, 2.0),
                                lambda s, t: kd.losses.KD()(s, t, torch.tensor([0, 1, 2, 0]))])
def test_teacher_logits_get_no_gradient(fn):
    s = _logits(4, 3).requires_grad_(True)
    t = _logits(4, 3, seed=1).requires_grad_(True)   # even teacher logits that track gradients
    fn(s, t).backward()
    assert s.grad is not None and s.grad.abs().sum() > 0 and t.grad is None


def test_numbers_may_be_numpy_scalars_or_zero_d_tensors():
    s, t, y = _logits(8, 10), _logits(8, 10, seed=1), torch.randint(0, 10, (8,))
    want = kd_loss(s, t, y, T=4, alpha=0.25)
    for T, alpha in ((np.int64(4), np.float64(0.25)), (torch.tensor(4.0), torch.tensor(0.25)), (4.0, 0.25)):
        torch.testing.assert_close(kd_loss(s, t, y, T=T, alpha=alpha), want)
        torch.testing.assert_close(kd.losses.KD(T=T, alpha=alpha)(s, t, y), want)
    assert check_temperature(np.float32(2.5)) == 2.5 and isinstance(check_temperature(np.int64(8)), float)
    torch.testing.assert_close(softmax_with_temperature(s, torch.tensor(2.0)), torch.softmax(s / 2, -1))


@pytest.mark.parametrize("bad", [True, "4", None, torch.tensor([1.0, 2.0])])
def test_temperature_and_alpha_reject_non_numbers(bad):
    with pytest.raises(TypeError, match="temperature T must be a number"):
        check_temperature(bad)
    with pytest.raises(TypeError, match="alpha must be a number"):
        kd.losses.KD(alpha=bad)


def test_kd_module_checks_its_settings_at_construction():
    with pytest.raises(ValueError, match="alpha must be in \\[0, 1\\]"):
        kd.losses.KD(alpha=1.5)
    with pytest.raises(ValueError, match="T must be a finite number > 0"):
        kd.losses.KD(T=0)
    with pytest.raises(ValueError, match="T must be a finite number > 0"):
        kd.losses.KD(T=math.inf)
    loss = kd.losses.KD(T=2, alpha=0.5)
    assert repr(loss) == "KD(T=2, alpha=0.5)"
    loss.T = -1.0   # changed later, e.g. by a bad schedule: caught at the next call
    with pytest.raises(ValueError, match="T must be"):
        loss(_logits(2, 3), _logits(2, 3, seed=1), torch.tensor([0, 1]))


def test_check_logits_accepts_matching_finite_logits():
    check_logits(_logits(4, 3), _logits(4, 3, seed=1))
    check_logits(_logits(2, 5, 3), _logits(2, 5, 3, seed=1))   # token level (B, L, C)
    with pytest.raises(ValueError, match="teacher logits contain NaN or inf"):
        check_logits(_logits(4, 3), torch.full((4, 3), float("inf")))


@pytest.mark.parametrize("call,match", [
    (lambda: kd_loss(torch.zeros(4, 10), torch.zeros(4, 9)), "same shape"),
    (lambda: kd_loss(torch.zeros(4, 10), torch.zeros(4, 10), T=0), "T must be a finite number > 0"),
    (lambda: kd_loss(torch.zeros(4, 10), torch.zeros(4, 10), T=-1.0), "T must be"),
    (lambda: kd.losses.KD(T=0), "T must be"),
    (lambda: kd_loss(torch.zeros(4, 10), torch.zeros(4, 10), torch.zeros(4, dtype=torch.long), alpha=1.5), "alpha must be in \\[0, 1\\]"),
    (lambda: kd_loss(torch.full((4, 10), float("nan")), torch.zeros(4, 10)), "NaN or inf"),
    (lambda: kd_loss(torch.zeros(4, 10), torch.zeros(4, 10), torch.tensor([0, 1, 2, 10])), "class indices in \\[0, 9\\]"),
    (lambda: kd_loss(torch.zeros(4, 10), torch.zeros(4, 10), torch.zeros(3, dtype=torch.long)), "do not match logits"),
    (lambda: kd_loss(torch.zeros(4, 10), torch.zeros(4, 10), None, alpha=0.5), "needs targets"),
    (lambda: kd_loss(torch.zeros(0, 10), torch.zeros(0, 10)), "empty batch"),
    (lambda: kd_loss(torch.zeros(10), torch.zeros(10)), "shape \\(B, C\\)"),
    (lambda: temperature_schedule("cosine", T0=4, epochs=3), "unknown schedule"),
    (lambda: class_bias_for_share(torch.zeros(5, 3), 3, 0.1), "cls"),
    (lambda: class_bias_for_share(torch.zeros(5, 3), 1, 1.0), "share must be in \\(0, 1\\)"),
    (lambda: temperature_schedule("step", T0=4, epochs=0), "epochs must be >= 1"),
    (lambda: soft_cross_entropy(torch.zeros(4, 10), torch.zeros(4, 10), T=0.0), "T must be"),
])
def test_bad_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# ---------------------------------------------------------------- token-level KD with a padding mask
def _tokens(seed=0, b=3, length=6, c=7):
    s, t = _logits(b, length, c, seed=seed), _logits(b, length, c, seed=seed + 1)
    y = torch.randint(0, c, (b, length), generator=torch.Generator().manual_seed(seed + 2))
    y[0, 4:], y[2, 1:] = -100, -100                                       # padding
    return s, t, y


def test_token_kd_leaves_padding_out_of_both_terms_and_averages_over_real_tokens():
    s, t, y = _tokens()
    keep = y != -100
    for alpha in (0.0, 0.3, 1.0):
        got = kd_loss(s, t, y, T=2.0, alpha=alpha)
        ce = F.cross_entropy(s[keep], y[keep])
        kl = F.kl_div(F.log_softmax(s[keep] / 2, -1), F.softmax(t[keep] / 2, -1), reduction="batchmean") * 4
        torch.testing.assert_close(got, alpha * ce + (1 - alpha) * kl)
    # changing the logits at padded positions changes nothing
    s2, t2 = s.clone(), t.clone()
    s2[~keep], t2[~keep] = 100.0 * torch.randn_like(s2[~keep]), -50.0
    torch.testing.assert_close(kd_loss(s2, t2, y, T=2.0, alpha=0.5), kd_loss(s, t, y, T=2.0, alpha=0.5))
    torch.testing.assert_close(kd.losses.KD(T=2.0, alpha=0.5)(s2, t2, y), kd_loss(s, t, y, T=2.0, alpha=0.5))


def test_explicit_mask_overrides_and_the_course_default_for_classifiers_is_kept():
    s, t, y = _tokens(seed=3)
    mask = torch.zeros_like(y, dtype=torch.bool)
    mask[1] = True                                                        # only sequence 1 counts
    want = kd_loss(s[1:2], t[1:2], y[1:2], T=3.0, alpha=0.4)
    torch.testing.assert_close(kd_loss(s, t, y, T=3.0, alpha=0.4, mask=mask), want)
    torch.testing.assert_close(soft_kl(s, t, 3.0, mask=mask), soft_kl(s[1:2], t[1:2], 3.0))
    # (B, C): an unlabeled row (-100) still gets the soft term (transfer sets, notebook 01)
    s2, t2 = _logits(4, 5), _logits(4, 5, seed=9)
    y2 = torch.tensor([1, -100, 3, -100])
    torch.testing.assert_close(kd_loss(s2, t2, y2, T=2.0, alpha=0.0), 4 * soft_kl(s2, t2, 2.0))
    row_mask = torch.tensor([True, False, True, True])
    want = 4 * soft_kl(s2[row_mask], t2[row_mask], 2.0)
    torch.testing.assert_close(kd_loss(s2, t2, T=2.0, alpha=0.0, mask=row_mask), want)


@pytest.mark.parametrize("mask, match", [(torch.ones(3, 5, dtype=torch.bool), "shape of the logits"),
                                         (torch.zeros(3, 6, dtype=torch.bool), "selects no position"),
                                         ([[True]], "bool tensor")])
def test_bad_masks_are_named(mask, match):
    s, t, y = _tokens()
    with pytest.raises((ValueError, TypeError), match=match):
        kd_loss(s, t, y, T=2.0, alpha=0.5, mask=mask)
