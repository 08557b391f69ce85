"""Tests of ddpmlab.likelihood.bits_per_dim against analytic values (float64).

Models here know the data x0, so every ELBO term has a closed form:

* exact eps: with variance "small" every L_t (t >= 1) is KL(q || q) = 0; L_0 is the discretized
  Gaussian around x0 with std sqrt(beta_tilde_1) (math.erf by hand); the prior is the KL of
  N(sqrt(abar_T) x0, 1 - abar_T) from N(0, 1);
* eps + d_t (a fixed offset per t): x0_hat = x0 - (s_t / a_t) d_t whatever the noise, so every L_t
  is the deterministic (coef_x0 (s/a) d_t)^2 / (2 beta_tilde_t) and the only randomness left in
  the subset estimator is the choice of timesteps, whose variance we compute exactly.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpmlab import schedules
from ddpmlab.likelihood import _chosen_timesteps, bits_per_dim

LN2 = math.log(2.0)


def images(n=2, seed=0):
    """n 1x4x4 images of 8-bit values in [-1, 1], including both edge values."""
    g = torch.Generator().manual_seed(seed)
    u8 = torch.randint(0, 256, (n, 1, 4, 4), generator=g)
    u8[:, 0, 0, 0], u8[:, 0, 0, 1] = 0, 255
    return u8.double() / 127.5 - 1.0


def hand_cols(betas: np.ndarray):
    abar = np.cumprod(1 - betas)
    abar_prev = np.concatenate([[1.0], abar[:-1]])
    post_var = betas * (1 - abar_prev) / (1 - abar)
    coef_x0 = np.sqrt(abar_prev) * betas / (1 - abar)
    return abar, post_var, coef_x0


def offset_model(sched, x0: torch.Tensor, d: np.ndarray):
    """eps_hat = exact eps for x0 + d[t] (d = 0: the exact model)."""
    abar = sched.alpha_bar.numpy()

    def model(x, t):
        ti = t.numpy()
        a = torch.from_numpy(np.sqrt(abar[ti])).reshape(-1, 1, 1, 1)
        s = torch.from_numpy(np.sqrt(1 - abar[ti])).reshape(-1, 1, 1, 1)
        return (x - a * x0) / s + torch.from_numpy(d[ti]).reshape(-1, 1, 1, 1)

    return model


def hand_decoder_bits(x0: np.ndarray, mean: np.ndarray, std: float) -> np.ndarray:
    """-log2 P(x0 | N(mean, std^2)) per image, bins of half-width 1/255, open edge bins."""
    def phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    out = []
    for xi, mi in zip(x0.reshape(len(x0), -1), mean.reshape(len(x0), -1), strict=True):
        nll = []
        for x, m in zip(xi, mi, strict=True):
            up, lo = (x + 1 / 255 - m) / std, (x - 1 / 255 - m) / std
            p = phi(up) if x == -1 else (1 - phi(lo) if x == 1 else phi(up) - phi(lo))
            nll.append(-math.log(p))
        out.append(np.mean(nll) / LN2)
    return np.array(out)


def hand_prior_bits(x0: np.ndarray, abar_T: float) -> np.ndarray:
    kl = 0.5 * (-1 - math.log(1 - abar_T) + (1 - abar_T) + abar_T * x0 ** 2)
    return kl.reshape(len(x0), -1).mean(1) / LN2


def test_exact_eps_bits_per_dim_is_prior_plus_decoder():
    T = 1000
    sched = schedules.linear(T)
    x0 = images()
    bpd = bits_per_dim(offset_model(sched, x0, np.zeros(T)), sched, x0,
                       generator=torch.Generator().manual_seed(0))
    abar, post_var, _ = hand_cols(np.linspace(1e-4, 0.02, T))
    # L_t = KL(q || q) = 0 for t >= 1 (x0_hat = x0 up to round-off ~1e-14, squared ~1e-28)
    assert bpd.terms.shape == (T,) and torch.isfinite(bpd.terms).all()
    assert bpd.terms[1:].abs().max().item() < 1e-12
    assert abs(bpd.diffusion) < 1e-10
    # std of p(x0 | x_1) with variance "small": sqrt(beta_tilde) clipped at index 1
    std = math.sqrt(post_var[1])
    assert 0.005 < std < 0.01          # a ~0.4 probability per bin: the decoder term is not tiny
    dec = hand_decoder_bits(x0.numpy(), x0.numpy(), std)
    prior = hand_prior_bits(x0.numpy(), abar[-1])
    np.testing.assert_allclose(bpd.per_sample.numpy(), dec + prior, rtol=1e-9)
    assert bpd.decoder == pytest.approx(dec.mean(), rel=1e-9)
    assert bpd.terms[0].item() == pytest.approx(dec.mean(), rel=1e-9)
    assert bpd.prior == pytest.approx(prior.mean(), rel=1e-9)
    assert bpd.total == pytest.approx(dec.mean() + prior.mean(), rel=1e-9)
    assert torch.equal(bpd.timesteps, torch.arange(T))


def test_exact_eps_with_large_variance_has_the_variance_kl_per_step():
    # p = N(mu, beta_t) against q = N(mu, beta_tilde_t): KL = (log(b/bt) + bt/b - 1) / 2, the
    # same for every dimension and every draw.
    T = 100
    sched = schedules.linear(T)
    betas = np.linspace(1e-4, 0.02, T) * 10
    abar, post_var, _ = hand_cols(betas)
    x0 = images(1, seed=1)
    bpd = bits_per_dim(offset_model(sched, x0, np.zeros(T)), sched, x0, variance="large",
                       generator=torch.Generator().manual_seed(1))
    kl = 0.5 * (np.log(betas[1:] / post_var[1:]) + post_var[1:] / betas[1:] - 1) / LN2
    # late t: beta_tilde ~ beta and the KL (~1e-8) is a difference of O(1) numbers: atol 1e-14
    np.testing.assert_allclose(bpd.terms[1:].numpy(), kl, rtol=1e-9, atol=1e-14)
    assert bpd.diffusion == pytest.approx(kl.sum(), rel=1e-9)
    dec = hand_decoder_bits(x0.numpy(), x0.numpy(), math.sqrt(post_var[1]))
    assert bpd.decoder == pytest.approx(dec[0], rel=1e-9)


# --------------------------------------------------------------------------- subset estimator
T_SMALL = 50
SCHED_SMALL = schedules.linear(T_SMALL)
BETAS_SMALL = np.linspace(1e-4, 0.02, T_SMALL) * (1000 / T_SMALL)


def term_bits_for_offsets(d: np.ndarray) -> np.ndarray:
    """L_t (t >= 1) in bits for the eps + d_t model, by hand: (coef_x0 (s/a) d)^2 / (2 bt)."""
    abar, post_var, coef = hand_cols(BETAS_SMALL)
    dmu = coef[1:] * np.sqrt(1 - abar[1:]) / np.sqrt(abar[1:]) * d[1:]
    return dmu ** 2 / (2 * post_var[1:]) / LN2


def test_subset_estimator_equals_full_sum_when_terms_are_equal():
    # offsets chosen so that every L_t (t >= 1) is exactly 0.01 bits
    c = 0.01
    abar, post_var, coef = hand_cols(BETAS_SMALL)
    d = np.zeros(T_SMALL)
    d[1:] = np.sqrt(2 * c * LN2 * post_var[1:]) * np.sqrt(abar[1:]) / (
        coef[1:] * np.sqrt(1 - abar[1:]))
    np.testing.assert_allclose(term_bits_for_offsets(d), c, rtol=1e-12)
    x0 = images()
    model = offset_model(SCHED_SMALL, x0, d)
    full = bits_per_dim(model, SCHED_SMALL, x0, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(full.terms[1:].numpy(), c, rtol=1e-9)
    assert full.diffusion == pytest.approx(c * (T_SMALL - 1), rel=1e-9)
    for k in (2, 3, 7, 10, 49):
        for seed in range(3):
            sub = bits_per_dim(model, SCHED_SMALL, x0, n_timesteps=k,
                               generator=torch.Generator().manual_seed(seed))
            assert sub.total == pytest.approx(full.total, rel=1e-9), (k, seed)
            np.testing.assert_allclose(sub.per_sample.numpy(), full.per_sample.numpy(),
                                       rtol=1e-9)
            evaluated = ~torch.isnan(sub.terms)
            assert evaluated.sum().item() == len(set(sub.timesteps.tolist()))
            assert evaluated[0] and sub.timesteps[0].item() == 0


def stratified_variance(terms: np.ndarray, k: int) -> float:
    """Exact variance of the library's stratified estimator of sum(terms[1:]) with k strata."""
    T = len(terms)
    edges = np.linspace(1, T, k + 1)
    var = 0.0
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        w = hi - lo
        js = np.arange(math.floor(lo), math.ceil(hi))
        p = np.clip(np.minimum(js + 1, hi) - np.maximum(js, lo), 0, None) / w  # P(pick j)
        vals = w * terms[js]
        var += (p * vals ** 2).sum() - (p * vals).sum() ** 2
    return var


