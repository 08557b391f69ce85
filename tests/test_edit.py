"""Tests of ddpmlab.edit on data whose score is known exactly (float64), each with a broken twin.

* img2img: strength 1 is ``sample()`` from the same noise, strength 0 the guide, strength s
  starts at t = round(s T) - 1; from a noised point the ancestral sampler draws the closed-form
  posterior p(x0 | x_t) of a 2-D Gaussian mixture;
* inpainting: the jump schedule by hand, the exact network-evaluation count, and on a 2-D
  mixture the distance to the exact conditional p(x2 | x1): plain replacement (r = 1) is far
  off, RePaint's resampling brings it down as r grows;
* inversion: exact for a point mass (every state retraced), converging at the solver's order
  for a Gaussian; clipping breaks it;
* DDIB between two diagonal Gaussians is the affine optimal-transport map;
* slerp, x_t interpolation and "decided when".
"""

from __future__ import annotations

import importlib
import math

import pytest
import torch

from ddpmlab import schedules
from ddpmlab.edit import (
    EDITS,
    decided_when,
    denoise_from,
    img2img,
    inpaint,
    inpaint_nfe,
    interpolate_latent,
    interpolate_xt,
    invert,
    jump_schedule,
    regenerate,
    slerp,
    translate,
)
from ddpmlab.samplers import sample
from test_samplers import MIX, Mixture, abar_of, gaussian_eps

F64 = torch.float64
T = 1000
SCHED = schedules.linear(T)
driver = importlib.import_module("ddpmlab.edit.driver")
sdedit = importlib.import_module("ddpmlab.edit.sdedit")
inversion = importlib.import_module("ddpmlab.edit.inversion")
ddib = importlib.import_module("ddpmlab.edit.ddib")
interpolation = importlib.import_module("ddpmlab.edit.interpolation")
decided = importlib.import_module("ddpmlab.edit.decided")


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def diag_mixture_eps(w, mu, sd):
    """Exact eps of a mixture of diagonal Gaussians (w [K], mu [K, D], sd [K, D]) on x [N, D]:
    x_t | k ~ N(a mu_k, a^2 sd_k^2 + 1 - a^2) per coordinate; eps = -sqrt(1 - abar) score."""
    w, mu, sd = (torch.as_tensor(v, dtype=F64) for v in (w, mu, sd))

    def model(x, t):
        a2 = abar_of(SCHED, t)[:, None, None]                      # [N, 1, 1]
        var = a2 * sd[None] ** 2 + 1 - a2                           # [N, K, D]
        d = x[:, None, :] - a2.sqrt() * mu[None]                    # [N, K, D]
        logp = w.log()[None] - (d * d / (2 * var) + 0.5 * var.log()).sum(-1)
        r = torch.softmax(logp, dim=1)[..., None]                   # [N, K, 1]
        score = -(r * d / var).sum(1)
        return -(1 - a2[:, 0]).sqrt() * score

    return model


def test_registry_names_every_operation():
    assert set(EDITS) == {"inpaint", "img2img", "invert", "regenerate", "interpolate",
                          "interpolate_xt", "translate", "decided_when"}
    assert all(callable(f) for f in EDITS.values())


# =========================================================================== img2img
@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm_solver", "heun"])
def test_strength_one_is_sample_from_the_same_noise(sampler):
    model, guide = MIX.eps(SCHED), MIX.draw(16, gen(1))
    x = img2img(model, SCHED, guide, 1.0, sampler=sampler, steps=12, generator=gen(3))
    ref = sample(model, SCHED, shape=(16, 2), sampler=sampler, steps=12, generator=gen(3),
                 dtype=F64)
    assert torch.equal(x, ref)
    # the broken twin: diffusers' strength 1 (diffusers#7651) starts from q(x_{T-1} | guide),
    # which keeps sqrt(abar_{T-1}) = 0.006 of the guide: the same check fails
    leaky = driver.noised(SCHED, guide, T - 1, torch.randn(16, 2, generator=gen(3), dtype=F64))
    twin = sample(model, SCHED, x_T=leaky, sampler=sampler, steps=12, generator=gen(3))
    assert not torch.allclose(twin, ref, atol=1e-4)


