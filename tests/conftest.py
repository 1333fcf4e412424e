"""Shared fixtures: every test writes into its own temporary data folder, never data/."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _isolated_data(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCOURSE_DATA", str(tmp_path / "data"))
    monkeypatch.delenv("KDCOURSE_RESULTS", raising=False)  # set for the notebook kernels under make test
    torch.set_num_threads(1)
    yield


@pytest.fixture
def tiny_data():
    """A small random 10-class dataset of MNIST-1D-like signals (1, 40)."""
    from kdcourse.data import Dataset
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 1, 40, generator=g)
    y = torch.randint(0, 10, (200,), generator=g)
    return Dataset("tiny", x[:160], y[:160], x[160:], y[160:], tuple("0123456789"))
