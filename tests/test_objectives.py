"""Tests of ddpmlab.objectives (EDM, flow matching) against independent float64 references.

* the noise-level grids: EDM's geometric sigmas and Karras steps, the flow's t grid (numpy);
* EDM: the preconditioning against a numpy computation written differently, the unit-variance
  claim in closed form and at init, the loss of the ideal denoiser on a Gaussian against its
  analytic value, the log-normal sigma draws; broken twins fail each;
* flow: the loss against a hand computation, its minimum at the exact velocity of Gaussian
  data against the closed form v / ((1 - t)^2 v + t^2), the t draws; broken twins fail;
* sampling: the exact velocity of the 2-D mixture of tests/test_samplers.py (derived below) and
  the exact EDM denoiser, through the objectives' ``sampler_model``, recover the mixture
  with Euler / flow-Heun / Heun, with tolerances from an independent numpy recursion of each
  solver on an isolated Gaussian; ``euler`` equals Euler on dx/dt = v written in t; sign- or
  time-flipped velocities and broken preconditionings fail the same check;
* end to end on the 8x8 digits: train, exact resume, sample, eval, figures, for both.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types

import numpy as np
import pytest
import torch

from ddpmlab import objectives
from ddpmlab.config import Config, load_config
from ddpmlab.errors import ConfigError
from ddpmlab.objectives import (
    DDPM,
    EDM,
    FLOW,
    edm_loss,
    edm_precond,
    flow_loss,
)
from ddpmlab.objectives import edm as edm_module
from ddpmlab.samplers import sample, timesteps
from test_samplers import MIX, MIX_N, Mixture, mixture_check

F64 = torch.float64
T = 1000


# =========================================================================== grids
def test_edm_grid_is_geometric_and_karras_spacing_gives_edms_steps():
    g = EDM(T).schedule()
    # sigma comes back from abar = 1 / (1 + sigma^2) through the betas: at sigma = 0.002,
    # 1 - abar = 4e-6 carries float64's 1e-16 as 2.5e-11 relative (1.3e-11 in sigma): 1e-9
    np.testing.assert_allclose(g.sigmas.numpy(), np.geomspace(0.002, 80.0, T), rtol=1e-9)
    # EDM's time steps (Karras et al. eq. 5, rho = 7, 18 steps), written out here
    n, rho = 18, 7.0
    i = np.arange(n)
    want = (80.0 ** (1 / rho) + i / (n - 1) * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    ts = timesteps(T, n, "karras", g.log_snr.tolist())
    from ddpmlab.schedules import sigma_at

    got = sigma_at(g, torch.tensor(ts, dtype=F64)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9)


def test_flow_grid_is_the_flows_times():
    g = FLOW(T).schedule()
    t = np.arange(1, T + 1) / (T + 1.0)
    # (round-off through abar and the betas: 1 - abar = 1e-6 at t_0, 3e-11 relative; 1e-9)
    np.testing.assert_allclose(g.sigmas.numpy(), t / (1 - t), rtol=1e-9)
    # the VP abar of the grid: x_vp = ((1 - t) x0 + t eps) / sqrt((1 - t)^2 + t^2)
    np.testing.assert_allclose(g.alpha_bar.numpy(), (1 - t) ** 2 / ((1 - t) ** 2 + t ** 2),
                               rtol=1e-12)
    with pytest.raises(ValueError, match="unknown objective"):
        objectives.get("vp")


# =========================================================================== EDM
SD = 0.5


def precond_ref(s: np.ndarray, sd: float):
    """EDM Table 1 written differently (float64 numpy)."""
    c_skip = 1.0 / (1.0 + (s / sd) ** 2)
    c_out = 1.0 / np.sqrt(1.0 / s ** 2 + 1.0 / sd ** 2)
    c_in = np.power(s * s + sd * sd, -0.5)
    c_noise = 0.25 * np.log(s)
    return c_skip, c_out, c_in, c_noise


def precond_matches(fn) -> bool:
    s = np.geomspace(0.002, 80, 37)
    for sd in (0.5, 0.6, 1.3):
        got = fn(torch.from_numpy(s), sd)
        for a, b in zip(got, precond_ref(s, sd), strict=True):
            if not np.allclose(a.numpy(), b, rtol=1e-12, atol=0):
                return False
    return True


def _broken_precond(sigma, sigma_data=0.5):
    c_skip, c_out, c_in, c_noise = edm_precond(sigma, sigma_data)
    return sigma_data / (sigma ** 2 + sigma_data ** 2), c_out, c_in, c_noise   # sd, not sd^2


def test_edm_preconditioning_is_table_1():
    assert precond_matches(edm_precond)
    assert not precond_matches(_broken_precond)
    s = torch.from_numpy(np.geomspace(0.002, 80, 11))
    torch.testing.assert_close(objectives.edm_weight(s, 0.6), 1 / edm_precond(s, 0.6)[1] ** 2,
                               rtol=1e-12, atol=0)


def effective_target_variance(precond, weight, s, sd):
    """Closed form for data of variance sd^2 (mean 0) and x = x0 + s eps: the variance of the
    network's target F* = (x0 - c_skip x) / c_out, of its input c_in x, and the weighted
    loss at init (F = 0) lambda E (c_skip x - x0)^2."""
    c_skip, c_out, c_in, _ = precond(s, sd)
    var_x = sd ** 2 + s ** 2
    var_target = ((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * s ** 2) / c_out ** 2
    at_init = weight(s, sd) * ((1 - c_skip) ** 2 * sd ** 2 + c_skip ** 2 * s ** 2)
    return var_target, c_in ** 2 * var_x, at_init


def test_edm_target_and_input_have_unit_variance_at_every_sigma():
    s = torch.from_numpy(np.geomspace(0.002, 80, 50))
    for sd in (0.5, 0.62):
        for v in effective_target_variance(edm_precond, objectives.edm_weight, s, sd):
            torch.testing.assert_close(v, torch.ones_like(v), rtol=1e-12, atol=0)
    # a broken twin (EDM's weight without sigma_data: 1 / sigma^2) breaks the unit loss
    _, _, bad = effective_target_variance(edm_precond, lambda s, sd: 1 / s ** 2, s, 0.5)
    assert not torch.allclose(bad, torch.ones_like(bad), rtol=1e-3)
    _, _, bad = effective_target_variance(_broken_precond, objectives.edm_weight, s, 0.5)
    assert not torch.allclose(bad, torch.ones_like(bad), rtol=1e-3)


def test_edm_loss_at_init_is_one_by_monte_carlo():
    # the UNet starts with a zero output layer: F = 0. On data N(0, sd^2) the loss is 1 at
    # every sigma; each sample's loss is a mean of 4000 squares: 5 standard errors
    g = torch.Generator().manual_seed(0)
    zero = lambda x, t: torch.zeros_like(x)  # noqa: E731
    n, d = 64, 4000
    for s in (0.01, 0.3, 2.0, 50.0):
        x0 = SD * torch.randn(n, d, generator=g, dtype=F64)
        eps = torch.randn(n, d, generator=g, dtype=F64)
        per = edm_loss(zero, x0, torch.full((n,), s, dtype=F64), eps, sigma_data=SD)
        assert per.mean().item() == pytest.approx(1.0, abs=5 * math.sqrt(2 / (n * d)))


def gaussian_edm_net(m: float, v: float, precond_ref_fn=precond_ref, sd: float = SD):
    """The network F whose preconditioned denoiser is the ideal one for data N(m, v):
    D*(x, s) = m + v / (v + s^2) (x - m). It reads s back from c_noise = ln(s) / 4 and x from
    the input c_in x, with the test's own preconditioning."""

    def net(x_in, c_noise, y=None):
        s = torch.exp(4 * c_noise.double()).numpy()
        c_skip, c_out, c_in, _ = precond_ref_fn(s, sd)
        shape = (-1, *[1] * (x_in.ndim - 1))
        x = x_in / torch.from_numpy(c_in).reshape(shape).to(x_in)
        s2 = torch.from_numpy(s * s).reshape(shape).to(x_in)
        d_star = m + v / (v + s2) * (x - m)
        return (d_star - torch.from_numpy(c_skip).reshape(shape).to(x_in) * x) / \
            torch.from_numpy(c_out).reshape(shape).to(x_in)

    return net


