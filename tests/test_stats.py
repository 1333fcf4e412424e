import pytest
from scipy import stats as sps

from kdcourse.chains import mean_std as chains_mean_std
from kdcourse.stats import mean_std, paired_difference


def test_chains_reexports_mean_std():  # its behaviour is tested in test_chains.py
    assert chains_mean_std is mean_std


def test_paired_difference_matches_scipy_paired_t_test():
    a, b = [71.0, 73.5, 70.2, 72.8], [63.4, 63.9, 63.7, 64.1]
    r = paired_difference(a, b)
    res = sps.ttest_rel(a, b)
    assert r["diff"] / r["se"] == pytest.approx(res.statistic)
    assert r["n"] == 4 and r["t"] == pytest.approx(sps.t.ppf(0.975, 3))
    assert r["half"] == pytest.approx(r["t"] * r["se"])
    assert r["sign"] == (1 if res.pvalue < 0.05 else 0) == 1


@pytest.mark.parametrize("a,b,sign", [([1.0, 2.0, 3.0], [1.5, 1.0, 3.5], 0), ([1.0, 2.0, 3.0], [5.0, 6.1, 7.0], -1)])
def test_paired_difference_sign_is_zero_inside_the_interval(a, b, sign):
    assert paired_difference(a, b)["sign"] == sign


def test_paired_difference_rejects_bad_input():
    with pytest.raises(ValueError, match="matched by seed"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="at least 2"):
        paired_difference([1.0], [2.0])
    with pytest.raises(ValueError, match="level"):
        paired_difference([1.0, 2.0], [1.0, 3.0], level=1.5)
