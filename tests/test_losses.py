"""Tests of ddpmlab.losses against independent references (numpy, scipy, torch.distributions).

Tolerances: closed forms in float64 agree to ~1e-15 relative; we use 1e-12. The discretized
likelihood is compared with scipy's normal CDF, whose own accuracy is ~1e-14 relative in the
tails (Cephes ndtr), so log-probabilities are compared at rtol 1e-9.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from ddpmlab import forward, losses, schedules

T = 1000
SCHED = schedules.linear(T)
BINS = torch.arange(256, dtype=torch.float64) / 127.5 - 1.0      # 8-bit values in [-1, 1]


# --------------------------------------------------------------------------- normal_kl
def test_normal_kl_closed_form_and_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(2, 50, generator=g, dtype=torch.float64)
    lv1, lv2 = torch.randn(2, 50, generator=g, dtype=torch.float64) * 2
    got = losses.normal_kl(m1, lv1, m2, lv2)
    # KL(N(m1, v1) || N(m2, v2)) = log(sd2/sd1) + (v1 + (m1 - m2)^2) / (2 v2) - 1/2
    v1, v2 = np.exp(lv1.numpy()), np.exp(lv2.numpy())
    want = 0.5 * np.log(v2 / v1) + (v1 + (m1.numpy() - m2.numpy()) ** 2) / (2 * v2) - 0.5
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12, atol=1e-14)
    ref = torch.distributions.kl_divergence(
        torch.distributions.Normal(m1, torch.exp(0.5 * lv1)),
        torch.distributions.Normal(m2, torch.exp(0.5 * lv2)))
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-12, atol=1e-14)
    assert (got >= 0).all()


def test_normal_kl_of_equal_gaussians_is_zero_and_broadcasts():
    m = torch.linspace(-2, 2, 9, dtype=torch.float64)
    lv = torch.linspace(-8, 2, 9, dtype=torch.float64)
    assert torch.equal(losses.normal_kl(m, lv, m, lv), torch.zeros(9, dtype=torch.float64))
    # [N, C] against a per-sample [N, 1] log-variance
    out = losses.normal_kl(torch.zeros(3, 4), torch.zeros(3, 1), torch.ones(3, 4), torch.zeros(3, 1))
    assert out.shape == (3, 4) and torch.allclose(out, torch.full((3, 4), 0.5))


# --------------------------------------------------------------------------- discretized
def scipy_bin_probs(x: np.ndarray, mean: float, scale: float) -> np.ndarray:
    """P(x's bin) by direct CDF differences; each side computed where it is not 1 - tiny."""
    up = (x + 1 / 255 - mean) / scale
    lo = (x - 1 / 255 - mean) / scale
    p = np.where(lo > 0, norm.sf(lo) - norm.sf(up), norm.cdf(up) - norm.cdf(lo))
    p = np.where(x < -0.999, norm.cdf(up), p)
    return np.where(x > 0.999, norm.sf(lo), p)


@pytest.mark.parametrize("mean", [-1.3, -1.0, -0.4, 0.0, 0.0039, 0.7, 1.0, 1.2])
@pytest.mark.parametrize("scale", [1e-3, 0.01, 0.1, 1.0, 5.0])
def test_discretized_probabilities_sum_to_one_and_match_scipy(mean, scale):
    m = torch.full_like(BINS, mean)
    log_scale = torch.full_like(BINS, math.log(scale))
    logp = losses.discretized_gaussian_log_likelihood(BINS, m, log_scale)
    assert logp.dtype == torch.float64 and (logp <= 0).all()
    assert torch.exp(logp).sum().item() == pytest.approx(1.0, abs=1e-10)
    want = scipy_bin_probs(BINS.numpy(), mean, scale)
    ok = want > 1e-300                         # a direct difference is representable here
    np.testing.assert_allclose(logp.numpy()[ok], np.log(want[ok]), rtol=1e-9, atol=1e-12)


def test_discretized_far_tail_is_not_floored():
    # 20-30 standard deviations from the mean: log P ~ -200..-450 nats, far below the log(1e-30) = -69
    # that a clamped probability would report (which would understate the NLL).
    x = torch.tensor([0.2, -0.2, 0.3], dtype=torch.float64)
    mean = torch.zeros(3, dtype=torch.float64)
    log_scale = torch.full((3,), math.log(0.01), dtype=torch.float64)
    got = losses.discretized_gaussian_log_likelihood(x, mean, log_scale)
    want = np.log(scipy_bin_probs(x.numpy(), 0.0, 0.01))
    assert (want < -150).all()
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)


