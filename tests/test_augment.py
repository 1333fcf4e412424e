import pytest
import torch

from kdcourse.augment import ViewBankLoader, jitter_1d, view_bank
from kdcourse.data import TensorLoader


def _signals(n=64, c=2, length=40, seed=0):
    return torch.randn(n, c, length, generator=torch.Generator().manual_seed(seed))


def test_jitter_without_randomness_is_the_identity_and_scales_exactly():
    x = _signals()
    g = torch.Generator().manual_seed(0)
    torch.testing.assert_close(jitter_1d(x, generator=g, max_shift=0, scale=(1.0, 1.0), noise=0.0), x)
    torch.testing.assert_close(jitter_1d(x, generator=g, max_shift=0, scale=(2.0, 2.0), noise=0.0), 2 * x)


def test_jitter_rolls_each_signal_by_its_own_offset_within_the_range():
    x = _signals(n=200)
    out = jitter_1d(x, generator=torch.Generator().manual_seed(1), max_shift=3, scale=(1.0, 1.0), noise=0.0)
    found = []
    for i in range(len(x)):
        ks = [k for k in range(-3, 4) if torch.equal(out[i], torch.roll(x[i], k, dims=-1))]
        assert len(ks) == 1, f"signal {i} is not a roll of its input by |k| <= 3 (both channels alike)"
        found.append(ks[0])
    assert set(found) == set(range(-3, 4))          # every offset occurs, so offsets are per signal


def test_jitter_noise_and_scale_have_the_requested_spread():
    zeros = torch.zeros(2000, 1, 40)
    noisy = jitter_1d(zeros, generator=torch.Generator().manual_seed(2), max_shift=0, noise=0.05)
    assert float(noisy.std()) == pytest.approx(0.05, rel=0.03)
    ones = torch.ones(2000, 1, 40)
    scaled = jitter_1d(ones, generator=torch.Generator().manual_seed(3), max_shift=5, scale=(0.75, 1.25), noise=0.0)
    a = scaled[:, 0, 0]
    assert float(a.min()) >= 0.75 and float(a.max()) <= 1.25 and float(a.mean()) == pytest.approx(1.0, abs=0.02)
    assert torch.equal(scaled, a.view(-1, 1, 1).expand_as(scaled))   # one factor per signal


def test_jitter_is_reproducible_and_rejects_bad_input():
    x = _signals()
    a = jitter_1d(x, generator=torch.Generator().manual_seed(5))
    b = jitter_1d(x, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b) and not torch.equal(a, x)
    with pytest.raises(ValueError, match=r"\(N, C, L\)"):
        jitter_1d(torch.randn(4, 40))
    with pytest.raises(ValueError, match="max_shift"):
        jitter_1d(x, max_shift=-1)
    with pytest.raises(ValueError, match="scale"):
        jitter_1d(x, scale=(1.2, 0.8))


def test_view_bank_draws_distinct_reproducible_views():
    x = _signals(n=10)
    bank = view_bank(x, 4, seed=7)
    assert bank.shape == (4, 10, 2, 40)
    assert not torch.equal(bank[0], bank[1])
    assert torch.equal(bank, view_bank(x, 4, seed=7)) and not torch.equal(bank, view_bank(x, 4, seed=8))
    with pytest.raises(ValueError, match="n_views"):
        view_bank(x, 0)


def test_view_bank_loader_cycles_views_and_pairs_them_with_their_teacher_outputs():
    x, y = _signals(n=10), torch.arange(10)
    bank = torch.stack([x + 100 * k for k in range(3)])            # view k is recognisable by its offset
    teacher = bank.sum(dim=(2, 3))[..., None].repeat(1, 1, 5)      # (K, N, 5): a function of the view
    loader = ViewBankLoader(bank, y, teacher, batch_size=4, seed=11)
    reference = TensorLoader(x, y, batch_size=4, seed=11)
    for epoch in range(5):
        batches, ref = list(loader), list(reference)
        assert len(batches) == len(loader) == 3
        for (xb, yb, tb), (xr, yr) in zip(batches, ref):
            assert torch.equal(yb, yr)                              # same order as TensorLoader with that seed
            torch.testing.assert_close(xb, xr + 100 * (epoch % 3))   # epoch e uses view e mod K
            torch.testing.assert_close(tb[:, 0], xb.sum(dim=(1, 2)))  # each row's teacher output is of its view


def test_view_bank_loader_rejects_mismatched_shapes():
    bank = torch.zeros(3, 10, 1, 40)
    with pytest.raises(ValueError, match="len\\(targets\\)"):
        ViewBankLoader(bank, torch.zeros(9, dtype=torch.long))
    with pytest.raises(ValueError, match="one output per view"):
        ViewBankLoader(bank, torch.zeros(10, dtype=torch.long), torch.zeros(2, 10, 5))
    assert len(list(ViewBankLoader(bank, torch.zeros(10, dtype=torch.long), batch_size=3))[0]) == 2   # (x, y)
