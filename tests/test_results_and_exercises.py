import json

import pytest
import torch

import kdcourse as kd


def test_record_merges_and_is_flat_json(tmp_path):
    kd.record("01_soft_labels", results_dir=tmp_path, kd_acc=91.5, n_seeds=3)
    out = kd.record("01_soft_labels", results_dir=tmp_path, scratch_acc=90.0)
    assert out == {"scratch_acc": 90.0}  # only what this call wrote
    merged = {"kd_acc": 91.5, "n_seeds": 3, "scratch_acc": 90.0}
    assert json.loads((tmp_path / "01_soft_labels.json").read_text()) == merged
    assert kd.load_results("01_soft_labels", results_dir=tmp_path) == merged
    assert kd.load_results("02_feature_distillation", results_dir=tmp_path) == {}


def test_record_defaults_to_data_results(tmp_path):
    kd.record("00_orientation", acc=1.0)  # KDCOURSE_DATA points at tmp_path/data (conftest)
    assert (tmp_path / "data" / "results" / "00_orientation.json").exists()


@pytest.mark.parametrize("bad", [dict(acc=float("nan")), dict(acc="97"), dict(acc=True), dict(Acc=1.0), {}])
def test_record_rejects_bad_figures(tmp_path, bad):
    with pytest.raises(ValueError):
        kd.record("00_orientation", results_dir=tmp_path, **bad)


def test_record_rejects_bad_notebook_names(tmp_path):
    with pytest.raises(ValueError, match="notebook stem"):
        kd.record("soft_labels.ipynb", results_dir=tmp_path, acc=1.0)


def _ref(x, T):
    return torch.softmax(x / T, dim=-1)


def _inputs(gen):
    return torch.randn(4, 5, generator=gen), 2.0


def test_check_passes_fails_and_waits(capsys):
    assert kd.check(lambda x, T: torch.softmax(x / T, -1), _ref, inputs=_inputs) is True
    assert "✅" in capsys.readouterr().out
    assert kd.check(lambda x, T: torch.softmax(x, -1), _ref, inputs=_inputs, hint="divide by T") is False
    assert "Hint: divide by T" in capsys.readouterr().out

    def stub(x, T):
        raise NotImplementedError

    assert kd.check(stub, _ref, inputs=_inputs) is None
    assert "not attempted" in capsys.readouterr().out

    def buggy(x, T):
        return x.foo

    assert kd.check(buggy, _ref, inputs=_inputs) is False
    assert "AttributeError" in capsys.readouterr().out


def test_check_with_keyword_inputs_and_wrong_shapes(capsys):
    ref = lambda a, b: a + b  # noqa: E731
    assert kd.check(lambda a, b: b + a, ref, inputs=lambda g: {"a": torch.ones(2), "b": torch.zeros(2)})
    assert not kd.check(lambda a, b: (a + b)[None], ref, inputs=lambda g: {"a": torch.ones(2), "b": torch.ones(2)})


def test_check_can_judge_silently(capsys):
    wrong = lambda x, T: torch.softmax(x, -1)                                   # forgot the temperature
    assert kd.check(wrong, _ref, inputs=_inputs, verbose=False) is False
    assert kd.check(lambda x, T: torch.softmax(x / T, -1), _ref, inputs=_inputs, verbose=False) is True
    assert capsys.readouterr().out == ""
