import pytest
from scipy import stats as sps

from kdcourse.stats import describe_difference, mean_std, paired_difference, recovered_share


def test_mean_std_matches_the_sample_formula():
    m, s = mean_std([1.0, 2.0, 4.0])
    assert m == pytest.approx(7 / 3) and s == pytest.approx(((4 / 3) ** 2 + (1 / 3) ** 2 + (5 / 3) ** 2) ** 0.5 / 2 ** 0.5)
    assert mean_std([5.0]) == (5.0, 0.0)
    with pytest.raises(ValueError, match="at least one"):
        mean_std([])


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


def test_describe_difference_prints_the_one_rule():
    a, b = [71.0, 73.5, 70.2, 72.8], [63.4, 63.9, 63.7, 64.1]
    r = paired_difference(a, b)
    text = describe_difference(a, b)
    assert text == f"{r['diff']:+.1f} pt, 95 % CI [{r['diff'] - r['half']:+.1f}, {r['diff'] + r['half']:+.1f}]: a gain"
    assert describe_difference(b, a).endswith(": a loss")
    assert describe_difference([1.0, 2.0, 3.0], [1.5, 1.0, 3.5]).endswith("no resolved difference with 3 seeds")


def test_recovered_share():
    assert recovered_share(97.0, 85.0, 94.0) == pytest.approx(0.75)
    assert recovered_share(97.0, 96.8, 97.0, noise=0.5) is None  # nothing lost beyond noise
    assert recovered_share(97.0, 98.0, 97.5) is None
    with pytest.raises(ValueError, match="noise"):
        recovered_share(97.0, 85.0, 94.0, noise=-1)