def test_strength_zero_returns_the_guide_and_strength_maps_to_t():
    model, guide = MIX.eps(SCHED), MIX.draw(8, gen(1))
    assert torch.equal(img2img(model, SCHED, guide, 0.0, generator=gen(0)), guide)
    # the broken twin: "strength 0" as one step from index 0 changes the image
    twin = denoise_from(model, SCHED, driver.noised(SCHED, guide, 0, torch.randn_like(guide)), 0)
    assert not torch.equal(twin, guide)
    seen, noise = [], torch.randn(8, 2, generator=gen(2), dtype=F64)
    img2img(model, SCHED, guide, 0.3, noise=noise, generator=gen(0), callback=seen.append)
    assert [s["t"] for s in seen] == list(range(299, -1, -1))
    torch.testing.assert_close(seen[0]["x"], driver.noised(SCHED, guide, 299, noise))
    with pytest.raises(ValueError, match="strength"):
        img2img(model, SCHED, guide, 1.5)


def test_masked_img2img_keeps_the_rest_exactly():
    model, guide = MIX.eps(SCHED), MIX.draw(8, gen(1))
    mask = torch.tensor([[1.0, 0.0]], dtype=F64)
    x = img2img(model, SCHED, guide, 0.6, mask=mask, steps=20, generator=gen(0))
    assert torch.equal(x[:, 1], guide[:, 1]) and not torch.equal(x[:, 0], guide[:, 0])
    with pytest.raises(ValueError, match="mask"):
        img2img(model, SCHED, guide, 0.6, mask=torch.ones(3), generator=gen(0))


def mixture_posterior(mix: Mixture, x_t: torch.Tensor, t: int):
    """p(x0 | x_t) of an isotropic 2-D mixture, closed form: component weights
    pi_k ~ w_k N(x_t; a mu_k, v_k I), v_k = a^2 s_k^2 + 1 - a^2, and given k the Gaussian with
    mean mu_k + a s_k^2 / v_k (x_t - a mu_k) and variance s_k^2 (1 - a^2) / v_k."""
    a2 = SCHED.alpha_bar[t]
    a = a2.sqrt()
    v = a2 * mix.s ** 2 + 1 - a2
    d2 = ((x_t[None, :] - a * mix.mu) ** 2).sum(1)
    pi = torch.softmax(mix.w.log() - d2 / (2 * v) - v.log(), 0)
    mean = mix.mu + (a * mix.s ** 2 / v)[:, None] * (x_t[None, :] - a * mix.mu)
    sd = (mix.s ** 2 * (1 - a2) / v).sqrt()
    return pi, mean, sd


def posterior_check(x: torch.Tensor, pi, mean, sd) -> list[str]:
    """Failures of x against the posterior (nearest-mean assignment; 4 standard errors plus a
    discretization allowance of 0.01 in weight, 0.02 in location, 0.03 in relative spread)."""
    n, k = x.shape[0], torch.cdist(x, mean).argmin(1)
    fails = []
    for j in range(len(pi)):
        pts, p = x[k == j], pi[j].item()
        if abs(pts.shape[0] / n - p) > 4 * math.sqrt(p * (1 - p) / n) + 0.01:
            fails.append(f"component {j}: weight {pts.shape[0] / n:.3f} vs {p:.3f}")
        if pts.shape[0] < 30:
            continue
        s, nj = sd[j].item(), pts.shape[0]
        if (pts.mean(0) - mean[j]).abs().max() > 4 * s / math.sqrt(nj) + 0.02:
            fails.append(f"component {j}: mean {pts.mean(0).tolist()} vs {mean[j].tolist()}")
        ratio = ((pts - mean[j]) ** 2).sum(1).mean().div(2).sqrt().item() / s
        if abs(ratio - 1) > 4 / (2 * math.sqrt(nj)) + 0.03:
            fails.append(f"component {j}: spread ratio {ratio:.3f}")
    return fails


X_T0, T0, N_POST = torch.tensor([-0.45, -0.2], dtype=F64), 299, 1500


def _posterior_draw():
    # x_{t0} fixed: the guide x_t0 / sqrt(abar) with zero noise; strength 0.3 starts at t = 299
    guide = (X_T0 / SCHED.sqrt_alpha_bar[T0]).expand(N_POST, 2).clone()
    return img2img(MIX.eps(SCHED), SCHED, guide, 0.3, noise=torch.zeros(N_POST, 2, dtype=F64),
                   generator=gen(0))


