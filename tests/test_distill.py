"""Distillation on several processes (torchrun, DDP on gloo) and the teacher-output cache."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
from torch import nn

import kdcourse as kd
from kdcourse.data import TensorLoader
from kdcourse.distill import CONFIG_KEYS, ShardedLoader, load_config, main, run
from kdcourse.teacher_outputs import cache_teacher_outputs, load_teacher_outputs, teacher_key

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny_digits.json"


def _r(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class _Counting(nn.Module):
    """A teacher that counts the rows it has seen."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin, self.rows = nn.Linear(5, 3), 0

    def forward(self, x):
        self.rows += len(x)
        return self.lin(x)


# ------------------------------------------------------------------------------- teacher-output cache
def test_cached_outputs_equal_the_teacher_and_are_computed_once(tmp_path):
    teacher, x = _Counting(), _r(50, 5)
    out = cache_teacher_outputs(teacher, x, batch_size=16, cache_dir=tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(out, teacher.lin(x))
    assert teacher.rows == 50
    again = cache_teacher_outputs(teacher, x, batch_size=16, cache_dir=tmp_path)
    assert teacher.rows == 50 and torch.equal(again, out)           # read from disk, not recomputed
    assert isinstance(np.load(next(tmp_path.glob("*.npy")), mmap_mode="r"), np.memmap)


def test_the_key_follows_the_weights_and_the_inputs():
    teacher, x = _Counting(), _r(10, 5)
    key = teacher_key(teacher, x)
    assert teacher_key(teacher, x.clone()) == key
    assert teacher_key(teacher, x + 1e-3) != key and teacher_key(teacher, "digits-train") != key
    with torch.no_grad():
        teacher.lin.bias[0] += 1e-3
    assert teacher_key(teacher, x) != key
    with pytest.raises(TypeError, match="tensor or a dataset id"):
        teacher_key(teacher, [1, 2])


def test_a_corrupt_cache_fails_its_checksum_and_is_rebuilt(tmp_path):
    teacher, x = _Counting(), _r(20, 5)
    good = cache_teacher_outputs(teacher, x, cache_dir=tmp_path).clone()
    path = next(tmp_path.glob("*.npy"))
    raw = bytearray(path.read_bytes())
    raw[-4:] = b"\x00\x00\xc0\x7f"                                     # last float becomes NaN
    path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="checksum"):
        load_teacher_outputs(path)
    torch.testing.assert_close(cache_teacher_outputs(teacher, x, cache_dir=tmp_path), good)
    assert teacher.rows == 40
    with pytest.raises(FileNotFoundError, match="no cached teacher outputs"):
        load_teacher_outputs(tmp_path / "missing.npy")


def test_streamed_cached_outputs_train_like_the_live_teacher(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 1, 8, generator=g), torch.randint(0, 3, (96,), generator=g)
    teacher = kd.build_model("mlp", (1, 8), width=16, n_classes=3, seed=0).eval()
    cached = cache_teacher_outputs(teacher, x, cache_dir=tmp_path)
    weights = []
    for loader, t in ((TensorLoader(x, y, cached, seed=1), None), (TensorLoader(x, y, seed=1), teacher)):
        s = kd.build_model("mlp", (1, 8), width=4, n_classes=3, seed=2)
        kd.fit(s, loader, epochs=2, teacher=t, loss_fn=kd.losses.KD(T=2.0), progress=False, device="cpu")
        weights.append(list(s.parameters()))
    for a, b in zip(*weights):
        torch.testing.assert_close(a, b)


# ------------------------------------------------------------------------------- config and sharding
def test_sharded_loader_splits_each_global_batch_into_disjoint_equal_shares():
    x = torch.arange(24)
    shares = [list(ShardedLoader(TensorLoader(x, batch_size=8, seed=3, drop_last=True), r, 2)) for r in (0, 1)]
    for (a,), (b,), (whole,) in zip(shares[0], shares[1], TensorLoader(x, batch_size=8, seed=3, drop_last=True)):
        assert len(a) == len(b) == 4 and sorted(torch.cat([a, b]).tolist()) == sorted(whole.tolist())
    with pytest.raises(ValueError, match="cannot be split evenly"):
        list(ShardedLoader(TensorLoader(x, batch_size=9), 0, 2))
    with pytest.raises(ValueError, match="rank must be"):
        ShardedLoader([], 2, 2)


def test_load_config_fills_defaults_and_names_bad_keys():
    cfg = load_config(TINY)
    assert set(cfg) == set(CONFIG_KEYS) and cfg["batch_size"] % 2 == 0
    base = json.loads(TINY.read_text())
    for bad, match in (({**base, "epoch": 3}, "unknown keys \\['epoch'\\]"),
                       ({k: v for k, v in base.items() if k != "loss"}, "missing keys \\['loss'\\]"),
                       ({**base, "epochs": "3"}, "'epochs' must be a int"),
                       ({**base, "loss": {"kind": "fitnets"}}, "loss.kind"),
                       ({**base, "dataset": {"name": "imagenet"}}, "dataset.name")):
        with pytest.raises(ValueError, match=match):
            load_config(bad)


# ------------------------------------------------------------------------------- one process vs torchrun
def _tiny_config(tmp_path) -> Path:
    cfg = {**json.loads(TINY.read_text()), "epochs": 2}
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(cfg))
    return path


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                    reason="torch.distributed with gloo is unavailable")
def test_torchrun_on_two_processes_gives_the_weights_of_one_process_with_the_same_global_batch(tmp_path, monkeypatch):
    for var in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(var, raising=False)
    config = _tiny_config(tmp_path)
    one = main(["--config", str(config), "--out", str(tmp_path / "one"), "--device", "cpu"])
    assert one["world_size"] == 1 and one["loss"][-1] < one["loss"][0]
    env = {**os.environ, "KDCOURSE_THREADS": "1", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "kdcourse.distill", "--config", str(config), "--out", str(tmp_path / "two"), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)  # a hang guard, not a speed check
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["world_size"] == 2 and two["global_batch"] == one["global_batch"]
    a, b = (torch.load(tmp_path / d / "student.pt", weights_only=True) for d in ("one", "two"))
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=1e-4)
    assert two["test_acc"] == pytest.approx(one["test_acc"], abs=0.5)
    # the teacher outputs were cached by the first run and reused (same key, same file)
    assert len(list((Path(os.environ["KDCOURSE_DATA"]) / "cache").glob("teacher-outputs-*.npy"))) == 1


def test_run_in_process_returns_a_summary_and_writes_the_student(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = {**json.loads(TINY.read_text()), "epochs": 1, "cache_teacher_outputs": False, "loss": {"kind": "ce"}}
    summary = run(cfg, out=tmp_path / "run", device="cpu")
    assert summary["world_size"] == 1 and len(summary["loss"]) == 1 and 0 <= summary["test_acc"] <= 100
    state = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())
