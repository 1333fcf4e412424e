"""Profiles, hooks, utils and the package's import hygiene."""
import dataclasses
import subprocess
import sys

import pytest
import torch
from torch import nn

import kdcourse as kd
from kdcourse.profiles import PROFILES, Profile


def test_profiles(monkeypatch):
    monkeypatch.delenv("KDCOURSE_PROFILE", raising=False)
    monkeypatch.delenv("KDCOURSE_THREADS", raising=False)
    fast, full = kd.get_profile(), kd.get_profile("full")
    assert fast.name == "fast" and len(fast.seeds) >= 3
    assert all(full.epochs[d] >= fast.epochs[d] for d in fast.epochs)
    assert fast.pick(fast=1, full=2) == 1 and full.pick(fast=1, full=2) == 2
    monkeypatch.setenv("KDCOURSE_PROFILE", "full")
    assert kd.get_profile().name == "full"
    monkeypatch.setenv("KDCOURSE_THREADS", "1")
    assert kd.get_profile().threads == 1
    monkeypatch.setenv("KDCOURSE_THREADS", "many")
    with pytest.raises(ValueError, match="KDCOURSE_THREADS"):
        kd.get_profile()
    with pytest.raises(ValueError, match="unknown profile 'slow'.*fast"):
        kd.get_profile("slow")


def test_profiles_are_frozen_and_share_their_teacher_sizes():
    assert set(PROFILES) == {"fast", "full"} and all(isinstance(p, Profile) for p in PROFILES.values())
    fast = PROFILES["fast"]
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.batch_size = 64
    assert all(set(p.epochs) == set(p.teacher_epochs) == set(kd.data.DATASETS) for p in PROFILES.values())
    assert not hasattr(fast, "as_dict")   # removed: dead code


def test_layer_names_lists_every_capturable_submodule():
    net = nn.Sequential(nn.Linear(3, 4), nn.Sequential(nn.ReLU(), nn.Linear(4, 2)))
    assert kd.hooks.layer_names(net) == ["0", "1", "1.0", "1.1"]
    with kd.capture(net, kd.hooks.layer_names(net)) as feats:
        out = net(torch.randn(5, 3))
    torch.testing.assert_close(feats["1"], out)
    torch.testing.assert_close(feats["1.0"], torch.relu(feats["0"]))


def test_capture_records_named_outputs_and_removes_hooks():
    m = kd.build_model("cnn", (1, 28, 28), width=4)
    x = torch.randn(3, 1, 28, 28)
    with kd.capture(m, ["blocks.0", "embed"]) as feats:
        m(x)
    assert feats["blocks.0"].shape == (3, 4, 14, 14) and feats["embed"].shape == (3, 16)
    assert all(not mod._forward_hooks for mod in m.modules())


def test_capture_unknown_name_lists_valid_names_and_cleans_up():
    m = kd.build_model("mlp", (1, 40))
    with pytest.raises(KeyError, match="unknown layer name.*'fc1'.*valid names: flatten, blocks"):
        with kd.capture(m, ["embed", "fc1"]):
            pass
    with pytest.raises(RuntimeError):
        with kd.capture(m, ["embed"]):
            raise RuntimeError("boom")
    assert all(not mod._forward_hooks for mod in m.modules())


def test_capture_works_on_any_module():
    net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with kd.capture(net, ["1"]) as feats:
        net(torch.randn(5, 3))
    assert feats["1"].shape == (5, 4) and (feats["1"] >= 0).all()


def test_utils(tmp_path):
    kd.seed_everything(1)
    a = torch.rand(3)
    kd.seed_everything(1)
    assert torch.equal(a, torch.rand(3))
    assert kd.get_device("cpu").type == "cpu"
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda"):
            kd.get_device("cuda")
    assert kd.set_threads(1) == 1
    with pytest.raises(ValueError):
        kd.set_threads(0)
    p = kd.utils.atomic_write_bytes(tmp_path / "sub" / "f.bin", b"abc")
    assert p.read_bytes() == b"abc" and len(kd.utils.sha256_file(p)) == 64
    assert list((tmp_path / "sub").iterdir()) == [p]  # no temporary file left behind


def test_import_has_no_side_effects(tmp_path):
    code = ("import random, torch; s = torch.initial_seed(); r = random.getstate();"
            "import kdcourse; assert torch.initial_seed() == s and random.getstate() == r;"
            "import os; assert not os.listdir('.')")
    subprocess.run([sys.executable, "-c", code], cwd=tmp_path, check=True)


def test_public_functions_have_docstrings():
    import inspect
    missing = []
    for modname in kd.__all__:
        mod = getattr(kd, modname)
        if inspect.ismodule(mod):
            for name in getattr(mod, "__all__", []):
                obj = getattr(mod, name)
                if (inspect.isfunction(obj) or inspect.isclass(obj)) and not inspect.getdoc(obj):
                    missing.append(f"{modname}.{name}")
    assert not missing, missing


class _TupleBlock(nn.Module):
    """A block that returns (hidden, extra), like a transformer layer."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        h = self.lin(x)
        return h, {"attn": h.sum(-1)}


class _Out(dict):
    """A Hugging Face-like output: a dict whose keys are also attributes."""
    __getattr__ = dict.__getitem__


def test_capture_select_picks_the_tensor_from_tuples_dicts_and_output_objects():
    net = nn.Sequential(_TupleBlock())
    x = torch.randn(2, 3, 4)
    with kd.capture(net, ["0"], select=0) as feats:
        h, _ = net(x)
    torch.testing.assert_close(feats["0"], h)
    with kd.capture(net, ["0"], select={"0": lambda out: out[1]["attn"]}) as feats:
        net(x)
    torch.testing.assert_close(feats["0"], h.sum(-1))
    out = _Out(last_hidden_state=h)
    assert kd.hooks.select_output(out, "last_hidden_state") is h
    assert kd.hooks.select_output(_Named(h), "hidden") is h
    with kd.capture(net, ["0"]) as feats:   # default: the raw output, as before
        net(x)
    assert isinstance(feats["0"], tuple)


class _Named:
    def __init__(self, hidden):
        self.hidden = hidden


@pytest.mark.parametrize("select, match", [(5, "returned a tuple of length 2"), ("hidden", "returned a tuple"),
                                           (1, "picked a dict")])
def test_capture_select_names_the_output_type_when_it_cannot_pick(select, match):
    net = nn.Sequential(_TupleBlock())
    with pytest.raises(TypeError, match=match), kd.capture(net, ["0"], select=select):
        net(torch.randn(2, 3, 4))
    assert all(not m._forward_hooks for m in net.modules())
    with pytest.raises(TypeError, match="returned a Tensor"):
        kd.hooks.select_output(torch.zeros(2), 0, "layer 'x'")
    with pytest.raises(KeyError, match="not captured"), kd.capture(net, ["0"], select={"1": 0}):
        pass
