"""The one training loop (notebook 00): seeding without global state, modes, teacher, features."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdcourse as kd
from kdcourse.data import TensorLoader
from kdcourse.training import History


def _separable(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, generator=g) * 0.3
    x[torch.arange(n), 0, y] += 2.0
    return x, y


def _dropout_net(seed=0):
    """A model whose training draws from torch's global RNG (dropout masks)."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3))


def _cnn(seed=0):
    return kd.build_model("cnn", (1, 8), width=4, depth=1, n_classes=3, seed=seed)


def test_fit_learns_and_returns_history():
    x, y = _separable()
    m = kd.build_model("mlp", (1, 8), width=16, depth=1, n_classes=3, seed=0)
    h = kd.fit(m, TensorLoader(x, y, batch_size=32), epochs=5, lr=1e-2, test=(x, y), progress=False)
    assert isinstance(h, History) and h.loss is h["loss"]
    assert len(h.loss) == len(h.test_acc) == len(h.epoch_seconds) == 5
    assert h.loss[-1] < h.loss[0] and h.test_acc[-1] > 95
    assert h.test_acc[-1] == pytest.approx(kd.evaluate(m, (x, y)))
    assert h.seconds == pytest.approx(sum(h.epoch_seconds))
    assert not m.training  # documented: a trained model is left in eval mode
    with pytest.raises(AttributeError):
        h.missing


def test_fit_does_not_touch_the_global_rng_and_is_reproducible():
    x, y = _separable()
    weights = []
    for global_seed in (123, 999):   # different global states before each run
        m = _dropout_net()
        torch.manual_seed(global_seed)
        before = torch.get_rng_state()
        kd.fit(m, TensorLoader(x, y, batch_size=32, seed=5), epochs=2, seed=7, progress=False)
        assert torch.equal(torch.get_rng_state(), before)
        weights.append([p.detach().clone() for p in m.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*weights))


def test_fit_seed_acts_like_torch_manual_seed_and_changes_dropout_masks():
    x, y = _separable()
    loader = lambda: TensorLoader(x, y, batch_size=32, seed=5)  # noqa: E731
    by_hand = _dropout_net()
    opt = torch.optim.Adam(by_hand.parameters(), lr=1e-3, fused=True)  # fit's default optimizer
    torch.manual_seed(7)   # what fit did before it stopped touching global state
    by_hand.train()
    for xb, yb in loader():
        loss = F.cross_entropy(by_hand(xb), yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    same, other = _dropout_net(), _dropout_net()
    kd.fit(same, loader(), epochs=1, seed=7, progress=False)
    kd.fit(other, loader(), epochs=1, seed=8, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(by_hand.parameters(), same.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(same.parameters(), other.parameters()))


def test_distillation_is_the_same_loop_with_a_teacher_and_a_loss():
    x, y = _separable()
    teacher = kd.build_model("mlp", (1, 8), width=32, n_classes=3, seed=0)
    kd.fit(teacher, TensorLoader(x, y, batch_size=32), epochs=5, lr=1e-2, progress=False)
    before = [p.clone() for p in teacher.parameters()]
    student = kd.build_model("mlp", (1, 8), width=4, n_classes=3, seed=0)
    h = kd.fit(student, TensorLoader(x, y, batch_size=32), epochs=15, lr=1e-2, teacher=teacher,
               loss_fn=kd.losses.KD(T=2.0, alpha=0.0), progress=False, test=(x, y))
    assert kd.evaluate(teacher, (x, y)) > 95
    assert h.test_acc[-1] > 90
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))  # teacher frozen


def test_teacher_runs_in_eval_mode_and_gets_its_mode_back():
    x, y = _separable(64)
    teacher = _cnn(seed=1).train()
    stats = teacher.blocks[0][1].running_mean.clone()
    kd.fit(_cnn(), TensorLoader(x, y), epochs=1, teacher=teacher, loss_fn=kd.losses.KD(), progress=False)
    assert torch.equal(teacher.blocks[0][1].running_mean, stats)  # eval mode: BN statistics untouched
    assert teacher.training and all(m.training for m in teacher.modules())


def test_precomputed_teacher_outputs_equal_live_teacher():
    x, y = _separable()
    teacher = kd.build_model("mlp", (1, 8), width=32, n_classes=3, seed=0).eval()
    t_out = kd.predict(teacher, x)
    preds = []
    for loader, t in ((TensorLoader(x, y, t_out, seed=2), None), (TensorLoader(x, y, seed=2), teacher)):
        s = kd.build_model("mlp", (1, 8), width=4, n_classes=3, seed=0)
        kd.fit(s, loader, epochs=2, teacher=t, loss_fn=kd.losses.KD(T=3, alpha=0.5), progress=False)
        preds.append(kd.predict(s, x))
    torch.testing.assert_close(preds[0], preds[1])