def test_edm_loss_of_the_ideal_denoiser_is_analytic():
    # data N(m, v): the ideal denoiser's error is v s^2 / (v + s^2) per element, so the loss
    # is lambda(s) v s^2 / (v + s^2) = (s^2 + sd^2) v / (sd^2 (v + s^2)). Monte Carlo over n x d
    # elements: each per-element squared error is (a Gaussian)^2, relative s.d. sqrt(2)
    m, v = 0.2, 0.3
    g = torch.Generator().manual_seed(1)
    n, d = 32, 5000
    net = gaussian_edm_net(m, v)
    for s in (0.005, 0.2, 1.0, 30.0):
        want = (s * s + SD * SD) * v / (SD * SD * (v + s * s))
        x0 = m + math.sqrt(v) * torch.randn(n, d, generator=g, dtype=F64)
        eps = torch.randn(n, d, generator=g, dtype=F64)
        sig = torch.full((n,), s, dtype=F64)
        got = edm_loss(net, x0, sig, eps, sigma_data=SD).mean().item()
        assert got == pytest.approx(want, rel=5 * math.sqrt(2 / (n * d)))
        # broken twin: the library's c_skip wrong -> the same network gives another loss
        # (at s = 30 c_skip is ~1e-3 either way: the bug cannot show there)
        if s > 10:
            continue
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(edm_module, "edm_precond", _broken_precond)
            bad = edm_loss(net, x0, sig, eps, sigma_data=SD).mean().item()
        assert bad != pytest.approx(want, rel=20 * math.sqrt(2 / (n * d))), s


def test_edm_sigma_draws_are_log_normal():
    g = torch.Generator().manual_seed(2)
    n = 40000
    s = EDM().draw_levels(g, n, dtype=F64)
    ln = s.log()
    assert ln.mean().item() == pytest.approx(-1.2, abs=5 * 1.2 / math.sqrt(n))
    assert ln.std().item() == pytest.approx(1.2, rel=5 * math.sqrt(0.5 / n))
    # diffusion.p_mean / p_std move the log-normal; a draw that ignored them would stay at -1.2
    s2 = EDM(p_mean=0.3, p_std=1.7).draw_levels(torch.Generator().manual_seed(2), n, dtype=F64)
    assert s2.log().mean().item() == pytest.approx(0.3, abs=5 * 1.7 / math.sqrt(n))
    assert s2.log().std().item() == pytest.approx(1.7, rel=5 * math.sqrt(0.5 / n))
    # the same normal draws, rescaled: ln s2 = 0.3 + 1.7 (ln s + 1.2) / 1.2
    torch.testing.assert_close(s2.log(), 0.3 + 1.7 * (ln + 1.2) / 1.2)


@pytest.mark.e2e  # over 1.3 s: trains
def test_the_trainer_draws_edm_levels_with_the_configs_p_mean_and_p_std(tiny_cfg, tmp_path,
                                                                        monkeypatch):
    import ddpmlab.train.loop as loop
    from ddpmlab.train import Trainer

    seen = []
    real = loop.draw

    def spy(*args, **kw):
        r = real(*args, **kw)
        objective = args[3]                  # draw(generator, batch, shape, objective, ...)
        assert objective.level_name == "sigma"
        seen.append((objective.p_mean, objective.p_std, r.level))
        return r

    monkeypatch.setattr(loop, "draw", spy)
    cfg = tiny_cfg.override({"diffusion.objective": "edm", "diffusion.p_mean": "2.5",
                             "diffusion.p_std": "0.01", "train.max_steps": "2"})
    Trainer(cfg, tmp_path / "r", progress=False).train()
    assert [(m, sd) for m, sd, _ in seen] == [(2.5, 0.01)] * 2
    for *_, t in seen:                       # ln s within 0.01 * 6 of 2.5
        assert ((t.log() - 2.5).abs() < 0.06).all(), t


# =========================================================================== flow
def test_flow_loss_is_the_velocity_mse_by_hand():
    g = torch.Generator().manual_seed(3)
    x0 = torch.randn(5, 3, generator=g, dtype=F64)
    eps = torch.randn(5, 3, generator=g, dtype=F64)
    t = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0], dtype=F64)
    seen = []

    def net(x, tt):
        seen.append(tt.clone())
        return 0.3 * x + tt[:, None] / 1000

    a, e, tn = x0.numpy(), eps.numpy(), t.numpy()[:, None]
    xt = a + tn * (e - a)                                  # (1 - t) x0 + t eps, rewritten
    want = ((0.3 * xt + tn - (e - a)) ** 2).mean(1)
    np.testing.assert_allclose(flow_loss(net, x0, t, eps).numpy(), want, rtol=1e-12)
    torch.testing.assert_close(seen[0], 1000 * t)           # the network sees 1000 t


