"""Tests of ddpmlab.samplers.guidance: autoguidance (Karras et al. 2024) and the guidance
interval (Kynkäänniemi et al. 2024), with classifier-free guidance.

* the wrappers against the formulas written out by hand (float64);
* a guide identical to the model gives samples independent of the weight, exactly;
* on the exact-score 2-D mixture with an analytic "bad" guide (the same mixture with inflated
  variances), samples move toward the modes as w grows; the swapped roles (a broken twin) move
  them away, and fail the same check;
* an empty interval samples exactly like w = 1, the full range exactly like today's guidance, and
  a partial one guides exactly the steps whose sigma (computed here from abar) lies inside.
"""

from __future__ import annotations

import math

import pytest
import torch

from ddpmlab.samplers import autoguidance, classifier_free_guidance, guided_model, sample
from test_samplers import MIX, NULL, SCHED, Mixture, abar_of, labelled_model

F64 = torch.float64


def bad_labelled_model():
    """A weaker twin of :func:`test_samplers.labelled_model`: cond = 0.3 x + 0.04 y - 0.02;
    uncond (y None or the null class) = 0.1 x."""
    def model(x, t, y=None):
        if y is None:
            return 0.1 * x
        cond = 0.3 * x + 0.04 * y[:, None].to(x.dtype) - 0.02
        return torch.where((y == NULL)[:, None], 0.1 * x, cond)

    return model