def test_subset_estimator_is_unbiased_over_seeds():
    # an imperfect model whose L_t vary strongly with t
    d = 0.3 * np.sin(np.arange(T_SMALL) * 0.7) + 0.2 * np.arange(T_SMALL) / T_SMALL
    x0 = images(1, seed=2)
    model = offset_model(SCHED_SMALL, x0, d)
    full = bits_per_dim(model, SCHED_SMALL, x0, generator=torch.Generator().manual_seed(0))
    want = term_bits_for_offsets(d)
    np.testing.assert_allclose(full.terms[1:].numpy(), want, rtol=1e-9)   # full sum is exact
    abar, post_var, _ = hand_cols(BETAS_SMALL)
    dec = hand_decoder_bits(x0.numpy(), x0.numpy() - math.sqrt(1 - abar[0]) / math.sqrt(abar[0])
                            * d[0], math.sqrt(post_var[1]))
    assert full.decoder == pytest.approx(dec[0], rel=1e-9)
    k = 6                                           # the decoder + 5 strata of [1, 50)
    n_seeds = 20
    est = np.array([bits_per_dim(model, SCHED_SMALL, x0, n_timesteps=k,
                                 generator=torch.Generator().manual_seed(100 + s)).diffusion
                    for s in range(n_seeds)])
    sd = math.sqrt(stratified_variance(np.concatenate([[0.0], want]), k - 1))
    assert sd > 0.05 * want.sum()                   # the test has power: estimates do vary
    assert est.std() > 0.3 * sd
    # the mean of 20 iid estimates is within 4 standard errors of the true sum (p ~ 6e-5)
    assert abs(est.mean() - want.sum()) < 4 * sd / math.sqrt(n_seeds)
    # every single estimate lies inside the range the strata allow
    lo = hi = 0.0
    for a, b in zip(np.linspace(1, T_SMALL, k)[:-1], np.linspace(1, T_SMALL, k)[1:], strict=True):
        js = np.arange(math.floor(a), math.ceil(b))
        lo += (b - a) * want[js - 1].min()
        hi += (b - a) * want[js - 1].max()
    assert ((est >= lo - 1e-9) & (est <= hi + 1e-9)).all()