def gaussian_velocity(m: float, v: float, flip_time: bool = False):
    """E[eps - x0 | x_t] for data N(m, v) (per element): x_t ~ N((1 - t) m, V),
    V = (1 - t)^2 v + t^2, Cov(eps - x0, x_t) = t - (1 - t) v. The network sees 1000 t."""

    def net(x, tt, y=None):
        t = (tt.double() / 1000).reshape(-1, *[1] * (x.ndim - 1)).to(x)
        if flip_time:
            t = 1 - t
        V = (1 - t) ** 2 * v + t ** 2
        return -m + (t - (1 - t) * v) / V * (x - (1 - t) * m)

    return net


def test_flow_loss_at_the_exact_velocity_is_its_closed_form_minimum():
    # min E (v_hat - (eps - x0))^2 = Var(eps - x0 | x_t) = v / ((1 - t)^2 v + t^2) (derived in
    # the module: (1 + v) V - (t - (1 - t) v)^2 = v V / V ... = v)
    m, v = -0.3, 0.4
    g = torch.Generator().manual_seed(4)
    n, d = 32, 5000
    for t in (0.02, 0.3, 0.7, 0.98):
        want = v / ((1 - t) ** 2 * v + t ** 2)
        x0 = m + math.sqrt(v) * torch.randn(n, d, generator=g, dtype=F64)
        eps = torch.randn(n, d, generator=g, dtype=F64)
        tt = torch.full((n,), t, dtype=F64)
        got = flow_loss(gaussian_velocity(m, v), x0, tt, eps).mean().item()
        assert got == pytest.approx(want, rel=5 * math.sqrt(2 / (n * d)))
        bad = flow_loss(gaussian_velocity(m, v, flip_time=True), x0, tt, eps).mean().item()
        assert bad > want * (1 + 20 * math.sqrt(2 / (n * d))), t
        # the sign-flipped field -v*: E(v + v*)^2 = E v^2 + 3 E v*^2 with E v^2 = 1 + v + m^2
        # and E v*^2 = E v^2 - want, far above the minimum (checked at 2 of the 3)
        neg = flow_loss(lambda x, s: -gaussian_velocity(m, v)(x, s), x0, tt, eps).mean().item()
        assert neg > want + 2 * (1 + v + m * m - want)


def test_flow_time_draws():
    g = torch.Generator().manual_seed(5)
    n = 40000
    u = FLOW(flow_t="uniform").draw_levels(g, n, dtype=F64)
    assert 0 <= u.min() and u.max() < 1
    assert u.mean().item() == pytest.approx(0.5, abs=5 * math.sqrt(1 / 12 / n))
    assert u.var().item() == pytest.approx(1 / 12, rel=5 * math.sqrt(0.8 / n))  # kurtosis 1.8
    ln = FLOW(flow_t="logit_normal").draw_levels(g, n, dtype=F64)
    logit = (ln / (1 - ln)).log()
    assert logit.mean().item() == pytest.approx(0.0, abs=5 / math.sqrt(n))
    assert logit.std().item() == pytest.approx(1.0, rel=5 * math.sqrt(0.5 / n))
    with pytest.raises(ValueError, match="unknown flow_t"):
        FLOW(flow_t="beta")


# =========================================================================== the 2-D mixture
def mixture_velocity(mix: Mixture, sign: float = 1.0, flip_time: bool = False):
    """The exact flow velocity of the mixture, E[eps - x0 | x_t], derived: given component k,
    x_t ~ N((1 - t) mu_k, V_k I), V_k = (1 - t)^2 s_k^2 + t^2; E[x0 | x_t, k] = mu_k + (1 - t)
    s_k^2 / V_k (x_t - (1 - t) mu_k), E[eps | x_t, k] = t / V_k (x_t - (1 - t) mu_k); the
    responsibilities r_k are proportional to w_k N(x_t; (1 - t) mu_k, V_k I). [K, N] layout."""
    logw, mu0, mu1, s2 = mix.w.log()[:, None], mix.mu[:, :1], mix.mu[:, 1:], mix.s[:, None] ** 2

    def net(x, tt, y=None):
        t = (tt.double() / 1000)[None, :]
        if flip_time:
            t = 1 - t
        V = (1 - t) ** 2 * s2 + t ** 2                               # [K, N]
        d0 = x[:, 0][None, :] - (1 - t) * mu0
        d1 = x[:, 1][None, :] - (1 - t) * mu1
        r = torch.softmax(logw - (d0 * d0 + d1 * d1) / (2 * V) - V.log(), dim=0)
        gain = (t - (1 - t) * s2) / V                                # E[eps - x0 | x, k] + mu
        v0 = (r * (gain * d0 - mu0)).sum(0)
        v1 = (r * (gain * d1 - mu1)).sum(0)
        return sign * torch.stack([v0, v1], dim=1)

    return net


def mixture_denoiser_net(mix: Mixture, sd: float = SD, noise_scale: float = 4.0):
    """The EDM network F whose preconditioned denoiser is the mixture's exact
    D(x, s) = E[x0 | x0 + s eps = x] (r_k ~ w_k N(x; mu_k, (s_k^2 + s^2) I), E[x0 | x, k] =
    mu_k + s_k^2 / (s_k^2 + s^2) (x - mu_k)), decoded with the test's preconditioning."""
    logw, mu0, mu1, s2 = mix.w.log()[:, None], mix.mu[:, :1], mix.mu[:, 1:], mix.s[:, None] ** 2

    def net(x_in, c_noise, y=None):
        s = torch.exp(noise_scale * c_noise.double())
        c_skip, c_out, c_in, _ = (torch.from_numpy(c) for c in precond_ref(s.numpy(), sd))
        x = x_in / c_in[:, None]
        var = s2 + (s * s)[None, :]
        d0 = x[:, 0][None, :] - mu0
        d1 = x[:, 1][None, :] - mu1
        r = torch.softmax(logw - (d0 * d0 + d1 * d1) / (2 * var) - var.log(), dim=0)
        k = s2 / var
        D = torch.stack([(r * (mu0 + k * d0)).sum(0), (r * (mu1 + k * d1)).sum(0)], dim=1)
        return (D - c_skip[:, None] * x) / c_out[:, None]

    return net


