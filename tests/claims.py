"""Each notebook's recorded claims: the figures it must record and what they must satisfy.

Used twice: by the root conftest.py, which runs a notebook's claims right after that notebook
ran under ``make test`` (on the figures it has just written), and by tests/test_recorded_results.py,
which checks the committed ``data/results`` (``make unit``). Speed figures are not claims here:
``make bench`` checks them. Every key a check reads is in its `required` list.
"""


def _claims_00(r):
    assert r["mnist_teacher_acc"] > r["mnist_student_acc"] and r["mnist1d_teacher_acc"] > r["mnist1d_student_acc"]


def _claims_01(r):
    assert abs(r["same_set_kd_gain_pts"]) < 2 and r["same_set_kd_gain_lo"] <= 0        # no resolved same-set gain
    assert r["transfer_kd_acc"] >= r["transfer_scratch_acc"] + 8
    assert r["transfer_kd_acc"] >= 0.9 * r["transfer_oracle_acc"]
    assert r["transfer_soft_vs_hard_pts"] < 2 and r["transfer_soft_vs_hard_lo"] <= 0  # the pool: hard labels get ~all
    # issue 12's targets: +3 pt with a CI above 0 (committed run +3.6 at 1 thread, +4.8 / +4.7 at 2 / 4 threads);
    # 0.5 pt of slack for float differences between CPUs
    assert r["function_matching_gain_pts"] >= 2.5 and r["function_matching_gain_lo"] > 0
    assert r["soft_vs_hard_best_pts"] >= 2 and r["soft_vs_hard_best_lo"] > 0
    assert r["omitted_hard_class_acc"] < 1 and r["omitted_kd_corrected_class_acc"] >= 85
    assert r["omitted_soft_vs_hard_pts"] > 20 and r["omitted_soft_vs_hard_lo"] > 0
    assert r["fidelity_soft"] > r["fidelity_hard"]                                      # fidelity follows accuracy


def _claims_02(r):
    assert r["mnist1d_fitnets_acc"] >= r["mnist1d_scratch_acc"] + 5
    assert r["mnist1d_fitnets_vs_scratch_lo"] > 0 and r["mnist1d_fitnets_vs_kd_lo"] > 0   # both gains resolved (one rule)


def _claims_03(r):
    assert r["rkd_recall1"] > r["scratch_recall1"] and r["teacher_recall1"] > r["rkd_recall1"]
    assert r["rkd_vs_scratch_recall1_lo"] > 0        # RKD's retrieval gain: the paired interval lies above 0


def _claims_04(r):
    # issue 12: one family, teacher >= 4x assistant >= 4x student (sizes: deterministic), >= 4 teachers on the curve
    assert r["teacher_params"] >= 4 * r["assistant_params"] and r["assistant_params"] >= 4 * r["student_params"]
    assert r["capacity_gap_points"] >= 4
    assert r["kd_vs_scratch_pts"] > 2 and r["kd_vs_scratch_lo"] > 0   # KD pays in this setting (resolved): the gap can be asked
    assert r["teacher_acc"] > r["gap_smallest_teacher_acc"] + 5
    assert r["early_vs_direct_hi"] > r["early_vs_direct_lo"] and r["chain_vs_direct_hi"] > r["chain_vs_direct_lo"]


def _claims_05(r):
    assert r["unstructured90_acc"] >= r["dense_acc"] - 0.5
    assert r["unstructured90_vs_dense_ft_lo"] > -1.0        # vs dense + the same fine-tune: any loss < 1 pt (95 % CI)
    assert r["structured50_param_ratio"] <= 0.3  # a size: deterministic, so a test
    assert max(r["structured50_finetune_acc"], r["structured50_kd_acc"]) >= r["dense_acc"] - 0.5
    assert r["structured50_kd_vs_finetune_pts"] < 0 and r["structured50_kd_vs_finetune_lo"] < 0   # all labels: KD no gain
    assert r["few_labels_kd_acc"] >= r["few_labels_finetune_acc"] + 1  # KD pays when labels are scarce
    assert r["few_labels_hard_vs_finetune_lo"] > 0 and r["few_labels_kd_vs_finetune_lo"] > 0      # both resolved gains
    assert r["few_labels_soft_vs_hard_lo"] <= 0        # the soft part adds nothing resolved over hard teacher labels


def _claims_06(r):
    assert abs(r["int8_acc"] - r["fp32_acc"]) <= 0.3
    assert r["int8_size_ratio"] <= 0.3
    gap = r["fp32_acc"] - r["ptq_low_bit_acc"]
    assert gap >= 5, "PTQ should visibly break at the low bit width"
    assert r["qat_low_bit_acc"] - r["ptq_low_bit_acc"] >= 0.5 * gap, "QAT should recover at least half the gap"
    assert r["qat_vs_ptq_lo"] > 0, "QAT's recovery is resolved by the paired interval"


