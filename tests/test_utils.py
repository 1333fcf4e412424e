"""utils (eval_mode, as_number, show_source) and results (results folder, corrupt files)."""
import json

import numpy as np
import pytest
import torch
from torch import nn

import kdcourse as kd
from kdcourse.utils import as_number, eval_mode, show_source


def _net():
    return nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.5), nn.BatchNorm1d(4))


@pytest.mark.parametrize("start_training", [True, False])
def test_eval_mode_restores_the_previous_mode(start_training):
    m = _net().train(start_training)
    with eval_mode(m):
        assert not any(x.training for x in m.modules())
    assert all(x.training == start_training for x in m.modules())


def test_eval_mode_restores_mixed_modes_and_after_an_error():
    m = _net().train()
    m[2].eval()  # a frozen BatchNorm inside a training model stays frozen
    with pytest.raises(RuntimeError):
        with eval_mode(m, None):
            raise RuntimeError("boom")
    assert m.training and m[0].training and not m[2].training


@pytest.mark.parametrize("value,want", [(3, 3.0), (np.int64(8), 8.0), (np.float32(0.5), 0.5),
                                         (torch.tensor(4.0), 4.0), (torch.tensor([2]), 2.0), (np.array(1.5), 1.5)])
def test_as_number_accepts_numpy_and_tensor_scalars(value, want):
    got = as_number(value, "x")
    assert type(got) is float and got == want


def test_as_number_integer_and_rejections():
    assert as_number(np.int64(8), "bits", integer=True) == 8
    with pytest.raises(ValueError, match="bits must be a whole number"):
        as_number(2.5, "bits", integer=True)
    for bad in (True, "3", torch.ones(2), None):
        with pytest.raises(TypeError, match="x must be a number"):
            as_number(bad, "x")


def test_show_source_prints_the_source_outside_a_notebook(capsys):
    def example_function():
        return 42
    show_source(example_function)
    out = capsys.readouterr().out
    assert "def example_function" in out and "return 42" in out


def test_results_dir_follows_kdcourse_results(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCOURSE_RESULTS", str(tmp_path / "run"))
    kd.record("00_orientation", acc=1.0)
    assert kd.results.results_dir() == tmp_path / "run"
    assert json.loads((tmp_path / "run" / "00_orientation.json").read_text()) == {"acc": 1.0}
    monkeypatch.delenv("KDCOURSE_RESULTS")
    assert kd.results.results_dir() == kd.utils.data_dir() / "results"


@pytest.mark.parametrize("content", ["{not json", "[1, 2]"])
def test_a_corrupt_results_file_is_named_in_the_error(tmp_path, content):
    (tmp_path / "01_soft_labels.json").write_text(content)
    with pytest.raises(ValueError, match="01_soft_labels.json"):
        kd.load_results("01_soft_labels", results_dir=tmp_path)
    with pytest.raises(ValueError, match="corrupt|JSON object"):
        kd.record("01_soft_labels", results_dir=tmp_path, acc=1.0)


def test_cache_lock_makes_a_second_builder_wait(tmp_path):
    import threading
    from kdcourse.utils import cache_lock
    order, held = [], threading.Event()

    def first():
        with cache_lock(tmp_path / "teacher.pt"):
            held.set()
            threading.Event().wait(0.2)
            order.append("first done")

    t = threading.Thread(target=first)
    t.start()
    held.wait(5)
    with cache_lock(tmp_path / "teacher.pt"):
        order.append("second entered")
    t.join()
    assert order == ["first done", "second entered"]
    assert (tmp_path / "teacher.pt.lock").exists()


def test_results_path_names_the_notebook_file_and_rejects_other_names(tmp_path):
    assert kd.results.results_path("05_pruning", tmp_path) == tmp_path / "05_pruning.json"
    for bad in ("05_pruning.ipynb", "pruning", "5_pruning"):
        with pytest.raises(ValueError, match="notebook stem"):
            kd.results.results_path(bad, tmp_path)
