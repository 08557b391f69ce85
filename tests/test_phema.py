"""Tests of ddpmlab.train.phema (post-hoc EMA, Karras et al. 2024) against independent float64
computations: scipy's root finding and quadrature for the formulas, a float64 recursion for
the tracked averages; reconstruction of a third, directly tracked average; broken twins (no
normalization, an off-by-one step count) that fail the same checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, optimize
from torch import nn

from ddpmlab.errors import CheckpointError
from ddpmlab.layout import RunDir
from ddpmlab.train import phema
from ddpmlab.train.phema import (
    MAX_SIGMA_REL,
    PhemaListener,
    PowerEMA,
    power_beta,
    profile_dot,
    reconstruct,
    reconstruct_run,
    sigma_rel_to_gamma,
    solve_weights,
)

SIGMAS = (0.01, 0.03, 0.05, 0.07, 0.1, 0.15, 0.2, 0.25, 0.29)


def profile(tau, t, gamma):
    """The power-function profile, written out: (gamma + 1) tau^gamma / t^(gamma+1) on [0, t]."""
    return np.where((tau >= 0) & (tau <= t), (gamma + 1) * np.abs(tau) ** gamma / t ** (gamma + 1),
                    0.0)


def std_rel_by_quadrature(gamma: float) -> float:
    """The profile's standard deviation relative to t = 1, by numerical integration (QUADPACK's
    algebraic weight u^gamma takes the peak at u = 1 and the singularity at 0 in its stride)."""
    def moment(f):
        return (gamma + 1) * integrate.quad(f, 0, 1, weight="alg", wvar=(gamma, 0.0),
                                            epsabs=0, epsrel=1e-12, limit=200)[0]

    m1 = moment(lambda u: u)
    return math.sqrt(moment(lambda u: (u - m1) ** 2))


# --------------------------------------------------------------------------- formulas
@pytest.mark.parametrize("s", SIGMAS)
def test_gamma_has_the_requested_relative_std(s):
    g = sigma_rel_to_gamma(s)
    # (a) the profile of that exponent, integrated numerically, has relative std s
    assert std_rel_by_quadrature(g) == pytest.approx(s, rel=1e-9)
    # (b) brentq on the definition, on the branch where sigma_rel decreases in gamma
    root = optimize.brentq(lambda x: std_rel_by_quadrature(x) - s, (math.sqrt(5) - 3) / 2, 2 / s,
                           xtol=1e-13, rtol=1e-14)
    assert g == pytest.approx(root, rel=1e-8)
    # (c) numpy's companion-matrix roots of the paper's cubic: the largest real one
    k = s ** -2
    roots = np.roots([1.0, 7.0, 16.0 - k, 12.0 - k])
    assert g == pytest.approx(roots[np.abs(roots.imag) < 1e-9].real.max(), rel=1e-10)


def test_gamma_of_the_papers_defaults_and_the_valid_range():
    # EDM2 (Karras et al. 2024, sec. 3.1): sigma_rel 0.05 and 0.10 are gamma 16.97 and 6.94
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.005)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.005)
    assert MAX_SIGMA_REL == pytest.approx(std_rel_by_quadrature((math.sqrt(5) - 3) / 2),
                                          rel=1e-9)
    assert phema.gamma_to_sigma_rel(sigma_rel_to_gamma(0.123)) == pytest.approx(0.123, rel=1e-12)
    for bad in (0.0, -0.1, MAX_SIGMA_REL, 0.31, float("nan")):
        with pytest.raises(ValueError, match="sigma_rel must lie in"):
            sigma_rel_to_gamma(bad)


@pytest.mark.parametrize("gamma", [0.0, 2.5, 6.94, 16.97])
def test_power_beta_unrolls_to_the_profile_integrated_over_each_step(gamma):
    # Weight of theta(s) in ema(t) by the recursion (beta(1) = 0: the start never counts),
    # against the continuous profile integrated over (s - 1, s] by quadrature.
    t = 37
    weights = np.zeros(t)
    for step in range(1, t + 1):
        b = power_beta(step, gamma)
        weights *= b
        weights[step - 1] += 1 - b
    want = [integrate.quad(lambda u: profile(u, t, gamma), s - 1, s, epsabs=0, epsrel=1e-12)[0]
            for s in range(1, t + 1)]
    np.testing.assert_allclose(weights, want, rtol=1e-9, atol=1e-300)
    assert power_beta(1, gamma) == 0.0
    with pytest.raises(ValueError, match="counts updates from 1"):
        power_beta(0, gamma)


@pytest.mark.parametrize("ta,ga,tb,gb", [(100, 6.94, 100, 6.94), (70, 16.97, 100, 6.94),
                                         (100, 16.97, 30, 2.0), (5, 0.0, 5, 0.3),
                                         (1000, 16.97, 990, 16.97)])
def test_profile_dot_matches_numerical_integration(ta, ga, tb, gb):
    m = min(ta, tb)
    num = integrate.quad(lambda u: profile(u, ta, ga) * profile(u, tb, gb), 0, m, epsabs=0,
                         epsrel=1e-12, limit=200)[0]
    assert float(profile_dot(ta, ga, tb, gb)) == pytest.approx(num, rel=1e-9)
    assert float(profile_dot(tb, gb, ta, ga)) == float(profile_dot(ta, ga, tb, gb))


# --------------------------------------------------------------------------- reconstruction
GAMMAS_TRACKED = tuple(sigma_rel_to_gamma(s) for s in (0.05, 0.10, 0.07))


def tracked_walk(n_steps=300, every=10, dim=40, seed=0, beta=power_beta):
    """A random walk theta(1..n) in float64, its three power EMAs (sigma_rel 0.05, 0.10, 0.07)
    by the recursion, and snapshots of the first two every ``every`` steps."""
    rng = np.random.default_rng(seed)
    walk = np.cumsum(rng.standard_normal((n_steps, dim)), axis=0)
    avg = [np.full(dim, 123.0) for _ in GAMMAS_TRACKED]       # any start: beta(1) = 0
    snaps = []
    for t in range(1, n_steps + 1):
        for k, g in enumerate(GAMMAS_TRACKED):
            b = beta(t, g)
            avg[k] = b * avg[k] + (1 - b) * walk[t - 1]
        if t % every == 0:
            snaps += [(t, GAMMAS_TRACKED[k], {"p": torch.from_numpy(avg[k].copy())})
                      for k in (0, 1)]
    return avg, snaps


def rel_err(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def test_reconstructs_a_third_tracked_average_and_a_stored_one():
    avg, snaps = tracked_walk()
    got = reconstruct(snaps, 0.07)["p"].numpy()
    assert rel_err(got, avg[2]) < 1e-4
    # meaningful: the stored neighbours are far further from it than the tolerance
    assert min(rel_err(avg[0], avg[2]), rel_err(avg[1], avg[2])) > 1e-2
    # a stored average (a tracked sigma_rel at the last snapshot) comes back to rounding
    for k, s in ((0, 0.05), (1, 0.10)):
        assert rel_err(reconstruct(snaps, s)["p"].numpy(), avg[k]) < 1e-12
    # and one at an earlier snapshot's step (step=)
    stored = dict(((st, g), d["p"]) for st, g, d in snaps)[(150, GAMMAS_TRACKED[1])]
    assert rel_err(reconstruct(snaps, 0.10, step=150)["p"].numpy(), stored.numpy()) < 1e-12


def test_a_wrong_exponent_fails_the_same_reconstruction():
    # Broken twin: beta(t) = (1 - 1/t)^gamma (the "+ 1" dropped): each tracked average then has
    # the profile of gamma - 1, not the one its sigma_rel names, and the solve is off.
    def no_plus_one(t, g):
        return (1 - 1 / t) ** g

    avg, snaps = tracked_walk(beta=no_plus_one)
    assert rel_err(reconstruct(snaps, 0.07)["p"].numpy(), avg[2]) > 1e-3


def test_a_constant_parameter_reconstructs_to_itself_only_when_normalized():
    c = 1234.5
    _, snaps = tracked_walk(n_steps=120, every=20)
    const = [(s, g, {"p": torch.full((3,), c, dtype=torch.float64)}) for s, g, _ in snaps]
    for target in (0.03, 0.07, 0.2):
        got = reconstruct(const, target)["p"]
        assert torch.allclose(got, torch.full_like(got, c), rtol=1e-13, atol=0)
    # the twin without the division by the weights' sum moves the constant
    broken = [reconstruct(const, target, normalize=False)["p"] for target in (0.03, 0.07, 0.2)]
    assert max(float((b - c).abs().max()) / c for b in broken) > 1e-6
    x = solve_weights([s for s, _, _ in snaps], [g for _, g, _ in snaps], 120,
                      sigma_rel_to_gamma(0.2))
    assert x.sum() == pytest.approx(1.0, abs=1e-14)


def test_reconstruct_validates():
    with pytest.raises(ValueError, match="no snapshots"):
        reconstruct([], 0.1)
    with pytest.raises(ValueError, match="linearly dependent"):
        solve_weights([10, 10], [3.0, 3.0], 10, 3.0)
    with pytest.raises(ValueError, match="different tensors"):
        reconstruct([(10, 3.0, {"a": torch.ones(1)}), (20, 3.0, {"b": torch.ones(1)})], 0.1)


# --------------------------------------------------------------------------- a module's averages
def toy_module(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Linear(4, 2))


def perturb(module: nn.Module, step: int) -> None:
    g = torch.Generator().manual_seed(1000 + step)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_power_ema_tracks_the_float64_recursion_and_keeps_a_constant():
    m = toy_module()
    ema = PowerEMA(m, (0.05, 0.1))
    ref = [{n: p.detach().double().clone() for n, p in m.named_parameters()} for _ in range(2)]
    for step in range(1, 51):
        perturb(m, step)
        ema.update(step)
        for k, g in enumerate(ema.gammas):
            b = power_beta(step, g)
            for n, p in m.named_parameters():
                ref[k][n] = b * ref[k][n] + (1 - b) * p.detach().double()
    for k in range(2):
        for n, v in ema.average(k).items():
            torch.testing.assert_close(v.double(), ref[k][n], rtol=1e-5, atol=1e-5)
    # a constant parameter stays exactly that constant through every update
    const = nn.Linear(2, 2)
    with torch.no_grad():
        const.weight.fill_(0.3)
        const.bias.fill_(-7.1)
    ce = PowerEMA(const)
    for step in range(1, 200):
        ce.update(step)
    assert torch.equal(ce.average(0)["weight"], const.weight.detach())
    assert torch.equal(ce.average(1)["bias"], const.bias.detach())
    with pytest.raises(ValueError, match="distinct"):
        PowerEMA(m, (0.1, 0.1))


def run_listener(run: RunDir, model: nn.Module, first: int, last: int, every: int,
                 ckpt_at=()) -> PhemaListener:
    li = PhemaListener(model, run, (0.05, 0.1), every=every)
    li.start(first, last, {})
    for step in range(first + 1, last + 1):
        perturb(model, step)
        li.step(step)
        if step in ckpt_at or step == last:
            li.checkpoint(step, run.root)
    li.close()
    return li


def test_listener_snapshots_resume_exactly_and_reconstruct_from_the_files(tmp_path):
    full, part = RunDir(tmp_path / "full"), RunDir(tmp_path / "part")
    run_listener(full, toy_module(), 0, 47, every=10, ckpt_at=(25,))
    assert [s for s, _ in full.phema_snapshots()] == [10, 20, 25, 30, 40, 47]
    # a run killed after step 33 (checkpoint at 25, snapshot 30 from its future) resumes at 25
    model = toy_module()
    run_listener(part, model, 0, 33, every=10, ckpt_at=(25,))
    model = toy_module()
    for step in range(1, 26):
        perturb(model, step)                  # the checkpoint's weights at step 25
    li = PhemaListener(model, part, (0.05, 0.1), every=10)
    li.start(25, 47, {})
    assert [s for s, _ in part.phema_snapshots()] == [10, 20, 25]   # 30 and 33 were the future
    for step in range(26, 48):
        perturb(model, step)
        li.step(step)
    li.checkpoint(47, part.root)
    for (s, a), (_, b) in zip(full.phema_snapshots(), part.phema_snapshots(), strict=True):
        fa, fb = phema.load_tensors(a), phema.load_tensors(b)
        assert fa.keys() == fb.keys() and all(torch.equal(fa[k], fb[k]) for k in fa), s
    # the run-level reconstruction equals the in-memory one over the same snapshots
    snaps = []
    for s, path in full.phema_snapshots():
        st = phema.load_tensors(path)
        for k, sig in enumerate((0.05, 0.1)):
            snaps.append((s, sigma_rel_to_gamma(sig),
                          {n[5:]: v for n, v in st.items() if n.startswith(f"ema{k}.")}))
    want = reconstruct(snaps, 0.08)
    got = reconstruct_run(full, 0.08)
    assert got.keys() == dict(toy_module().named_parameters()).keys()
    for n in want:
        torch.testing.assert_close(got[n], want[n], rtol=0, atol=0)
    # a stored one from the files: the last snapshot's sigma_rel 0.1 average
    last = phema.load_tensors(full.phema_snapshot(47))
    for n, v in reconstruct_run(full, 0.1).items():
        torch.testing.assert_close(v, last[f"ema1.{n}"], rtol=1e-6, atol=1e-6)


def test_listener_refuses_to_resume_without_its_snapshot(tmp_path):
    run = RunDir(tmp_path / "r")
    run_listener(run, toy_module(), 0, 12, every=5)          # snapshots 5, 10, 12
    with pytest.raises(CheckpointError, match="post-hoc EMA cannot resume at step 7"):
        PhemaListener(toy_module(), run, (0.05, 0.1)).start(7, 20, {})
    with pytest.raises(CheckpointError, match="tracks sigma_rel"):
        PhemaListener(toy_module(), run, (0.05, 0.2)).start(10, 20, {})
    with pytest.raises(CheckpointError, match="no post-hoc EMA snapshots"):
        reconstruct_run(RunDir(tmp_path / "none"), 0.1)
    with pytest.raises(ValueError, match="interval"):
        PhemaListener(toy_module(), run, every=0)
