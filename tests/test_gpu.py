"""Checks that need a CUDA GPU (skipped without one): device handling of the package's functions."""
import pytest
import torch

import kdcourse as kd
from kdcourse import benchmark
from kdcourse import quantization as Q

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_measure_latency_synchronizes_the_inputs_cuda_device(monkeypatch):
    calls = []
    real = torch.cuda.synchronize
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: (calls.append(device), real(device)))
    model = torch.nn.Linear(64, 64).cuda()
    x = torch.randn(8, 64, device="cuda")
    ms = benchmark.measure_latency({"linear": model}, x, warmup=1, reps=3)
    assert ms["linear"] > 0
    assert calls == [x.device] * 6  # before and after each of the 3 timed calls


def test_observers_and_fake_quant_stay_on_the_gpu_and_match_the_cpu():
    x = torch.randn(4, 3, 5, 5, generator=torch.Generator().manual_seed(0)) ** 3
    for method in Q.OBSERVERS:
        qp_cpu = Q.observe(x, method, bits=4, symmetric=True, axis=0)
        qp_gpu = Q.observe(x.cuda(), method, bits=4, symmetric=True, axis=0)
        assert qp_gpu.scale.is_cuda and qp_gpu.zero_point.is_cuda
        out = Q.fake_quantize(x.cuda(), qp_gpu)
        assert out.is_cuda
        if method == "mse":  # sums in another order may pick a neighbouring alpha: compare the errors
            assert Q.quant_mse(x.cuda(), qp_gpu) == pytest.approx(Q.quant_mse(x, qp_cpu), rel=0.05)
        else:
            torch.testing.assert_close(qp_gpu.scale.cpu(), qp_cpu.scale)
            torch.testing.assert_close(out.cpu(), Q.fake_quantize(x, qp_cpu))


def test_ptq_of_a_cuda_model_runs_on_the_gpu_and_is_int8_close_to_fp32():
    model = kd.build_model("cnn", (1, 8, 8), width=4, seed=0).eval().cuda()
    x = torch.randn(64, 1, 8, 8, generator=torch.Generator().manual_seed(0)).cuda()
    q = Q.quantize_model(model, bits=8, weight_observer="mse", act_observer="mse", calib_x=x)
    assert all(m.lo.is_cuda for m in q.modules() if isinstance(m, Q.FakeQuant))
    with torch.no_grad():
        out, ref = q(x), model(x)
    assert out.is_cuda and float((out - ref).abs().max()) <= 0.05 * float(ref.abs().max())


def test_class_bias_for_share_works_on_gpu_logits():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(200, 5, generator=g)
    d_cpu = kd.losses.class_bias_for_share(logits, 2, 0.3)
    d_gpu = kd.losses.class_bias_for_share(logits.cuda(), 2, 0.3)
    assert abs(d_cpu - d_gpu) < 1e-3


def test_taylor_scores_and_filter_pruning_stay_on_the_gpu():
    from kdcourse import pruning
    model = kd.build_model("cnn", (1, 28, 28), width=4, seed=0).cuda()
    x, y = torch.randn(16, 1, 28, 28, device="cuda"), torch.randint(0, 10, (16,), device="cuda")
    scores = pruning.taylor_scores(model, [(x, y)], n_batches=1)
    assert all(s.device.type == "cuda" for s in scores.values())
    small = pruning.l1_prune_conv_block(model, 0, 0.5)
    assert all(p.device.type == "cuda" for p in small.parameters())
    assert small(x).shape == (16, 10)