def test_img2img_from_a_noised_point_draws_the_exact_posterior():
    pi, mean, sd = mixture_posterior(MIX, X_T0, T0)
    assert sorted(pi.tolist())[-2] > 0.15      # a point where components share the posterior
    assert posterior_check(_posterior_draw(), pi, mean, sd) == []


def test_a_walk_from_the_top_fails_the_posterior_check(monkeypatch):
    # the broken twin: x_t0 handed to the sampler as if it were x_{T-1} (all T steps)
    real_walk = sdedit.walk
    monkeypatch.setattr(sdedit, "walk", lambda drv, x, path, **kw:
                        real_walk(drv, x, [*range(T - 1, -1, -1), -1], **kw))
    assert posterior_check(_posterior_draw(), *mixture_posterior(MIX, X_T0, T0))


# =========================================================================== inpainting
def test_jump_schedule_by_hand():
    # RePaint's get_schedule_jump(t_T=10, jump_length=3, jump_n_sample=2): jump points 0, 3, 6
    assert jump_schedule(10, 3, 2) == [9, 8, 7, 6, 7, 8, 9, 8, 7, 6, 5, 4, 3, 4, 5, 6, 5, 4, 3,
                                       2, 1, 0, 1, 2, 3, 2, 1, 0, -1]
    assert jump_schedule(4, 1, 1) == [3, 2, 1, 0, -1]
    assert inpaint_nfe(250, 10, 10) == 250 + 9 * 10 * 24


@pytest.mark.parametrize("sampler,steps,j,r", [("ddpm", 10, 3, 2), ("ddpm", 7, 1, 3),
                                               ("dpm_solver", 9, 2, 3), ("heun", 6, 2, 2)])
def test_inpaint_nfe_is_the_counted_calls(sampler, steps, j, r):
    calls = [0]
    base = MIX.eps(SCHED)

    def counted(x, t):
        calls[0] += 1
        return base(x, t)

    known = MIX.draw(4, gen(0))
    mask = torch.tensor([[0.0, 1.0]], dtype=F64)
    x = inpaint(counted, SCHED, known, mask, sampler=sampler, steps=steps, jump_length=j,
                jump_n_sample=r, generator=gen(1))
    assert calls[0] == inpaint_nfe(steps, j, r, sampler)
    assert torch.isfinite(x).all() and torch.equal(x[:, 0], known[:, 0])
    # the broken twin: a count that forgets the jumps (steps x the sampler's cost) is wrong
    assert calls[0] != steps * (2 if sampler == "heun" else 1)


# A mixture with two components along the diagonal; x1 = 0.2 is known, x2 is generated.
INP = Mixture(w=torch.tensor([0.5, 0.5], dtype=F64), mu=torch.tensor([[-0.5, -0.5], [0.5, 0.5]],
                                                                      dtype=F64),
              s=torch.tensor([0.3, 0.3], dtype=F64))
X1, N_INP, STEPS_INP = 0.2, 600, 50


def conditional_w1(x2: torch.Tensor) -> float:
    """Wasserstein-1 distance between the sample x2 and the exact conditional p(x2 | x1):
    a 1-D mixture with weights ~ w_k N(x1; mu_k1, s_k^2) and components N(mu_k2, s_k^2),
    the integral of |F_n - F| on a fine grid (F by erf)."""
    pi = torch.softmax(INP.w.log() - (X1 - INP.mu[:, 0]) ** 2 / (2 * INP.s ** 2), 0)
    grid = torch.linspace(-3.0, 3.0, 6001, dtype=F64)
    cdf = sum(p * 0.5 * (1 + torch.erf((grid - m) / (s * math.sqrt(2))))
              for p, m, s in zip(pi, INP.mu[:, 1], INP.s, strict=True))
    emp = (x2[None, :] <= grid[:, None]).to(F64).mean(1)
    return float((emp - cdf).abs().sum() * (grid[1] - grid[0]))


def _inpaint_w1(r: int, seed: int = 0) -> float:
    known = torch.tensor([[X1, 0.0]], dtype=F64).expand(N_INP, 2).clone()
    x = inpaint(INP.eps(SCHED), SCHED, known, torch.tensor([[0.0, 1.0]], dtype=F64),
                steps=STEPS_INP, jump_length=1, jump_n_sample=r, generator=gen(seed))
    assert torch.equal(x[:, 0], known[:, 0])
    return conditional_w1(x[:, 1])