class _FeatureMatch(nn.Module):
    """A loss with its own trainable regressor, fed by hooked features."""

    def __init__(self):
        super().__init__()
        self.reg = nn.Linear(4, 32)

    def forward(self, s_out, t_out, y, feats):
        assert set(feats.student) == {"embed"} and set(feats.teacher) == {"embed"}
        return F.cross_entropy(s_out, y) + F.mse_loss(self.reg(feats.student["embed"]), feats.teacher["embed"])


def test_features_reach_the_loss_and_loss_parameters_train():
    x, y = _separable()
    teacher = kd.build_model("mlp", (1, 8), width=32, n_classes=3, seed=0)
    student = kd.build_model("mlp", (1, 8), width=4, n_classes=3, seed=0)
    loss = _FeatureMatch()
    w0 = loss.reg.weight.clone()
    kd.fit(student, TensorLoader(x, y), epochs=1, teacher=teacher, loss_fn=loss,
           student_layers=["embed"], teacher_layers=["embed"], progress=False)
    assert not torch.equal(w0, loss.reg.weight)


def test_on_epoch_callback_and_progress_bar(capsys):
    x, y = _separable(64)
    seen, weights = [], []
    for progress in (True, False):
        m = kd.build_model("mlp", (1, 8), width=4, n_classes=3, seed=0)
        kd.fit(m, TensorLoader(x, y), epochs=3, on_epoch=seen.append, progress=progress, desc="my-run")
        weights.append(list(m.parameters()))
        err = capsys.readouterr().err
        assert ("my-run" in err) == progress  # the tqdm bar is drawn only when asked for
    assert seen == [0, 1, 2] * 2
    assert all(torch.equal(a, b) for a, b in zip(*weights))  # the bar does not change training


def test_fit_accepts_numpy_and_tensor_counts():
    x, y = _separable(64)
    runs = []
    for epochs, seed in ((2, 3), (np.int64(2), np.int64(3)), (torch.tensor(2), torch.tensor(3))):
        m = kd.build_model("mlp", (1, 8), width=4, n_classes=3, seed=0)
        runs.append(len(kd.fit(m, TensorLoader(x, y), epochs=epochs, seed=seed, progress=False).loss))
        runs.append(kd.predict(m, x))
    assert runs[0] == runs[2] == runs[4] == 2
    torch.testing.assert_close(runs[1], runs[3])
    torch.testing.assert_close(runs[1], runs[5])
    for bad in (True, "2", 1.5):
        with pytest.raises((TypeError, ValueError), match="epochs"):
            kd.fit(m, TensorLoader(x, y), epochs=bad, progress=False)


def test_fit_errors():
    x, y = _separable(64)
    m = kd.build_model("mlp", (1, 8), width=4, n_classes=3)
    with pytest.raises(ValueError, match="no teacher"):
        kd.fit(m, TensorLoader(x, y), epochs=1, teacher_layers=["embed"], progress=False)
    with pytest.raises(KeyError, match="unknown layer name.*valid names"):
        kd.fit(m, TensorLoader(x, y), epochs=1, student_layers=["conv9"], progress=False)
    with pytest.raises(ValueError, match="expects input of shape"):
        kd.fit(m, TensorLoader(x.reshape(64, 8), y), epochs=1, progress=False)
    with pytest.raises(ValueError, match="KD needs a teacher"):
        kd.fit(m, TensorLoader(x, y), epochs=1, loss_fn=kd.losses.KD(), progress=False)
    with pytest.raises(ValueError, match="epochs must be >= 0"):
        kd.fit(m, TensorLoader(x, y), epochs=-1)
    with pytest.raises(ValueError, match="yielded no batches"):
        kd.fit(m, [], epochs=1, progress=False)
    with pytest.raises(FloatingPointError, match="loss became nan"):
        kd.fit(m, TensorLoader(x * float("nan"), y), epochs=1, progress=False)


def test_evaluate_and_predict_match_a_hand_computation():
    x, y = _separable(100)
    m = _cnn().eval()
    with torch.no_grad():
        logits = m(x)
    torch.testing.assert_close(kd.predict(m, x, batch_size=7), logits)
    torch.testing.assert_close(kd.predict(m, TensorLoader(x, y, shuffle=False, batch_size=9)), logits)
    want = 100.0 * (logits.argmax(1) == y).float().mean().item()
    assert kd.evaluate(m, (x, y)) == pytest.approx(want)
    assert kd.evaluate(m, TensorLoader(x, y, shuffle=False, batch_size=7)) == pytest.approx(want)
    with pytest.raises(ValueError, match="empty"):
        kd.evaluate(m, (x[:0], y[:0]))


@pytest.mark.parametrize("helper", [lambda m, x, y: kd.predict(m, x), lambda m, x, y: kd.evaluate(m, (x, y)),
                                    lambda m, x, y: kd.evaluate(m, TensorLoader(x, y))])
