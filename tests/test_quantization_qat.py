"""Fake-quantized layers, BatchNorm folding, PTQ and QAT (notebook 06, section 3)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import kdcourse as kd
from kdcourse import quantization as Q


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _with_running_stats(model, x, steps=3):
    """Give every BatchNorm non-trivial running statistics (a few train-mode forwards), then eval."""
    model.train()
    with torch.no_grad():
        for i in range(steps):
            model(x * (1 + i) + 0.5)
    return model.eval()


# ----------------------------------------------------------------------------- FakeQuant, QuantLayer
def test_weight_fake_quant_keeps_each_channels_max_and_uses_at_most_2b_minus_1_levels():
    w = _randn(6, 3, 3, 3) * torch.logspace(-2, 1, 6).reshape(6, 1, 1, 1)
    out = Q.FakeQuant(3, weight=True)(w)
    for c in range(6):  # symmetric per channel: S_c = max|w_c| / 3, levels {-3..3} * S_c
        assert out[c].abs().max() == pytest.approx(float(w[c].abs().max()), rel=1e-6)
        assert out[c].unique().numel() <= 7


def test_uncalibrated_activation_quantizer_passes_through_then_clips_to_its_range():
    fq = Q.FakeQuant(4)
    x = _randn(10)
    assert torch.equal(fq(x), x)
    fq.set_range_from([torch.tensor([0.0, 1.5])])
    y = fq(torch.tensor([-1.0, 0.3, 9.0]))
    assert y[0] == 0.0 and y[2] == pytest.approx(1.5)  # clipped to the calibrated [0, 1.5]
    assert abs(float(y[1]) - 0.3) <= 1.5 / 15 / 2 + 1e-7  # within half a step of 1.5 / 15


def test_fake_quant_checks_its_arguments_when_built():
    with pytest.raises(ValueError, match=r"pct must be in \(50, 100\]"):
        Q.FakeQuant(pct=30)
    with pytest.raises(ValueError, match="observer"):
        Q.FakeQuant(observer="kl")
    assert Q.FakeQuant(np.int64(4), pct=torch.tensor(99.0)).bits == 4


def test_quant_layer_rejects_bad_bit_widths_at_construction():
    with pytest.raises(ValueError, match="weight_bits must be an integer from 2 to 16, got 0"):
        Q.QuantLayer(nn.Linear(3, 2), weight_bits=0)
    with pytest.raises(ValueError, match="act_bits"):
        Q.QuantLayer(nn.Linear(3, 2), act_bits=1)
    with pytest.raises(TypeError, match="Conv1d, Conv2d or Linear"):
        Q.QuantLayer(nn.ReLU())


def test_quant_layer_output_and_weight_gradient_match_the_closed_form():
    layer = nn.Linear(5, 3)
    ql = Q.QuantLayer(layer, weight_bits=4, act_bits=4)
    x = _randn(8, 5)
    Q.calibrate(ql, x)
    ql.train()
    out = ql(x)
    x_hat = Q.fake_quantize(x, Q.qparams(ql.act_fq.lo, ql.act_fq.hi, bits=4))
    w_hat = Q.fake_quantize(layer.weight.detach(), Q.observe(layer.weight.detach(), bits=4, symmetric=True, axis=0))
    torch.testing.assert_close(out, F.linear(x_hat, w_hat, layer.bias))
    g = _randn(8, 3, seed=1)
    out.backward(g)  # minmax weight ranges clip nothing, so the STE passes dL/dw_hat = g^T x_hat unchanged
    torch.testing.assert_close(layer.weight.grad, g.T @ x_hat)


def test_quant_layer_keeps_its_range_buffers_on_the_layers_device():
    ql = Q.QuantLayer(nn.Linear(3, 2, device="meta"))
    assert ql.act_fq.lo.device.type == "meta" and ql.weight_fq.hi.device.type == "meta"


@pytest.mark.parametrize("layer,shape", [(nn.Linear(6, 4), (5, 6)), (nn.Conv1d(2, 3, 3), (5, 2, 9)),
                                         (nn.Conv2d(2, 3, 3, padding=1), (5, 2, 6, 6))])
def test_16_bit_quant_layer_is_close_to_the_float_layer(layer, shape):
    x = _randn(*shape)
    ql = Q.calibrate(Q.QuantLayer(layer, weight_bits=16, act_bits=16), x)
    with torch.no_grad():
        torch.testing.assert_close(ql(x), layer(x), atol=1e-3, rtol=1e-3)


# ----------------------------------------------------------------------------- BatchNorm folding
def test_fold_batchnorm_keeps_the_course_cnns_outputs_and_removes_every_batchnorm():
    for in_shape in ((1, 8, 8), (1, 40)):
        model = kd.build_model("cnn", in_shape, width=4, seed=0)
        x = _randn(16, *in_shape)
        _with_running_stats(model, x)
        folded = Q.fold_batchnorm(model)
        assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in folded.modules())
        with torch.no_grad():
            torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)
        assert any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())  # original untouched


def test_fold_batchnorm_folds_torchvision_resnet18_named_pairs():
    from torchvision.models import resnet18
    torch.manual_seed(0)
    model = resnet18(weights=None, num_classes=10)
    x = _randn(4, 3, 32, 32)
    _with_running_stats(model, x)
    assert float(model.layer1[0].bn1.running_var.std()) > 0.01  # non-trivial statistics
    folded = Q.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())  # convK/bnK and downsample
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), atol=1e-5, rtol=1e-5)


def test_fold_batchnorm_leaves_batchnorms_it_cannot_pair_and_refuses_broken_pairs():
    mlp_bn = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Conv1d(1, 2, 1), nn.ReLU(), nn.BatchNorm1d(2))
    folded = Q.fold_batchnorm(mlp_bn)  # BN after a Linear, and BN after a ReLU: not folded
    assert [type(m) for m in folded] == [type(m) for m in mlp_bn]
    with pytest.raises(ValueError, match="no running statistics"):
        Q.fold_batchnorm(nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2, track_running_stats=False)))

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1, self.bn1 = nn.Conv2d(1, 2, 3), nn.BatchNorm2d(3)
    with pytest.raises(ValueError, match=r"conv1 -> bn1: 2 conv output channels but 3"):
        Q.fold_batchnorm(nn.Sequential(Block()))


# ----------------------------------------------------------------------------- PTQ and QAT
def test_quantize_model_wraps_every_layer_with_the_requested_bits():
    model = kd.build_model("cnn", (1, 8, 8), width=4, seed=0)
    q = Q.quantize_model(model, bits=8, weight_bits=np.int64(4))
    layers = [m for m in q.modules() if isinstance(m, Q.QuantLayer)]
    assert len(layers) == 4 and all(ql.weight_fq.bits == 4 and ql.act_fq.bits == 8 for ql in layers)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    with pytest.raises(ValueError, match="weight_bits"):  # 0 used to fall back to `bits` silently
        Q.quantize_model(model, weight_bits=0)
    with pytest.raises(ValueError, match="act_bits"):
        Q.quantize_model(model, act_bits=0)


def test_calibrate_fixes_the_first_layers_range_to_the_minmax_of_the_data():
    model = kd.build_model("mlp", (1, 40), width=8, seed=0)
    x = _randn(300, 1, 40) * 2 + 1
    q = Q.quantize_model(model, bits=8, calib_x=x)
    fq = q.blocks[0][0].act_fq  # sees the raw inputs
    step = (x.max() - x.min()) / 255
    assert abs(float(fq.lo - x.min())) <= step / 2 + 1e-6 and abs(float(fq.hi - x.max())) <= step / 2 + 1e-6
    assert all(not torch.isnan(m.lo) for m in q.modules() if isinstance(m, Q.FakeQuant) and not m.weight)


def test_calibration_data_must_be_finite_and_non_empty():
    model = kd.build_model("cnn", (1, 8, 8), width=4, seed=0)
    with pytest.raises(ValueError, match="non-empty calibration set"):
        Q.quantize_model(model, calib_x=torch.empty(0, 1, 8, 8))
    x = torch.zeros(4, 1, 8, 8)
    x[1, 0, 2, 2] = float("inf")
    with pytest.raises(ValueError, match="calibration set contains infinite values"):
        Q.quantize_model(model, calib_x=x)


@pytest.fixture(scope="module")
def digits_cnn():
    data = kd.load_dataset("digits")
    model = kd.build_model("cnn", data.in_shape, width=8, seed=0)
    kd.fit(model, data.train_loader(64, seed=0), epochs=3, seed=0, progress=False)
    return model.eval(), data


def test_8bit_ptq_agrees_with_fp32(digits_cnn):
    model, data = digits_cnn
    q8 = Q.quantize_model(model, bits=8, calib_x=data.x_train[:128])
    with torch.no_grad():
        agree = (q8(data.x_test).argmax(1) == model(data.x_test).argmax(1)).float().mean()
    assert agree >= 0.98


def test_qat_recovers_accuracy_where_2bit_ptq_breaks(digits_cnn):
    model, data = digits_cnn
    test = (data.x_test, data.y_test)
    fp32 = kd.evaluate(model, test)
    q2 = Q.quantize_model(model, bits=2, calib_x=data.x_train[:128])
    ptq = kd.evaluate(q2, test)
    assert ptq < fp32 - 10  # 2-bit min/max PTQ breaks
    kd.fit(q2, data.train_loader(64, seed=0), epochs=2, lr=3e-3, seed=0, progress=False)
    qat = kd.evaluate(q2, test)
    assert qat > ptq + 10, (fp32, ptq, qat)  # the straight-through gradients trained the quantized model


# ----------------------------------------------------------------------------- what quantize_model leaves in float
class _TinyAttention(nn.Module):
    """tokens (B, L) -> logits (B, L, V): Embedding, nn.MultiheadAttention, Linear head."""

    def __init__(self, vocab=7, d=8):
        super().__init__()
        torch.manual_seed(0)
        self.tok = nn.Embedding(vocab, d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.head = nn.Linear(d, vocab)

    def forward(self, idx):
        h = self.tok(idx)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(h + a)


def test_quantize_model_leaves_attention_and_embeddings_in_float_and_lists_them(capsys):
    model = _TinyAttention().eval()
    idx = torch.randint(0, 7, (16, 5), generator=torch.Generator().manual_seed(0))
    q = Q.quantize_model(model, calib_x=idx, verbose=True)   # used to fail: out_proj became a QuantLayer
    assert set(q.left_in_float) == {"tok", "attn", "attn.out_proj"}
    assert "3 module(s) left in float" in capsys.readouterr().out
    assert [n for n, m in q.named_modules() if isinstance(m, Q.QuantLayer)] == ["head"]
    with torch.no_grad():
        ref, out = model(idx), q(idx)
        q8_head = q.head(model.tok(idx) + model.attn(*(model.tok(idx),) * 3, need_weights=False)[0])
    torch.testing.assert_close(out, q8_head)                      # everything before the head is the float model
    assert 0 < float((out - ref).abs().max()) <= 0.05 * float(ref.abs().max())   # the head is int8-close, not exact
    assert Q.quantize_model(kd.build_model("cnn", (1, 8, 8), width=2, seed=0)).left_in_float == {}


def test_quantize_model_skip_keeps_named_modules_exactly_float():
    model = _TinyAttention().eval()
    idx = torch.randint(0, 7, (4, 5), generator=torch.Generator().manual_seed(1))
    q = Q.quantize_model(model, bits=2, calib_x=idx, skip=["head"])
    assert q.left_in_float["head"] == "named in skip" and not any(isinstance(m, Q.QuantLayer) for m in q.modules())
    with torch.no_grad():
        assert torch.equal(q(idx), model(idx))
    seq = nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2)))
    q = Q.quantize_model(seq, skip=["1"])                          # a skipped container: none of its layers
    assert isinstance(q[0], Q.QuantLayer) and isinstance(q[1][0], nn.Linear) and list(q.left_in_float) == ["1"]
    with pytest.raises(KeyError, match=r"unknown module\(s\) \['nope'\] in skip"):
        Q.quantize_model(model, skip=["nope"])


def test_quantize_model_runs_a_transformer_encoder_layer_in_eval_and_under_no_grad():
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True).eval()
    x = _randn(3, 5, 8)
    q = Q.quantize_model(layer, calib_x=x)
    assert {"self_attn", "self_attn.out_proj", "linear1", "linear2"} <= set(q.left_in_float)
    assert not any(isinstance(m, Q.QuantLayer) for m in q.modules())
    with torch.no_grad():
        torch.testing.assert_close(q(x), layer(x))                 # nothing quantizable left: the float layer


def test_quant_layer_exposes_the_wrapped_weight_for_code_that_reads_it():
    lin = nn.Linear(3, 2)
    ql = Q.QuantLayer(lin)
    assert ql.weight is lin.weight and ql.bias is lin.bias
    assert Q.QuantLayer(nn.Linear(3, 2, bias=False)).bias is None


def test_quantize_model_of_a_frozen_teacher_is_trainable_everywhere():
    import kdcourse as kd
    from kdcourse import quantization as Q
    teacher = kd.build_model("cnn", (1, 28, 28), width=4, seed=0).requires_grad_(False)
    q = Q.quantize_model(teacher, bits=4)
    assert all(p.requires_grad for p in q.parameters())   # QAT trains every weight, not only folded biases
    assert not any(p.requires_grad for p in teacher.parameters())   # the teacher itself stays frozen