def test_discretized_by_hand_with_erf():
    # one interior bin: P = Phi((x + 1/255 - m)/s) - Phi((x - 1/255 - m)/s) with math.erf
    x, m, s = 0.5 - 1 / 127.5, 0.47, 0.03

    def phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    want = math.log(phi((x + 1 / 255 - m) / s) - phi((x - 1 / 255 - m) / s))
    got = losses.discretized_gaussian_log_likelihood(
        torch.tensor([x], dtype=torch.float64), torch.tensor([m], dtype=torch.float64),
        torch.tensor([math.log(s)], dtype=torch.float64)).item()
    assert got == pytest.approx(want, rel=1e-12)


def test_discretized_gradients_are_finite_and_correct():
    # the decoder term is trained through (hybrid objectives): check autograd against finite
    # differences on interior and edge bins, near and far (20 s.d.) from the mean
    x = torch.tensor([-1.0, -0.5, 0.0, 0.2, 1.0, 1.0], dtype=torch.float64)
    mean = torch.tensor([-0.98, -0.45, 0.01, 0.0, 0.9, 1.05], dtype=torch.float64,
                        requires_grad=True)
    log_scale = torch.tensor([-3.0, -2.0, -4.0, math.log(0.01), -1.0, -2.5], dtype=torch.float64,
                             requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda m, ls: losses.discretized_gaussian_log_likelihood(x, m, ls), (mean, log_scale))


def test_discretized_float32():
    m = torch.zeros(256)
    logp = losses.discretized_gaussian_log_likelihood(BINS.float(), m, torch.full((256,), -2.0))
    assert logp.dtype == torch.float32 and torch.isfinite(logp).all()
    assert torch.exp(logp.double()).sum().item() == pytest.approx(1.0, abs=1e-5)


# --------------------------------------------------------------------------- simple loss
def test_min_snr_weights_by_hand():
    t = torch.tensor([0, 10, 100, 300, 500, 999])
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, T))[t.numpy()]
    snr = abar / (1 - abar)
    for gamma in (1.0, 5.0):
        clipped = np.minimum(snr, gamma)
        want = {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1)}
        for pred, w in want.items():
            got = losses.loss_weight(SCHED, t, pred, "min_snr", gamma)
            assert got.dtype == torch.float64
            np.testing.assert_allclose(got.numpy(), w, rtol=1e-12)
            assert torch.equal(losses.loss_weight(SCHED, t, pred, "uniform", gamma),
                               torch.ones(6, dtype=torch.float64))
    # the effective weight on the x0 error is min(SNR, gamma) whatever the target: the eps-MSE
    # is SNR times the x0-MSE and the v-MSE is (SNR + 1) times it.
    for pred, factor in {"eps": snr, "x0": np.ones_like(snr), "v": snr + 1}.items():
        w = losses.loss_weight(SCHED, t, pred, "min_snr", 5.0).numpy()
        np.testing.assert_allclose(w * factor, np.minimum(snr, 5.0), rtol=1e-12)


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("weighting", ["uniform", "min_snr"])
@pytest.mark.parametrize("shape", [(6, 2), (6, 1, 4, 4)])
def test_simple_loss_is_a_hand_mse(prediction, weighting, shape):
    g = torch.Generator().manual_seed(1)
    t = torch.tensor([0, 1, 50, 400, 900, 999])
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    out = torch.randn(shape, generator=g, dtype=torch.float64)
    abar = np.cumprod(1 - np.linspace(1e-4, 0.02, T))[t.numpy()].reshape(-1, *[1] * (len(shape) - 1))
    tgt = {"eps": eps.numpy(), "x0": x0.numpy(),
           "v": np.sqrt(abar) * eps.numpy() - np.sqrt(1 - abar) * x0.numpy()}[prediction]
    mse = ((out.numpy() - tgt) ** 2).reshape(6, -1).mean(1)
    snr = (abar / (1 - abar)).reshape(6)
    w = 1.0 if weighting == "uniform" else {
        "eps": np.minimum(snr, 5) / snr, "x0": np.minimum(snr, 5),
        "v": np.minimum(snr, 5) / (snr + 1)}[prediction]
    got = losses.simple_loss(SCHED, out, x0, t, eps, prediction, weighting, gamma=5.0)
    assert got.shape == (6,) and got.dtype == torch.float64
    np.testing.assert_allclose(got.numpy(), w * mse, rtol=1e-12)