def x_t_y(n=5, seed=4):
    x = torch.randn(n, 2, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return x, torch.tensor([0, 3, 10, 500, 999][:n]), torch.tensor([0, 1, 2, 3, 4][:n])


# --------------------------------------------------------------------------- by hand
@pytest.mark.parametrize("w", [0.0, 1.0, 2.5])
@pytest.mark.parametrize("cfg", [0.0, 1.0, 3.0])
def test_autoguidance_by_hand(w, cfg):
    x, t, y = x_t_y()
    c = 0.5 * x + 0.1 * y[:, None].to(F64) + 1e-3 * t[:, None].to(F64)
    u = 0.2 * x - 0.05
    g = 0.3 * x + 0.04 * y[:, None].to(F64) - 0.02
    if cfg == 0.0 and w != 1.0:      # purely unconditional: guided by the guide's uncond 0.1 x
        want = 0.1 * x + w * (u - 0.1 * x)
    elif cfg == 0.0:                 # no autoguidance: classifier-free guidance at 0
        want = u
    elif cfg == 1.0:
        want = g + w * (c - g)
    else:
        want = c + (cfg - 1) * (c - u) + (w - 1) * (c - g)
    for null in (NULL, None):
        calls: list = []
        got = autoguidance(labelled_model(calls), bad_labelled_model(), w, y, cfg=cfg,
                           null_class=null)(x, t)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
        # the model's images per evaluation: both halves only when cfg is neither 0 nor 1
        want_images = 2 * len(x) if cfg not in (0.0, 1.0) else len(x)
        assert sum(n for n, _, _ in calls) == want_images
    # unconditional: the guide and the model are called without labels
    got = autoguidance(labelled_model(), bad_labelled_model(), w)(x, t)
    torch.testing.assert_close(got, 0.1 * x + w * (0.1 * x - 0.05), rtol=1e-12, atol=1e-12)


def test_autoguidance_learn_sigma_guides_the_prediction_half_only():
    x, t, y = x_t_y()

    def two_channel(scale):
        def model(x, t, y=None):
            pred = scale * x + (0 if y is None else 0.1 * y[:, None].to(x.dtype))
            return torch.cat([pred, -scale * x - 1.0], dim=1)     # [N, 4]: pred | variance
        return model

    got = autoguidance(two_channel(0.5), two_channel(0.2), 3.0, y, learn_sigma=True)(x, t)
    c, g = 0.5 * x + 0.1 * y[:, None].to(F64), 0.2 * x + 0.1 * y[:, None].to(F64)
    torch.testing.assert_close(got[:, :2], g + 3.0 * (c - g), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got[:, 2:], -0.5 * x - 1.0, rtol=0, atol=0)    # the model's


@pytest.mark.parametrize("guide", [False, True])
def test_purely_unconditional_keeps_the_unconditional_variance_half(guide):
    """w = 0 (cfg = 0 with a guide): the output keeps both halves, the variance half being the
    unconditional call's (a broken twin once returned the prediction half alone)."""
    x, t, y = x_t_y()

    def two_channel(scale):
        def model(x, t, y=None):
            uncond = y is None or bool((y == NULL).all())
            pred = scale * x + (0 if uncond else 0.1 * y[:, None].to(x.dtype))
            return torch.cat([pred, -scale * x - (2.0 if uncond else 1.0)], dim=1)
        return model

    if guide:
        got = autoguidance(two_channel(0.5), two_channel(0.2), 3.0, y, cfg=0.0,
                           null_class=NULL, learn_sigma=True)(x, t)
        torch.testing.assert_close(got[:, :2], 0.2 * x + 3.0 * (0.3 * x), rtol=1e-12,
                                   atol=1e-12)
    else:
        got = classifier_free_guidance(two_channel(0.5), y, 0.0, NULL, learn_sigma=True)(x, t)
        torch.testing.assert_close(got[:, :2], 0.5 * x, rtol=0, atol=0)
    torch.testing.assert_close(got[:, 2:], -0.5 * x - 2.0, rtol=0, atol=0)


def test_validation():
    m, g = labelled_model(), bad_labelled_model()
    with pytest.raises(ValueError, match="needs labels"):
        autoguidance(m, g, 2.0, cfg=3.0)
    with pytest.raises(ValueError, match="autoguidance weight must be >= 0"):
        guided_model(m, None, guide=g, guide_weight=-1.0)
    with pytest.raises(ValueError, match="needs the schedule"):
        classifier_free_guidance(m, torch.tensor([1]), 2.0, interval=(0.1, 1.0))
    for bad in ((0.1,), (float("nan"), 1.0), (-1.0, 2.0), "ab"):
        with pytest.raises(ValueError, match="guidance interval"):
            autoguidance(m, g, 2.0, interval=bad, schedule=SCHED)
    # no guidance to apply: the model and the labels go through untouched
    y = torch.tensor([1, 2])
    assert guided_model(m, y, 1.0, guide=g, guide_weight=1.0) == (m, y)
    assert guided_model(m, None, 3.0, interval=(0.0, 1.0), schedule=SCHED) == (m, None)


# --------------------------------------------------------------------------- identical guide
@pytest.mark.parametrize("kw", [dict(sampler="ddpm", steps=30), dict(sampler="ddim", steps=20),
                                dict(sampler="heun", steps=8)])
def test_a_guide_identical_to_the_model_gives_samples_independent_of_w(kw):
    model = MIX.eps(SCHED)
    x_T = torch.randn(64, 2, generator=torch.Generator().manual_seed(1), dtype=F64)

    def draw(**more):
        return sample(model, SCHED, x_T=x_T, generator=torch.Generator().manual_seed(2),
                      dtype=F64, **kw, **more)

    plain = draw()
    for w in (0.0, 0.5, 2.0, 7.0):
        assert torch.equal(draw(guide=model, guide_weight=w), plain)
        assert torch.equal(draw(guide=MIX.eps(SCHED), guide_weight=w), plain)  # a copy
    # with classifier-free guidance as well: every w != 1 is the same CFG-guided sample
    y = torch.arange(64) % 5
    lab = labelled_model()
    cfg_ref = sample(lab, SCHED, x_T=x_T, y=y, guidance=3.0, null_class=NULL, dtype=F64,
                     generator=torch.Generator().manual_seed(2), **kw)
    both = [sample(lab, SCHED, x_T=x_T, y=y, guidance=3.0, null_class=NULL, guide=lab,
                   guide_weight=w, dtype=F64, generator=torch.Generator().manual_seed(2), **kw)
            for w in (0.0, 2.0, 7.0)]
    assert all(torch.equal(b, both[0]) for b in both)
    torch.testing.assert_close(both[0], cfg_ref, rtol=1e-12, atol=1e-12)


# --------------------------------------------------------------------------- the 2-D mixture
BAD = Mixture(MIX.w, MIX.mu, (MIX.s ** 2 + 0.3 ** 2).sqrt())   # inflated variances: "bad"
WEIGHTS = (1.0, 2.0, 3.0)


def mean_distance_to_nearest_mode(main, guide) -> list[float]:
    x_T = torch.randn(1000, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    out = []
    for w in WEIGHTS:
        x = sample(main, SCHED, x_T=x_T, sampler="ddim", steps=25, guide=guide, guide_weight=w,
                   dtype=F64)
        out.append(torch.cdist(x, MIX.mu).min(1).values.mean().item())
    return out


def moves_toward_the_modes(d: list[float]) -> bool:
    """Strictly closer to the nearest mode at every larger w, by at least 10% each time."""
    return all(b < 0.9 * a for a, b in zip(d, d[1:], strict=False))


def test_autoguidance_moves_samples_toward_the_modes_and_the_swapped_twin_fails():
    good = mean_distance_to_nearest_mode(MIX.eps(SCHED), BAD.eps(SCHED))
    assert moves_toward_the_modes(good), good
    # broken twin: the roles swapped (the bad model guided by the good one)
    swapped = mean_distance_to_nearest_mode(BAD.eps(SCHED), MIX.eps(SCHED))
    assert not moves_toward_the_modes(swapped), swapped
    assert swapped[-1] > swapped[0]


# --------------------------------------------------------------------------- interval
def sigma_of(t: torch.Tensor) -> torch.Tensor:
    """sigma = sqrt((1 - abar) / abar), from the tests' own abar (numpy's log-sigma interp.)."""
    ab = abar_of(SCHED, t).to(F64)
    return ((1 - ab) / ab).sqrt()


GUIDED = {
    "cfg": dict(guidance=3.0, null_class=NULL),
    "autoguidance": dict(guide=bad_labelled_model(), guide_weight=2.5),
    "both": dict(guidance=3.0, null_class=NULL, guide=bad_labelled_model(), guide_weight=2.5),
}
WALKS = [dict(sampler="ddpm", steps=30), dict(sampler="euler", steps=12)]   # int / float t


@pytest.mark.parametrize("walk", WALKS)
@pytest.mark.parametrize("kind", list(GUIDED))
def test_an_empty_interval_is_unguided_and_the_full_range_is_todays_guidance(kind, walk):
    x_T = torch.randn(6, 2, generator=torch.Generator().manual_seed(3), dtype=F64)
    y = torch.tensor([0, 1, 2, 3, 4, 5])

    def draw(**more):
        return sample(labelled_model(), SCHED, x_T=x_T, y=y, dtype=F64,
                      generator=torch.Generator().manual_seed(5), **walk, **more)

    unguided, guided = draw(), draw(**GUIDED[kind])
    assert not torch.allclose(unguided, guided)                  # (guidance does something)
    for empty in ((1.0, 1.0), (5.0, 0.1), (1e6, 1e7)):
        assert torch.equal(draw(**GUIDED[kind], guidance_interval=empty), unguided)
    for full in ((0.0, math.inf), (0.0, 1e6)):
        assert torch.equal(draw(**GUIDED[kind], guidance_interval=full), guided)


@pytest.mark.parametrize("kind", ["cfg", "autoguidance"])
def test_a_partial_interval_guides_exactly_the_levels_inside(kind):
    lo, hi = 0.5, 4.0
    y = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7])
    full = guided_model(labelled_model(), y, **{k: v for k, v in GUIDED[kind].items()
                                                if k in ("guidance", "guide", "guide_weight")},
                        null_class=NULL, schedule=SCHED)[0]
    part = guided_model(labelled_model(), y, **{k: v for k, v in GUIDED[kind].items()
                                                if k in ("guidance", "guide", "guide_weight")},
                        null_class=NULL, interval=(lo, hi), schedule=SCHED)[0]
    x = torch.randn(8, 2, generator=torch.Generator().manual_seed(7), dtype=F64)
    inside_seen = set()
    for t in (torch.tensor([0, 60, 150, 260, 400, 520, 700, 999]),          # mixed, per sample
              torch.tensor([10.5, 100.25, 180.0, 300.75, 450.5, 600.0, 800.5, 998.5], dtype=F64)):
        s = sigma_of(t)
        inside = (s > lo) & (s <= hi)
        inside_seen |= set(inside.tolist())
        want = torch.where(inside[:, None], full(x, t), labelled_model()(x, t, y))
        torch.testing.assert_close(part(x, t), want, rtol=1e-12, atol=1e-12)
        for i in range(8):      # one level for the whole batch: the all-in / all-out paths
            tt = t[i].repeat(8)
            want = full(x, tt) if inside[i] else labelled_model()(x, tt, y)
            torch.testing.assert_close(part(x, tt), want, rtol=1e-12, atol=1e-12)
    assert inside_seen == {True, False}
