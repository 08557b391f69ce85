"""Tests of ddpmlab.forward (and broadcast): the closed form against the iterated chain, and the
posterior against the Gaussian conditioning identities, all in float64.

Independent references: betas are rebuilt with ``np.linspace``; moments are propagated step by
step (mean_t = sqrt(alpha_t) mean_{t-1}, var_t = alpha_t var_{t-1} + beta_t); the posterior is
Sigma_12 Sigma_22^-1 conditioning of the joint Gaussian of (x_s, x_t) given x0, whose
cross-covariance prod_{r=s+1..t} sqrt(alpha_r) * var_s is built from explicit products.

Tolerances: exact identities are compared at rtol 1e-10 / atol 1e-12. The quantities are O(1)
and the library and the reference sum the same O(1) terms in different orders (and the
reference inverts a 2x2 matrix), so cancellation leaves a few 1e-13 absolute; a wrong
coefficient shows up at 1e-4 or more.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpmlab import broadcast, forward, schedules

T = 1000
SCHED = schedules.linear(T)
BETAS = np.linspace(1e-4, 0.02, T)          # Ho et al., rebuilt by hand
ALPHAS = 1.0 - BETAS


def moments(x0: float, t: int) -> tuple[float, float]:
    """Mean and variance of x_t given x0 by iterating the one-step Gaussian (t inclusive)."""
    mean, var = x0, 0.0
    for r in range(t + 1):
        mean = math.sqrt(ALPHAS[r]) * mean
        var = ALPHAS[r] * var + BETAS[r]
    return mean, var


def conditioning(x0: np.ndarray, x_t: np.ndarray, t: int, s: int):
    """Mean and variance of x_s given (x_t, x0), s < t, s = -1 meaning x0 itself."""
    if s < 0:
        return x0.copy(), 0.0
    mu1, var_s = moments(1.0, s)
    mu2, var_t = moments(1.0, t)
    # Cov(x_s, x_t) = prod_{r=s+1..t} sqrt(alpha_r) * Var(x_s): each step multiplies by sqrt(alpha)
    s12 = var_s * np.prod(np.sqrt(ALPHAS[s + 1: t + 1]))
    sigma = np.array([[var_s, s12], [s12, var_t]])
    gain = sigma[0, 1] * np.linalg.inv(sigma[1:, 1:])[0, 0]      # Sigma_12 Sigma_22^-1
    mean = mu1 * x0 + gain * (x_t - mu2 * x0)
    var = sigma[0, 0] - gain * sigma[1, 0]
    return mean, var


def test_schedule_betas_are_the_hand_ones():
    np.testing.assert_allclose(SCHED.betas.numpy(), BETAS, rtol=1e-13)


# --------------------------------------------------------------------------- closed form
def test_q_mean_var_equals_propagated_moments():
    # every t at once: x0 = 1 per row, so mean = the mean coefficient
    ts = torch.arange(T)
    x0 = torch.ones(T, 3, dtype=torch.float64) * torch.tensor([1.0, -0.5, 0.25],
                                                              dtype=torch.float64)
    mean, var = forward.q_mean_var(SCHED, x0, ts)
    assert mean.shape == (T, 3) and var.shape == (T, 1)
    m, v = 1.0, 0.0
    want_m, want_v = [], []
    for r in range(T):                      # one pass of the recursion for all t
        m, v = math.sqrt(ALPHAS[r]) * m, ALPHAS[r] * v + BETAS[r]
        want_m.append(m)
        want_v.append(v)
    want_m, want_v = np.array(want_m), np.array(want_v)
    np.testing.assert_allclose(mean.numpy(), want_m[:, None] * x0.numpy(), rtol=1e-12)
    np.testing.assert_allclose(var[:, 0].numpy(), want_v, rtol=1e-12)
    assert moments(1.0, 10) == pytest.approx((want_m[10], want_v[10]), rel=1e-14)


def test_q_sample_is_the_closed_form_with_given_noise():
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(5, 2, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(5, 2, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 10, 500, 999])
    got = forward.q_sample(SCHED, x0, t, noise=noise)
    for i, ti in enumerate(t.tolist()):
        m, v = moments(1.0, ti)
        np.testing.assert_allclose(got[i].numpy(), m * x0[i].numpy() + math.sqrt(v) * noise[i].numpy(),
                                   rtol=1e-10, atol=1e-12)


def test_two_q_steps_equal_q_sample_with_the_combined_noise():
    # x_1 = sqrt(a1)(sqrt(a0) x0 + sqrt(b0) z0) + sqrt(b1) z1: the noise sum has variance
    # a1 b0 + b1 = 1 - abar_1, so q_sample at t=1 with that (normalised) noise is the same point.
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(4, 3, generator=g, dtype=torch.float64)
    z0, z1 = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    x1 = forward.q_step(SCHED, forward.q_step(SCHED, x0, torch.zeros(4, dtype=torch.long),
                                              noise=z0), torch.ones(4, dtype=torch.long), noise=z1)
    comb = (math.sqrt(ALPHAS[1] * BETAS[0]) * z0 + math.sqrt(BETAS[1]) * z1) / math.sqrt(
        ALPHAS[1] * BETAS[0] + BETAS[1])
    np.testing.assert_allclose(x1.numpy(), forward.q_sample(SCHED, x0, 1, noise=comb).numpy(),
                               rtol=1e-10, atol=1e-12)


@pytest.mark.e2e  # over 2 s: a Monte Carlo check
def test_iterated_q_step_monte_carlo_matches_closed_form():
    # N chains of x0 -> x_t by q_step. Sample mean / variance of N iid Gaussians have standard
    # errors sqrt(var/N) and var*sqrt(2/N); we allow 5 of them (two-sided p ~ 6e-7 each).
    N = 20000
    g = torch.Generator().manual_seed(2)
    x0 = torch.tensor([0.8, -0.4], dtype=torch.float64).expand(N, 2)
    checks = {0: None, 9: None, 99: None, 999: None}
    x = x0
    for t in range(T):
        x = forward.q_step(SCHED, x, torch.full((N,), t), generator=g)
        if t in checks:
            checks[t] = x.clone()
    for t, xt in checks.items():
        mean, var = forward.q_mean_var(SCHED, x0[:1], torch.tensor([t]))
        m, v = moments(1.0, t)
        assert var.item() == pytest.approx(v, rel=1e-12)
        np.testing.assert_allclose(mean[0].numpy(), m * x0[0].numpy(), rtol=1e-12)
        se_mean, se_var = math.sqrt(v / N), v * math.sqrt(2 / N)
        assert (xt.mean(0) - mean[0]).abs().max().item() < 5 * se_mean, t
        assert (xt.var(0) - v).abs().max().item() < 5 * se_var, t
        # the closed-form sampler, drawn directly, has the same moments
        xc = forward.q_sample(SCHED, x0, torch.full((N,), t), generator=g)
        assert (xc.mean(0) - mean[0]).abs().max().item() < 5 * se_mean, t
        assert (xc.var(0) - v).abs().max().item() < 5 * se_var, t


def test_q_step_scalar_t_and_dtype():
    x = torch.ones(3, 2, dtype=torch.float32)
    out = forward.q_step(SCHED, x, torch.tensor(5), noise=torch.zeros_like(x))
    assert out.dtype == torch.float32
    np.testing.assert_allclose(out.numpy(), np.full((3, 2), math.sqrt(ALPHAS[5])), rtol=1e-6)


# --------------------------------------------------------------------------- posterior
@pytest.mark.parametrize("t", [1, 2, 10, 500, 999])
def test_q_posterior_equals_gaussian_conditioning(t):
    g = torch.Generator().manual_seed(t)
    x0 = torch.rand(6, 2, generator=g, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(6, 2, generator=g, dtype=torch.float64)
    mean, var, log_var = forward.q_posterior(SCHED, x0, x_t, torch.full((6,), t))
    want_mean, want_var = conditioning(x0.numpy(), x_t.numpy(), t, t - 1)
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var.flatten().numpy(), want_var, rtol=1e-10)
    np.testing.assert_allclose(log_var.flatten().numpy(), math.log(want_var), rtol=1e-12)
    # t_prev = t - 1 given explicitly: the same Gaussian
    m2, v2, lv2 = forward.q_posterior(SCHED, x0, x_t, torch.full((6,), t),
                                      t_prev=torch.full((6,), t - 1))
    np.testing.assert_allclose(m2.numpy(), mean.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(v2.numpy(), var.numpy(), rtol=1e-11)
    np.testing.assert_allclose(lv2.numpy(), log_var.numpy(), rtol=1e-11)


def test_q_posterior_at_index_zero_is_x0():
    # q(x_{-1} | x_0, x0): x_{-1} is x0 itself, variance 0 (log clipped to index 1's on the
    # default path, the plain -inf on the t_prev path).
    g = torch.Generator().manual_seed(3)
    x0, x_t = torch.randn(2, 4, 2, generator=g, dtype=torch.float64)
    t = torch.zeros(4, dtype=torch.long)
    mean, var, log_var = forward.q_posterior(SCHED, x0, x_t, t)
    np.testing.assert_allclose(mean.numpy(), x0.numpy(), rtol=1e-10, atol=1e-12)
    assert (var == 0).all()
    np.testing.assert_allclose(log_var.flatten().numpy(), math.log(conditioning(
        np.zeros(1), np.zeros(1), 1, 0)[1]), rtol=1e-10)
    m2, v2, lv2 = forward.q_posterior(SCHED, x0, x_t, t, t_prev=t - 1)
    np.testing.assert_allclose(m2.numpy(), x0.numpy(), rtol=1e-10, atol=1e-12)
    assert (v2 == 0).all() and torch.isneginf(lv2).all()


@pytest.mark.parametrize("t,s", [(999, 899), (500, 300), (10, 2), (100, 0), (40, -1), (1, -1)])
def test_q_posterior_skipped_chain_equals_conditioning(t, s):
    g = torch.Generator().manual_seed(t + 7)
    x0 = torch.rand(5, 3, generator=g, dtype=torch.float64) * 2 - 1
    x_t = torch.randn(5, 3, generator=g, dtype=torch.float64)
    mean, var, _ = forward.q_posterior(SCHED, x0, x_t, torch.full((5,), t),
                                       t_prev=torch.full((5,), s))
    want_mean, want_var = conditioning(x0.numpy(), x_t.numpy(), t, s)
    np.testing.assert_allclose(mean.numpy(), want_mean, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(var.flatten().numpy(), want_var, rtol=1e-10, atol=1e-15)


def test_q_posterior_mixed_pairs_in_one_batch_and_bad_pairs():
    g = torch.Generator().manual_seed(4)
    ts, ss = [999, 500, 30, 7], [0, 499, -1, 3]
    x0 = torch.rand(4, 2, generator=g, dtype=torch.float64)
    x_t = torch.randn(4, 2, generator=g, dtype=torch.float64)
    mean, var, _ = forward.q_posterior(SCHED, x0, x_t, torch.tensor(ts), t_prev=torch.tensor(ss))
    for i, (t, s) in enumerate(zip(ts, ss, strict=True)):
        wm, wv = conditioning(x0[i].numpy(), x_t[i].numpy(), t, s)
        np.testing.assert_allclose(mean[i].numpy(), wm, rtol=1e-10, atol=1e-12)
        assert var[i].item() == pytest.approx(wv, rel=1e-10, abs=1e-15)
    with pytest.raises(ValueError, match="smaller"):
        forward.q_posterior(SCHED, x0, x_t, torch.tensor(ts), t_prev=torch.tensor(ts))
    with pytest.raises(ValueError, match="smaller"):
        forward.pair_coefs(SCHED, torch.tensor([3]), torch.tensor([5]))


def test_alpha_bar_at_minus_one_is_one():
    got = forward.alpha_bar_at(SCHED, torch.tensor([-1, 0, 999]))
    assert got[0].item() == 1.0
    assert got[1].item() == pytest.approx(ALPHAS[0], rel=1e-15)
    assert got[2].item() == pytest.approx(np.prod(ALPHAS), rel=1e-12)


# --------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("shape", [(6, 2), (6, 1, 4, 4)])
def test_every_function_is_rank_agnostic(shape):
    g = torch.Generator().manual_seed(5)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 100, 998, 999])
    flat = (6, -1)
    xt = forward.q_sample(SCHED, x0, t, noise=noise)
    assert xt.shape == shape
    np.testing.assert_array_equal(
        xt.reshape(flat).numpy(),
        forward.q_sample(SCHED, x0.reshape(flat), t, noise=noise.reshape(flat)).numpy())
    step = forward.q_step(SCHED, x0, t, noise=noise)
    assert step.shape == shape
    mean, var = forward.q_mean_var(SCHED, x0, t)
    assert mean.shape == shape and var.shape == (6,) + (1,) * (len(shape) - 1)
    for tp in (None, torch.tensor([-1, 0, -1, 50, 0, 998])):
        pm, pv, plv = forward.q_posterior(SCHED, x0, xt, t, t_prev=tp)
        assert pm.shape == shape and pv.shape == var.shape and plv.shape == var.shape
        fm, fv, _ = forward.q_posterior(SCHED, x0.reshape(flat), xt.reshape(flat), t, t_prev=tp)
        np.testing.assert_array_equal(pm.reshape(flat).numpy(), fm.numpy())
        np.testing.assert_array_equal(pv.reshape(6).numpy(), fv.reshape(6).numpy())


# --------------------------------------------------------------------------- broadcast
def test_expand_like():
    x = torch.zeros(3, 1, 4, 4, dtype=torch.float32)
    out = broadcast.expand_like(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), x)
    assert out.shape == (3, 1, 1, 1) and out.dtype == torch.float32
    assert broadcast.expand_like(torch.tensor([2.0]), x).shape == (1, 1, 1, 1)
    assert broadcast.expand_like(torch.ones(3), torch.zeros(3)).shape == (3,)
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        broadcast.expand_like(torch.ones(3, 1), x)
    with pytest.raises(ValueError, match=r"shape \[N\]"):
        broadcast.expand_like(torch.tensor(1.0), x)
    with pytest.raises(ValueError, match="2 entries but x has batch 3"):
        broadcast.expand_like(torch.ones(2), x)


def test_gather_casts_after_lookup_and_accepts_scalar_t():
    x = torch.zeros(4, 2, dtype=torch.float32)
    got = broadcast.gather(SCHED.alpha_bar, 999, x)
    assert got.shape == (4, 1) and got.dtype == torch.float32
    assert (got == torch.tensor(np.prod(ALPHAS), dtype=torch.float32)).all()
    got64 = broadcast.gather(SCHED.alpha_bar, torch.tensor([0, 1, 2, 3]), x.double())
    np.testing.assert_allclose(got64[:, 0].numpy(), np.cumprod(ALPHAS)[:4], rtol=1e-15)