@pytest.mark.parametrize("T,n", [(50, 6), (23, 4)])
def test_stratified_picks_give_every_index_expected_weight_one(T, n):
    # The estimator sum_picks w * L_pick is unbiased for sum_{t>=1} L_t for *every* L iff each
    # index t >= 1 receives expected weight exactly 1. Over D draws, index t's total weight / D
    # has s.e. <= sqrt(w_max / D) (a w * Bernoulli(p <= ~1/w) per draw): we allow 5 s.e.
    draws = 4000
    g = torch.Generator().manual_seed(0)
    total = torch.zeros(T, dtype=torch.float64)
    for _ in range(draws):
        ts, w = _chosen_timesteps(T, n, g)
        total.index_add_(0, ts, w)
    mean_w = total / draws
    assert mean_w[0].item() == 1.0                           # the decoder, always once
    w_max = (T - 1) / (n - 1)
    assert (mean_w[1:] - 1).abs().max().item() < 5 * math.sqrt(w_max / draws)


def test_chosen_timesteps_weights_cover_every_index():
    for T, n in [(50, 6), (1000, 50), (7, 3), (10, 10), (10, None)]:
        ts, w = _chosen_timesteps(T, n, torch.Generator().manual_seed(0))
        assert ts[0].item() == 0 and w[0].item() == 1.0
        assert w[1:].sum().item() == pytest.approx(T - 1, rel=1e-12)   # strata tile [1, T)
        assert ((ts[1:] >= 1) & (ts[1:] <= T - 1)).all()
    with pytest.raises(ValueError, match="n_timesteps must be >= 2"):
        _chosen_timesteps(50, 1, None)
