"""measure_latency's protocol (modes, interleaving, CUDA synchronisation) and layer_macs' closed forms.

No test depends on how fast anything runs.
"""
import numpy as np
import pytest
import torch
from torch import nn

import kdcourse as kd
from kdcourse import benchmark


class _Recorder(nn.Module):
    """Records, per call, its name, training flag and whether inference mode was on."""

    def __init__(self, name, log):
        super().__init__()
        self.name, self.log = name, log
        self.inner = nn.Linear(2, 2)

    def forward(self, x):
        self.log.append((self.name, self.training, torch.is_inference_mode_enabled()))
        return self.inner(x)


# ----------------------------------------------------------------------------- measure_latency
def test_measure_latency_warms_up_interleaves_and_restores_modes():
    log = []
    a, b = _Recorder("a", log), _Recorder("b", log)
    a.train()
    a.inner.eval()  # a mixed state that must come back exactly
    ms = benchmark.measure_latency({"a": a, "b": b, "c": lambda x: log.append(("c", None, None))},
                                   torch.zeros(1, 2), warmup=2, reps=3)
    assert set(ms) == {"a", "b", "c"} and all(v >= 0 for v in ms.values())
    names = [n for n, _, _ in log]
    assert names == ["a", "b", "c"] * 2 + ["a", "b", "c", "b", "c", "a", "c", "a", "b"]  # first mover rotates
    assert all(not training and inference for n, training, inference in log if n != "c")
    assert a.training and not a.inner.training and b.training  # modes restored


def test_measure_latency_validates_its_arguments():
    with pytest.raises(ValueError, match="at least one model"):
        benchmark.measure_latency({}, torch.zeros(1))
    with pytest.raises(ValueError, match="reps must be >= 1"):
        benchmark.measure_latency({"f": abs}, torch.zeros(1), reps=0)
    with pytest.raises(TypeError, match="reps must be a number"):
        benchmark.measure_latency({"f": abs}, torch.zeros(1), reps=True)
    assert set(benchmark.measure_latency({"f": abs}, torch.zeros(1), reps=np.int64(2), warmup=torch.tensor(0))) == {"f"}


def test_synchronizer_calls_cuda_synchronize_only_for_cuda(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: calls.append(device))
    for device in (None, torch.device("cpu"), torch.device("meta")):
        benchmark._synchronizer(device)()
    assert calls == []
    benchmark._synchronizer(torch.device("cuda", 1))()
    assert calls == [torch.device("cuda", 1)]
    assert benchmark._device_of(torch.zeros(1, device="meta")) == torch.device("meta")
    assert benchmark._device_of(np.zeros(1)) is None


def test_measure_latency_synchronizes_around_every_timed_call_on_cuda(monkeypatch):
    events = []
    monkeypatch.setattr(benchmark, "_device_of", lambda x: torch.device("cuda", 0))  # pretend x is on cuda:0
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: events.append(("sync", device)))
    benchmark.measure_latency({"m": lambda x: events.append(("call", None))}, torch.zeros(1), warmup=1, reps=2)
    assert events == [("call", None)] + [("sync", torch.device("cuda", 0)), ("call", None),
                                         ("sync", torch.device("cuda", 0))] * 2


def test_measure_latency_runs_on_meta_tensors_without_synchronizing(monkeypatch):
    def fail(device=None):
        raise AssertionError("synchronize called for a meta tensor")
    monkeypatch.setattr(torch.cuda, "synchronize", fail)
    model = nn.Linear(3, 2, device="meta")
    ms = benchmark.measure_latency({"meta": model}, torch.zeros(4, 3, device="meta"), warmup=1, reps=2)
    assert set(ms) == {"meta"}


# ----------------------------------------------------------------------------- layer_macs
def test_layer_macs_of_the_course_cnn_and_mlp():
    # conv 1->4 on 8x8, pool, conv 4->8 on 4x4, pool, Linear 32->16, Linear 16->10
    cnn = kd.build_model("cnn", (1, 8, 8), width=4, seed=0)
    cnn.train()
    macs = benchmark.layer_macs(cnn, torch.zeros(5, 1, 8, 8))
    assert macs == {"blocks.0.0": 8 * 8 * 4 * 1 * 9, "blocks.1.0": 4 * 4 * 8 * 4 * 9,
                    "embed.1": 2 * 2 * 8 * 16, "head": 16 * 10}
    assert cnn.training and all(m.training for m in cnn.modules())  # mode restored
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in cnn.modules())
    cnn1d = kd.build_model("cnn", (1, 40), width=4, seed=0)  # conv 1->4 (40), pool, conv 4->8 (20), pool, 80->16
    assert benchmark.layer_macs(cnn1d, torch.zeros(2, 1, 40)) == {
        "blocks.0.0": 40 * 4 * 1 * 3, "blocks.1.0": 20 * 8 * 4 * 3, "embed.1": 8 * 10 * 16, "head": 16 * 10}
    mlp = kd.build_model("mlp", (1, 40), width=16, depth=2, seed=0)  # 40->16, 16->16, 16->10
    assert benchmark.layer_macs(mlp, torch.zeros(3, 1, 40)) == {"blocks.0.0": 40 * 16, "embed.0": 16 * 16,
                                                                "head": 16 * 10}


def test_layer_macs_of_grouped_strided_and_3d_convolutions():
    net = nn.Sequential(nn.Conv2d(8, 12, 3, stride=2, padding=1, groups=4),  # out 12 x 5 x 5, 2 inputs per group
                        nn.Conv2d(12, 12, 1, groups=12),                     # depthwise 1x1
                        nn.Flatten(), nn.Linear(300, 7))
    assert benchmark.layer_macs(net, torch.zeros(2, 8, 9, 9)) == {"0": 12 * 25 * 2 * 9, "1": 12 * 25, "3": 300 * 7}
    conv3d = nn.Conv3d(2, 3, (1, 2, 3))  # out 3 x 4 x 3 x 2 from a 4 x 4 x 4 volume
    assert benchmark.layer_macs(conv3d, torch.zeros(1, 2, 4, 4, 4)) == {"": 3 * 4 * 3 * 2 * 2 * 6}
    seq_tokens = nn.Sequential(nn.Linear(6, 5))  # (B, T=4, 6): per example T x in x out
    assert benchmark.layer_macs(seq_tokens, torch.zeros(2, 4, 6)) == {"0": 4 * 6 * 5}
