"""Tests of ddpmlab.schedules, each column recomputed independently in numpy float64.

Tolerances: the library builds alpha_bar with ``torch.cumprod`` and we rebuild it with
``np.cumprod`` / explicit products; the two may differ by a few ulp per factor, so over T=2000
factors the relative difference stays far below 1e-12 (2000 * 2.2e-16 ~ 4e-13).
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from ddpmlab import schedules
from ddpmlab.schedules import Schedule

RTOL = 1e-12
COLUMNS = [f.name for f in dataclasses.fields(Schedule) if f.name != "name"]


def np_cols(betas: np.ndarray) -> dict[str, np.ndarray]:
    """Every Schedule column from betas, written from Ho et al. eq. 4, 6, 7 (numpy float64)."""
    betas = np.asarray(betas, dtype=np.float64)
    alphas = 1.0 - betas
    abar = np.array([np.prod(alphas[: t + 1]) for t in range(len(betas))])
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
    return {
        "betas": betas,
        "alphas": alphas,
        "alpha_bar": abar,
        "alpha_bar_prev": abar_prev,
        "sqrt_alpha_bar": np.sqrt(abar),
        "sqrt_one_minus_alpha_bar": np.sqrt(1.0 - abar),
        "posterior_var": post_var,
        "posterior_log_var": np.log(np.concatenate([[post_var[1]], post_var[1:]])),
        "posterior_mean_coef_x0": np.sqrt(abar_prev) * betas / (1.0 - abar),
        "posterior_mean_coef_xt": np.sqrt(alphas) * (1.0 - abar_prev) / (1.0 - abar),
    }


def assert_matches_numpy(s: Schedule, rtol: float = RTOL) -> None:
    ref = np_cols(s.betas.numpy())
    for name, want in ref.items():
        got = getattr(s, name)
        assert got.dtype == torch.float64, name
        assert got.shape == (s.T,), name
        np.testing.assert_allclose(got.numpy(), want, rtol=rtol, atol=0, err_msg=name)


# --------------------------------------------------------------------------- linear
@pytest.mark.parametrize("T", [1000, 250, 2000])
def test_linear_betas_by_hand(T):
    s = schedules.linear(T)
    scale = 1000 / T                       # Nichol & Dhariwal: both ends scaled by 1000/T
    b = s.betas.numpy()
    assert s.T == T and s.name == "linear"
    assert b[0] == pytest.approx(1e-4 * scale, rel=1e-14)
    assert b[-1] == pytest.approx(0.02 * scale, rel=1e-14)
    np.testing.assert_allclose(np.diff(b), (0.02 - 1e-4) * scale / (T - 1), rtol=1e-9)
    assert_matches_numpy(s)


def test_linear_T1000_is_ho_et_al():
    b = schedules.linear().betas.numpy()
    assert b[0] == 1e-4 and b[-1] == 0.02 and len(b) == 1000
    # The scaling keeps the signal left in x_T about the same for every T.
    ends = [schedules.linear(T).alpha_bar[-1].item() for T in (250, 1000, 2000)]
    assert all(4e-5 < e < 5e-5 for e in ends[1:]) and 1e-5 < ends[0] < 1e-4


# --------------------------------------------------------------------------- cosine
@pytest.mark.parametrize("T", [1000, 50])
def test_cosine_alpha_bar_by_hand(T):
    sv = 0.008

    def f(u):
        return np.cos((u + sv) / (1 + sv) * np.pi / 2) ** 2

    s = schedules.cosine(T)
    abar = s.alpha_bar.numpy()
    raw_betas = 1.0 - f(np.arange(1, T + 1) / T) / f(np.arange(T) / T)
    unclipped = np.cumsum(raw_betas > 0.999) == 0       # every beta up to t left alone
    assert unclipped[: T - 1].all() and not unclipped[-1]  # only the last beta (=1) is clipped
    # index t is the paper's step t+1: alpha_bar[t] = f((t+1)/T) / f(0)
    t = np.arange(T)[unclipped]
    np.testing.assert_allclose(abar[unclipped], f((t + 1) / T) / f(0.0), rtol=1e-12)
    assert s.betas.max().item() <= 0.999
    assert s.betas[-1].item() == 0.999
    assert_matches_numpy(s)


# --------------------------------------------------------------------------- sigmoid
def test_sigmoid_by_hand_and_monotone():
    T = 1000
    s = schedules.sigmoid(T)

    def sig(z):
        return 1.0 / (1.0 + np.exp(-z))

    u = np.arange(T + 1) / T
    f = (-sig(u * 6.0 - 3.0) + sig(3.0)) / (sig(3.0) - sig(-3.0))
    betas = np.clip(1.0 - f[1:] / f[:-1], 1e-9, 0.999)
    np.testing.assert_allclose(s.betas.numpy(), betas, rtol=1e-12)
    assert (np.diff(s.alpha_bar.numpy()) < 0).all()
    assert (s.betas > 0).all() and (s.betas <= 0.999).all()
    assert_matches_numpy(s)


# --------------------------------------------------------------------------- every schedule
@pytest.mark.parametrize("name,T", [
    ("linear", 21), ("linear", 1000), ("cosine", 1), ("cosine", 2), ("cosine", 1000),
    ("sigmoid", 2), ("sigmoid", 10), ("sigmoid", 1000),
])
def test_every_schedule_columns_float64_and_monotone(name, T):
    s = schedules.get(name, T)
    assert s.name == name and s.T == T
    for col in COLUMNS:
        v = getattr(s, col)
        assert v.dtype == torch.float64 and v.shape == (T,), col
        assert torch.isfinite(v).all(), col
    assert (s.alpha_bar[1:] < s.alpha_bar[:-1]).all()
    assert (s.betas > 0).all() and (s.betas < 1).all()
    # index 0's posterior variance is 0; its log is clipped to index 1's (finite).
    assert s.posterior_var[0].item() == 0.0
    if T == 1:
        return
    assert s.posterior_log_var[0].item() == s.posterior_log_var[1].item()
    assert (s.log_snr[1:] < s.log_snr[:-1]).all()
    np.testing.assert_allclose(s.snr.numpy(), (s.alpha_bar / (1 - s.alpha_bar)).numpy(),
                               rtol=1e-12)
    np.testing.assert_allclose(s.log_snr.numpy(), np.log(s.snr.numpy()), rtol=1e-12,
                               atol=1e-12)
    assert_matches_numpy(s)


def test_from_betas_custom_and_to():
    betas = [0.1, 0.2, 0.3, 0.05]
    s = schedules.from_betas(torch.tensor(betas, dtype=torch.float32), name="mine")
    assert s.name == "mine" and s.betas.dtype == torch.float64
    assert_matches_numpy(s)
    # the float32 input is converted, not kept: betas[0] is the float32 value widened
    assert s.betas[0].item() == float(np.float32(0.1))
    moved = s.to("cpu")
    for col in COLUMNS:
        assert torch.equal(getattr(moved, col), getattr(s, col))
        assert getattr(moved, col).dtype == torch.float64


def test_linear_small_T_clear_error():
    # 1000/T scaling: beta_end = 0.02 * 1000 / T reaches 1 at T = 20.
    with pytest.raises(ValueError, match="T > 20"):
        schedules.linear(20)
    with pytest.raises(ValueError, match="T > 20"):
        schedules.get("linear", 5)
    assert schedules.linear(21).betas[-1].item() < 1


def test_schedule_is_frozen():
    s = schedules.linear(100)
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.betas = s.betas * 2  # type: ignore[misc]


# --------------------------------------------------------------------------- errors
@pytest.mark.parametrize("builder", [schedules.linear, schedules.cosine, schedules.sigmoid])
@pytest.mark.parametrize("T", [0, -3, 10.0, "10", True, None, 2.5])
def test_bad_T(builder, T):
    with pytest.raises(ValueError, match="T"):
        builder(T)


@pytest.mark.parametrize("betas", [
    [0.1, 0.0, 0.2], [0.1, 1.0], [-0.01, 0.1], [0.5, 1.5], [0.1, math.nan], [0.1, math.inf],
])
def test_from_betas_outside_open_unit_interval(betas):
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        schedules.from_betas(torch.tensor(betas, dtype=torch.float64))


def test_from_betas_bad_shape():
    with pytest.raises(ValueError, match="1-D"):
        schedules.from_betas(torch.full((2, 2), 0.1))
    with pytest.raises(ValueError, match="1-D"):
        schedules.from_betas(torch.zeros(0))


def test_from_betas_non_monotone_alpha_bar():
    # 1 - 1e-17 rounds to 1.0 in float64: alpha_bar stays flat, which is not strictly decreasing.
    with pytest.raises(ValueError, match="strictly decreasing"):
        schedules.from_betas(torch.tensor([0.1, 1e-17, 0.1], dtype=torch.float64))


def test_get_unknown_name():
    with pytest.raises(ValueError, match="unknown schedule 'quadratic'.*linear"):
        schedules.get("quadratic")
    assert schedules.get("cosine", 20).T == 20
