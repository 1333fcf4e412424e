import json
import time

import pytest
import torch

import kdcourse as kd
from kdcourse.teachers import cache_paths, teacher_config

FAST = dict(epochs=1, width=4, depth=1)


def test_second_call_loads_from_cache_in_under_a_second(tmp_path):
    t1 = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **FAST)
    assert t1.cache_info["loaded"] is False and 0 <= t1.cache_info["test_acc"] <= 100
    start = time.perf_counter()
    t2 = kd.get_teacher("digits", cache_dir=tmp_path, progress=False, **FAST)
    assert time.perf_counter() - start < 1.0
    assert t2.cache_info["loaded"] is True and not t2.training
    assert all(torch.equal(a, b) for a, b in zip(t1.parameters(), t2.parameters()))
    assert not any(p.requires_grad for p in t2.parameters())


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