def test_the_mixture_oracles_are_right():
    # the velocity and the denoiser against autograd through torch.distributions: the score
    # of p_t gives E[x0 | x] (Tweedie) and with it E[eps | x]
    D = torch.distributions
    x = 1.2 * torch.randn(40, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    for t in (0.05, 0.5, 0.95):
        comp = D.Independent(D.Normal((1 - t) * MIX.mu, ((1 - t) ** 2 * MIX.s ** 2 + t ** 2)
                                      .sqrt()[:, None].expand(3, 2)), 1)
        p = D.MixtureSameFamily(D.Categorical(probs=MIX.w), comp)
        xr = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(p.log_prob(xr).sum(), xr)
        # x = (1 - t) x0 + t eps: E[eps | x] = -t score, E[x0 | x] = (x - t E[eps | x]) / (1 - t)
        e_eps = -t * score
        e_x0 = (x - t * e_eps) / (1 - t)
        got = mixture_velocity(MIX)(x, torch.full((40,), 1000 * t, dtype=F64))
        torch.testing.assert_close(got, e_eps - e_x0, rtol=1e-9, atol=1e-10)
    for s in (0.01, 0.7, 20.0):
        comp = D.Independent(D.Normal(MIX.mu, (MIX.s ** 2 + s * s).sqrt()[:, None].expand(3, 2)), 1)
        p = D.MixtureSameFamily(D.Categorical(probs=MIX.w), comp)
        xr = x.clone().requires_grad_(True)
        (score,) = torch.autograd.grad(p.log_prob(xr).sum(), xr)
        want = x + s * s * score                                        # Tweedie
        got = objectives.edm_denoise(mixture_denoiser_net(MIX), x, torch.full((40,), s,
                                     dtype=F64), sigma_data=SD)
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def flow_reference_std(ts: list[float], s: float, kind: str) -> float:
    """Std of the output for data N(0, s^2) with the exact velocity v = (t - (1 - t) s^2) / V x,
    from the sampler's start x_vp ~ N(0, 1) at ts[0] (x = sqrt((1 - t)^2 + t^2) x_vp): Euler
    or Heun in t on dx/dt = v over the times ``ts`` and then 0, the last step to t = 0 being
    the Euler step (= E[x0 | x]). Numpy-free scalar recursion of the coefficient on x_vp."""
    def gain(t):
        return (t - (1 - t) * s * s) / ((1 - t) ** 2 * s * s + t * t)

    f = math.sqrt((1 - ts[0]) ** 2 + ts[0] ** 2)
    tt = list(ts) + [0.0]
    for t, tn in zip(tt[:-1], tt[1:], strict=True):
        fe = f + (tn - t) * gain(t) * f
        if kind == "heun" and tn > 0:
            f = f + (tn - t) * 0.5 * (gain(t) * f + gain(tn) * fe)
        else:
            f = fe
    return abs(f)


def ve_heun_reference_std(sigmas: list[float], s: float) -> float:
    """EDM Algorithm 1 on data N(0, s^2) with D = s^2 / (s^2 + sigma^2) x, from x_vp ~ N(0, 1)
    (x_ve = sqrt(1 + sigma_0^2) x_vp), ending with the Euler step to sigma = 0."""
    def d(sig):
        return 1 - s * s / (s * s + sig * sig)      # (x - D) / sigma, times sigma

    f = math.sqrt(1 + sigmas[0] ** 2)
    sg = list(sigmas) + [0.0]
    for a, b in zip(sg[:-1], sg[1:], strict=True):
        if b == 0:
            f = f * s * s / (s * s + a * a)
            break
        d1 = d(a) / a * f
        fe = f + (b - a) * d1
        f = f + (b - a) * 0.5 * (d1 + d(b) / b * fe)
    return abs(f)


FLOW_GRID = FLOW(T).schedule()
EDM_GRID = EDM(T).schedule()


def flow_times_of(steps: int, spacing: str = "uniform") -> list[float]:
    return [(i + 1) / (T + 1) for i in timesteps(T, steps, spacing, FLOW_GRID.log_snr.tolist())]


def flow_draw(net, sampler: str, steps: int, spacing: str = "uniform", **kw):
    return sample(FLOW(T).sampler_model(net, FLOW_GRID), FLOW_GRID, shape=(MIX_N, 2),
                  sampler=sampler, steps=steps, spacing=spacing, prediction="x0",
                  generator=torch.Generator().manual_seed(0), dtype=F64, **kw)


FLOW_CASES = {"euler-50": ("euler", 50, "euler"), "flow_heun-20": ("flow_heun", 20, "heun")}


@pytest.mark.parametrize("case", list(FLOW_CASES))
def test_flow_ode_with_the_exact_velocity_recovers_the_mixture(case):
    sampler, steps, kind = FLOW_CASES[case]
    ts = flow_times_of(steps)
    deltas = [flow_reference_std(ts, s, kind) / s - 1 for s in MIX.s.tolist()]
    ok, why = mixture_check(flow_draw(mixture_velocity(MIX), sampler, steps), deltas)
    assert ok, why


@pytest.mark.parametrize("broken", ["sign", "time"])
def test_a_broken_velocity_fails_the_same_check(broken):
    net = mixture_velocity(MIX, sign=-1.0) if broken == "sign" else \
        mixture_velocity(MIX, flip_time=True)
    ts = flow_times_of(50)
    deltas = [flow_reference_std(ts, s, "euler") / s - 1 for s in MIX.s.tolist()]
    ok, why = mixture_check(flow_draw(net, "euler", 50), deltas)
    assert not ok and why


def test_euler_on_the_grid_is_euler_on_dx_dt_equals_v():
    # the same start, the library's `euler` through the wrapper against Euler in t written
    # directly on the flow's x (x = x_vp sqrt((1 - t)^2 + t^2)), with the mixture's velocity
    net = mixture_velocity(MIX)
    x_T = torch.randn(200, 2, generator=torch.Generator().manual_seed(7), dtype=F64)
    steps = 30
    got = sample(FLOW(T).sampler_model(net, FLOW_GRID), FLOW_GRID, x_T=x_T, sampler="euler",
                 steps=steps, spacing="uniform", prediction="x0")
    ts = flow_times_of(steps) + [0.0]
    x = x_T * math.sqrt((1 - ts[0]) ** 2 + ts[0] ** 2)
    for t, tn in zip(ts[:-1], ts[1:], strict=True):
        x = x + (tn - t) * net(x, torch.full((200,), 1000 * t, dtype=F64))
    torch.testing.assert_close(got, x, rtol=1e-9, atol=1e-9)
    # and flow_heun's isolated-Gaussian output is the numpy Heun-in-t recursion
    for s in (0.2, 0.5):
        one = torch.ones(1, 1, dtype=F64)
        out = sample(FLOW(T).sampler_model(gaussian_velocity(0.0, s * s), FLOW_GRID), FLOW_GRID,
                     x_T=one, sampler="flow_heun", steps=12, spacing="uniform",
                     prediction="x0").item()
        assert out == pytest.approx(flow_reference_std(flow_times_of(12), s, "heun"), rel=1e-9)


def test_flow_heun_on_a_ddpm_model_is_heun_in_the_flow_time():
    # any objective: the ddpm linear schedule's exact eps of N(0, s^2) through flow_heun
    # matches the same Heun-in-t recursion on t = sigma / (1 + sigma) of that schedule
    from test_samplers import SCHED, gaussian_eps, sigma_ref

    s = 0.3
    out = sample(gaussian_eps(SCHED, 0.0, s), SCHED, x_T=torch.ones(1, 1, dtype=F64),
                 sampler="flow_heun", steps=15, dtype=F64).item()
    idx = timesteps(T, 15, "uniform", SCHED.log_snr.tolist())
    ts = [sigma_ref(i) / (1 + sigma_ref(i)) for i in idx]
    assert out == pytest.approx(flow_reference_std(ts, s, "heun"), rel=1e-9)


def edm_draw(net, steps: int = 18):
    return sample(EDM(T, sigma_data=SD).sampler_model(net, EDM_GRID), EDM_GRID,
                  shape=(MIX_N, 2), sampler="heun", steps=steps, prediction="x0",
                  generator=torch.Generator().manual_seed(0), dtype=F64)


def edm_deltas(steps: int = 18, stds=None):
    rho = 7.0
    i = np.arange(steps)
    sig = (80.0 ** (1 / rho) + i / (steps - 1) * (0.002 ** (1 / rho) - 80.0 ** (1 / rho))) ** rho
    return [ve_heun_reference_std(sig.tolist(), s) / s - 1 for s in (stds or MIX.s.tolist())]


def test_heun_on_the_edm_grid_is_edm_algorithm_1():
    # the wrapped exact denoiser of N(0, s^2) through `heun` (Karras spacing) maps x_T = 1 to
    # the numpy recursion of Algorithm 1 on EDM's sigmas written out independently
    for s, steps in ((0.2, 18), (0.5, 10)):
        out = sample(EDM(T).sampler_model(gaussian_edm_net(0.0, s * s), EDM_GRID), EDM_GRID,
                     x_T=torch.ones(1, 1, dtype=F64), sampler="heun", steps=steps,
                     prediction="x0").item()
        want = (edm_deltas(steps, [s])[0] + 1) * s
        assert out == pytest.approx(want, rel=1e-9)


def test_edm_heun_with_the_exact_denoiser_recovers_the_mixture():
    # EDM Algorithm 1, 18 steps on the Karras rho = 7 sigmas (EDM's CIFAR-10 setting, 35 NFE)
    ok, why = mixture_check(edm_draw(mixture_denoiser_net(MIX)), edm_deltas())
    assert ok, why


@pytest.mark.parametrize("broken", ["c_skip", "c_noise"])
def test_a_broken_preconditioning_fails_the_same_check(broken, monkeypatch):
    if broken == "c_skip":
        monkeypatch.setattr(edm_module, "edm_precond", _broken_precond)
        net = mixture_denoiser_net(MIX)
    else:   # the network's noise input read as ln(s) / 2: the denoiser of another level
        net = mixture_denoiser_net(MIX, noise_scale=2.0)
    ok, why = mixture_check(edm_draw(net), edm_deltas())
    assert not ok and why


@pytest.mark.parametrize("objective", ["flow", "edm"])
def test_the_wrapper_is_the_exact_eps_model_of_the_grid(objective):
    # every sampler sees an objective through the wrapper alone: at int and fractional
    # indices, the wrapped exact velocity / denoiser gives the x0 that the harness's own
    # exact-score model gives on the same grid (tests/test_samplers.py, abar from numpy)
    from test_samplers import abar_of

    grid = FLOW_GRID if objective == "flow" else EDM_GRID
    net = mixture_velocity(MIX) if objective == "flow" else mixture_denoiser_net(MIX)
    obj = FLOW(T) if objective == "flow" else EDM(T, sigma_data=SD)
    model = obj.sampler_model(net, grid)
    x = 1.5 * torch.randn(9, 2, generator=torch.Generator().manual_seed(9), dtype=F64)
    for t in (0, 1, 250, 998, 999, 0.5, 480.25, 998.7):
        tt = torch.full((9,), t, dtype=torch.long if isinstance(t, int) else F64)
        ab = abar_of(grid, tt)[:, None]
        want = (x - (1 - ab).sqrt() * MIX.eps(grid)(x, tt)) / ab.sqrt()
        # round-off: x0 = (x - sqrt(1 - abar) eps) / sqrt(abar) amplifies it by 1 / sqrt(abar)
        torch.testing.assert_close(model(x, tt), want, rtol=0, atol=1e-12 / ab.sqrt().min().item())


def test_dpm_solver_runs_the_flow_grid_and_guidance_guides_the_x0():
    # DPM-Solver++(2M) on the flow grid recovers the mixture at 40 steps (the grid's log-SNR
    # range is 27.6, DDPM's linear one 19: the same sampler on the exact-eps model of this
    # grid needs as many: the test above makes the two the same model); guidance with w on two
    # velocities equals the x0 of the guided velocity
    x = flow_draw(mixture_velocity(MIX), "dpm_solver", 40, spacing="logsnr")
    ok, why = mixture_check(x, [-0.03, -0.03, -0.03])
    assert ok, why
    va, vb = mixture_velocity(MIX), gaussian_velocity(0.1, 0.2)

    def cond(x, t, y):
        return torch.where((y == 0)[:, None], va(x, t), vb(x, t))

    w = 2.5
    guided = FLOW(T).sampler_model(lambda x, t, y=None: vb(x, t) if y is None else cond(x, t, y),
                                   FLOW_GRID)
    from ddpmlab.samplers import classifier_free_guidance

    g = classifier_free_guidance(guided, torch.zeros(6, dtype=torch.long), w)
    xx = torch.randn(6, 2, generator=torch.Generator().manual_seed(8), dtype=F64)
    t = torch.full((6,), 400.5, dtype=F64)
    from ddpmlab.schedules import sigma_at

    s = sigma_at(FLOW_GRID, t)[:, None]
    tf = s / (1 + s)
    xt = xx * torch.sqrt(1 + s * s) * (1 - tf)
    v_guided = vb(xt, 1000 * tf[:, 0]) + w * (va(xt, 1000 * tf[:, 0]) - vb(xt, 1000 * tf[:, 0]))
    torch.testing.assert_close(g(xx, t), xt - tf * v_guided, rtol=1e-10, atol=1e-12)


def test_ddpm_keeps_the_network_and_its_schedule():
    net = lambda x, t: x  # noqa: E731
    assert DDPM().sampler_model(net, None) is net
    from ddpmlab import schedules

    assert torch.equal(DDPM(50, schedule="cosine").schedule().betas, schedules.cosine(50).betas)
    assert DDPM(prediction="v").sampler_prediction == "v"
    assert FLOW().sampler_prediction == "x0" and EDM().sampler_prediction == "x0"


# =========================================================================== config
def test_config_keys_and_presets():
    c = Config()
    assert (c.diffusion.objective, c.diffusion.flow_t, c.diffusion.sigma_data) == \
        ("ddpm", "uniform", 0.5)
    from ddpmlab.config import _CHOICES

    assert _CHOICES["diffusion.objective"] == tuple(objectives.OBJECTIVES) == (
        "ddpm", "edm", "flow", "consistency")
    assert _CHOICES["diffusion.flow_t"] == objectives.FLOW_TIMES
    f, e, m = load_config("mnist-flow"), load_config("mnist-edm"), load_config("mnist")
    assert f.diffusion.objective == "flow" and e.diffusion.objective == "edm"
    from ddpmlab.recipe import SAMPLER_KEYS

    # the same network, data and budget as the main job (the recipe's keys but the sampler's,
    # which the mnist preset's DDPM solvers were measured with: the others keep their own)
    data = dataclasses.replace(m.data, recipe=tuple(k for k in m.data.recipe
                                                   if k not in SAMPLER_KEYS))
    for cfg in (f, e):
        assert cfg.model == m.model and cfg.train == m.train and cfg.data == data


@pytest.mark.parametrize("doc, needle", [
    ({"diffusion": {"objective": "vp"}}, "diffusion.objective='vp' is not one of ddpm, edm, flow"),
    ({"diffusion": {"objective": "flow", "prediction": "v"}}, "diffusion.prediction='v' applies"),
    ({"diffusion": {"objective": "edm", "schedule": "cosine"}}, "diffusion.schedule='cosine'"),
    ({"diffusion": {"objective": "edm", "loss_weighting": "min_snr"}},
     "diffusion.loss_weighting"),
    ({"diffusion": {"objective": "flow", "loss": "hybrid"}, "model": {"learn_sigma": True}},
     "diffusion.loss='hybrid' applies"),
    ({"diffusion": {"flow_t": "logit_normal"}}, "diffusion.flow_t='logit_normal' applies"),
    ({"diffusion": {"objective": "edm", "sigma_data": 0}}, "diffusion.sigma_data=0.0 must be"),
    ({"diffusion": {"sigma_data": 0.7}}, "diffusion.sigma_data=0.7 applies"),
    ({"diffusion": {"p_mean": -0.4}}, "diffusion.p_mean=-0.4 applies to diffusion.objective=edm"),
    ({"diffusion": {"objective": "edm", "p_std": 0}}, "diffusion.p_std=0.0 must be"),
    ({"diffusion": {"objective": "edm", "p_mean": float("nan")}}, "diffusion.p_mean=nan must"),
    # every key an objective reads (its class's `reads`) is refused for the others, by one rule
    ({"diffusion": {"objective": "edm", "min_snr_gamma": 3.0}},
     "diffusion.min_snr_gamma=3.0 applies to diffusion.objective=ddpm only (this run's is 'edm')"),
    ({"diffusion": {"objective": "flow", "vlb_weight": 0.01}},
     "diffusion.vlb_weight=0.01 applies to diffusion.objective=ddpm only"),
    ({"diffusion": {"objective": "flow", "p_std": 2.0}},
     "diffusion.p_std=2.0 applies to diffusion.objective=edm only (this run's is 'flow'): set it to "
     "1.2, or start from the mnist-flow preset"),
])
def test_bad_objective_configs_are_one_line(doc, needle):
    with pytest.raises(ConfigError) as e:
        Config.from_dict(doc, source="c.yaml")
    msg = str(e.value)
    assert needle in msg and "c.yaml" in msg and "\n" not in msg, msg


# =========================================================================== the registry
def test_the_registry_is_the_configs_choices_and_each_objective_declares_its_keys():
    from ddpmlab.config import _CHOICES, DiffusionConfig

    assert _CHOICES["diffusion.objective"] == tuple(objectives.OBJECTIVES)
    keys = {f.name for f in dataclasses.fields(DiffusionConfig)} - {"objective", "timesteps"}
    default = DiffusionConfig()
    for name, cls in objectives.OBJECTIVES.items():
        assert cls.name == name and issubclass(cls, objectives.Objective), name
        assert cls.reads and set(cls.reads) <= keys, name
        # each key it reads is a keyword of its constructor: build() hands the settings over
        ns = types.SimpleNamespace(objective=name, timesteps=70,
                                   **{k: getattr(default, k) for k in cls.reads})
        obj = objectives.build(ns)
        assert type(obj) is cls and obj.timesteps == 70 and obj.schedule().T == 70, name
    assert [c.level_name for c in objectives.OBJECTIVES.values()] == ["t", "sigma", "flow_t", "n"]
    e = objectives.build(types.SimpleNamespace(objective="edm", timesteps=9, sigma_data=0.7,
                                               p_mean=0.1, p_std=2.0))
    assert (e.sigma_data, e.p_mean, e.p_std, e.timesteps) == (0.7, 0.1, 2.0, 9)
    cfg = Config().override({"diffusion.loss": "hybrid", "diffusion.prediction": "v",
                             "model.learn_sigma": "true"})
    d = objectives.build(cfg.diffusion, cfg.model.learn_sigma)
    assert (d.loss, d.prediction, d.learn_sigma, d.sampler_prediction) == ("hybrid", "v", True, "v")
    with pytest.raises(ValueError, match="no learned variance"):
        objectives.build(types.SimpleNamespace(objective="flow", timesteps=9, flow_t="uniform"),
                         learn_sigma=True)
    with pytest.raises(ValueError, match="unknown objective 'vp'"):
        objectives.build(types.SimpleNamespace(objective="vp", timesteps=9))
    with pytest.raises(ValueError, match="integer >= 1"):
        EDM(0)


class _Dummy(objectives.Objective):
    """A made-up objective that reads EDM's ``sigma_data`` and nothing else."""

    name, reads, level_name = "dummy", ("sigma_data",), "sigma"
    sampler_prediction = "x0"

    def __init__(self, timesteps: int = 1000, sigma_data: float = 0.5) -> None:
        super().__init__(timesteps)
        self.sigma_data = sigma_data

    def schedule(self):
        return EDM(self.timesteps).schedule()

    def draw_levels(self, generator, batch, device=None, t_probs=None, dtype=torch.float32):
        return torch.ones(batch, dtype=dtype)

    def losses(self, net, schedule, x0, level, eps, y=None):
        return (net(x0, level) - x0).pow(2).flatten(1).mean(1)

    def sampler_model(self, net, schedule):
        return net


def test_a_new_objective_needs_no_config_rule(monkeypatch):
    # registering a class is all: config validation reads every objective's `reads`
    from ddpmlab import config as config_module

    monkeypatch.setitem(objectives.OBJECTIVES, "dummy", _Dummy)
    monkeypatch.setitem(config_module._CHOICES, "diffusion.objective", tuple(objectives.OBJECTIVES))
    cfg = Config.from_dict({"diffusion": {"objective": "dummy", "sigma_data": 0.7}})
    assert objectives.build(cfg.diffusion).sigma_data == 0.7        # its own key: accepted
    for doc, needle in [
        ({"objective": "dummy", "flow_t": "logit_normal"},
         "diffusion.flow_t='logit_normal' applies to diffusion.objective=flow only (this run's is "
         "'dummy'): set it to 'uniform'"),
        ({"objective": "dummy", "p_mean": 0.3},
         "diffusion.p_mean=0.3 applies to diffusion.objective=edm only (this run's is 'dummy')"),
        ({"objective": "dummy", "prediction": "v"},
         "diffusion.prediction='v' applies to diffusion.objective=ddpm only"),
        # a key two objectives read names both to a third
        ({"sigma_data": 0.7}, "diffusion.sigma_data=0.7 applies to diffusion.objective=edm or "
         "consistency or dummy only (this run's is 'ddpm'): set it to 0.5"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(needle)):
            Config.from_dict({"diffusion": doc})
    # model.learn_sigma: read by the objectives with a learned variance (ddpm), refused otherwise
    # (through the config a ddpm loss key is refused first: call the rule itself)
    def bad(key, value, why):
        return ConfigError(f"{key}={value!r} {why}")

    with pytest.raises(ConfigError, match=re.escape(
            "model.learn_sigma=True applies to diffusion.objective=ddpm only (this run's is "
            "'dummy')")):
        config_module._check_objective_keys(cfg.diffusion, True, bad)
    config_module._check_objective_keys(Config().diffusion, True, bad)   # ddpm reads it


def test_draw_order_is_levels_then_noise_then_the_masks():
    # the trainer's random stream, pinned to the old code path: the objective's levels
    # (ddpm: torch.randint, or multinomial from t_probs), then randn for eps, then rand((2, B))
    # for the label drop and the flip, all on one generator
    from ddpmlab.train.step import draw

    B, shape, cpu = 6, (1, 4, 4), torch.device("cpu")
    probs = torch.softmax(torch.randn(50, generator=torch.Generator().manual_seed(1)), 0)
    cases = [
        (DDPM(50), None, lambda g: torch.randint(0, 50, (B,), generator=g)),
        (DDPM(50), probs, lambda g: torch.multinomial(probs, B, replacement=True, generator=g)),
        (EDM(50, p_mean=0.2, p_std=1.1), None,
         lambda g: torch.exp(0.2 + 1.1 * torch.randn(B, generator=g))),
        (FLOW(50), None, lambda g: torch.rand(B, generator=g)),
        (FLOW(50, flow_t="logit_normal"), None,
         lambda g: torch.sigmoid(torch.randn(B, generator=g))),
    ]
    for obj, t_probs, first in cases:
        r = draw(torch.Generator().manual_seed(11), B, shape, obj, cpu, 0.3, t_probs=t_probs)
        g = torch.Generator().manual_seed(11)
        level = first(g)
        eps = torch.randn((B, *shape), generator=g)
        u = torch.rand((2, B), generator=g)
        assert torch.equal(r.level, level) and torch.equal(r.eps, eps), obj
        assert torch.equal(r.drop, u[0] < 0.3) and torch.equal(r.flip, u[1] < 0.5), obj
        assert torch.equal(r.slice(slice(1, 3)).level, level[1:3])
        assert (r.level.dtype == torch.int64) == (obj.level_name == "t")
    # a broken twin: noise drawn before the levels gives other levels
    g = torch.Generator().manual_seed(11)
    torch.randn((B, *shape), generator=g)
    assert not torch.equal(torch.randint(0, 50, (B,), generator=g),
                           draw(torch.Generator().manual_seed(11), B, shape, DDPM(50), cpu).level)
    with pytest.raises(ValueError, match="t_probs"):
        draw(torch.Generator(), B, shape, EDM(50), cpu, t_probs=probs)


# =========================================================================== end to end
def _same(a, b):
    from ddpmlab.io import load_tensors

    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors",
                 "rng.safetensors"):
        ta, tb = load_tensors(a / name), load_tensors(b / name)
        assert ta.keys() == tb.keys(), name
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}:{k} differs"


