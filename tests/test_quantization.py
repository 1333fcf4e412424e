"""The maths of affine quantization, observers, fake quantization and QAT, and one smoke test per int8 engine (notebook 06)."""
import pytest
import torch
from torch import nn

import kdcourse as kd
from kdcourse import quantization as Q


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _weights(seed=0):
    """A conv weight (C_out=8, 4, 3, 3) whose channels have very different scales."""
    w = _randn(8, 4, 3, 3, seed=seed)
    return w * torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1)


# ----------------------------------------------------------------------------- affine maths
@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("symmetric", [False, True])
def test_round_trip_within_half_a_step_inside_the_range(bits, symmetric):
    x = _randn(2000) * 3 + 1
    qp = Q.qparams(x.min(), x.max(), bits=bits, symmetric=symmetric)
    lo, hi = qp.float_range()
    inside = (x >= lo) & (x <= hi)  # rounding Z may shift the grid by up to S/2 past min or max
    assert inside.float().mean() > 0.99
    err = (Q.dequantize(Q.quantize(x, qp), qp) - x).abs()[inside]
    float_slack = 8 * torch.finfo(torch.float32).eps * x.abs().max()  # matters at 16 bits only
    assert (err <= qp.scale / 2 + float_slack).all(), (err.max(), qp.scale / 2)


def test_values_outside_the_range_clip_to_its_ends():
    qp = Q.qparams(-1.0, 1.0, bits=8)
    x = torch.tensor([-5.0, 5.0])
    lo, hi = qp.float_range()
    torch.testing.assert_close(Q.dequantize(Q.quantize(x, qp), qp), torch.stack([lo, hi]))


def test_asymmetric_grid_represents_zero_exactly_and_symmetric_has_zero_point_zero():
    qa = Q.qparams(0.3, 2.0, bits=4)  # range widened to contain 0
    assert Q.dequantize(Q.quantize(torch.zeros(1), qa), qa).item() == 0.0
    assert (qa.qmin, qa.qmax) == (0, 15)
    qs = Q.qparams(-0.5, 2.0, bits=4, symmetric=True)
    assert int(qs.zero_point) == 0 and (qs.qmin, qs.qmax) == (-8, 7)
    torch.testing.assert_close(qs.scale, torch.tensor(2.0 / 7))


def test_per_channel_is_never_worse_than_per_tensor():
    for seed in range(5):
        w = _weights(seed)
        for bits in (2, 4, 8):
            per_tensor = Q.quant_mse(w, Q.observe(w, bits=bits, symmetric=True))
            per_channel = Q.quant_mse(w, Q.observe(w, bits=bits, symmetric=True, axis=0))
            assert per_channel <= per_tensor + 1e-12, (seed, bits, per_channel, per_tensor)


# ----------------------------------------------------------------------------- fake quantization
def test_fake_quant_gradient_is_identity_inside_and_zero_outside():
    qp = Q.qparams(-1.0, 1.0, bits=4)
    x = torch.linspace(-2, 2, 401, requires_grad=True)
    Q.fake_quantize(x, qp).sum().backward()
    lo, hi = qp.float_range()
    inside = (x.detach() > lo + qp.scale) & (x.detach() < hi - qp.scale)
    outside = (x.detach() < lo - qp.scale) | (x.detach() > hi + qp.scale)
    assert torch.equal(x.grad[inside], torch.ones(int(inside.sum())))
    assert torch.equal(x.grad[outside], torch.zeros(int(outside.sum())))


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quant_per_tensor_matches_torch(bits):
    x = (_randn(5000) * 2).requires_grad_(True)
    qp = Q.qparams(-1.5, 2.5, bits=bits)
    ours = Q.fake_quantize(x, qp)
    ref = torch.fake_quantize_per_tensor_affine(x, float(qp.scale), int(qp.zero_point), qp.qmin, qp.qmax)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    g_ours, = torch.autograd.grad(ours.sum(), x)
    g_ref, = torch.autograd.grad(ref.sum(), x)
    torch.testing.assert_close(g_ours, g_ref)


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_fake_quant_per_channel_matches_torch(bits):
    w = _weights().requires_grad_(True)
    qp = Q.observe(w.detach() * 0.8, "minmax", bits=bits, symmetric=True, axis=0)  # some values clip
    ours = Q.fake_quantize(w, qp)
    ref = torch.fake_quantize_per_channel_affine(w, qp.scale, qp.zero_point.to(torch.int32), 0, qp.qmin, qp.qmax)
    torch.testing.assert_close(ours, ref, atol=1e-6, rtol=0)
    g_ours, = torch.autograd.grad(ours.sum(), w)
    g_ref, = torch.autograd.grad(ref.sum(), w)
    torch.testing.assert_close(g_ours, g_ref)


