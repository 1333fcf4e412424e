"""The figures each notebook records (data/results/<notebook>.json) exist and satisfy its claims.

These files are written by the notebooks themselves (kd.record); the committed copies come from
an executed fast-profile run. Running the notebooks (make test) rewrites and re-asserts them.
"""
import json
from pathlib import Path

import pytest

RESULTS = Path(__file__).resolve().parents[1] / "data" / "results"

REQUIRED = {
    "00_orientation": ["mnist_teacher_acc", "mnist_student_acc", "mnist1d_teacher_acc", "mnist1d_student_acc"],
    "01_soft_labels": ["transfer_scratch_acc", "transfer_kd_acc", "transfer_oracle_acc", "omitted_ce_class_acc",
                       "omitted_kd_class_acc", "omitted_kd_corrected_class_acc", "omitted_kd_corrected_other_acc",
                       "same_set_kd_gain_pts", "same_set_kd_gain_std"],
    "02_feature_distillation": ["mnist1d_scratch_acc", "mnist1d_kd_acc", "mnist1d_fitnets_acc", "mnist_scratch_acc",
                                "mnist_fitnets_acc", "mnist_at_acc", "mnist1d_scratch_std", "mnist1d_fitnets_std"],
    "03_relation_distillation": ["scratch_recall1", "rkd_recall1", "sp_recall1", "pkt_recall1", "teacher_recall1",
                                 "scratch_acc", "rkd_acc", "sp_acc", "pkt_acc", "teacher_acc"],
    "04_teacher_assistants": ["student_scratch_acc", "student_direct_acc", "student_chain_acc", "capacity_gap_points",
                              "student_scratch_acc_std", "student_direct_acc_std", "student_chain_acc_std"],
    "05_pruning": ["dense_acc", "unstructured90_acc", "unstructured90_latency_ratio", "structured50_param_ratio",
                   "structured50_latency_ratio_b256", "structured50_finetune_acc", "structured50_kd_acc"],
    "06_quantization": ["fp32_acc", "int8_acc", "int8_size_ratio", "int8_latency_ratio_b256", "ptq_low_bit_acc",
                        "qat_low_bit_acc", "qat_kd_low_bit_acc", "pt2e_x86_acc", "torchao_linear_acc", "ort_static_acc"],
}


def _load(stem):
    path = RESULTS / f"{stem}.json"
    if not path.exists():
        pytest.fail(f"{path} is missing: run the notebook {stem}.ipynb")
    return json.loads(path.read_text())


@pytest.mark.parametrize("stem", sorted(REQUIRED))
def test_required_figures_are_recorded(stem):
    r = _load(stem)
    missing = [k for k in REQUIRED[stem] if k not in r]
    assert not missing, f"{stem}: missing figures {missing}"


def test_01_claims():
    r = _load("01_soft_labels")
    assert r["transfer_kd_acc"] >= r["transfer_scratch_acc"] + 8
    assert r["transfer_kd_acc"] >= 0.9 * r["transfer_oracle_acc"]
    assert r["omitted_ce_class_acc"] < 1 and r["omitted_kd_corrected_class_acc"] >= 85


def test_02_claims():
    r = _load("02_feature_distillation")
    assert r["mnist1d_fitnets_acc"] >= r["mnist1d_scratch_acc"] + 5


def test_03_claims():
    r = _load("03_relation_distillation")
    assert r["rkd_recall1"] > r["scratch_recall1"] and r["teacher_recall1"] > r["rkd_recall1"]


def test_04_claims():
    r = _load("04_teacher_assistants")
    assert r["capacity_gap_points"] >= 4


def test_05_claims():
    r = _load("05_pruning")
    assert r["unstructured90_acc"] >= r["dense_acc"] - 0.5
    assert r["structured50_param_ratio"] <= 0.3 and r["structured50_latency_ratio_b256"] <= 0.6
    assert max(r["structured50_finetune_acc"], r["structured50_kd_acc"]) >= r["dense_acc"] - 0.5
    assert r["few_labels_kd_acc"] >= r["few_labels_finetune_acc"] + 1  # KD pays when labels are scarce


def test_06_claims():
    r = _load("06_quantization")
    assert abs(r["int8_acc"] - r["fp32_acc"]) <= 0.3
    assert r["int8_size_ratio"] <= 0.3 and r["int8_latency_ratio_b256"] <= 0.5
    gap = r["fp32_acc"] - r["ptq_low_bit_acc"]
    assert gap >= 5, "PTQ should visibly break at the low bit width"
    assert r["qat_low_bit_acc"] - r["ptq_low_bit_acc"] >= 0.5 * gap, "QAT should recover at least half the gap"