@pytest.mark.e2e  # over 2 s: trains, samples, scores
@pytest.mark.parametrize("objective, extra, sampler", [
    ("flow", {"diffusion.flow_t": "logit_normal"}, "flow_heun"),
    ("edm", {"diffusion.sigma_data": "0.6"}, "heun"),
])
def test_train_resume_sample_eval_figures(tmp_path, tiny_cfg, objective, extra, sampler):
    from ddpmlab.cli import format_report
    from ddpmlab.runs import ScoreOptions, load_run, run_figures, sample_images, score_run
    from ddpmlab.train import Trainer
    from ddpmlab.train.checkpoint import latest_checkpoint

    cfg = tiny_cfg.override({"diffusion.objective": objective, "data.conditional": "true",
                             "sample.sampler": sampler, "sample.spacing": "auto",
                             "sample.guidance": "2.0", **extra})
    res = Trainer(cfg, tmp_path / "a", progress=False).train()
    assert math.isfinite(res.loss) and res.step == 6
    Trainer(cfg.override({"train.max_steps": "4"}), tmp_path / "b", progress=False).train()
    Trainer(cfg, tmp_path / "b", resume=True, progress=False).train()
    _same(latest_checkpoint(tmp_path / "a"), latest_checkpoint(tmp_path / "b"))
    model, rcfg, _ = load_run(tmp_path / "a", use_ema=False)
    assert rcfg.diffusion.objective == objective
    for name in (sampler, "euler", "dpm_solver", "ddpm"):
        x = sample_images(model, rcfg, n=3, sampler=name, steps=4,
                          y=torch.tensor([0, 1, 2]))
        assert x.shape == (3, 1, 8, 8) and torch.isfinite(x).all(), name
    out = score_run(tmp_path / "a", ScoreOptions(n=20, steps=3, bpd_images=8), progress=False)
    assert math.isfinite(out["fid"]) and "bits_per_dim" not in out
    note = (f"ELBO bits/dim: not defined for objective {objective} (use the ODE likelihood)")
    assert out["bits_per_dim_note"] == note and note in format_report(out)
    written = run_figures(tmp_path / "a", chain_steps=4)
    assert written and all(p.is_file() for p in written)
    from ddpmlab.interop import InteropError, export_diffusers

    with pytest.raises(InteropError, match=f"diffusion.objective={objective}"):
        export_diffusers(tmp_path / "a", tmp_path / "hf")


