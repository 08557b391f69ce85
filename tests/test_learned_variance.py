"""Learned reverse variance, the hybrid and VLB losses, importance sampling (improved DDPM,
Nichol & Dhariwal 2021), checked against independent float64 numpy computations.

Each check is a function that a deliberately broken copy of the code under test must fail:
the variance interpolation with frac = v instead of (v + 1) / 2, the hybrid loss without the
stop-gradient, the importance-sampled estimate without its 1 / (T p_t) weights, and an ancestral
step that ignores the model's variance.

Tolerances: the hand computations are float64 throughout; x0_hat = (x_t - s eps) / a divides by
a >= 0.08 at the indices used, so round-off stays below 1e-13 relative and rtol 1e-10 is ample,
while every broken twin is off by >= 1e-3.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpmlab import forward, losses, schedules
from ddpmlab.config import Config, load_config
from ddpmlab.errors import ConfigError
from ddpmlab.likelihood import bits_per_dim
from ddpmlab.objectives import DDPM
from ddpmlab.reverse import (
    call_model,
    learned_log_var,
    p_from_x0,
    p_mean_var,
    split_output,
)
from ddpmlab.samplers import SAMPLERS, StepContext, classifier_free_guidance, sample
from ddpmlab.samplers.ancestral import ddpm_step
from ddpmlab.train.step import draw

T = 1000
SCHED = schedules.linear(T)
BETAS = np.linspace(1e-4, 0.02, T)
ABAR = np.cumprod(1.0 - BETAS)
ABAR_PREV = np.concatenate([[1.0], ABAR[:-1]])
POST_VAR = BETAS * (1.0 - ABAR_PREV) / (1.0 - ABAR)
POST_VAR_CLIPPED = np.concatenate([[POST_VAR[1]], POST_VAR[1:]])   # beta_tilde_0 := beta_tilde_1
LN2 = math.log(2.0)
TOL = dict(rtol=1e-10, atol=1e-12)


def col(a: np.ndarray, ndim: int) -> np.ndarray:
    return a.reshape(-1, *[1] * (ndim - 1))


# ============================================================================ the interpolation
def hand_log_var(v: np.ndarray, beta: np.ndarray, beta_tilde: np.ndarray) -> np.ndarray:
    """sigma^2 = beta^frac beta_tilde^(1 - frac), frac = (v + 1) / 2: the geometric form."""
    frac = (v + 1.0) / 2.0
    return np.log(col(beta, v.ndim) ** frac * col(beta_tilde, v.ndim) ** (1.0 - frac))


def interpolation_ok(fn) -> bool:
    """``fn(schedule, v, t)`` -> log-variance: the ends and a random v, by hand."""
    t = torch.tensor([0, 1, 2, 250, 998, 999])
    ti = t.numpy()
    g = torch.Generator().manual_seed(0)
    ok = True
    for v in (torch.ones(6, 3, dtype=torch.float64), -torch.ones(6, 3, dtype=torch.float64),
              torch.rand(6, 3, generator=g, dtype=torch.float64) * 2 - 1):
        got = fn(SCHED, v, t).numpy()
        want = hand_log_var(v.numpy(), BETAS[ti], POST_VAR_CLIPPED[ti])
        ok &= bool(np.allclose(got, want, **TOL))
    return ok


def test_learned_log_var_ends_are_the_two_fixed_variances():
    t = torch.tensor([0, 1, 2, 250, 998, 999])
    ti = t.numpy()
    one = torch.ones(6, 2, dtype=torch.float64)
    # v = 1: log beta_t (index 0 included: beta_0, unclipped, as improved-diffusion)
    np.testing.assert_allclose(learned_log_var(SCHED, one, t).numpy(),
                               np.log(col(BETAS[ti], 2)).repeat(2, 1), **TOL)
    # v = -1: log beta_tilde_t, clipped at index 0 to index 1's value
    np.testing.assert_allclose(learned_log_var(SCHED, -one, t).numpy(),
                               np.log(col(POST_VAR_CLIPPED[ti], 2)).repeat(2, 1), **TOL)
    assert interpolation_ok(learned_log_var)


def test_a_broken_interpolation_fails_the_same_check():
    def frac_is_v(schedule, v, t):   # forgets the (v + 1) / 2 map
        return learned_log_var(schedule, 2 * v - 1, t)

    def unclipped(schedule, v, t):   # log beta_tilde_0 = -inf: no clipping at index 0
        frac = (v + 1) / 2
        lo = torch.log(schedule.posterior_var)[t][:, None]
        return frac * torch.log(schedule.betas)[t][:, None] + (1 - frac) * lo

    assert not interpolation_ok(frac_is_v)
    assert not interpolation_ok(unclipped)


def test_learned_log_var_for_skipped_jumps():
    # t -> t_prev of a respaced chain: between log beta' and log beta_tilde' (improved-diffusion
    # recomputes the respaced betas: beta' = 1 - abar_t / abar_prev); at t_prev = -1, log beta'.
    t = torch.tensor([5, 300, 999, 40, 999])
    tp = torch.tensor([0, 100, 899, -1, -1])
    ti, si = t.numpy(), tp.numpy()
    abar_s = np.where(si < 0, 1.0, ABAR[np.maximum(si, 0)])
    beta_skip = 1.0 - ABAR[ti] / abar_s
    tilde_skip = np.where(si < 0, beta_skip, beta_skip * (1.0 - abar_s) / (1.0 - ABAR[ti]))
    g = torch.Generator().manual_seed(1)
    v = torch.rand(5, 4, generator=g, dtype=torch.float64) * 2 - 1
    got = learned_log_var(SCHED, v, t, tp)
    np.testing.assert_allclose(got.numpy(), hand_log_var(v.numpy(), beta_skip, tilde_skip), **TOL)
    assert torch.isfinite(got).all()
    # t_prev = t - 1 given explicitly is the full chain (index 0 aside: see the docstring)
    full, step = torch.tensor([7, 500]), torch.tensor([6, 499])
    np.testing.assert_allclose(learned_log_var(SCHED, v[:2], full, step).numpy(),
                               learned_log_var(SCHED, v[:2], full).numpy(), rtol=1e-10)


def test_split_output_and_shape_checks():
    out = torch.arange(24.0).reshape(2, 4, 3)
    pred, var_values = split_output(out, True)
    assert torch.equal(pred, out[:, :2]) and torch.equal(var_values, out[:, 2:])
    assert split_output(out, False) == (out, None)
    with pytest.raises(ValueError, match="even channel axis"):
        split_output(torch.zeros(2, 3, 1), True)
    x, t = torch.zeros(2, 2, 3), torch.zeros(2, dtype=torch.long)
    assert call_model(lambda a, b: torch.zeros(2, 4, 3), x, t, learn_sigma=True).shape == (2, 4, 3)
    with pytest.raises(ValueError, match=r"twice the channels \(learn_sigma\) \(2, 4, 3\), got "
                                         r"\(2, 2, 3\)"):
        call_model(lambda a, b: torch.zeros_like(a), x, t, learn_sigma=True)
    # a plain model's output must keep the input's shape: no split unless asked for
    with pytest.raises(ValueError, match=r"input's shape \(2, 2, 3\), got \(2, 4, 3\)"):
        call_model(lambda a, b: torch.zeros(2, 4, 3), x, t)


def test_p_mean_var_with_learned_variance():
    g = torch.Generator().manual_seed(2)
    t = torch.tensor([0, 3, 400, 999])
    x0 = torch.rand(4, 2, 3, generator=g, dtype=torch.float64) * 2 - 1
    x_t = forward.q_sample(SCHED, x0, t, noise=torch.randn(4, 2, 3, generator=g,
                                                              dtype=torch.float64))
    eps_hat = torch.randn(4, 2, 3, generator=g, dtype=torch.float64)
    v = torch.rand(4, 2, 3, generator=g, dtype=torch.float64) * 2 - 1
    p = p_mean_var(lambda x, tt: torch.cat([eps_hat, v], 1), SCHED, x_t, t, learn_sigma=True)
    fixed = p_mean_var(lambda x, tt: eps_hat, SCHED, x_t, t)
    assert torch.equal(p.mean, fixed.mean) and torch.equal(p.x0_hat, fixed.x0_hat)
    want = hand_log_var(v.numpy(), BETAS[t.numpy()], POST_VAR_CLIPPED[t.numpy()])
    np.testing.assert_allclose(p.log_var.numpy(), want, **TOL)
    np.testing.assert_allclose(p.var.numpy(), np.exp(want), **TOL)


# ============================================================================ the VLB terms
def hand_terms(x0, x_t, t, eps_hat, v):
    """L_t in bits/dim per sample, by hand: KL of N(mu_q, bt) from N(mu_p, sigma^2) in its
    std form log(s2/s1) + (s1^2 + d^2) / (2 s2^2) - 1/2 for t >= 1, and at t = 0 the
    discretized decoder by math.erf (per element, its own std)."""
    x0, x_t, eps_hat, v = (a.numpy() for a in (x0, x_t, eps_hat, v))
    ti = t.numpy()
    nd = x0.ndim
    a, s = col(np.sqrt(ABAR[ti]), nd), col(np.sqrt(1 - ABAR[ti]), nd)
    c0 = col(np.sqrt(ABAR_PREV[ti]) * BETAS[ti] / (1 - ABAR[ti]), nd)
    ct = col(np.sqrt(1 - BETAS[ti]) * (1 - ABAR_PREV[ti]) / (1 - ABAR[ti]), nd)
    mu_q = c0 * x0 + ct * x_t
    mu_p = c0 * (x_t - s * eps_hat) / a + ct * x_t
    s1 = np.sqrt(col(POST_VAR_CLIPPED[ti], nd))
    s2 = np.sqrt(np.exp(hand_log_var(v, BETAS[ti], POST_VAR_CLIPPED[ti])))
    kl = np.log(s2 / s1) + (s1**2 + (mu_q - mu_p) ** 2) / (2 * s2**2) - 0.5
    out = kl.reshape(len(ti), -1).mean(1) / LN2

    def phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    for i in np.flatnonzero(ti == 0):
        nll = []
        for x, m, sd in zip(x0[i].ravel(), mu_p[i].ravel(), s2[i].ravel(), strict=True):
            up, lo = (x + 1 / 255 - m) / sd, (x - 1 / 255 - m) / sd
            p = phi(up) if x == -1 else (1 - phi(lo) if x == 1 else phi(up) - phi(lo))
            nll.append(-math.log(p))
        out[i] = np.mean(nll) / LN2
    return out


def vlb_setup(seed=3):
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor([0, 0, 1, 7, 300, 999])
    u8 = torch.randint(0, 256, (6, 2, 2, 2), generator=g)
    u8[:, 0, 0, 0], u8[:, 0, 0, 1] = 0, 255          # both open edge bins
    x0 = u8.double() / 127.5 - 1.0
    eps = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    x_t = forward.q_sample(SCHED, x0, t, noise=eps)
    # an imperfect eps (close to the truth at t = 0, so the decoder bins keep some mass)
    eps_hat = eps + 0.3 * torch.randn(x0.shape, generator=g, dtype=torch.float64)
    v = torch.rand(x0.shape, generator=g, dtype=torch.float64) * 2 - 1
    return t, x0, eps, x_t, eps_hat, v


def test_vlb_terms_with_learned_variance_by_hand():
    t, x0, eps, x_t, eps_hat, v = vlb_setup()
    out = torch.cat([eps_hat, v], 1)
    want = hand_terms(x0, x_t, t, eps_hat, v)
    got = losses.vlb_terms(lambda x, tt: out, SCHED, x0, x_t, t, learn_sigma=True)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-9)
    vlb = losses.diffusion_loss(SCHED, out, x0, x_t, t, eps, loss="vlb", learn_sigma=True)
    np.testing.assert_allclose(vlb.numpy(), want, rtol=1e-9)
    # hybrid = ||eps - eps_hat||^2 + lambda T L_t; lambda T = 0.001 * 1000 = 1 (iDDPM: mse + vb)
    mse = ((eps - eps_hat) ** 2).reshape(6, -1).mean(1).numpy()
    hybrid = losses.diffusion_loss(SCHED, out, x0, x_t, t, eps, loss="hybrid", learn_sigma=True)
    np.testing.assert_allclose(hybrid.numpy(), mse + want, rtol=1e-9)
    half = losses.diffusion_loss(SCHED, out, x0, x_t, t, eps, loss="hybrid", learn_sigma=True,
                                 vlb_weight=0.0005)
    np.testing.assert_allclose(half.numpy(), mse + 0.5 * want, rtol=1e-9)
    # the decoder terms (t = 0) and the KL terms are both present and not tiny
    assert want[:2].min() > 0.1 and want[2:].min() > 1e-4


def test_vlb_terms_with_the_fixed_variance_are_unchanged_by_a_wrong_v_map():
    # a broken variance map (frac = v) gives other numbers: the hand check above is sharp
    t, x0, eps, x_t, eps_hat, v = vlb_setup()
    bent = losses.vlb_terms(lambda x, tt: torch.cat([eps_hat, 2 * v - 1], 1), SCHED, x0, x_t, t,
                            learn_sigma=True)
    assert not np.allclose(bent.numpy(), hand_terms(x0, x_t, t, eps_hat, v), rtol=1e-3)


def test_loss_needs_learn_sigma_and_a_known_name():
    t, x0, eps, x_t, eps_hat, _ = vlb_setup()
    with pytest.raises(ValueError, match="needs a learn_sigma output"):
        losses.diffusion_loss(SCHED, eps_hat, x0, x_t, t, eps, loss="hybrid")
    with pytest.raises(ValueError, match="unknown loss 'kl'"):
        losses.diffusion_loss(SCHED, eps_hat, x0, x_t, t, eps, loss="kl")
    simple = losses.diffusion_loss(SCHED, eps_hat, x0, x_t, t, eps)
    assert torch.equal(simple, losses.simple_loss(SCHED, eps_hat, x0, t, eps))


# ============================================================================ the stop-gradient
def hybrid_grads(loss_fn):
    """Gradients w.r.t. the whole output of the VLB part of a hybrid loss (the simple part's
    gradient subtracted): (mean half, variance half)."""
    t, x0, eps, x_t, eps_hat, v = vlb_setup()
    out = torch.cat([eps_hat, v], 1).requires_grad_()
    total = torch.autograd.grad(loss_fn(out, x0, x_t, t, eps).sum(), out)[0]
    simple = torch.autograd.grad(losses.simple_loss(SCHED, out[:, :2], x0, t, eps).sum(), out)[0]
    vlb_part = total - simple
    return vlb_part[:, :2], vlb_part[:, 2:]


def stop_gradient_ok(loss_fn) -> bool:
    mean_grad, var_grad = hybrid_grads(loss_fn)
    return bool((mean_grad == 0).all()) and bool(var_grad.abs().max() > 1e-3)


def test_hybrid_stops_the_mean_gradient_in_the_vlb_term():
    def ours(out, x0, x_t, t, eps):
        return losses.diffusion_loss(SCHED, out, x0, x_t, t, eps, loss="hybrid",
                                     learn_sigma=True)

    assert stop_gradient_ok(ours)


def test_a_hybrid_without_the_stop_gradient_fails_the_same_check():
    def no_stop(out, x0, x_t, t, eps):
        pred, var_values = split_output(out, True)
        x0_hat = (x_t - torch.sqrt(1 - SCHED.alpha_bar[t])[:, None, None, None] * pred) \
            / torch.sqrt(SCHED.alpha_bar[t])[:, None, None, None]
        p = p_from_x0(SCHED, x_t, x0_hat, t, var_values=var_values)
        vlb = losses.vlb_from_p(SCHED, x0, x_t, t, p.mean, p.log_var)
        return losses.simple_loss(SCHED, pred, x0, t, eps) + vlb

    mean_grad, _ = hybrid_grads(no_stop)
    assert mean_grad.abs().max() > 1e-3 and not stop_gradient_ok(no_stop)


def test_the_vlb_loss_trains_both_halves():
    t, x0, eps, x_t, eps_hat, v = vlb_setup()
    out = torch.cat([eps_hat, v], 1).requires_grad_()
    g = torch.autograd.grad(losses.diffusion_loss(SCHED, out, x0, x_t, t, eps, loss="vlb",
                                                  learn_sigma=True).sum(), out)[0]
    assert g[:, :2].abs().max() > 1e-3 and g[:, 2:].abs().max() > 1e-3


# ============================================================================ importance sampling
def test_loss_history_by_hand():
    h = losses.LossHistory(3, per_t=2, uniform=0.1)
    assert h.probs() is None
    h.record(torch.tensor([0, 0, 1, 2]), torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert h.probs() is None                      # t = 1 and 2 have one value each
    h.record(torch.tensor([1, 2, 0]), torch.tensor([5.0, 6.0, 7.0]))   # t=0 drops its oldest
    np.testing.assert_array_equal(h.values.numpy(), [[2.0, 7.0], [3.0, 5.0], [4.0, 6.0]])
    rms = np.sqrt([(4 + 49) / 2, (9 + 25) / 2, (16 + 36) / 2])
    want = 0.9 * rms / rms.sum() + 0.1 / 3
    np.testing.assert_allclose(h.probs().numpy(), want, rtol=1e-13)
    again = losses.LossHistory(3, per_t=2, uniform=0.1)
    again.load_state_dict(h.state_dict())
    assert torch.equal(again.probs(), h.probs())
    with pytest.raises(ValueError, match="'values'"):
        again.load_state_dict({"values": torch.zeros(2, 2), "counts": torch.zeros(3)})
    with pytest.raises(ValueError, match="outside"):
        h.record(torch.tensor([3]), torch.tensor([1.0]))


T_IS = 20
L_FIXED = np.array([40.0, 9.0, 3.0, 1.5, 1.0, 0.8, 0.6, 0.5, 0.45, 0.4,
                    0.4, 0.35, 0.3, 0.3, 0.3, 0.25, 0.2, 0.2, 0.1, 0.05])   # a known L_t


def warmed_history() -> losses.LossHistory:
    """A full history whose second moments are not proportional to L_FIXED (so p is neither
    uniform nor exactly optimal): L_t times a spread of factors."""
    h = losses.LossHistory(T_IS)
    factors = np.linspace(0.5, 1.5, 10)
    for f in factors:
        h.record(torch.arange(T_IS), torch.from_numpy(L_FIXED * f * (1 + np.arange(T_IS) / 10)))
    assert h.warmed_up()
    return h


def test_importance_weights_make_the_estimate_exactly_unbiased():
    p = warmed_history().probs()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-14) and p.min() >= 0.001 / T_IS
    w = losses.importance_weights(p, torch.arange(T_IS)).numpy()
    # E_{t~p}[w_t L_t] = sum_t p_t L_t / (T p_t) = mean_t L_t, computed exactly
    assert float(np.sum(p.numpy() * w * L_FIXED)) == pytest.approx(L_FIXED.mean(), rel=1e-13)
    # without the weights the expectation is sum_t p_t L_t: far from the uniform mean
    assert abs(float(np.sum(p.numpy() * L_FIXED)) - L_FIXED.mean()) > 0.5 * L_FIXED.mean()


def mc_check(estimate_from) -> tuple[bool, str]:
    """Monte-Carlo: t drawn by the trainer's own draw(); the estimate must lie within 5 standard
    errors of the uniform mean, the standard error computed exactly from p: Var = sum_t p_t
    (w_t L_t)^2 - mean^2 for the weighted estimator (CLT: P(|Z| > 5) < 1e-6)."""
    p = warmed_history().probs()
    w = losses.importance_weights(p, torch.arange(T_IS)).numpy()
    mu = L_FIXED.mean()
    var = float(np.sum(p.numpy() * (w * L_FIXED) ** 2) - mu**2)
    n = 200_000
    bound = 5 * math.sqrt(var / n)
    t = draw(torch.Generator().manual_seed(0), n, (1,), DDPM(T_IS), torch.device("cpu"),
             t_probs=p).level
    est = estimate_from(p, t)
    return abs(est - mu) < bound, f"estimate {est:.5f}, mean {mu:.5f}, bound {bound:.5f}"


def test_importance_sampled_estimate_is_unbiased_by_monte_carlo():
    def weighted(p, t):
        return float((losses.importance_weights(p, t) * torch.from_numpy(L_FIXED)[t]).mean())

    ok, why = mc_check(weighted)
    assert ok, why


def test_an_unweighted_importance_estimate_fails_the_same_check():
    def unweighted(p, t):                          # forgets the 1 / (T p_t) weights
        return float(torch.from_numpy(L_FIXED)[t].mean())

    ok, why = mc_check(unweighted)
    assert not ok, why


def test_draw_is_uniform_randint_without_probs():
    # the uniform path is the seed's randint stream, unchanged: runs without vlb are as before
    a = draw(torch.Generator().manual_seed(5), 64, (2,), DDPM(50), torch.device("cpu"))
    g = torch.Generator().manual_seed(5)
    assert torch.equal(a.level, torch.randint(0, 50, (64,), generator=g))
    with pytest.raises(ValueError, match=r"shape \(50,\)"):
        draw(torch.Generator(), 4, (2,), DDPM(50), torch.device("cpu"), t_probs=torch.ones(3) / 3)


# ============================================================================ sampling
T_S = 50
SCHED_S = schedules.linear(T_S)
BETAS_S = np.linspace(1e-4, 0.02, T_S) * (1000 / T_S)
ABAR_S = np.cumprod(1 - BETAS_S)


def toy_model(v_fill: float | None, seed: int = 0):
    """eps_hat = tanh-ish function of (x, t); v constant ``v_fill`` or (None) a function of x."""
    def pred(x, t):
        return 0.5 * torch.tanh(x) + 0.01 * t.to(x.dtype).reshape(-1, *[1] * (x.ndim - 1))

    def var(x, t):
        return torch.full_like(x, v_fill) if v_fill is not None else torch.tanh(x - 0.3)

    return (lambda x, t: torch.cat([pred(x, t), var(x, t)], 1)), pred


def ancestral_ok(step) -> bool:
    """One ancestral step (full chain and a skipped jump) against numpy: x_prev = mu + sigma z,
    mu = c0 x0_hat + ct x_t with the (skipped) posterior's coefficients, sigma^2 the learned
    variance between beta' and beta_tilde'."""
    g = torch.Generator().manual_seed(4)
    x = torch.randn(5, 2, generator=g, dtype=torch.float64)
    z = torch.randn(5, 2, generator=g, dtype=torch.float64)
    full, pred = toy_model(None)
    ctx = StepContext(full, SCHED_S, learn_sigma=True, noise=z)
    ok = True
    for t, tp in ((30, 29), (30, 12)):
        got, _ = step(ctx, x, t, tp, {})
        ab_t, ab_s = ABAR_S[t], ABAR_S[tp]
        beta = 1 - ab_t / ab_s
        tilde = beta * (1 - ab_s) / (1 - ab_t)
        eps_hat = pred(x, torch.full((5,), t)).numpy()
        x0_hat = (x.numpy() - np.sqrt(1 - ab_t) * eps_hat) / np.sqrt(ab_t)
        mu = (np.sqrt(ab_s) * beta / (1 - ab_t) * x0_hat
              + np.sqrt(ab_t / ab_s) * (1 - ab_s) / (1 - ab_t) * x.numpy())
        frac = (np.tanh(x.numpy() - 0.3) + 1) / 2
        sd = np.sqrt(beta**frac * tilde ** (1 - frac))
        ok &= bool(np.allclose(got.numpy(), mu + sd * z.numpy(), rtol=1e-10, atol=1e-12))
    return ok


def test_ancestral_step_uses_the_learned_variance():
    assert ancestral_ok(ddpm_step)


def test_an_ancestral_step_ignoring_the_learned_variance_fails_the_same_check():
    def fixed_variance_step(ctx, x, t, t_prev, state):
        pred = ctx.predict(x, t)
        tp = None if t_prev == t - 1 else ctx.index(t_prev, x)
        mean, _, log_var, x0_hat = p_from_x0(ctx.schedule, x, pred.x0, pred.t, tp, ctx.variance)
        return mean + torch.exp(0.5 * log_var) * ctx.noise_like(x), x0_hat

    assert not ancestral_ok(fixed_variance_step)


@pytest.mark.parametrize("steps", [None, 7])
def test_learned_sampling_at_the_ends_is_the_fixed_variance_sampler(steps):
    # v = -1 is beta_tilde ("small"), v = +1 is beta ("large"; at index 0 they differ, but the
    # last step adds no noise): same noise, same samples, for the full and a respaced chain
    for v_fill, variance in ((-1.0, "small"), (1.0, "large")):
        full, pred = toy_model(v_fill)
        kw = dict(shape=(6, 2), sampler="ddpm", steps=steps, dtype=torch.float64)
        a = sample(full, SCHED_S, learn_sigma=True,
                   generator=torch.Generator().manual_seed(3), **kw)
        b = sample(pred, SCHED_S, variance=variance,
                   generator=torch.Generator().manual_seed(3), **kw)
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-12, atol=1e-12)
    full, pred = toy_model(0.0)
    mid = sample(full, SCHED_S, learn_sigma=True, generator=torch.Generator().manual_seed(3),
                 **kw)
    assert not torch.allclose(mid, b)


def test_other_samplers_use_the_prediction_half_only():
    full, pred = toy_model(None)
    for name in SAMPLERS:
        if name == "ddpm":
            continue
        kw = dict(shape=(4, 2), sampler=name, steps=6, dtype=torch.float64)
        a = sample(full, SCHED_S, learn_sigma=True, generator=torch.Generator().manual_seed(1),
                   **kw)
        b = sample(pred, SCHED_S, generator=torch.Generator().manual_seed(1), **kw)
        assert torch.equal(a, b), name
    with pytest.raises(ValueError, match="input's shape"):
        sample(full, SCHED_S, shape=(4, 2), sampler="ddim", steps=3)   # not told: no split


def test_guidance_guides_the_prediction_and_keeps_the_conditional_variance():
    def model(x, t, y=None):
        yy = torch.full((x.shape[0],), 9.0) if y is None else y.double()
        return torch.cat([x * yy[:, None], torch.tanh(yy)[:, None].expand_as(x)], 1)

    x = torch.randn(3, 2, dtype=torch.float64)
    t = torch.zeros(3, dtype=torch.long)
    y = torch.tensor([1, 2, 3])
    out = classifier_free_guidance(model, y, 2.5, null_class=None, learn_sigma=True)(x, t)
    cond, uncond = model(x, t, y), model(x, t)
    torch.testing.assert_close(out[:, :2], uncond[:, :2] + 2.5 * (cond[:, :2] - uncond[:, :2]))
    torch.testing.assert_close(out[:, 2:], cond[:, 2:])
    both = classifier_free_guidance(model, y, 2.5, null_class=9, learn_sigma=True)(x, t)
    torch.testing.assert_close(both, out)


# ============================================================================ bits/dim
def test_bits_per_dim_uses_the_learned_variance():
    # v = -1 is the posterior variance: the ELBO equals the fixed "small" one draw for draw;
    # v = +1 is beta: equal to "large" at every t >= 1 (they differ at index 0 only)
    x0 = (torch.randint(0, 256, (2, 1, 3, 3), generator=torch.Generator().manual_seed(0))
          .double() / 127.5 - 1.0)

    def run(model, **kw):
        return bits_per_dim(model, SCHED_S, x0, generator=torch.Generator().manual_seed(1), **kw)

    for v_fill, variance in ((-1.0, "small"), (1.0, "large")):
        full, pred = toy_model(v_fill)
        a, b = run(full, learn_sigma=True), run(pred, variance=variance)
        np.testing.assert_allclose(a.terms[1:].numpy(), b.terms[1:].numpy(), rtol=1e-12)
        if variance == "small":
            assert a.total == pytest.approx(b.total, rel=1e-12)
    full, _ = toy_model(None)
    c = run(full, learn_sigma=True)
    assert math.isfinite(c.total) and not np.allclose(c.terms.numpy(), a.terms.numpy())


# ============================================================================ the network
def test_unet_outputs_twice_the_channels_with_learn_sigma(tiny_cfg):
    from ddpmlab.nn import UNet

    m = tiny_cfg.model.__class__(**{**tiny_cfg.model.__dict__, "in_channels": 3,
                                    "image_size": 8, "learn_sigma": True})
    assert m.out_channels == 6
    out = UNet(m)(torch.randn(2, 3, 8, 8), torch.tensor([0, 5]))
    assert out.shape == (2, 6, 8, 8) and (out == 0).all()   # zero-initialized conv_out: v = 0


# ============================================================================ config
def test_config_keys_defaults_and_choices():
    c = Config()
    assert (c.model.learn_sigma, c.diffusion.loss, c.diffusion.vlb_weight) == (False, "simple",
                                                                                0.001)
    from ddpmlab.config import _CHOICES

    assert _CHOICES["diffusion.loss"] == losses.LOSSES == ("simple", "hybrid", "vlb")
    for name in ("mnist", "fashion-mnist", "cifar10"):   # presets stay on L_simple
        cfg = load_config(name)
        assert (cfg.diffusion.loss, cfg.model.learn_sigma) == ("simple", False)
    ok = Config().override({"model.learn_sigma": "true", "diffusion.loss": "hybrid"})
    assert ok.model.out_channels == 2 * ok.model.in_channels


@pytest.mark.parametrize("doc, needle", [
    ({"diffusion": {"loss": "hybrid"}}, "diffusion.loss='hybrid' trains the reverse variance"),
    ({"diffusion": {"loss": "vlb"}}, "model.learn_sigma=true"),
    ({"model": {"learn_sigma": True}}, "model.learn_sigma=True needs diffusion.loss"),
    ({"diffusion": {"loss": "kl"}}, "diffusion.loss='kl' is not one of simple, hybrid, vlb"),
    ({"model": {"learn_sigma": True}, "diffusion": {"loss": "vlb",
                                                     "loss_weighting": "min_snr"}},
     "diffusion.loss_weighting"),
    ({"model": {"learn_sigma": True}, "diffusion": {"loss": "hybrid", "vlb_weight": 0}},
     "diffusion.vlb_weight"),
    ({"diffusion": {"vlb_weight": -1}}, "diffusion.vlb_weight"),
    ({"model": {"learn_sigma": True}, "diffusion": {"loss": "hybrid"},
      "sample": {"variance": "large"}}, "sample.variance"),
])
def test_bad_learned_variance_configs_are_one_line(doc, needle):
    with pytest.raises(ConfigError) as e:
        Config.from_dict(doc, source="c.yaml")
    msg = str(e.value)
    assert needle in msg and "c.yaml" in msg and "\n" not in msg, msg


# ============================================================================ end to end
def _same_checkpoints(a, b, names):
    from ddpmlab.io import load_tensors

    for name in names:
        ta, tb = load_tensors(a / name), load_tensors(b / name)
        assert ta.keys() == tb.keys(), name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}:{k} differs"


@pytest.mark.e2e  # over 2 s: trains, samples, scores
def test_hybrid_training_then_sampling_eval_and_figures(tmp_path, tiny_cfg):
    from ddpmlab.runs import ScoreOptions, load_run, run_figures, sample_images, score_run
    from ddpmlab.train import Trainer

    cfg = tiny_cfg.override({"model.learn_sigma": "true", "diffusion.loss": "hybrid"})
    res = Trainer(cfg, tmp_path / "run", progress=False).train()
    assert math.isfinite(res.loss) and res.step == 6
    model, rcfg, _ = load_run(tmp_path / "run", use_ema=False)
    assert rcfg.model.learn_sigma and model.conv_out.out_channels == 2
    # the variance channel's head started at zero; the hybrid loss's VLB term trained it
    assert model.conv_out.weight[1].abs().max() > 0
    for sampler in ("ddpm", "ddim", "dpm_solver"):
        x = sample_images(model, rcfg, n=3, sampler=sampler, steps=5)
        assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all(), sampler
    out = score_run(tmp_path / "run", ScoreOptions(n=20, sampler="ddpm", steps=5, bpd_images=8,
                                                   bpd_timesteps=5), progress=False)
    bpd = out["bits_per_dim"]
    assert math.isfinite(bpd["total"]) and bpd["total"] > 0
    assert all(math.isfinite(v) for v in bpd["terms"].values())
    written = run_figures(tmp_path / "run", chain_steps=5)
    assert all(p.is_file() for p in written)
    # diffusers export cannot express it yet: one line, nothing written
    from ddpmlab.interop import InteropError, export_diffusers

    with pytest.raises(InteropError, match="model.learn_sigma=true"):
        export_diffusers(tmp_path / "run", tmp_path / "hf")
    assert not (tmp_path / "hf").exists()


@pytest.mark.e2e  # over 2 s: trains twice
def test_vlb_resume_is_exact_with_the_importance_sampler(tmp_path, tiny_cfg, monkeypatch):
    """A vlb run resumed after its loss history is full (t importance-sampled from then on)
    ends with exactly the weights, RNG states and history of an uninterrupted run; one that
    loses the history on resume does not."""
    from ddpmlab.errors import CheckpointError
    from ddpmlab.io import load_tensors
    from ddpmlab.train import Trainer
    from ddpmlab.train.checkpoint import LOSS_HISTORY, checkpoint_dirs, latest_checkpoint

    cfg = tiny_cfg.override({"model.learn_sigma": "true", "diffusion.loss": "vlb",
                             "diffusion.timesteps": "25", "train.batch_size": "16",
                             "train.max_steps": "34", "train.ckpt_every": "10",
                             "train.keep_last": "5"})
    Trainer(cfg, tmp_path / "a", progress=False).train()
    Trainer(cfg.override({"train.max_steps": "30"}), tmp_path / "b", progress=False).train()
    at30 = load_tensors(checkpoint_dirs(tmp_path / "b")[-1] / LOSS_HISTORY)
    assert (at30["counts"] == 10).all()          # warmed up: the resumed steps use p_t
    Trainer(cfg, tmp_path / "b", resume=True, progress=False).train()
    names = ("model.safetensors", "ema.safetensors", "optimizer.safetensors",
             "rng.safetensors", LOSS_HISTORY)
    _same_checkpoints(latest_checkpoint(tmp_path / "a"), latest_checkpoint(tmp_path / "b"),
                      names)
    end = load_tensors(latest_checkpoint(tmp_path / "b") / LOSS_HISTORY)
    assert not torch.equal(end["values"], at30["values"])   # it kept recording
    # broken twin: a resume that starts a fresh history draws other t and ends elsewhere
    Trainer(cfg.override({"train.max_steps": "30"}), tmp_path / "c", progress=False).train()
    monkeypatch.setattr(losses.LossHistory, "load_state_dict", lambda self, state: None)
    Trainer(cfg, tmp_path / "c", resume=True, progress=False).train()
    monkeypatch.undo()
    with pytest.raises(AssertionError, match="differs"):
        _same_checkpoints(latest_checkpoint(tmp_path / "a"), latest_checkpoint(tmp_path / "c"),
                          names)
    # a vlb checkpoint without its history cannot resume: one line naming the file
    (checkpoint_dirs(tmp_path / "c")[-1] / LOSS_HISTORY).unlink()
    with pytest.raises(CheckpointError, match="loss_history.safetensors: missing") as e:
        Trainer(cfg.override({"train.max_steps": "40"}), tmp_path / "c", resume=True,
                progress=False)
    assert "\n" not in str(e.value)
