import json

import pytest
import torch

import kdcourse as kd
from kdcourse import teachers
from kdcourse.teachers import cache_paths, teacher_config

FAST = dict(epochs=1, width=4, depth=1)


def test_second_call_loads_from_the_cache_without_training(tmp_path, monkeypatch):
    t1 = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **FAST)
    assert t1.cache_info["loaded"] is False and 0 <= t1.cache_info["test_acc"] <= 100
    assert t1.cache_info["path"] == str(cache_paths(teacher_config("digits", **FAST), tmp_path)[0])

    def no_training(*args, **kwargs):
        raise AssertionError("get_teacher trained although a valid checkpoint was cached")

    monkeypatch.setattr(teachers, "fit", no_training)
    t2 = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **FAST)
    assert t2.cache_info["loaded"] is True
    assert t2.cache_info["test_acc"] == t1.cache_info["test_acc"]
    assert all(torch.equal(a, b) for a, b in zip(t1.parameters(), t2.parameters()))


def test_teacher_comes_back_frozen(tmp_path):
    t = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **FAST)
    assert not any(mod.training for mod in t.modules())
    assert not any(p.requires_grad for p in t.parameters())   # a fixed target: no optimizer can move it
    assert "requires_grad=False" in teachers.get_teacher.__doc__
    x = torch.randn(4, 1, 8, 8, requires_grad=True)
    t(x).sum().backward()                                      # gradients still flow to the input
    assert x.grad is not None and all(p.grad is None for p in t.parameters())


def test_corrupted_checkpoint_is_detected_and_rebuilt(tmp_path):
    t1 = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **FAST)
    ckpt, meta = cache_paths(teacher_config("digits", **FAST), tmp_path)
    data = bytearray(ckpt.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte
    ckpt.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="checksum mismatch.*retraining"):
        t2 = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **FAST)
    assert t2.cache_info["loaded"] is False
    assert json.loads(meta.read_text())["sha256"] == kd.utils.sha256_file(ckpt)
    assert all(torch.equal(a, b) for a, b in zip(t1.parameters(), t2.parameters()))  # same seed


def test_checkpoint_that_does_not_match_its_model_is_rebuilt(tmp_path):
    kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **FAST)
    ckpt, meta = cache_paths(teacher_config("digits", **FAST), tmp_path)
    other = kd.build_model("mlp", (1, 8, 8))
    buf = ckpt.with_suffix(".tmp")
    torch.save(other.state_dict(), buf)
    buf.replace(ckpt)
    m = json.loads(meta.read_text())
    m["sha256"] = kd.utils.sha256_file(ckpt)  # checksum fine, contents wrong
    meta.write_text(json.dumps(m))
    with pytest.warns(UserWarning, match="unusable"):
        t = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **FAST)
    assert t.cache_info["loaded"] is False


def test_missing_metadata_is_not_trusted(tmp_path):
    kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **FAST)
    _, meta = cache_paths(teacher_config("digits", **FAST), tmp_path)
    meta.unlink()
    with pytest.warns(UserWarning, match="unusable"):
        assert kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **FAST).cache_info["loaded"] is False


def test_cache_key_covers_the_recipe():
    base = teacher_config("mnist", epochs=3)
    assert base == {"dataset": "mnist", "arch": "cnn", "width": 16, "depth": 2, "epochs": 3, "seed": 0,
                    "lr": 1e-3, "batch_size": 128, "data_seed": 0, "n_train": None, "cache_version": 1}
    full = kd.get_profile("full")
    assert teacher_config("mnist", profile=full)["epochs"] == full.teacher_epochs["mnist"]
    ckpt, meta = cache_paths(base, "/some/dir")
    assert ckpt.parent == meta.parent and ckpt.suffix == ".pt" and meta.suffix == ".json"
    assert ckpt.stem == meta.stem and ckpt.stem.startswith("teacher-mnist-cnn16x2-")
    paths = {cache_paths(base)[0]}
    for change in (dict(epochs=4), dict(seed=1), dict(width=8), dict(lr=1e-2), dict(n_train=500)):
        paths.add(cache_paths(teacher_config("mnist", **{**dict(epochs=3), **change}))[0])
    assert len(paths) == 6


def test_bad_teacher_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        kd.get_teacher("svhn", cache_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown arch"):
        kd.get_teacher("digits", arch="vit", cache_dir=tmp_path)


def test_unwritable_cache_gives_a_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(PermissionError, match="cannot write to cache folder"):
        kd.get_teacher("digits", cache_dir=blocker / "cache", progress=False, **FAST)


def test_teacher_records_its_test_curve_without_changing_its_training(tmp_path):
    recipe = dict(epochs=3, width=4, depth=1)
    t = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **recipe)
    curve = t.cache_info["test_curve"]
    assert len(curve) == 3 and curve[-1] == pytest.approx(t.cache_info["test_acc"])
    data = kd.load_dataset("digits")   # the recipe run by hand, without the per-epoch evaluation
    ref = kd.build_model("cnn", data.in_shape, width=4, depth=1, seed=0)
    kd.fit(ref, data.train_loader(128, seed=0), epochs=3, lr=1e-3, seed=0, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(t.parameters(), ref.parameters()))
    again = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **recipe)
    assert again.cache_info["loaded"] is True and again.cache_info["test_curve"] == curve
    _, meta_path = cache_paths(teacher_config("digits", **recipe), tmp_path)
    meta = json.loads(meta_path.read_text())
    del meta["test_curve"]                 # a checkpoint cached before curves were recorded
    meta_path.write_text(json.dumps(meta))
    old = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **recipe)
    assert old.cache_info["loaded"] is True and old.cache_info["test_curve"] is None


def test_cosine_teacher_is_its_own_recipe_and_trains_with_the_cosine_schedule(tmp_path):
    recipe = dict(epochs=3, width=4, depth=1, lr=1e-2)
    constant, cosine = teacher_config("digits", **recipe), teacher_config("digits", schedule="cosine", **recipe)
    assert "schedule" not in constant and teacher_config("digits", schedule="constant", **recipe) == constant
    assert cosine == {**constant, "schedule": "cosine"}
    assert cache_paths(cosine, tmp_path)[0] != cache_paths(constant, tmp_path)[0]
    t = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, schedule="cosine", **recipe)
    data = kd.load_dataset("digits")
    loader = data.train_loader(128, seed=0)
    ref, plain = (kd.build_model("cnn", data.in_shape, width=4, depth=1, seed=0) for _ in range(2))
    kd.fit(ref, loader, epochs=3, lr=1e-2, seed=0, progress=False,
           scheduler=kd.chains.cosine_schedule(3 * len(loader)))
    kd.fit(plain, data.train_loader(128, seed=0), epochs=3, lr=1e-2, seed=0, progress=False)
    assert all(torch.equal(a, b) for a, b in zip(t.parameters(), ref.parameters()))
    assert not all(torch.equal(a, b) for a, b in zip(t.parameters(), plain.parameters()))
    with pytest.raises(ValueError, match="unknown schedule 'linear'"):
        kd.get_teacher("digits", cache_dir=tmp_path, schedule="linear", **recipe)