def test_objective_training_draws_levels_from_the_run_generator(tiny_cfg):
    # one training step's loss is the objective's loss at the drawn levels, by hand
    from ddpmlab.train.step import draw, training_losses

    g = torch.Generator().manual_seed(0)
    rnd = draw(g, 4, (1, 8, 8), FLOW(50, flow_t="uniform"), torch.device("cpu"))
    assert rnd.level.is_floating_point() and ((rnd.level >= 0) & (rnd.level < 1)).all()
    g2 = torch.Generator().manual_seed(0)
    assert torch.equal(rnd.level, torch.rand(4, generator=g2))      # t is the first draw
    x0 = torch.rand(4, 1, 8, 8, generator=g) * 2 - 1

    def net(x, t, y=None):
        return 0.5 * x

    per = training_losses(net, FLOW(50), None, x0, rnd.level, rnd.eps)
    tt = rnd.level[:, None, None, None]
    want = ((0.5 * ((1 - tt) * x0 + tt * rnd.eps) - (rnd.eps - x0)) ** 2).mean((1, 2, 3))
    torch.testing.assert_close(per, want)
    r = draw(torch.Generator().manual_seed(1), 4, (1, 8, 8), EDM(50), torch.device("cpu"))
    per = training_losses(net, EDM(50, sigma_data=0.5), None, x0, r.level, r.eps)
    s = r.level[:, None, None, None]
    x = x0 + s * r.eps
    D = 0.25 / (s * s + 0.25) * x + s * 0.5 / (s * s + 0.25).sqrt() * 0.5 * x / (s * s + 0.25).sqrt()
    want = (s * s + 0.25) / (s * 0.5) ** 2 * (D - x0) ** 2
    torch.testing.assert_close(per, want.mean((1, 2, 3)))
    # ddpm's draw is unchanged: int64 indices, the first draw a randint
    d = draw(torch.Generator().manual_seed(0), 4, (1, 8, 8), DDPM(50), torch.device("cpu"))
    assert torch.equal(d.level,
                       torch.randint(0, 50, (4,), generator=torch.Generator().manual_seed(0)))


