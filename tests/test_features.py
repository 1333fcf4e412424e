"""Feature distillation losses, CKA and hooks on any model (notebook 02)."""
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import kdcourse as kd
from kdcourse.features import (AttentionTransfer, FitNets, attention_loss, attention_map, cka_matrix,
                               feature_shapes, hint_loss, linear_cka, make_regressor)
from kdcourse.losses import Features


def _r(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_hint_loss_hand_example_and_zero_when_matching():
    a, b = torch.tensor([[1.0, 2.0]]), torch.tensor([[1.0, 4.0]])
    assert hint_loss(a, b).item() == pytest.approx(2.0)  # ((0)^2 + (2)^2) / 2
    f = _r(4, 8)
    assert hint_loss(f, f.clone()).item() == 0.0


@pytest.mark.parametrize("s,t,kind", [((16,), (32,), nn.Linear), ((4, 7, 7), (16, 7, 7), nn.Conv2d),
                                      ((4, 10), (8, 10), nn.Conv1d), ((16,), (8, 5), nn.Sequential)])
def test_regressor_maps_student_shape_to_teacher_shape(s, t, kind):
    reg = make_regressor(s, t)
    assert isinstance(reg, kind) and reg(_r(3, *s)).shape == (3, *t)


def test_fitnets_equals_beta_times_mse_of_the_regressed_features_plus_ce():
    fs, ft = _r(5, 6), _r(5, 3, 4, seed=1)
    logits, y = _r(5, 10, seed=2), torch.randint(0, 10, (5,))
    loss = FitNets((6,), (3, 4), student_layer="a", teacher_layer="b", beta=0.5)
    reg = loss.regressor
    assert isinstance(reg[0], nn.Linear) and reg[0].out_features == 12
    want = F.cross_entropy(logits, y) + 0.5 * ((reg(fs) - ft) ** 2).mean()
    torch.testing.assert_close(loss(logits, None, y, Features({"a": fs}, {"b": ft})), want)
    same = FitNets((6,), (6,), student_layer="a", teacher_layer="b", base=None, regressor=False)
    assert isinstance(same.regressor, nn.Identity)
    torch.testing.assert_close(same(None, None, None, Features({"a": fs}, {"b": fs + 2.0})), torch.tensor(4.0))


def test_fitnets_inside_fit_sends_no_gradient_to_the_teacher():
    x, y = _r(64, 1, 40), torch.randint(0, 10, (64,))
    teacher, student = kd.build_model("cnn", (1, 40), width=4, depth=2), kd.build_model("mlp", (1, 40), width=8)
    before = [p.clone() for p in teacher.parameters()]
    ts, ss = feature_shapes(teacher, ["blocks.1"], x), feature_shapes(student, ["embed"], x)
    loss = FitNets(ss["embed"], ts["blocks.1"], student_layer="embed", teacher_layer="blocks.1")
    kd.fit(student, kd.data.TensorLoader(x, y, batch_size=16), epochs=1, teacher=teacher, loss_fn=loss,
           student_layers=["embed"], teacher_layers=["blocks.1"], progress=False)
    assert all(torch.equal(a, b) for a, b in zip(before, teacher.parameters()))
    assert all(p.grad is None for p in teacher.parameters())


def test_attention_map_hand_example_and_scale_invariance():
    f = torch.zeros(1, 2, 1, 2)
    f[0, 0, 0, 0], f[0, 1, 0, 1] = 3.0, 4.0  # channel means of f^2: [4.5, 8]
    want = torch.tensor([[4.5, 8.0]]) / torch.tensor([4.5, 8.0]).norm()
    torch.testing.assert_close(attention_map(f), want)
    fs, ft = _r(4, 8, 7, 7), _r(4, 16, 7, 7, seed=1)
    torch.testing.assert_close(attention_loss(fs, ft), attention_loss(5.0 * fs, 0.1 * ft))
    assert attention_loss(ft, ft.clone()).item() == pytest.approx(0.0, abs=1e-12)


def test_attention_loss_is_the_mean_over_batch_and_positions_and_hint_loss_the_mean_over_elements():
    fs, ft = _r(3, 4, 5, 6), _r(3, 8, 5, 6, seed=1)
    qs, qt = attention_map(fs), attention_map(ft)
    assert qs.shape == (3, 30)
    torch.testing.assert_close(qs.norm(dim=1), torch.ones(3))                       # unit-length maps
    torch.testing.assert_close(attention_loss(fs, ft), ((qs - qt) ** 2).sum() / (3 * 30))   # 1/(B*HW) sum
    at = AttentionTransfer([("a", "b")], base=None)                                 # default beta = 1000
    torch.testing.assert_close(at(None, None, None, Features({"a": fs}, {"b": ft})), 1000.0 * attention_loss(fs, ft))
    a, b = _r(4, 3, 5), _r(4, 3, 5, seed=2)
    torch.testing.assert_close(hint_loss(a, b), ((a - b) ** 2).sum() / (4 * 15))     # N = batch x elements


def test_attention_transfer_gradient_reaches_student_only():
    fs, ft = _r(3, 4, 5, 5).requires_grad_(True), _r(3, 8, 5, 5, seed=1)
    loss = AttentionTransfer([("a", "b")], base=None)(None, None, None, Features({"a": fs}, {"b": ft}))
    loss.backward()
    assert fs.grad is not None and fs.grad.abs().sum() > 0 and ft.grad is None


def test_linear_cka_properties():
    x = _r(100, 20)
    q, _ = torch.linalg.qr(_r(20, 20, seed=1))
    assert linear_cka(x, x).item() == pytest.approx(1.0, abs=1e-5)
    assert linear_cka(x, 3.0 * x @ q + 1.0).item() == pytest.approx(1.0, abs=1e-5)  # rotation, scale, shift
    assert linear_cka(x, _r(100, 20, seed=2)).item() < 0.4
    torch.testing.assert_close(linear_cka(x, _r(100, 5, seed=3)), linear_cka(_r(100, 5, seed=3), x))


def test_linear_cka_hand_example():
    x = torch.tensor([[1.0], [2.0], [3.0]])
    y = torch.tensor([[1.0], [0.0], [2.0]])   # centred: x=[-1,0,1], y=[0,-1,1]; <x,y>=1, |x|^2=2, |y|^2=2
    assert linear_cka(x, y).item() == pytest.approx(1.0 / 4.0)


def test_cka_matrix_equals_linear_cka_of_the_captured_features():
    a, b = kd.build_model("cnn", (1, 28, 28), width=4, seed=0).eval(), kd.build_model("mlp", (1, 28, 28), seed=1).eval()
    x = _r(50, 1, 28, 28)
    layers_a, layers_b = ["blocks.0", "blocks.1", "head"], ["embed", "head"]
    mat = cka_matrix(a, b, x, layers_a, layers_b)
    with torch.no_grad(), kd.capture(a, layers_a) as fa, kd.capture(b, layers_b) as fb:
        a(x), b(x)
    want = torch.tensor([[linear_cka(fa[i], fb[j]).item() for j in layers_b] for i in layers_a])
    assert mat.shape == (3, 2)
    torch.testing.assert_close(mat, want)
    torch.testing.assert_close(cka_matrix(b, a, x, layers_b, layers_a), mat.T)   # swapping models transposes


@pytest.mark.parametrize("call,match", [
    (lambda: hint_loss(_r(4, 3), _r(5, 3)), "batch sizes differ"),
    (lambda: hint_loss(_r(0, 3), _r(0, 3)), "empty batch"),
    (lambda: hint_loss(_r(4, 3), _r(4, 5)), "differ in shape"),
    (lambda: make_regressor((4, 7, 7), (8, 14, 14)), "equal spatial sizes"),
    (lambda: attention_map(_r(4, 10)), "conv features"),
    (lambda: attention_loss(_r(2, 3, 5, 5), _r(2, 3, 4, 4)), "spatial sizes differ"),
    (lambda: attention_loss(_r(2, 3, 5, 5), _r(3, 3, 5, 5)), "batch sizes differ"),
    (lambda: linear_cka(_r(10, 3), _r(9, 3)), "batch sizes differ"),
    (lambda: linear_cka(_r(1, 3), _r(1, 3)), "at least 2"),
    (lambda: FitNets((4,), (5,), student_layer="a", teacher_layer="b", regressor=False), "equal feature shapes"),
    (lambda: AttentionTransfer([]), "at least one"),
])
def test_bad_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_hooks_on_a_torchvision_model():
    net = torchvision.models.resnet18(weights=None, num_classes=10).eval()
    x = _r(2, 3, 64, 64)
    with kd.capture(net, ["layer1", "layer4", "fc"]) as feats:
        out = net(x)
    assert feats["layer1"].shape == (2, 64, 16, 16) and feats["layer4"].shape == (2, 512, 2, 2)
    torch.testing.assert_close(feats["fc"], out)
    with pytest.raises(KeyError, match="unknown layer name.*'layer9'.*valid names: conv1, bn1"):
        with kd.capture(net, ["layer9"]):
            pass
    assert attention_map(feats["layer4"]).shape == (2, 4)


def test_hint_and_attention_losses_send_no_gradient_to_teacher_features():
    fs = _r(4, 6).requires_grad_(True)
    ft = _r(4, 3, seed=1).requires_grad_(True)   # even a teacher feature that tracks gradients
    fit = FitNets((6,), (3,), student_layer="a", teacher_layer="b", base=None)
    fit(None, None, None, Features({"a": fs}, {"b": ft})).backward()
    assert fs.grad.abs().sum() > 0 and ft.grad is None
    assert all(p.grad is not None for p in fit.regressor.parameters())   # the regressor trains too
    cs, ct = _r(2, 3, 4, 4).requires_grad_(True), _r(2, 5, 4, 4, seed=2).requires_grad_(True)
    attention_loss(cs, ct).backward()
    assert cs.grad is not None and ct.grad is None


def test_losses_name_a_missing_captured_feature():
    fit = FitNets((6,), (6,), student_layer="embed", teacher_layer="blocks.1", base=None)
    with pytest.raises(KeyError, match="no captured teacher feature 'blocks.1'.*teacher_layers"):
        fit(None, None, None, Features({"embed": _r(2, 6)}, {}))
    at = AttentionTransfer([("blocks.0", "blocks.0")], base=None)
    with pytest.raises(KeyError, match="no captured student feature 'blocks.0'"):
        at(None, None, None, Features({}, {"blocks.0": _r(2, 3, 4, 4)}))


@pytest.mark.parametrize("call,match", [
    (lambda: attention_loss(_r(0, 3, 5, 5), _r(0, 3, 5, 5)), "empty batch"),
    (lambda: linear_cka(_r(0, 3), _r(0, 3)), "empty batch"),
    (lambda: linear_cka(_r(10), _r(10)), "needs representations"),
    (lambda: hint_loss(torch.tensor(1.0), torch.tensor(1.0)), "batched tensors"),
    (lambda: linear_cka(torch.ones(5, 3), _r(5, 3)), "constant"),
])
def test_more_bad_input_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_linear_cka_not_invariant_to_an_arbitrary_invertible_map():
    x = _r(200, 10)
    a = torch.diag(torch.tensor([10.0] + [0.1] * 9))   # invertible, strongly anisotropic
    assert linear_cka(x, x @ a).item() < 0.9


@pytest.mark.parametrize("call", [lambda m, x: cka_matrix(m, m, x, ["blocks.0"], ["head"]),
                                  lambda m, x: feature_shapes(m, ["blocks.0"], x)])
def test_cka_matrix_and_feature_shapes_run_in_eval_mode_and_restore_it(call):
    m = kd.build_model("cnn", (1, 40), width=4).train()
    bn = m.blocks[0][1]
    stats = bn.running_mean.clone()
    call(m, _r(20, 1, 40))
    assert torch.equal(bn.running_mean, stats)   # eval mode inside: no BatchNorm update
    assert all(mod.training for mod in m.modules())
    bn.eval()                                    # a mixed state comes back as it was
    call(m, _r(20, 1, 40))
    assert m.training and not bn.training
    m.eval()
    call(m, _r(20, 1, 40))
    assert not any(mod.training for mod in m.modules())


def test_feature_shapes_are_the_captured_shapes_without_batch():
    m = kd.build_model("cnn", (1, 40), width=4, depth=2)
    assert feature_shapes(m, ["blocks.0", "blocks.1", "embed", "head"], _r(5, 1, 40)) == {
        "blocks.0": (4, 20), "blocks.1": (8, 10), "embed": (16,), "head": (10,)}
    assert feature_shapes(kd.build_model("mlp", (1, 40), width=8), ["blocks.0", "embed"], _r(1, 1, 40)) == {
        "blocks.0": (8,), "embed": (8,)}


def test_capture_on_a_course_model_matches_output_and_releases_hooks():
    m = kd.build_model("cnn", (1, 28, 28), width=4).eval()
    x = _r(3, 1, 28, 28)
    with kd.capture(m, ["blocks.0", "head"]) as feats:
        out = m(x)
    torch.testing.assert_close(feats["head"], out)
    assert feats["blocks.0"].shape == (3, 4, 14, 14)
    assert all(not mod._forward_hooks for mod in m.modules())
    with pytest.raises(RuntimeError):
        with kd.capture(m, ["blocks.0"]):
            raise RuntimeError("boom")
    assert all(not mod._forward_hooks for mod in m.modules())   # removed even after an error
    with pytest.raises(KeyError, match="unknown layer name.*'blocks.7'.*valid names: blocks"):
        with kd.capture(m, ["blocks.7"]):
            pass


# ------------------------------------------------ hidden states (B, L, D): layout="channels_last", masks
def test_channels_last_regressor_is_a_linear_on_d_and_rejects_mismatched_lengths():
    reg = make_regressor((6, 8), (6, 12), layout="channels_last")
    assert isinstance(reg, nn.Linear) and (reg.in_features, reg.out_features) == (8, 12)
    assert reg(_r(2, 6, 8)).shape == (2, 6, 12)
    with pytest.raises(ValueError, match="channels_last"):
        make_regressor((6, 8), (5, 12), layout="channels_last")
    with pytest.raises(ValueError, match="equal spatial sizes"):   # channels-first reading of the same shapes
        make_regressor((6, 8), (6, 12))
    with pytest.raises(ValueError, match="layout must be one of"):
        make_regressor((6, 8), (6, 12), layout="NLC")
    assert kd.features.LAYOUTS == ("channels_first", "channels_last")


def test_masked_hint_loss_ignores_padding_and_cosine_is_scale_free():
    r, t = _r(2, 5, 4), _r(2, 5, 4, seed=1)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    want = (r[mask] - t[mask]).pow(2).mean()
    got = hint_loss(r, t, mask=mask, layout="channels_last")
    torch.testing.assert_close(got, want)
    r2 = r.clone()
    r2[0, 3:] = 1e3                                                        # padded positions
    torch.testing.assert_close(hint_loss(r2, t, mask=mask, layout="channels_last"), got)
    cos = hint_loss(r, t, kind="cosine", layout="channels_last", mask=mask)
    torch.testing.assert_close(hint_loss(3.0 * r, t, kind="cosine", layout="channels_last", mask=mask), cos)
    torch.testing.assert_close(cos, (1 - F.cosine_similarity(r, t, dim=-1))[mask].mean())
    assert hint_loss(r, 2.0 * r, kind="cosine", layout="channels_last").item() == pytest.approx(0.0, abs=1e-6)
    # channels_first cosine is over dim 1: the same as channels_last on the transposed maps
    torch.testing.assert_close(hint_loss(r.transpose(1, 2), t.transpose(1, 2), kind="cosine"),
                               hint_loss(r, t, kind="cosine", layout="channels_last"))
    with pytest.raises(ValueError, match="selects no position"):
        hint_loss(r, t, mask=torch.zeros(2, 5, dtype=torch.bool), layout="channels_last")
    with pytest.raises(ValueError, match="kind must be"):
        hint_loss(r, t, kind="l1")


def test_fitnets_on_hidden_states_leaves_out_the_tokens_whose_target_is_minus_100():
    fs, ft = _r(2, 5, 4), _r(2, 5, 6, seed=1)
    y = torch.tensor([[1, 2, 3, -100, -100], [0, 1, 2, 3, 4]])
    loss = FitNets((5, 4), (5, 6), student_layer="a", teacher_layer="b", base=None, layout="channels_last",
                   kind="cosine")
    assert isinstance(loss.regressor, nn.Linear)
    got = loss(None, None, y, Features({"a": fs}, {"b": ft}))
    ft2 = ft.clone()
    ft2[0, 3:] = -7.0
    torch.testing.assert_close(loss(None, None, y, Features({"a": fs}, {"b": ft2})), got)
    keep = y != -100
    torch.testing.assert_close(got, (1 - F.cosine_similarity(loss.regressor(fs), ft, dim=-1))[keep].mean())


def test_channels_last_attention_equals_channels_first_on_permuted_maps_and_masks_padding():
    f = _r(2, 3, 4, 5)                                                    # (B, C, H, W)
    torch.testing.assert_close(attention_map(f.permute(0, 2, 3, 1), layout="channels_last"), attention_map(f))
    h, g = _r(2, 6, 8), _r(2, 6, 3, seed=1)                               # (B, L, D) with different D
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1] * 6], dtype=torch.bool)
    base = attention_loss(h, g, layout="channels_last", mask=mask)
    h2 = h.clone()
    h2[0, 4:] *= 50
    torch.testing.assert_close(attention_loss(h2, g, layout="channels_last", mask=mask), base)
    assert attention_loss(h2, g, layout="channels_last") != attention_loss(h, g, layout="channels_last")
    at = AttentionTransfer([("a", "b")], base=None, beta=2.0, layout="channels_last")
    y = torch.where(mask, 1, -100)
    torch.testing.assert_close(at(None, None, y, Features({"a": h2}, {"b": g})), 2.0 * base)