def test_simple_loss_float32_and_low_precision_output():
    # a float32 batch with a bfloat16 network output (AMP): the loss is accumulated in float32
    g = torch.Generator().manual_seed(2)
    x0, eps = torch.randn(2, 4, 3, generator=g)
    out = torch.randn(4, 3, generator=g).bfloat16()
    got = losses.simple_loss(SCHED, out, x0, torch.tensor([1, 2, 3, 4]), eps)
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), ((out.float() - eps) ** 2).mean(1).numpy(), rtol=1e-6)


def test_simple_loss_exact_model_is_zero():
    x0 = torch.rand(3, 2, dtype=torch.float64)
    eps = torch.randn(3, 2, dtype=torch.float64)
    t = torch.tensor([0, 500, 999])
    assert torch.equal(losses.simple_loss(SCHED, eps, x0, t, eps), torch.zeros(3, dtype=torch.float64))


def test_unknown_weighting_and_prediction():
    t = torch.tensor([1])
    with pytest.raises(ValueError, match="unknown weighting 'p2'"):
        losses.loss_weight(SCHED, t, "eps", "p2")
    with pytest.raises(ValueError, match="unknown weighting"):
        losses.simple_loss(SCHED, torch.zeros(1, 2), torch.zeros(1, 2), t, torch.zeros(1, 2),
                           weighting="snr")
    with pytest.raises(ValueError, match="unknown prediction"):
        losses.loss_weight(SCHED, t, "score")


# --------------------------------------------------------------------------- VLB pieces
def test_vlb_term_is_the_kl_of_the_two_gaussians_in_bits():
    # an imperfect eps: KL between q(x_{t-1}|x_t,x0) and p, both "small" variance (equal), is
    # (mu_q - mu_p)^2 / (2 var), with mu_q - mu_p = coef_x0 (x0 - x0_hat) (hand computation).
    g = torch.Generator().manual_seed(3)
    t = torch.tensor([1, 5, 200, 999])
    x0 = torch.rand(4, 1, 2, 2, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(4, 1, 2, 2, generator=g, dtype=torch.float64)
    x_t = forward.q_sample(SCHED, x0, t, noise=eps)
    model = lambda x, tt: 0.9 * eps + 0.05  # noqa: E731
    got = losses.vlb_terms(model, SCHED, x0, x_t, t)
    b = np.linspace(1e-4, 0.02, T)
    abar = np.cumprod(1 - b)
    ti = t.numpy()
    a, s = np.sqrt(abar[ti]), np.sqrt(1 - abar[ti])
    abar_prev = abar[ti - 1]
    coef = np.sqrt(abar_prev) * b[ti] / (1 - abar[ti])
    var = b[ti] * (1 - abar_prev) / (1 - abar[ti])
    x0_hat = (x_t.numpy() - s[:, None, None, None] * (0.9 * eps.numpy() + 0.05)) / a[:, None, None, None]
    kl = (coef[:, None, None, None] * (x0.numpy() - x0_hat)) ** 2 / (2 * var[:, None, None, None])
    want = kl.reshape(4, -1).mean(1) / math.log(2)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)


def test_prior_bpd_closed_form():
    x0 = torch.tensor([[1.0, -1.0, 0.0, 0.5]], dtype=torch.float64)
    ab = np.prod(1 - np.linspace(1e-4, 0.02, T))
    kl = 0.5 * (-1 - np.log(1 - ab) + (1 - ab) + ab * x0.numpy() ** 2)   # KL(N(a x0, 1-ab)||N(0,1))
    got = losses.prior_bpd(SCHED, x0)
    assert got.item() == pytest.approx(kl.mean() / math.log(2), rel=1e-10)
    assert 0 < got.item() < 1e-4