@pytest.mark.e2e  # over 2 s: trains, samples, scores
def test_the_cli_trains_samples_evaluates_and_draws_an_edm_run(tmp_path, capsys):
    from ddpmlab.cli import main
    from test_cli import TINY

    run = tmp_path / "edm"
    assert main(["train", "--dataset", "digits", "--max-steps", "2", "--out", str(run),
                 "--no-progress", "--device", "cpu", *TINY, "diffusion.objective=edm",
                 "diffusion.prediction=eps", "sample.sampler=heun"]) == 0
    npz = tmp_path / "s.npz"
    assert main(["sample", str(run), "--n", "6", "--steps", "3", "--npz", str(npz),
                 "--out", str(tmp_path / "g.png"), "--no-progress"]) == 0
    assert np.load(npz)["arr_0"].shape == (6, 8, 8, 1)
    capsys.readouterr()
    assert main(["eval", str(run), "--n", "20", "--steps", "2", "--bpd-images", "4",
                 "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "FID" in text
    assert "ELBO bits/dim: not defined for objective edm (use the ODE likelihood)" in text
    assert main(["figures", str(run), "--chain-steps", "3"]) == 0
    # a ddpm-only key on an edm run: one line, exit code 2
    assert main(["train", "--dataset", "digits", "--max-steps", "1", "--out",
                 str(tmp_path / "bad"), "--no-progress", *TINY, "diffusion.objective=flow",
                 "diffusion.prediction=v"]) == 2
    err = capsys.readouterr().err.strip()
    assert "diffusion.prediction='v' applies to diffusion.objective=ddpm only" in err
    assert "set it to 'eps', or start from the mnist-flow preset" in err
    assert len(err.splitlines()) == 1


@pytest.mark.e2e
def test_flow_under_torchrun_equals_one_process(tmp_path):
    # the DDP path: 2 gloo processes with the same global batch end with one process's weights
    from ddpmlab.cli import main
    from test_distributed import TINY as DTINY
    from test_distributed import _close, _weights, torchrun

    common = ["train", "--dataset", "digits", "--device", "cpu", "--no-progress", *DTINY,
              "diffusion.objective=flow", "diffusion.prediction=eps",
              "diffusion.flow_t=logit_normal", "sample.sampler=euler", "--max-steps", "3"]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    torchrun([*common, "--out", str(tmp_path / "two")])
    _close(_weights(tmp_path / "one"), _weights(tmp_path / "two"))
