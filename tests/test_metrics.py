import pytest
import torch

from kdcourse.metrics import expected_calibration_error, fidelity
from kdcourse.stats import plateaued


def test_fidelity_counts_top1_agreement_not_accuracy():
    t = torch.tensor([[2.0, 0.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 2.0], [1.0, 0.0, 0.0]])
    s = torch.tensor([[5.0, 1.0, 0.0], [0.0, 0.1, 3.0], [0.0, 0.0, 0.3], [0.0, 9.0, 0.0]])
    assert fidelity(s, t) == pytest.approx(50.0)
    assert fidelity(t * 3 + 1, t) == pytest.approx(100.0)   # invariant to scale and shift of logits


def test_fidelity_flattens_sequences_and_rejects_mismatched_shapes():
    t = torch.randn(2, 5, 7)
    assert fidelity(t, t) == pytest.approx(100.0)
    with pytest.raises(ValueError, match="differ in shape"):
        fidelity(torch.randn(4, 3), torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        fidelity(torch.randn(4), torch.randn(4))


def test_ece_matches_the_binned_formula_by_hand():
    # Two confident-correct (conf 0.9), two confident-wrong (conf 0.9), one hesitant-correct (conf 0.6).
    p = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.9, 0.1], [0.6, 0.4]])
    y = torch.tensor([0, 0, 1, 1, 0])
    # bin of 0.9: 4 samples, acc 0.5, conf 0.9 -> 4/5 * 0.4; bin of 0.6: 1 sample, acc 1, conf 0.6 -> 1/5 * 0.4
    assert expected_calibration_error(p.log(), y, n_bins=10) == pytest.approx(100 * (0.8 * 0.4 + 0.2 * 0.4), abs=1e-4)


def test_ece_is_zero_when_confidence_equals_accuracy_and_grows_with_overconfidence():
    y = torch.tensor([0, 0, 0, 1])                       # 75 % of predictions "0" are right
    p = torch.tensor([[0.75, 0.25]] * 4)
    assert expected_calibration_error(p.log(), y) == pytest.approx(0.0, abs=1e-4)
    sharper = expected_calibration_error(p.log() * 4, y)
    assert sharper > 20.0                                # confidence ~1.0, accuracy 75 %
    with pytest.raises(ValueError, match="targets"):
        expected_calibration_error(p.log(), y[:3])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error(p.log(), y, n_bins=0)


def test_plateaued_compares_the_last_two_windows():
    rising = [10, 20, 30, 40, 50, 60, 70, 80, 90, 95]
    flat = [10, 50, 80, 90, 91, 91.2, 90.8, 91.1, 91.3, 90.9]
    assert not plateaued(rising, window=3)
    assert plateaued(flat, window=3, tol=0.5)
    assert not plateaued([90, 90, 90, 91, 91, 91], window=3, tol=0.5)   # +1.0 over the window before
    with pytest.raises(ValueError, match="at least"):
        plateaued([1, 2, 3], window=2)
    with pytest.raises(ValueError, match="window"):
        plateaued(flat, window=0)
