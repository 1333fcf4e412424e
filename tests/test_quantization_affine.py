"""Affine quantization and range observers (notebook 06, sections 1-2): closed forms and torch's reference ops."""
import math

import numpy as np
import pytest
import torch

from kdcourse import quantization as Q


def _randn(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _weights(seed=0):
    """A conv weight (C_out=8, 4, 3, 3) whose channels have very different scales."""
    w = _randn(8, 4, 3, 3, seed=seed)
    return w * torch.logspace(-2, 1, 8).reshape(8, 1, 1, 1)


# ----------------------------------------------------------------------------- qparams, quantize, dequantize
def test_qparams_closed_forms():
    qa = Q.qparams(-1.0, 3.0, bits=8)  # S = 4 / 255, Z = round(1 / S) = round(63.75) = 64
    assert (qa.qmin, qa.qmax) == (0, 255) and int(qa.zero_point) == 64
    assert float(qa.scale) == pytest.approx(4 / 255, rel=1e-6)
    qw = Q.qparams(0.3, 2.0, bits=4)  # range widened to [0, 2]: S = 2 / 15, Z = 0
    assert (qw.qmin, qw.qmax, int(qw.zero_point)) == (0, 15, 0)
    assert float(qw.scale) == pytest.approx(2 / 15, rel=1e-6)
    qs = Q.qparams(-0.5, 2.0, bits=4, symmetric=True)  # S = max(|lo|, |hi|) / (2^3 - 1), Z = 0
    assert int(qs.zero_point) == 0 and (qs.qmin, qs.qmax) == (-8, 7)
    assert float(qs.scale) == pytest.approx(2.0 / 7, rel=1e-6)
    assert Q.dequantize(Q.quantize(torch.zeros(1), qw), qw).item() == 0.0  # 0.0 is exactly on the grid


def test_qparams_float_range_closed_form():
    qp = Q.QParams(scale=torch.tensor(0.5), zero_point=torch.tensor(2), qmin=0, qmax=15)
    lo, hi = qp.float_range()  # ((0 - 2) * 0.5, (15 - 2) * 0.5)
    assert (float(lo), float(hi)) == (-1.0, 6.5)


@pytest.mark.parametrize("bits", [2, 4, 8, 16])
@pytest.mark.parametrize("symmetric", [False, True])
def test_round_trip_within_half_a_step_inside_the_range(bits, symmetric):
    x = _randn(2000) * 3 + 1
    qp = Q.qparams(x.min(), x.max(), bits=bits, symmetric=symmetric)
    lo, hi = qp.float_range()
    inside = (x >= lo) & (x <= hi)  # rounding Z may shift the grid by up to S/2 past min or max
    assert inside.float().mean() > 0.99
    q = Q.quantize(x, qp)
    assert q.dtype == torch.int32 and q.min() >= qp.qmin and q.max() <= qp.qmax
    err = (Q.dequantize(q, qp) - x).abs()[inside]
    float_slack = 8 * torch.finfo(torch.float32).eps * x.abs().max()  # matters at 16 bits only
    assert (err <= qp.scale / 2 + float_slack).all(), (err.max(), qp.scale / 2)


def test_values_outside_the_range_clip_to_its_ends():
    qp = Q.qparams(-1.0, 1.0, bits=8)
    x = torch.tensor([-5.0, 5.0])
    lo, hi = qp.float_range()
    torch.testing.assert_close(Q.dequantize(Q.quantize(x, qp), qp), torch.stack([lo, hi]))


def test_uniform_data_has_the_rounding_noise_of_s_squared_over_12():
    x = torch.rand(200_000, generator=torch.Generator().manual_seed(0)) * 2 - 1  # U(-1, 1), inside the range
    qp = Q.qparams(-1.0, 1.0, bits=6)
    assert Q.quant_mse(x, qp) == pytest.approx(float(qp.scale) ** 2 / 12, rel=0.03)


def test_quantization_error_falls_monotonically_with_bits():
    x = _randn(5000) ** 3  # heavy tails
    for symmetric in (False, True):
        errs = [Q.quant_mse(x, Q.observe(x, bits=b, symmetric=symmetric)) for b in range(2, 13)]
        assert all(a > b for a, b in zip(errs, errs[1:])), errs
        assert errs[-1] < errs[0] / 1e5  # about 4x per bit


def test_per_channel_params_must_match_the_channel_count():
    qp = Q.observe(_weights(), bits=4, symmetric=True, axis=0)
    assert qp.scale.shape == (8,)
    with pytest.raises(ValueError, match="8 channels but the tensor has 3"):
        Q.quantize(torch.zeros(3, 4), qp)


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
    assert inside.sum() > 100 and outside.sum() > 100
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
    assert 0 < g_ref.sum() < len(x)  # some values clip, so the gradient mask is exercised


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
def test_minmax_range_per_channel_along_any_axis():
    x = _randn(3, 5, 7)
    lo, hi = Q.minmax_range(x, axis=1)
    torch.testing.assert_close(lo, x.amin(dim=(0, 2)))
    torch.testing.assert_close(hi, x.amax(dim=(0, 2)))
    lo, hi = Q.minmax_range(x)
    assert lo.shape == () and lo == x.min() and hi == x.max()


def test_percentile_range_is_numpys_lower_and_higher_percentile():
    x = _randn(1234)  # (1 - 0.995) * 1233 = 6.165 and 0.995 * 1233 = 1226.835: no ties in the index
    lo, hi = Q.percentile_range(x, pct=99.5)
    assert lo.item() == pytest.approx(np.percentile(x.numpy(), 0.5, method="lower"))
    assert hi.item() == pytest.approx(np.percentile(x.numpy(), 99.5, method="higher"))
    lo100, hi100 = Q.percentile_range(x, pct=100)
    assert lo100 == x.min() and hi100 == x.max()


def test_observers_on_a_tensor_with_one_outlier():
    x = torch.cat([_randn(10_000), torch.tensor([50.0])])
    lo, hi = Q.minmax_range(x)
    assert hi.item() == 50.0
    p_lo, p_hi = Q.percentile_range(x, pct=99.9)
    assert p_hi < 5 and p_lo > -5
    errs = {m: Q.quant_mse(x, Q.observe(x, m, bits=4, pct=99.9)) for m in Q.OBSERVERS}
    assert errs["mse"] < errs["minmax"] / 2 and errs["percentile"] < errs["minmax"] / 2, errs


def test_mse_range_is_the_best_shrink_factor_of_its_grid():
    x = _randn(3000) ** 3
    lo, hi = Q.mse_range(x, bits=4, n_grid=20)
    alpha = float(hi / x.max())
    assert round(alpha * 20) == pytest.approx(alpha * 20, abs=1e-4)  # one of k / 20
    assert float(lo / x.min()) == pytest.approx(alpha, rel=1e-5)
    best = Q.quant_mse(x, Q.qparams(lo, hi, bits=4))
    for k in range(1, 21):  # brute force over the same grid
        assert best <= Q.quant_mse(x, Q.qparams(x.min() * k / 20, x.max() * k / 20, bits=4)) + 1e-12


def test_mse_range_per_channel_equals_per_tensor_on_each_channel():
    w = _weights()
    lo, hi = Q.mse_range(w, bits=3, symmetric=True, axis=0)
    assert lo.shape == hi.shape == (8,)
    for c in range(8):
        lo_c, hi_c = Q.mse_range(w[c], bits=3, symmetric=True)
        assert lo[c] == lo_c and hi[c] == hi_c, c


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_observers_keep_the_input_device_and_dtype(dtype):
    x = _randn(500).to(dtype)
    for lo, hi in (Q.minmax_range(x), Q.percentile_range(x, pct=99), Q.mse_range(x, bits=4)):
        assert lo.dtype == hi.dtype == dtype and lo.device == hi.device == x.device
    assert Q.mse_range(x.half(), bits=4)[0].dtype == torch.float32  # half is searched in float32


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("bits", [np.int64(8), torch.tensor(4.0), 8.0, np.array(3)])
def test_check_bits_accepts_numpy_and_tensor_scalars(bits):
    assert Q.check_bits(bits) == int(bits) and type(Q.check_bits(bits)) is int


@pytest.mark.parametrize("bits", [1, 17, 0, -8, 8.5, float("inf"), float("nan")])
def test_bits_outside_2_to_16_are_rejected(bits):
    with pytest.raises(ValueError, match="bits must be an integer from 2 to 16"):
        Q.qparams(-1.0, 1.0, bits=bits)
    with pytest.raises(ValueError, match="bits"):
        Q.FakeQuant(bits)


@pytest.mark.parametrize("bits", [True, "8", None, torch.ones(2)])
def test_bits_of_the_wrong_type_are_rejected(bits):
    with pytest.raises(TypeError, match="bits must be a number"):
        Q.check_bits(bits)


@pytest.mark.parametrize("bad,word", [(float("nan"), "NaN"), (float("inf"), "infinite"), (-float("inf"), "infinite")])
def test_nan_and_infinite_inputs_are_rejected(bad, word):
    x = torch.tensor([0.0, bad, 1.0])
    qp = Q.qparams(-1.0, 1.0)
    for fn in (lambda: Q.quantize(x, qp), lambda: Q.fake_quantize(x, qp), lambda: Q.minmax_range(x),
               lambda: Q.percentile_range(x), lambda: Q.observe(x, "mse"), lambda: Q.qparams(bad, 1.0),
               lambda: Q.qparams(-1.0, bad)):
        with pytest.raises(ValueError, match=word):
            fn()


def test_other_bad_arguments_name_the_allowed_values():
    with pytest.raises(ValueError, match="minmax"):
        Q.observe(torch.ones(3), "kl")
    with pytest.raises(ValueError, match=r"pct must be in \(50, 100\]"):
        Q.percentile_range(torch.ones(3), pct=30)
    with pytest.raises(ValueError, match="lo <= hi"):
        Q.qparams(1.0, -1.0)
    with pytest.raises(ValueError, match="empty"):
        Q.minmax_range(torch.empty(0))
    with pytest.raises(ValueError, match="n_grid"):
        Q.mse_range(torch.ones(3), n_grid=0)
    assert Q.percentile_range(_randn(100), pct=torch.tensor(99.0))[1] == Q.percentile_range(_randn(100), pct=99)[1]
    assert math.isclose(Q.check_pct(np.float32(99.5)), 99.5)
