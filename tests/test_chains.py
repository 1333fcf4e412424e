"""Tests for kdcourse.chains (notebook 04): chains of distillation, spread-aware comparisons."""
import math

import pytest
import torch

import kdcourse as kd
from kdcourse.chains import (ChainLink, chain_seconds, compare_runs, mean_std, run_chain, target_entropy,
                             time_epochs)


def _toy(n=96, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 12, generator=g)
    y = (x.sum(dim=(1, 2)) > 0).long() + 2 * (x[:, 0, 0] > 0).long()  # 4 classes
    return x, y


def _mlp(width=8, seed=0):
    return kd.build_model("mlp", (1, 12), width=width, depth=1, n_classes=4, seed=seed)


def test_one_link_chain_is_plain_kd_with_fit():
    x, y = _toy()
    teacher = _mlp(32, seed=1)
    kd.fit(teacher, kd.data.TensorLoader(x, y, seed=0), epochs=3, progress=False)
    links = run_chain(teacher, [_mlp(seed=2)], x, y, test=(x, y), epochs=2, T=3.0, alpha=0.3, seed=5)
    manual = _mlp(seed=2)
    t_out = kd.predict(teacher, x)
    kd.fit(manual, kd.data.TensorLoader(x, y, t_out, seed=5), epochs=2,
           loss_fn=kd.losses.KD(T=3.0, alpha=0.3), seed=5, progress=False)
    for a, b in zip(links[0].model.parameters(), manual.parameters()):
        torch.testing.assert_close(a, b)
    assert links[0].test_acc == pytest.approx(kd.evaluate(manual, (x, y)))


def test_chain_trains_each_link_from_the_previous_one():
    x, y = _toy()
    teacher = _mlp(32, seed=1)
    links = run_chain(teacher, [_mlp(16, seed=3), _mlp(4, seed=4)], x, y, test=(x, y),
                      epochs=[2, 1], names=["assistant", "student"])
    assert [link.name for link in links] == ["assistant", "student"]
    assert all(isinstance(link, ChainLink) and 0 <= link.test_acc <= 100 for link in links)
    assert links[1].params == kd.count_params(_mlp(4))
    assert chain_seconds(links) == pytest.approx(links[0].seconds + links[1].seconds)
    assert [len(link.epoch_seconds) for link in links] == [2, 1]
    fake = [ChainLink("a", None, 0.0, 13.0, 0, (1.0, 1.0, 1.0, 10.0)), ChainLink("b", None, 0.0, 2.0, 0, (2.0,))]
    assert chain_seconds(fake) == pytest.approx(15.0)
    assert chain_seconds(fake, robust=True) == pytest.approx(4 * 1.0 + 2.0)  # the stalled epoch is ignored
    # the student's targets came from the assistant: redoing that link by hand matches
    manual = _mlp(4, seed=4)
    run_chain(links[0].model, [manual], x, y, test=(x, y), epochs=1)
    for a, b in zip(links[1].model.parameters(), manual.parameters()):
        torch.testing.assert_close(a, b)


def test_curve_records_test_accuracy_per_epoch_without_changing_training():
    x, y = _toy()
    teacher = _mlp(32, seed=1)
    plain = run_chain(teacher, [_mlp(seed=2)], x, y, test=(x, y), epochs=3, seed=4)[0]
    traced = run_chain(teacher, [_mlp(seed=2)], x, y, test=(x, y), epochs=3, seed=4, curve=True)[0]
    assert plain.test_curve == () and len(traced.test_curve) == 3
    assert traced.test_curve[-1] == pytest.approx(traced.test_acc)
    for a, b in zip(plain.model.parameters(), traced.model.parameters()):
        torch.testing.assert_close(a, b)


def test_run_chain_rejects_bad_input():
    x, y = _toy()
    teacher = _mlp(seed=1)
    with pytest.raises(ValueError, match="at least one model"):
        run_chain(teacher, [], x, y, test=(x, y), epochs=1)
    with pytest.raises(ValueError, match="one per model"):
        run_chain(teacher, [_mlp(), _mlp()], x, y, test=(x, y), epochs=[1])
    with pytest.raises(ValueError, match="y_train"):
        run_chain(teacher, [_mlp()], x, y[:-1], test=(x, y), epochs=1)


def test_mean_std_is_the_sample_std():
    m, s = mean_std([1.0, 2.0, 3.0, 4.0])
    assert m == pytest.approx(2.5)
    assert s == pytest.approx(torch.tensor([1.0, 2.0, 3.0, 4.0]).std().item())
    assert mean_std([7.0]) == (7.0, 0.0)
    with pytest.raises(ValueError):
        mean_std([])


def test_compare_runs_needs_a_gain_larger_than_the_spread():
    out = compare_runs([61.0, 63.0, 62.0], [60.0, 61.0, 59.0])
    assert out["gain"] == pytest.approx(2.0) and out["spread"] == pytest.approx(1.0) and out["beats"]
    noisy = compare_runs([60.0, 66.0, 63.0], [60.0, 61.0, 59.0])
    assert noisy["gain"] == pytest.approx(3.0) and not noisy["beats"]  # spread 3.0
    with pytest.raises(ValueError, match="same number"):
        compare_runs([1.0, 2.0], [1.0, 2.0, 3.0])


def test_target_entropy_bounds():
    c = 10
    assert target_entropy(torch.zeros(5, c)) == pytest.approx(math.log(c))
    hard = torch.zeros(5, c)
    hard[:, 0] = 100.0
    assert target_entropy(hard) == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(20, c, generator=torch.Generator().manual_seed(0))
    assert target_entropy(logits, T=1.0) < target_entropy(logits, T=4.0)  # higher T, softer
    with pytest.raises(ValueError):
        target_entropy(torch.zeros(c))
    with pytest.raises(ValueError):
        target_entropy(logits, T=0)


def test_time_epochs_leaves_models_untouched_and_orders_by_size():
    x, y = _toy(n=256)
    small = _mlp(4)
    big = kd.build_model("mlp", (1, 12), width=1024, depth=3, n_classes=4, seed=0)  # ~2M params
    before = [p.clone() for p in small.parameters()]
    t = time_epochs({"small": small, "big": big}, x, y, n_classes=4, reps=3, batch_size=32)
    assert set(t) == {"small", "big"} and all(v > 0 for v in t.values())
    assert t["big"] > t["small"]
    for a, b in zip(before, small.parameters()):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError):
        time_epochs({}, x, y)