# ----------------------------------------------------------------------------- observers
def test_observers_on_a_tensor_with_one_outlier():
    x = torch.cat([_randn(10_000), torch.tensor([50.0])])
    lo, hi = Q.minmax_range(x)
    assert hi.item() == 50.0
    p_lo, p_hi = Q.percentile_range(x, pct=99.9)
    assert p_hi < 5 and p_lo > -5
    errs = {m: Q.quant_mse(x, Q.observe(x, m, bits=4, pct=99.9)) for m in Q.OBSERVERS}
    assert errs["mse"] <= errs["minmax"] and errs["percentile"] < errs["minmax"], errs


def test_mse_range_is_per_channel_when_asked():
    lo, hi = Q.mse_range(_weights(), bits=4, symmetric=True, axis=0)
    assert lo.shape == hi.shape == (8,)


# ----------------------------------------------------------------------------- errors
@pytest.mark.parametrize("bits", [1, 17, 0, 8.0, "8", True])
def test_bits_outside_2_to_16_are_rejected(bits):
    with pytest.raises(ValueError, match="bits must be an integer from 2 to 16"):
        Q.qparams(-1.0, 1.0, bits=bits)
    with pytest.raises(ValueError, match="bits"):
        Q.FakeQuant(bits)


def test_nan_inputs_are_rejected():
    x = torch.tensor([0.0, float("nan"), 1.0])
    qp = Q.qparams(-1.0, 1.0)
    for fn in (lambda: Q.quantize(x, qp), lambda: Q.fake_quantize(x, qp), lambda: Q.minmax_range(x),
               lambda: Q.observe(x, "mse"), lambda: Q.qparams(float("nan"), 1.0)):
        with pytest.raises(ValueError, match="NaN"):
            fn()


def test_empty_calibration_set_is_rejected():
    model = kd.build_model("cnn", (1, 8, 8), width=4, seed=0)
    with pytest.raises(ValueError, match="non-empty calibration set"):
        Q.quantize_model(model, calib_x=torch.empty(0, 1, 8, 8))
    with pytest.raises(ValueError, match="empty"):
        Q.minmax_range(torch.empty(0))
    with pytest.raises(ValueError, match="non-empty calibration set"):
        Q.ort_static_int8(model, torch.empty(0, 1, 8, 8))


def test_other_bad_arguments_name_the_allowed_values():
    with pytest.raises(ValueError, match="minmax"):
        Q.observe(torch.ones(3), "kl")
    with pytest.raises(ValueError, match="pct"):
        Q.percentile_range(torch.ones(3), pct=30)
    with pytest.raises(ValueError, match="lo <= hi"):
        Q.qparams(1.0, -1.0)
    with pytest.raises(TypeError, match="Conv1d, Conv2d or Linear"):
        Q.QuantLayer(nn.ReLU())


# ----------------------------------------------------------------------------- models, PTQ, QAT
def _trained_digits_cnn():
    data = kd.load_dataset("digits")
    model = kd.build_model("cnn", data.in_shape, width=8, seed=0)
    kd.fit(model, data.train_loader(64, seed=0), epochs=3, seed=0, progress=False)
    return model.eval(), data


def test_fold_batchnorm_keeps_outputs():
    model, data = _trained_digits_cnn()
    folded = Q.fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(folded(data.x_test), model(data.x_test), atol=1e-4, rtol=1e-4)


def test_8bit_fake_quant_model_matches_fp32_and_qat_trains():
    model, data = _trained_digits_cnn()
    q8 = Q.quantize_model(model, bits=8, calib_x=data.x_train[:128])
    assert sum(isinstance(m, Q.QuantLayer) for m in q8.modules()) == 4
    agree = (q8(data.x_test).argmax(1) == model(data.x_test).argmax(1)).float().mean()
    assert agree >= 0.98
    q2 = Q.quantize_model(model, bits=2, weight_observer="mse", act_observer="mse", calib_x=data.x_train[:128])
    before = kd.evaluate(q2, (data.x_test, data.y_test))
    w0 = q2.head.layer.weight.detach().clone()
    kd.fit(q2, data.train_loader(64, seed=0), epochs=2, lr=3e-3, seed=0, progress=False)
    assert not torch.equal(w0, q2.head.layer.weight)  # gradients flow through the STE
    assert kd.evaluate(q2, (data.x_test, data.y_test)) >= before - 5