W1_FLOOR = 0.06   # measured: exact draws of N_INP points give W1 ~ 0.02; RePaint r=16 ~ 0.03


def test_exact_draws_pass_the_conditional_check():
    pi = torch.softmax(INP.w.log() - (X1 - INP.mu[:, 0]) ** 2 / (2 * INP.s ** 2), 0)
    k = torch.multinomial(pi, N_INP, replacement=True, generator=gen(5))
    x2 = INP.mu[k, 1] + INP.s[k] * torch.randn(N_INP, generator=gen(6), dtype=F64)
    assert conditional_w1(x2) < W1_FLOOR / 2


def test_repaint_approaches_the_exact_conditional_as_r_grows():
    # measured (50 logsnr steps, j = 1, 600 points): r = 1 (plain replacement) 0.24-0.29, r = 4
    # 0.12-0.14, r = 16 0.03: replacement leaves x2 near the prior's even split (its mean
    # 0.12-0.16 against the exact 0.40), resampling harmonizes it with the known x1
    w1 = {r: _inpaint_w1(r) for r in (1, 4, 16)}
    assert w1[1] > 0.15, w1
    assert w1[1] > 1.5 * w1[4] > 1.5 * w1[16], w1
    assert w1[16] < W1_FLOOR, w1


def _one_step_renoise(drv, x, level, up):
    """A jump that re-noises with the full chain's one-step beta of index ``up`` instead of
    q(x_up | x_level) of the (skipped) chain: far too little noise for 50 steps of 1000."""
    beta = float(drv.ctx.schedule.betas[int(up)])
    return math.sqrt(1 - beta) * x + math.sqrt(beta) * drv.noise(x)


def _known_too_noisy(drv, x_known, level):
    """The known part noised 100 indices above the step's level (a wrong-level bug; pasting
    it less noisy, even clean, happens to pass on these data: the exact score forgives it)."""
    return driver.noised(drv.ctx.schedule, x_known, min(T - 1, level + 100), drv.noise(x_known))


@pytest.mark.parametrize("name,fn", [("renoise", _one_step_renoise),
                                     ("known_at", _known_too_noisy)])
def test_broken_repaint_twins_fail_the_same_check(name, fn, monkeypatch):
    monkeypatch.setattr(driver, name, fn)
    assert _inpaint_w1(16) > W1_FLOOR


# =========================================================================== inversion
C = torch.tensor([0.3, -0.6], dtype=F64)


def point_mass_eps(c: torch.Tensor):
    """Data = the point c: x_t = a c + s eps exactly, so eps_hat(x_t) = (x_t - a c) / s."""

    def model(x, t):
        a2 = abar_of(SCHED, t)[:, None]
        return (x - a2.sqrt() * c) / (1 - a2).sqrt()

    return model


def _round_trip_states(sampler: str, steps: int = 12):
    model, x0 = point_mass_eps(C), C.expand(5, 2).clone()
    up, down = {}, {}
    x_T = invert(model, SCHED, x0, sampler=sampler, steps=steps, spacing="trailing",
                 callback=lambda i: up.__setitem__(i["t_next"], i["x_next"]))
    rec = regenerate(model, SCHED, x_T, sampler=sampler, steps=steps, spacing="trailing",
                     callback=lambda i: down.__setitem__(i["t"], i["x"]))
    return x0, rec, up, down


@pytest.mark.parametrize("sampler", ["ddim", "dpm_solver"])
def test_inversion_of_a_point_mass_is_retraced_exactly(sampler):
    x0, rec, up, down = _round_trip_states(sampler)
    torch.testing.assert_close(rec, x0, rtol=0, atol=1e-12)
    assert sorted(up) == sorted(down) and len(up) == 12
    for t in up:                      # every state of the inversion is revisited
        torch.testing.assert_close(down[t], up[t], rtol=0, atol=1e-12)


def _eps_at_the_destination(ctx, x, t, t_next, state):
    """prompt-to-prompt's convention: eps evaluated at the level the step goes to."""
    pred = ctx.predict(x, t_next)
    ab = driver.abar(ctx.schedule, t_next)
    return math.sqrt(ab) * pred.x0 + math.sqrt(1 - ab) * pred.eps, pred.x0


