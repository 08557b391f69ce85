"""Tests of ddpmlab.reverse.p_mean_var against hand-computed posteriors (float64).

With the exact prediction for a known x0 (eps = (x_t - a x0) / s), p(x_{t-1} | x_t) must be the
true posterior q(x_{t-1} | x_t, x0): its mean is recomputed here from Ho et al. eq. 7 in numpy.
Tolerance rtol 1e-10 / atol 1e-11: x0_hat = (x_t - s eps) / a divides by a >= 0.0064, turning
~1e-16 round-off into ~1e-14; any wrong coefficient would be off by >= 1e-4.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpmlab import forward, schedules
from ddpmlab.reverse import VARIANCES, call_model, p_mean_var

T = 1000
SCHED = schedules.linear(T)
BETAS = np.linspace(1e-4, 0.02, T)
ABAR = np.cumprod(1.0 - BETAS)
ABAR_PREV = np.concatenate([[1.0], ABAR[:-1]])
POST_VAR = BETAS * (1.0 - ABAR_PREV) / (1.0 - ABAR)
TOL = dict(rtol=1e-10, atol=1e-11)


def setup(shape=(6, 2), seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.tensor([0, 1, 2, 300, 998, 999])[: shape[0]]
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    x_t = forward.q_sample(SCHED, x0, t, noise=eps)
    return t, x0, eps, x_t


def per_sample(a: np.ndarray, x: torch.Tensor) -> np.ndarray:
    return a.reshape(-1, *[1] * (x.ndim - 1))


def exact_models(x0: torch.Tensor):
    """Callables returning the exact eps / x0 / v for the known x0 (any t, any shape)."""
    def parts(x, t):
        a = per_sample(np.sqrt(ABAR[t.numpy()]), x)
        s = per_sample(np.sqrt(1.0 - ABAR[t.numpy()]), x)
        eps = (x.numpy() - a * x0.numpy()) / s
        return a, s, eps

    return {
        "eps": lambda x, t: torch.from_numpy(parts(x, t)[2]),
        "x0": lambda x, t: x0.clone(),
        "v": lambda x, t: torch.from_numpy((lambda a, s, e: a * e - s * x0.numpy())(*parts(x, t))),
    }


@pytest.mark.parametrize("prediction", ["eps", "x0", "v"])
@pytest.mark.parametrize("shape", [(6, 2), (6, 1, 4, 4)])
def test_exact_prediction_gives_the_true_posterior(prediction, shape):
    t, x0, _, x_t = setup(shape)
    model = exact_models(x0)[prediction]
    p = p_mean_var(model, SCHED, x_t, t, prediction=prediction)
    ti = t.numpy()
    coef_x0 = per_sample(np.sqrt(ABAR_PREV[ti]) * BETAS[ti] / (1 - ABAR[ti]), x_t)
    coef_xt = per_sample(np.sqrt(1 - BETAS[ti]) * (1 - ABAR_PREV[ti]) / (1 - ABAR[ti]), x_t)
    want = coef_x0 * x0.numpy() + coef_xt * x_t.numpy()
    np.testing.assert_allclose(p.mean.numpy(), want, **TOL)
    np.testing.assert_allclose(p.x0_hat.numpy(), x0.numpy(), **TOL)
    assert p.mean.shape == shape and p.x0_hat.shape == shape
    assert p.var.shape == (6,) + (1,) * (len(shape) - 1)
    # Ho et al. eq. 11 form of the same mean: (x_t - beta / sqrt(1 - abar) eps) / sqrt(alpha)
    eps = (x_t.numpy() - per_sample(np.sqrt(ABAR[ti]), x_t) * x0.numpy()) / per_sample(
        np.sqrt(1 - ABAR[ti]), x_t)
    eq11 = (x_t.numpy() - per_sample(BETAS[ti] / np.sqrt(1 - ABAR[ti]), x_t) * eps) / per_sample(
        np.sqrt(1 - BETAS[ti]), x_t)
    np.testing.assert_allclose(p.mean.numpy(), eq11, rtol=1e-9, atol=1e-9)


def test_variance_small_and_large_by_hand():
    t, x0, _, x_t = setup()
    model = exact_models(x0)["eps"]
    ti = t.numpy()
    small = p_mean_var(model, SCHED, x_t, t, variance="small")
    large = p_mean_var(model, SCHED, x_t, t, variance="large")
    # small: beta_tilde_t; at index 0 it is 0, and its log is clipped at index 1's value
    np.testing.assert_allclose(small.var[:, 0].numpy(), POST_VAR[ti], rtol=1e-12)
    want_log_small = np.log(np.where(ti == 0, POST_VAR[1], POST_VAR[ti]))
    np.testing.assert_allclose(small.log_var[:, 0].numpy(), want_log_small, rtol=1e-12)
    # large: beta_t, with beta_tilde_1 at index 0 (improved-diffusion's convention)
    want_large = np.where(ti == 0, POST_VAR[1], BETAS[ti])
    np.testing.assert_allclose(large.var[:, 0].numpy(), want_large, rtol=1e-12)
    np.testing.assert_allclose(large.log_var[:, 0].numpy(), np.log(want_large), rtol=1e-12)
    # the mean does not depend on the variance choice
    assert torch.equal(small.mean, large.mean)


def test_skipped_jump_variances_and_mean():
    # t -> t_prev of a skipping sampler: the skipped chain's posterior, beta' = 1 - abar_t/abar_s
    t, x0, _, x_t = setup()
    tp = torch.tensor([-1, 0, -1, 200, 500, 899])
    model = exact_models(x0)["eps"]
    small = p_mean_var(model, SCHED, x_t, t, variance="small", t_prev=tp)
    large = p_mean_var(model, SCHED, x_t, t, variance="large", t_prev=tp)
    ti, si = t.numpy(), tp.numpy()
    abar_s = np.where(si < 0, 1.0, ABAR[np.maximum(si, 0)])
    beta_skip = 1 - ABAR[ti] / abar_s
    np.testing.assert_allclose(large.var[:, 0].numpy(), beta_skip, rtol=1e-10)
    np.testing.assert_allclose(small.var[:, 0].numpy(),
                               beta_skip * (1 - abar_s) / (1 - ABAR[ti]), rtol=1e-10, atol=1e-300)
    want_mean, _, _ = forward.q_posterior(SCHED, x0, x_t, t, t_prev=tp)
    np.testing.assert_allclose(small.mean.numpy(), want_mean.numpy(), **TOL)
    np.testing.assert_allclose(small.mean[[0, 2]].numpy(), x0[[0, 2]].numpy(), **TOL)


def test_clip_x0_clamps_before_the_mean():
    t, _, _, x_t = setup()
    wild = torch.linspace(-3, 3, 12, dtype=torch.float64).reshape(6, 2)
    clipped = p_mean_var(lambda x, tt: wild, SCHED, x_t, t, prediction="x0", clip_x0=True)
    free = p_mean_var(lambda x, tt: wild, SCHED, x_t, t, prediction="x0", clip_x0=False)
    assert torch.equal(clipped.x0_hat, wild.clamp(-1, 1))
    assert torch.equal(free.x0_hat, wild)
    want, _, _ = forward.q_posterior(SCHED, wild.clamp(-1, 1), x_t, t)
    np.testing.assert_allclose(clipped.mean.numpy(), want.numpy(), **TOL)
    assert not torch.allclose(clipped.mean, free.mean)


def test_model_output_is_reused_and_y_is_passed():
    t, x0, _, x_t = setup()
    seen = {}

    def model(x, tt, y=None):
        seen["y"] = y
        return torch.zeros_like(x)

    y = torch.arange(6)
    p_mean_var(model, SCHED, x_t, t, y=y)
    assert torch.equal(seen["y"], y)
    out = exact_models(x0)["eps"](x_t, t)
    p = p_mean_var(lambda *a: 1 / 0, SCHED, x_t, t, model_output=out)     # never called
    np.testing.assert_allclose(p.x0_hat.numpy(), x0.numpy(), **TOL)


def test_float32_data_gets_float32_results():
    t, x0, _, x_t = setup()
    p = p_mean_var(lambda x, tt: torch.zeros_like(x), SCHED, x_t.float(), t)
    assert all(v.dtype == torch.float32 for v in p)


def test_bad_names_and_shapes_raise():
    t, _, _, x_t = setup()
    zero = lambda x, tt: torch.zeros_like(x)  # noqa: E731
    with pytest.raises(ValueError, match="unknown variance 'learned'"):
        p_mean_var(zero, SCHED, x_t, t, variance="learned")
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        p_mean_var(zero, SCHED, x_t, t, prediction="score")
    with pytest.raises(ValueError, match=r"input's shape \(6, 2\), got \(6, 1\)"):
        p_mean_var(lambda x, tt: x[:, :1], SCHED, x_t, t)
    with pytest.raises(ValueError, match="got \\(6, 4\\)"):
        p_mean_var(lambda x, tt: torch.cat([x, x], 1), SCHED, x_t, t)
    with pytest.raises(ValueError, match="got ndarray"):
        call_model(lambda x, tt: x.numpy(), x_t, t)
    assert set(VARIANCES) == {"small", "large"}


def test_index_zero_mean_is_x0_hat():
    # q(x_{-1} | x_0, x0_hat) has mean x0_hat: coef_x0[0] = beta_0 / (1 - abar_0) = 1 (up to
    # rounding of 1 - (1 - beta_0)), coef_xt[0] = 0 exactly.
    _, x0, _, x_t = setup()
    t = torch.zeros(6, dtype=torch.long)
    p = p_mean_var(exact_models(x0)["x0"], SCHED, x_t, t, prediction="x0")
    np.testing.assert_allclose(p.mean.numpy(), x0.numpy(), rtol=1e-12, atol=1e-13)
    assert SCHED.posterior_mean_coef_xt[0].item() == 0.0
    assert SCHED.posterior_mean_coef_x0[0].item() == pytest.approx(1.0, abs=1e-12)
    assert math.isfinite(p.log_var[0].item())