def _claims_07(r):
    se = 100 * (r["teacher_acc"] / 100 * (1 - r["teacher_acc"] / 100) / 1000) ** 0.5   # test-set noise, 1,000 images
    assert r["final_size_ratio"] <= 1 / 20
    assert r["teacher_acc"] - r["final_acc"] <= 1.0 + 2 * se
    assert r["export_acc"] == r["final_acc"] and abs(r["int8_acc"] - r["prune_acc"]) <= 0.5
    assert r["distil_size_ratio"] > r["prune_size_ratio"] > r["export_size_ratio"]
    assert r["student_kd_acc"] >= r["teacher_acc"] - 2 and r["student_scratch_acc"] >= r["teacher_acc"] - 2
    assert r["promise_width"] > 0
    assert r["frontier_w8_kd_acc"] >= r["frontier_w2_kd_acc"] + 3
    assert r["ptq_bits8_acc"] >= r["prune_acc"] - 1.5 and r["ptq_bits2_acc"] < r["ptq_bits8_acc"] - 5
    assert abs(r["order_a_acc"] - r["order_b_acc"]) <= 3 and r["order_sign"] in (-1, 0, 1)


def _claims_08(r):
    assert r["student_params"] * 10 <= r["teacher_params"]
    assert r["teacher_em"] >= 95
    assert min(r["seqkd_rs_em_seed0"], r["seqkd_rs_em_seed1"], r["seqkd_rs_em_seed2"]) >= 0.9 * r["teacher_em"]
    assert r["answers_only_em"] <= r["chance_em"] + 10
    assert r["seqkd_rs_em"] >= r["answers_only_em"] + 50
    assert r["tokens_per_answer_cot"] > 3 * r["tokens_per_answer_direct"]


def _claims_09(r):
    assert r["datafree_acc"] >= r["datafree_nobn_acc"] + 10 and r["datafree_nobn_acc"] >= r["datafree_noise_acc"] + 10
    assert r["datafree_real_acc"] > r["datafree_acc"]
    # issue 15's target is 75 %: 80 % on the committed synthesis draw (0.72-0.80 over 4 draws: one draw can miss)
    assert r["datafree_share"] >= 0.75
    assert r["datafree_mix_gain_pts"] > max(0.0, r["datafree_real_mix_gain_pts"])   # mixing pays on synthetic inputs
    assert r["ensemble_teacher_acc"] > r["ensemble_best_member_acc"]
    assert r["board_rows"] >= 10 and r["board_fitnets_vs_scratch_pts"] >= 3
    assert all(r[f"board_{m}_ci"] > 0 for m in BOARD_09)


BOARD_09 = ("scratch", "hard_teacher_labels", "kd", "fitnets", "born_again_gen_1", "mutual_learning",
            "ensemble_to_student", "dkd", "dist")