def test_the_destination_level_convention_is_not_retraced(monkeypatch):
    monkeypatch.setitem(inversion.INVERTERS, "ddim", _eps_at_the_destination)
    x0, rec, up, down = _round_trip_states("ddim")
    torch.testing.assert_close(rec, x0, rtol=0, atol=1e-12)   # a point mass hides it here...
    assert max((down[t] - up[t]).abs().max().item() for t in up) > 1e-3   # ...not here


GM, GS = 0.3, 0.5


def _gaussian_errors(sampler: str, steps_list=(10, 20, 40)):
    """Max reconstruction error and latent error against the exact ODE latent (the
    standardised coordinate (x - a m) / sqrt(a^2 s^2 + 1 - a^2) is conserved) per steps."""
    model = gaussian_eps(SCHED, GM, GS)
    x0 = GM + GS * torch.randn(32, 2, generator=gen(0), dtype=F64)   # max |x0| 1.7 > 1
    a2 = SCHED.alpha_bar[-1]
    exact = a2.sqrt() * GM + (a2 * GS ** 2 + 1 - a2).sqrt() * (x0 - GM) / GS
    out = []
    for n in steps_list:
        x_T = invert(model, SCHED, x0, sampler=sampler, steps=n)
        rec = regenerate(model, SCHED, x_T, sampler=sampler, steps=n)
        out.append(((rec - x0).abs().max().item(), (x_T - exact).abs().max().item()))
    return out


def test_inversion_of_a_gaussian_converges_at_the_solvers_order():
    # measured: DDIM 0.65, 0.35, 0.18 (first order, latent the same); DPM-Solver++(2M)
    # 0.048, 1.1e-3, 6.5e-5 with latent errors 0.19, 0.047, 0.011 (second order)
    ddim = _gaussian_errors("ddim")
    assert all(0.4 < b[0] / a[0] < 0.65 and 0.4 < b[1] / a[1] < 0.65
               for a, b in zip(ddim, ddim[1:], strict=False)), ddim
    dpm = _gaussian_errors("dpm_solver")
    assert all(b[1] / a[1] < 0.3 for a, b in zip(dpm, dpm[1:], strict=False)), dpm
    assert dpm[-1][0] < 1e-3 and dpm[0][0] < 0.1 * ddim[0][0], dpm


def test_a_clipping_inversion_does_not_converge(monkeypatch):
    real_build = inversion.build
    monkeypatch.setattr(inversion, "build", lambda *a, **k: real_build(*a, **{**k, "clip_x0": True}))
    errs = _gaussian_errors("ddim")
    assert errs[-1][0] > 1.0, errs
    with pytest.raises(ValueError, match="clip"):
        invert(gaussian_eps(SCHED, GM, GS), SCHED, torch.zeros(2, 2, dtype=F64), clip_x0=True)
    with pytest.raises(ValueError, match="deterministic"):
        invert(gaussian_eps(SCHED, GM, GS), SCHED, torch.zeros(2, 2, dtype=F64), sampler="ddpm")


# =========================================================================== DDIB
MU_A, SD_A = torch.tensor([-0.4, 0.2], dtype=F64), torch.tensor([0.3, 0.5], dtype=F64)
MU_B, SD_B = torch.tensor([0.5, -0.3], dtype=F64), torch.tensor([0.4, 0.2], dtype=F64)


def two_class_model():
    """Class 0 ~ N(MU_A, diag SD_A^2), class 1 ~ N(MU_B, diag SD_B^2), exact eps; without a
    label the unconditional model (their even mixture)."""
    per_class = [diag_mixture_eps([1.0], MU_A[None], SD_A[None]),
                 diag_mixture_eps([1.0], MU_B[None], SD_B[None])]
    uncond = diag_mixture_eps([0.5, 0.5], torch.stack([MU_A, MU_B]), torch.stack([SD_A, SD_B]))

    def model(x, t, y=None):
        if y is None:
            return uncond(x, t)
        return torch.where((y == 0)[:, None], per_class[0](x, t), per_class[1](x, t))

    return model


