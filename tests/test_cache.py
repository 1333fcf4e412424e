import json
import warnings

import pytest
import torch

from kdcourse.cache import load_state, read_record, recipe_key, record_path, save_state, write_record, write_verified


def test_recipe_key_ignores_key_order_and_sees_values():
    assert recipe_key({"a": 1, "b": [2, 3]}) == recipe_key({"b": [2, 3], "a": 1})
    assert recipe_key({"a": 1}) != recipe_key({"a": 2})
    assert len(recipe_key({})) == 16


def test_written_file_reads_back_with_its_record_and_rejects_a_changed_byte(tmp_path):
    p = tmp_path / "x.npz"
    rec = write_verified(p, b"hello world", {"recipe": {"n": 3}})
    assert record_path(p) == tmp_path / "x.json"
    assert read_record(p, expect={"recipe": {"n": 3}}) == rec
    with pytest.raises(ValueError, match="another recipe"):
        read_record(p, expect={"recipe": {"n": 4}})
    p.write_bytes(b"hello worle")
    with pytest.raises(ValueError, match="checksum mismatch for cached x.npz"):
        read_record(p)


def test_missing_record_or_file_and_unreadable_record(tmp_path):
    p = tmp_path / "y.pt"
    with pytest.raises(FileNotFoundError):
        read_record(p)
    p.write_bytes(b"data")                                 # a crash before the record was written
    with pytest.raises(FileNotFoundError, match="y.json"):
        read_record(p)
    record_path(p).write_text("{not json")
    with pytest.raises(ValueError, match="unreadable"):
        read_record(p)
    write_record(p, {"k": 1})
    assert json.loads(record_path(p).read_text())["k"] == 1 and read_record(p)["k"] == 1


def test_state_round_trip_and_unusable_checkpoints_warn_and_return_none(tmp_path):
    src, dst = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    p = tmp_path / "m.pt"
    assert load_state(dst, p) is None                      # nothing cached yet: silent None
    save_state(src, p, {"config": {"w": 3}})
    assert load_state(dst, p, expect={"config": {"w": 3}})["config"] == {"w": 3}
    assert torch.equal(dst.weight, src.weight)
    with pytest.warns(UserWarning, match="m.pt is unusable.*another config.*retraining"):
        assert load_state(dst, p, expect={"config": {"w": 4}}, then="retraining") is None
    with pytest.warns(UserWarning, match="unusable"):          # checksum fine, shapes wrong
        assert load_state(torch.nn.Linear(4, 2), p) is None
    p.write_bytes(b"garbage")
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        assert load_state(dst, p) is None
    assert "checksum mismatch" in str(w[0].message)