def test_predict_and_evaluate_use_eval_mode_and_restore_the_mode(helper):
    x, y = _separable(32)
    m = _cnn().train()
    stats = m.blocks[0][1].running_mean.clone()
    helper(m, x, y)
    assert torch.equal(m.blocks[0][1].running_mean, stats)   # ran in eval mode: no BN update
    assert all(mod.training for mod in m.modules())
    m.blocks[0][1].eval()                     # a mixed state comes back as it was
    helper(m, x, y)
    assert m.training and not m.blocks[0][1].training
    m.eval()
    helper(m, x, y)
    assert not any(mod.training for mod in m.modules())


def test_fit_uses_fused_adam_on_cpu_and_plain_adam_matches_it_closely():
    x, y = _separable()
    fused_model, plain_model = _dropout_net(), _dropout_net()
    kd.fit(fused_model, TensorLoader(x, y, batch_size=32, seed=1), epochs=2, seed=3, progress=False)
    plain = torch.optim.Adam(plain_model.parameters(), lr=1e-3)
    kd.fit(plain_model, TensorLoader(x, y, batch_size=32, seed=1), epochs=2, seed=3, progress=False, optimizer=plain)
    for a, b in zip(fused_model.parameters(), plain_model.parameters()):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)  # same update rule, fused kernel


# --------------------------------------------------------------- batches of any form, AMP, clipping, LR schedule
def test_fit_with_dict_batches_through_the_hooks_equals_the_tuple_path():
    x, y = _separable()
    teacher = kd.build_model("mlp", (1, 8), width=32, n_classes=3, seed=0).eval()
    dicts = [{"inputs": {"x": xb}, "labels": yb} for xb, yb in TensorLoader(x, y, batch_size=32, seed=4)]
    models = []
    for loader, hooks in ((TensorLoader(x, y, batch_size=32, seed=4), {}),
                          (dicts, {"forward": lambda m, b: m(b["inputs"]["x"]), "targets": lambda b: b["labels"]})):
        s = kd.build_model("mlp", (1, 8), width=4, n_classes=3, seed=0)
        h = kd.fit(s, loader, epochs=1, teacher=teacher, loss_fn=kd.losses.KD(T=2, alpha=0.5), progress=False,
                   test=dicts if hooks else None, **hooks)
        models.append(s)
    for a, b in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(a, b)
    assert h.test_acc[0] == pytest.approx(kd.evaluate(models[0], (x, y)))
    with pytest.raises(TypeError, match="dict batch: pass forward="):
        kd.fit(kd.build_model("mlp", (1, 8), n_classes=3), dicts, epochs=1, progress=False)


def test_evaluate_with_hooks_counts_only_tokens_whose_target_is_not_minus_100():
    model = nn.Identity()
    logits = torch.tensor([[[0.0, 1.0], [1.0, 0.0], [1.0, 0.0]]])          # predicts 1, 0, 0
    y = torch.tensor([[1, 1, -100]])
    batches = [{"logits": logits, "y": y}]
    acc = kd.evaluate(model, batches, device="cpu", forward=lambda m, b: m(b["logits"]), targets=lambda b: b["y"])
    assert acc == pytest.approx(50.0)
    torch.testing.assert_close(kd.predict(model, batches, device="cpu", forward=lambda m, b: m(b["logits"])), logits)


def test_clipping_scheduler_and_amp_are_off_by_default_and_act_when_given():
    x, y = _separable()
    run = lambda **kw: [p.detach().clone() for p in  # noqa: E731
                        _fit_sgd(x, y, **kw).parameters()]
    plain = run()
    constant = lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)  # noqa: E731
    for a, b in zip(plain, run(clip_grad_norm=1e9, scheduler=constant)):
        torch.testing.assert_close(a, b)                                   # no-op settings: the plain path
    start = [p.detach().clone() for p in _sgd_net().parameters()]
    frozen = run(scheduler=lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.0))
    assert all(torch.equal(a, b) for a, b in zip(start, frozen))           # LR 0 from the first step
    clipped = run(clip_grad_norm=1e-3)                                     # 8 SGD steps of lr 1, each of norm <= 1e-3
    step = torch.cat([(a - b).flatten() for a, b in zip(clipped, start)]).norm().item()
    assert 0 < step <= 8e-3 + 1e-6
    bf16 = run(amp=True)
    assert all(torch.isfinite(p).all() for p in bf16) and any(not torch.equal(a, b) for a, b in zip(bf16, plain))
    with pytest.raises(ValueError, match="amp must be"):
        run(amp="fp8")


def _sgd_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


def _fit_sgd(x, y, **kw):
    m = _sgd_net()
    kd.fit(m, TensorLoader(x, y, batch_size=32, seed=1), epochs=1, progress=False,
           optimizer=torch.optim.SGD(m.parameters(), lr=1.0), **kw)
    return m


def test_fit_refuses_a_model_with_nothing_to_train():
    x, y = _separable()
    frozen = kd.build_model("mlp", (1, 8), width=4, n_classes=3, seed=0).requires_grad_(False)
    with pytest.raises(ValueError, match="no trainable parameter"):
        kd.fit(frozen, TensorLoader(x, y, batch_size=32), epochs=1, progress=False)