def _ddib_errors(steps_list=(10, 20, 40), sampler="dpm_solver"):
    x0 = MU_A + SD_A * torch.randn(32, 2, generator=gen(0), dtype=F64)
    ot = MU_B + SD_B / SD_A * (x0 - MU_A)
    # the exact ODE composition: x_T = a mu_a + v_a z, x0' = mu_b + sd_b (x_T - a mu_b) / v_b
    a2 = SCHED.alpha_bar[-1]
    v_a, v_b = (a2 * SD_A ** 2 + 1 - a2).sqrt(), (a2 * SD_B ** 2 + 1 - a2).sqrt()
    x_T = a2.sqrt() * MU_A + v_a * (x0 - MU_A) / SD_A
    ode = MU_B + SD_B * (x_T - a2.sqrt() * MU_B) / v_b
    errs = [(translate(two_class_model(), SCHED, x0, 0, 1, sampler=sampler, steps=n) - ode)
            .abs().max().item() for n in steps_list]
    return errs, (ode - ot).abs().max().item(), x0, ot


def test_ddib_between_two_gaussians_is_the_optimal_transport_map():
    # measured against the exact ODE map: DDIM 0.52, 0.28, 0.15 (first order); DPM-Solver++(2M)
    # 0.040, 7.1e-4, 6.5e-4: second order down to a floor of 6e-4 set by the one interval
    # between x0 and index 0 that every spacing takes in one first-order step each way
    ddim, ode_vs_ot, _, _ = _ddib_errors(sampler="ddim")
    assert all(0.4 < b / a < 0.6 for a, b in zip(ddim, ddim[1:], strict=False)), ddim
    dpm, ode_vs_ot, x0, ot = _ddib_errors(sampler="dpm_solver")
    assert dpm[1] < 0.05 * dpm[0] and dpm[2] < 1e-3, dpm
    # x_T keeps sqrt(abar_{T-1}) = 0.0064 of the data: the exact ODE map is OT up to 2.3e-3
    assert ode_vs_ot < 5e-3
    out = translate(two_class_model(), SCHED, x0, 0, 1, sampler="dpm_solver", steps=40)
    assert (out - ot).abs().max().item() < ode_vs_ot + 1e-3


def test_ddib_with_an_unconditional_inversion_is_not_ot(monkeypatch):
    # the broken twin: the inversion ignores the source class (the unconditional model)
    real_invert = ddib.invert
    monkeypatch.setattr(ddib, "invert", lambda *a, y=None, **k: real_invert(*a, **k))
    errs, ode_vs_ot, x0, ot = _ddib_errors((40,))
    assert errs[0] > 0.1, errs


def test_inversion_with_guidance_is_not_exact():
    # documented in edit/inversion.py: the guided field is inverted less exactly as w grows
    model = two_class_model()
    x0 = MU_A + SD_A * torch.randn(32, 2, generator=gen(0), dtype=F64)

    def error(w):
        kw = dict(sampler="dpm_solver", steps=20, y=0, guidance=w)
        return (regenerate(model, SCHED, invert(model, SCHED, x0, **kw), **kw) - x0).abs().max().item()

    e1, e3 = error(1.0), error(3.0)
    assert e1 < 2e-3 and e3 > 5 * e1, (e1, e3)


# =========================================================================== interpolation
def test_slerp_endpoints_are_the_inputs_and_the_norm_is_kept():
    a, b = torch.randn(2, 4, 3, 5, 5, generator=gen(0), dtype=F64)
    assert torch.equal(slerp(a, b, 0.0), a) and torch.equal(slerp(a, b, 1.0), b)
    u, v = torch.tensor([[3.0, 0.0]], dtype=F64), torch.tensor([[0.0, 3.0]], dtype=F64)
    torch.testing.assert_close(slerp(u, v, 0.5), torch.tensor([[1.5, 1.5]], dtype=F64) * 2 ** 0.5)
    torch.testing.assert_close(slerp(u, 2 * u, 0.5), 1.5 * u)      # parallel: linear
    # the broken twin: slerp on the unit sphere (normalising) loses the endpoints
    def unit(a, b, al):
        def norm(v):
            return v.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)

        return slerp(a / norm(a), b / norm(b), al)

    assert not torch.equal(unit(a, b, 0.0), a)