def test_pool_tokens_is_the_mean_over_kept_positions():
    h = _r(2, 4, 3)
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    pooled = kd.features.pool_tokens(h, mask)
    torch.testing.assert_close(pooled[0], h[0, :2].mean(0))
    torch.testing.assert_close(pooled[1], h[1].mean(0))
    torch.testing.assert_close(kd.features.pool_tokens(h), h.mean(1))
    with pytest.raises(ValueError, match="no kept position"):
        kd.features.pool_tokens(h, torch.tensor([[0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool))


def test_a_tuple_feature_is_named_with_a_hint_to_select():
    loss = FitNets((4,), (4,), student_layer="a", teacher_layer="b", base=None, regressor=False)
    with pytest.raises(TypeError, match="feature 'a' is a tuple.*select"):
        loss(None, None, None, Features({"a": (_r(2, 4), None)}, {"b": _r(2, 4)}))


# ---------------------------------------------------------------------------------- CKA that scales
def test_linear_cka_kernel_form_equals_the_feature_form():
    x, y = _r(30, 7), _r(30, 3, 2, seed=1) + 0.5 * _r(30, 7, seed=2)[:, :6].reshape(30, 3, 2)
    for a, b in ((x, y), (x, x @ _r(7, 7, seed=3)), (x, _r(30, 40, seed=4))):
        torch.testing.assert_close(linear_cka(a, b, form="kernel"), linear_cka(a, b, form="features"))
    wide = _r(8, 5000)                                                   # 5000^2 numbers: auto picks the kernel form
    torch.testing.assert_close(linear_cka(wide, wide[:, :100]), linear_cka(wide, wide[:, :100], form="kernel"))
    with pytest.raises(ValueError, match="form must be"):
        linear_cka(x, x, form="gram")


def test_hsic_unbiased_equals_the_u_statistic_over_distinct_quadruples():
    import itertools
    x, y = _r(6, 3).double(), _r(6, 2, seed=1).double()
    k, l_ = x @ x.T, y @ y.T
    total = sum(k[i, j] * l_[i, j] + k[i, j] * l_[q, r] - 2 * k[i, j] * l_[i, q]
                for i, j, q, r in itertools.permutations(range(6), 4))
    torch.testing.assert_close(kd.features.hsic_unbiased(k, l_), total / (6 * 5 * 4 * 3))
    with pytest.raises(ValueError, match="n >= 4"):
        kd.features.hsic_unbiased(k[:3, :3], l_[:3, :3])


def test_minibatch_cka_removes_the_bias_of_wide_random_features():
    x, y = _r(400, 300), _r(400, 300, seed=1)                            # independent: population CKA = 0
    biased = float(linear_cka(x, y))
    acc = kd.features.MinibatchCKA()
    for i in range(0, 400, 50):
        acc.update(x[i:i + 50], y[i:i + 50])
    assert biased > 0.3 and abs(acc.value()) < 0.05
    same = kd.features.MinibatchCKA()
    same.update(x[:50], 2.0 * x[:50] @ torch.linalg.qr(_r(300, 300, seed=2))[0])
    assert same.value() == pytest.approx(1.0, abs=1e-6)                  # orthogonal map and scale
    with pytest.raises(ValueError, match="no batch"):
        kd.features.MinibatchCKA().value()


def test_cka_matrix_in_batches_is_minibatch_cka_of_the_captured_features():
    a, b = kd.build_model("cnn", (1, 28, 28), width=4, seed=0).eval(), kd.build_model("mlp", (1, 28, 28), seed=1).eval()
    x = _r(42, 1, 28, 28)                                       # batches of 20, 20; the last 2 rows are left out
    mat = cka_matrix(a, b, x, ["blocks.1", "head"], ["embed"], batch_size=20)
    acc = kd.features.MinibatchCKA()
    for i in (0, 20):
        with torch.no_grad(), kd.capture(a, ["blocks.1"]) as fa, kd.capture(b, ["embed"]) as fb:
            a(x[i:i + 20]), b(x[i:i + 20])
        acc.update(fa["blocks.1"], fb["embed"])
    assert mat.shape == (2, 1) and mat[0, 0].item() == pytest.approx(acc.value(), rel=1e-5)
    assert cka_matrix(a, a, x, ["head"], ["head"], batch_size=10)[0, 0].item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="batch_size must be >= 4"):
        cka_matrix(a, b, x, ["head"], ["embed"], batch_size=3)
