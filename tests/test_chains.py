"""Tests for kdcourse.chains (notebook 04): chains of distillation, their cost, target entropy."""
import math

import pytest
import torch

import kdcourse as kd
from kdcourse import chains
from kdcourse.chains import (SCHEDULES, ChainLink, chain_seconds, cosine_schedule, run_chain, target_entropy,
                             time_epochs)
from kdcourse.training import History


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


def test_cosine_schedule_follows_the_half_cosine_to_zero():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.4)
    sched = cosine_schedule(8)(opt)
    lrs = []
    for _ in range(8):
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
    want = [0.4 * (1 + math.cos(math.pi * k / 8)) / 2 for k in range(1, 9)]   # closed form after k steps
    assert lrs == pytest.approx(want, abs=1e-9) and lrs[3] == pytest.approx(0.2) and lrs[-1] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="total_steps"):
        cosine_schedule(0)


def test_cosine_chain_is_fit_with_the_cosine_scheduler_over_all_steps():
    x, y = _toy()
    teacher = _mlp(32, seed=1)
    link = run_chain(teacher, [_mlp(seed=2)], x, y, test=(x, y), epochs=3, seed=5, lr=1e-2, batch_size=32,
                     schedule="cosine")[0]
    manual, const = _mlp(seed=2), _mlp(seed=2)
    loader = lambda: kd.data.TensorLoader(x, y, kd.predict(teacher, x), batch_size=32, seed=5)
    kd.fit(manual, loader(), epochs=3, loss_fn=kd.losses.KD(), lr=1e-2, seed=5, progress=False,
           scheduler=cosine_schedule(3 * len(loader())))   # 3 epochs x 3 batches, one scheduler step per batch
    kd.fit(const, loader(), epochs=3, loss_fn=kd.losses.KD(), lr=1e-2, seed=5, progress=False)
    for a, b in zip(link.model.parameters(), manual.parameters()):
        torch.testing.assert_close(a, b)
    assert not all(torch.equal(a, b) for a, b in zip(link.model.parameters(), const.parameters()))
    assert SCHEDULES == ("constant", "cosine")
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        run_chain(teacher, [_mlp()], x, y, test=(x, y), epochs=1, schedule="step")


def test_run_chain_rejects_bad_input():
    x, y = _toy()
    teacher = _mlp(seed=1)
    with pytest.raises(ValueError, match="at least one model"):
        run_chain(teacher, [], x, y, test=(x, y), epochs=1)
    with pytest.raises(ValueError, match="one per model"):
        run_chain(teacher, [_mlp(), _mlp()], x, y, test=(x, y), epochs=[1])
    with pytest.raises(ValueError, match="y_train"):
        run_chain(teacher, [_mlp()], x, y[:-1], test=(x, y), epochs=1)


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


def test_time_epochs_is_the_median_of_interleaved_rounds(monkeypatch):
    x, y = _toy(n=64)
    small, big = _mlp(4), _mlp(32)
    before = [p.clone() for p in small.parameters()]
    calls = []
    seconds = iter([1.0, 10.0, 9.0, 2.0, 2.0, 30.0])   # round 0: small, big; round 1; round 2

    def fake_fit(model, loader, *, epochs, loss_fn, seed, device, progress):
        calls.append((kd.count_params(model), seed, epochs, len(next(iter(loader)))))
        model.head.weight.data.add_(1.0)   # training a copy must not reach the caller's model
        return History(seconds=next(seconds))

    monkeypatch.setattr(chains, "fit", fake_fit)
    t = time_epochs({"small": small, "big": big}, x, y, n_classes=4, reps=3, batch_size=16)
    assert t == {"small": 2.0, "big": 10.0}   # medians of [1, 9, 2] and [10, 2, 30]
    n_small, n_big = kd.count_params(small), kd.count_params(big)
    assert calls == [(n_small, 0, 1, 3), (n_big, 0, 1, 3), (n_small, 1, 1, 3), (n_big, 1, 1, 3),
                     (n_small, 2, 1, 3), (n_big, 2, 1, 3)]   # interleaved, one epoch, (x, y, teacher) batches
    assert all(torch.equal(a, b) for a, b in zip(before, small.parameters()))


def test_time_epochs_times_real_epochs():
    x, y = _toy(n=64)
    t = time_epochs({"a": _mlp(4)}, x, y, n_classes=4, reps=1, batch_size=32)
    assert set(t) == {"a"} and t["a"] > 0
    with pytest.raises(ValueError, match="at least one model"):
        time_epochs({}, x, y)
    with pytest.raises(ValueError, match="reps >= 1"):
        time_epochs({"a": _mlp(4)}, x, y, reps=0)