def test_interpolation_in_x_t_uses_one_noise_for_both_images(monkeypatch):
    model, x_a, x_b = MIX.eps(SCHED), MIX.draw(3, gen(0)), MIX.draw(3, gen(1))
    noise = torch.randn(3, 2, generator=gen(2), dtype=F64)
    kw = dict(sampler="ddim", steps=20)

    def ends():
        strip = interpolate_xt(model, SCHED, x_a, x_b, 400, [0.0, 0.5, 1.0], noise, **kw)
        own = [denoise_from(model, SCHED, driver.noised(SCHED, x, 400, noise), 400, **kw)
               for x in (x_a, x_b)]
        return strip, own

    strip, (own_a, own_b) = ends()
    assert strip.shape == (3, 3, 2)
    torch.testing.assert_close(strip[0], own_a)
    torch.testing.assert_close(strip[2], own_b)
    # the broken twin: the second image noised with its own fresh draw
    real = interpolation.q_sample
    monkeypatch.setattr(interpolation, "q_sample", lambda s, x, t, n: real(
        s, x, t, n if x is x_a else torch.randn(n.shape, generator=gen(9), dtype=n.dtype)))
    strip, (_, own_b) = ends()
    assert not torch.allclose(strip[2], own_b)


def test_latent_interpolation_ends_reconstruct_the_images():
    model = gaussian_eps(SCHED, GM, GS)
    x_a, x_b = torch.tensor([[0.1, 0.5]], dtype=F64), torch.tensor([[0.6, -0.2]], dtype=F64)
    strip = interpolate_latent(model, SCHED, x_a, x_b, [0.0, 0.5, 1.0], sampler="dpm_solver",
                               steps=40)
    torch.testing.assert_close(strip[0], x_a, rtol=0, atol=1e-3)
    torch.testing.assert_close(strip[2], x_b, rtol=0, atol=1e-3)


# =========================================================================== decided when
N_PER, TS = 300, (20, 200, 999)


def _decided(x0, noise):
    return decided_when(gaussian_eps(SCHED, GM, GS), SCHED, x0, TS, N_PER, gen(0), noise=noise,
                        steps=100)


def _row_fails(rows, x0, noise) -> list[str]:
    """Each row against the Gaussian posterior p(x0 | x_t) given its shared x_t."""
    fails = []
    for t, row in zip(TS, rows, strict=True):
        a2 = SCHED.alpha_bar[t]
        x_t = driver.noised(SCHED, x0, t, noise)
        v = a2 * GS ** 2 + 1 - a2
        mean = GM + a2.sqrt() * GS ** 2 / v * (x_t - a2.sqrt() * GM)
        sd = (GS ** 2 * (1 - a2) / v).sqrt().item()
        if (row.mean(0) - mean[0]).abs().max() > 4 * sd / math.sqrt(N_PER) + 0.01:
            fails.append(f"t={t}: mean {row.mean(0).tolist()} vs {mean[0].tolist()}")
        ratio = row.std(0) / sd
        if ((ratio - 1).abs() > 4 / math.sqrt(2 * N_PER) + 0.05).any():
            fails.append(f"t={t}: spread ratio {ratio.tolist()}")
    return fails


def test_decided_when_rows_are_the_posteriors_of_one_shared_x_t(monkeypatch):
    x0 = torch.tensor([[0.9, -0.1]], dtype=F64)
    noise = torch.randn(1, 2, generator=gen(4), dtype=F64)
    rows = _decided(x0, noise)
    assert rows.shape == (len(TS), N_PER, 2)
    assert _row_fails(rows, x0, noise) == []
    spread = rows.std(1).mean(1)
    assert spread[0] < spread[1] < spread[2], spread      # later t: more left to decide
    # the broken twin: a fresh x_t for every sample of a row
    real = decided.noised
    monkeypatch.setattr(decided, "noised", lambda s, x, t, n: real(
        s, x.expand(N_PER, 2), t, torch.randn(N_PER, 2, generator=gen(7), dtype=F64)))
    assert _row_fails(_decided(x0, noise), x0, noise)


def test_ddib_guides_the_regeneration_only():
    # translate(w) = regenerate(invert(x, source, w=1), target, w): the inversion stays the
    # source class's exact ODE; the broken twin (guided in both directions) differs
    x0 = MU_A + SD_A * torch.randn(16, 2, generator=gen(1), dtype=F64)
    kw = dict(sampler="dpm_solver", steps=20)
    model = two_class_model()
    out = translate(model, SCHED, x0, 0, 1, guidance=3.0, **kw)
    z = ddib.invert(model, SCHED, x0, y=0, guidance=1.0, **kw)
    torch.testing.assert_close(out, ddib.regenerate(model, SCHED, z, y=1, guidance=3.0, **kw))
    both = translate(model, SCHED, x0, 0, 1, guidance=3.0, invert_guidance=3.0, **kw)
    assert (both - out).abs().max().item() > 1e-3