def test_recovered_share_refuses_to_divide_when_ptq_lost_nothing():
    assert Q.recovered_share(97.0, 87.0, 95.0) == pytest.approx(0.8)
    assert Q.recovered_share(97.0, 87.0, 85.0) == pytest.approx(-0.2)  # QAT made it worse
    assert Q.recovered_share(97.0, 97.2, 97.1) is None  # PTQ above fp32: nothing to recover
    assert Q.recovered_share(97.0, 97.0, 97.5) is None
    assert Q.recovered_share(97.0, 96.5, 97.0, noise=1.0) is None  # a loss inside the noise
    assert Q.recovered_share(97.0, 95.0, 96.0, noise=1.0) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="noise"):
        Q.recovered_share(97.0, 90.0, 95.0, noise=-1)


def test_layer_macs_counts_convolutions_and_linear_layers():
    model = kd.build_model("cnn", (1, 8, 8), width=4, seed=0)  # conv 1->4, pool, conv 4->8, pool, 32->16, 16->10
    model.train()
    macs = Q.layer_macs(model, torch.zeros(5, 1, 8, 8))
    assert macs == {"blocks.0.0": 8 * 8 * 4 * 1 * 9, "blocks.1.0": 4 * 4 * 8 * 4 * 9,
                    "embed.1": 2 * 2 * 8 * 16, "head": 16 * 10}
    assert model.training  # mode restored
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed


def test_uncalibrated_activation_quantizer_passes_through():
    fq = Q.FakeQuant(4)
    x = _randn(10)
    assert torch.equal(fq(x), x)


# ----------------------------------------------------------------------------- engines (smoke)
@pytest.fixture(scope="module")
def small_cnn():
    torch.manual_seed(0)
    model = kd.build_model("cnn", (1, 8, 8), width=4, seed=0).eval()
    x = torch.randn(32, 1, 8, 8)
    y = model(x).argmax(1)
    return model, x, y


def test_engine_ort_static_and_dynamic(small_cnn):
    model, x, y = small_cnn
    for engine in (Q.ort_fp32(model, x[:2]), Q.ort_static_int8(model, x), Q.ort_dynamic_int8(model, x[:2])):
        assert engine(x).shape == (32, 10)
        assert Q.engine_accuracy(engine, x, y, batch_size=16) >= 75, engine.name
    assert Q.ort_static_int8(model, x).size_bytes < Q.ort_fp32(model, x[:2]).size_bytes


def test_engine_torchao_linear(small_cnn):
    model, x, y = small_cnn
    engine = Q.torchao_linear_int8(model)
    assert Q.engine_accuracy(engine, x, y, batch_size=16) >= 75


def test_engine_pt2e_without_compile(small_cnn):
    model, x, y = small_cnn
    engine = Q.pt2e_int8(model, x, compile=False)
    assert Q.engine_accuracy(engine, x, y, batch_size=16) >= 75
    assert engine.size_bytes < kd.model_size_bytes(model)


def test_compare_engines_reports_every_figure(small_cnn):
    model, x, y = small_cnn
    rows = Q.compare_engines({"fp32": model, "ort": Q.ort_fp32(model, x[:2])}, "fp32", x, y,
                             batch_sizes=(1, 16), reps=2, warmup=1)
    assert rows["fp32"]["latency_ratio_b16"] == 1.0 and rows["fp32"]["size_ratio"] == 1.0
    assert set(rows["ort"]) >= {"acc", "size_ratio", "latency_ratio_b1", "latency_ratio_b16"}
    assert "own_ratio_b1" not in rows["ort"]  # no ort_fp32 reference among the engines
    with pytest.raises(ValueError, match="baseline"):
        Q.compare_engines({"a": model}, "b", x, y)


def test_compare_engines_adds_ratios_to_each_engines_own_fp32_reference(small_cnn):
    model, x, y = small_cnn
    engines = {"fp32": model, "ort_fp32": Q.ort_fp32(model, x[:2]), "ort_static": Q.ort_static_int8(model, x)}
    rows = Q.compare_engines(engines, "fp32", x, y, batch_sizes=(1, 16), reps=2, warmup=1)
    row = rows["ort_static"]
    assert row["reference"] == "ort_fp32"
    for b in (1, 16):
        assert row[f"own_ratio_b{b}"] == pytest.approx(row[f"ms_b{b}"] / rows["ort_fp32"][f"ms_b{b}"])
    assert "reference" not in rows["fp32"] and "reference" not in rows["ort_fp32"]


def test_engine_compiled_fp32_matches_eager(small_cnn):
    model, x, y = small_cnn
    engine = Q.compiled_fp32(model, x, batch_sizes=(16,))
    assert engine.name == "fp32_compiled" and engine.compile_seconds > 0
    assert engine.size_bytes == kd.model_size_bytes(model)
    with torch.inference_mode():
        torch.testing.assert_close(engine(x[:16]), model(x[:16]), atol=1e-4, rtol=1e-4)
