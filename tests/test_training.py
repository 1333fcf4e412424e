import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdcourse as kd
from kdcourse.data import TensorLoader


def _separable(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, generator=g) * 0.3
    x[torch.arange(n), 0, y] += 2.0
    return x, y


def test_fit_learns_and_returns_history():
    x, y = _separable()
    m = kd.build_model("mlp", (1, 8), width=16, depth=1, n_classes=3, seed=0)
    h = kd.fit(m, TensorLoader(x, y, batch_size=32), epochs=5, lr=1e-2, test=(x, y), progress=False)
    assert len(h.loss) == len(h.test_acc) == len(h.epoch_seconds) == 5
    assert h.loss[-1] < h.loss[0] and h.test_acc[-1] > 95
    assert h.seconds == pytest.approx(sum(h.epoch_seconds))
    assert not m.training  # left in eval mode


def test_fit_is_reproducible_with_seeds():
    x, y = _separable()
    runs = []
    for _ in range(2):
        m = kd.build_model("mlp", (1, 8), width=8, n_classes=3, seed=1)
        kd.fit(m, TensorLoader(x, y, batch_size=32, seed=5), epochs=2, progress=False)
        runs.append(kd.predict(m, x))
    torch.testing.assert_close(runs[0], runs[1])


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


def test_on_epoch_callback_and_progress_bar():
    x, y = _separable(64)
    seen = []
    m = kd.build_model("mlp", (1, 8), width=4, n_classes=3)
    kd.fit(m, TensorLoader(x, y), epochs=3, on_epoch=seen.append, progress=True)
    assert seen == [0, 1, 2]


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


def test_evaluate_accepts_tuples_and_loaders():
    x, y = _separable(100)
    m = kd.build_model("mlp", (1, 8), width=4, n_classes=3)
    a = kd.evaluate(m, (x, y))
    b = kd.evaluate(m, TensorLoader(x, y, shuffle=False, batch_size=7))
    assert a == pytest.approx(b) and 0 <= a <= 100
    with pytest.raises(ValueError, match="empty"):
        kd.evaluate(m, (x[:0], y[:0]))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_fit_on_cuda():
    x, y = _separable()
    m = kd.build_model("cnn", (1, 8), width=4, depth=1, n_classes=3)
    teacher = kd.build_model("cnn", (1, 8), width=8, depth=1, n_classes=3)
    h = kd.fit(m, TensorLoader(x, y), epochs=2, teacher=teacher, loss_fn=kd.losses.KD(),
               device="cuda", test=(x, y), progress=False)
    assert next(m.parameters()).is_cuda and len(h.test_acc) == 2