# ============================================================================ class of kept pixels
# Three classes of 4-D diagonal Gaussians; the first two coordinates are kept, the last two
# generated (their means differ by class too, so using them would change the answer).
CL_MU = torch.tensor([[-0.5, 0.3, 0.6, -0.2], [0.4, -0.2, -0.5, 0.5], [0.1, 0.6, 0.0, 0.0]],
                     dtype=F64)
CL_SD = torch.tensor([[0.3, 0.5, 0.2, 0.4], [0.5, 0.3, 0.4, 0.2], [0.4, 0.4, 0.3, 0.3]],
                     dtype=F64)
CL_MASK = torch.tensor([0.0, 0.0, 1.0, 1.0], dtype=F64)


def three_class_model():
    per = [diag_mixture_eps([1.0], CL_MU[k:k + 1], CL_SD[k:k + 1]) for k in range(3)]

    def model(x, t, y):
        if bool((y == y[0]).all()):                                 # (one class per call)
            return per[int(y[0])](x, t)
        outs = torch.stack([p(x, t) for p in per])                 # [3, N, D]
        return outs[y, torch.arange(len(x))]

    return model


def kept_log_likelihood(x: torch.Tensor) -> torch.Tensor:
    """[N, 3]: log N(x_kept; mu_y, sd_y^2) over the kept coordinates, in closed form."""
    keep = CL_MASK == 0
    d = (x[:, None, keep] - CL_MU[None, :, keep]) / CL_SD[None, :, keep]
    return (-0.5 * d ** 2 - CL_SD[None, :, keep].log() - 0.5 * math.log(2 * math.pi)).sum(-1)


def _likelihood_gap(**kw) -> float:
    """The largest error of the scores' class differences against the closed form's
    (-log p(x_kept | y) + log p(x_kept | 0)) on 6 points (2 drawn from each class)."""
    classify = importlib.import_module("ddpmlab.edit.classify")
    x = torch.cat([CL_MU[k] + CL_SD[k] * torch.randn(2, 4, generator=gen(10 + k), dtype=F64)
                   for k in range(3)])
    kw = {"mask": CL_MASK, "batch": 1 << 16, **kw}
    s = classify.class_scores(three_class_model(), SCHED, x, num_classes=3, draws=20000,
                              generator=gen(3), **kw)
    ll = kept_log_likelihood(x)
    return float(((s - s[:, :1]) - (-(ll - ll[:, :1]))).abs().max())


def test_class_scores_are_the_kept_pixels_log_likelihoods():
    """The ELBO in lambda with the exact eps is -log p(x_kept | y) up to one constant per image:
    the class differences match the closed form; the diffusion classifiers' uniform weights over
    the indices, and the error over every pixel, fail the same check."""
    from ddpmlab.edit.classify import infer_class, lambda_weights

    w = lambda_weights(SCHED)
    assert float(w.sum()) == pytest.approx(float(SCHED.log_snr[0] - SCHED.log_snr[-1]), rel=1e-12)
    assert bool((w > 0).all())
    assert _likelihood_gap() < 0.2
    assert _likelihood_gap(weights=torch.ones(T, dtype=F64)) > 1.0
    assert _likelihood_gap(mask=torch.zeros(4, dtype=F64)) > 1.0
    # the most likely class under a prior: the closed form's argmax on points near each mean
    x = CL_MU + 0.05 * torch.randn(3, 4, generator=gen(5), dtype=F64)
    got = infer_class(three_class_model(), SCHED, x, CL_MASK, 3, draws=200, generator=gen(6))
    assert got.tolist() == kept_log_likelihood(x).argmax(1).tolist() == [0, 1, 2]
    prior = torch.tensor([1.0, 1.0, 1e9], dtype=F64)        # a prior can outweigh the pixels
    assert infer_class(three_class_model(), SCHED, x, CL_MASK, 3, draws=200, generator=gen(6),
                       prior=prior).tolist() == [2, 2, 2]