# stem -> (every figure the check reads, the check)
CLAIMS = {
    "00_orientation": (["mnist_teacher_acc", "mnist_student_acc", "mnist1d_teacher_acc", "mnist1d_student_acc"],
                       _claims_00),
    "01_soft_labels": (
        ["same_set_kd_gain_pts", "same_set_kd_gain_lo", "same_set_kd_gain_hi", "transfer_scratch_acc",
         "transfer_kd_acc", "transfer_hard_acc", "transfer_oracle_acc", "transfer_soft_vs_hard_pts",
         "transfer_soft_vs_hard_lo", "transfer_soft_vs_hard_hi", "function_matching_gain_pts",
         "function_matching_gain_lo", "function_matching_gain_hi", "soft_vs_hard_best_pts",
         "soft_vs_hard_best_lo", "soft_vs_hard_best_hi", "omitted_soft_vs_hard_pts", "omitted_soft_vs_hard_lo",
         "omitted_soft_vs_hard_hi", "omitted_hard_class_acc", "omitted_kd_corrected_class_acc", "fidelity_soft",
         "fidelity_hard", "ece_soft", "ece_hard"],
        _claims_01),
    "02_feature_distillation": (
        ["mnist1d_scratch_acc", "mnist1d_kd_acc", "mnist1d_fitnets_acc", "mnist_scratch_acc", "mnist_fitnets_acc",
         "mnist_at_acc", "mnist1d_scratch_std", "mnist1d_fitnets_std", "mnist1d_fitnets_vs_scratch_pts",
         "mnist1d_fitnets_vs_scratch_lo", "mnist1d_fitnets_vs_scratch_hi", "mnist1d_fitnets_vs_kd_pts",
         "mnist1d_fitnets_vs_kd_lo"],
        _claims_02),
    "03_relation_distillation": (
        ["scratch_recall1", "rkd_recall1", "sp_recall1", "pkt_recall1", "teacher_recall1", "scratch_acc",
         "rkd_acc", "sp_acc", "pkt_acc", "teacher_acc", "rkd_vs_scratch_recall1_pts", "rkd_vs_scratch_recall1_lo",
         "rkd_vs_scratch_recall1_hi"],
        _claims_03),
    "04_teacher_assistants": (["student_params", "assistant_params", "teacher_params", "capacity_gap_points",
                               "student_scratch_acc", "student_direct_acc", "student_chain_acc", "student_early_acc",
                               "teacher_acc", "gap_smallest_teacher_acc", "kd_vs_scratch_pts", "kd_vs_scratch_lo",
                               "kd_vs_scratch_hi", "chain_vs_direct_pts", "chain_vs_direct_lo", "chain_vs_direct_hi",
                               "early_vs_direct_pts", "early_vs_direct_lo", "early_vs_direct_hi",
                               "largest_vs_smallest_teacher_pts", "largest_vs_smallest_teacher_lo",
                               "largest_vs_smallest_teacher_hi"], _claims_04),
    "05_pruning": (
        ["dense_acc", "unstructured90_acc", "structured50_param_ratio", "structured50_finetune_acc",
         "structured50_kd_acc", "few_labels_kd_acc", "few_labels_finetune_acc", "unstructured90_vs_dense_ft_pts",
         "unstructured90_vs_dense_ft_lo", "unstructured90_vs_dense_ft_hi", "structured50_kd_vs_finetune_pts",
         "structured50_kd_vs_finetune_lo", "structured50_kd_vs_finetune_hi", "few_labels_hard_acc",
         "few_labels_temperature", "few_labels_soft_vs_hard_pts", "few_labels_soft_vs_hard_lo",
         "few_labels_soft_vs_hard_hi", "few_labels_kd_vs_finetune_pts", "few_labels_kd_vs_finetune_lo",
         "few_labels_kd_vs_finetune_hi", "few_labels_hard_vs_finetune_pts", "few_labels_hard_vs_finetune_lo",
         "few_labels_hard_vs_finetune_hi"],
        _claims_05),
    "06_quantization": (
        ["fp32_acc", "int8_acc", "int8_size_ratio", "ptq_low_bit_acc", "qat_low_bit_acc", "qat_kd_low_bit_acc",
         "pt2e_x86_acc", "torchao_linear_acc", "ort_static_acc", "qat_vs_ptq_pts", "qat_vs_ptq_lo",
         "qat_vs_ptq_hi", "qat_kd_vs_qat_pts", "qat_kd_vs_qat_lo", "qat_kd_vs_qat_hi"],
        _claims_06),
    "07_compression_pipeline": (["teacher_acc", "final_acc", "final_acc_std", "final_size_ratio",
                                 "final_latency_ratio_b256", "final_latency_ratio_b1", "student_kd_acc",
                                 "student_scratch_acc", "export_acc", "int8_acc", "prune_acc", "distil_size_ratio",
                                 "prune_size_ratio", "export_size_ratio", "promise_width", "frontier_w8_kd_acc",
                                 "frontier_w2_kd_acc", "ptq_bits8_acc", "ptq_bits2_acc", "order_a_acc",
                                 "order_b_acc", "order_sign"], _claims_07),
    "08_llm_distillation": (["teacher_params", "student_params", "teacher_em", "chance_em", "answers_only_em",
                             "seqkd_rs_em", "seqkd_rs_em_seed0", "seqkd_rs_em_seed1", "seqkd_rs_em_seed2",
                             "tokens_per_answer_cot", "tokens_per_answer_direct", "seqkd_em", "token_fkl_em",
                             "token_rkl_em", "student_latency_ratio"], _claims_08),
    "09_beyond_the_pair": (["datafree_acc", "datafree_nobn_acc", "datafree_noise_acc", "datafree_real_acc",
                            "datafree_share", "datafree_mix_gain_pts", "datafree_real_mix_gain_pts", "ban_gain_pts",
                            "dml_gain_pts", "ensemble_teacher_acc", "ensemble_best_member_acc",
                            "ensemble_student_gain_pts", "dkd_gain_pts", "dist_gain_pts", "board_rows",
                            "board_fitnets_vs_scratch_pts", *(f"board_{m}_ci" for m in BOARD_09)],
                           _claims_09),
}


def check(stem: str, figures: dict, where: str) -> None:
    """Raise AssertionError naming what is missing or false for notebook `stem`'s `figures`."""
    required, claims = CLAIMS[stem]
    missing = [k for k in required if k not in figures]
    assert not missing, f"{stem} ({where}): missing figures {missing}"
    claims(figures)
