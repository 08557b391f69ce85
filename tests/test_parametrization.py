"""Tests of ddpmlab.parametrization: eps <-> x0 <-> v, every pair, in float64.

Reference: x_t = a x0 + s eps and v = a eps - s x0 with a = sqrt(abar_t), s = sqrt(1 - abar_t)
computed by hand in numpy. Round trips divide by a or s, which are as small as sqrt(4e-5) at
t = T-1 and sqrt(1e-4) at t = 0, so the float64 round-off of ~1e-16 can grow to ~1e-14: we
compare at rtol 1e-10 / atol 1e-11 (values are O(1)-O(10)).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from ddpmlab import parametrization as P
from ddpmlab import schedules

T = 1000
SCHED = schedules.linear(T)
TOL = dict(rtol=1e-10, atol=1e-11)


def make(shape=(7, 3), seed=0):
    g = torch.Generator().manual_seed(seed)
    n = shape[0]
    t = torch.randint(0, T, (n,), generator=g)
    t[0], t[1] = 0, T - 1                                   # both ends always present
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    eps = torch.randn(shape, generator=g, dtype=torch.float64)
    abar = np.cumprod(1.0 - np.linspace(1e-4, 0.02, T))[t.numpy()]
    a = np.sqrt(abar).reshape(-1, *[1] * (len(shape) - 1))
    s = np.sqrt(1.0 - abar).reshape(a.shape)
    x_t = torch.from_numpy(a * x0.numpy() + s * eps.numpy())
    v = torch.from_numpy(a * eps.numpy() - s * x0.numpy())      # Salimans & Ho, by hand
    return t, x0, eps, v, x_t


@pytest.mark.parametrize("shape", [(7, 3), (7, 1, 4, 4)])
def test_v_definition_by_hand(shape):
    t, x0, eps, v, _ = make(shape)
    np.testing.assert_allclose(P.v_from_eps_x0(SCHED, t, eps, x0).numpy(), v.numpy(), **TOL)
    np.testing.assert_allclose(P.target(SCHED, x0, t, eps, "v").numpy(), v.numpy(), **TOL)
    assert torch.equal(P.target(SCHED, x0, t, eps, "eps"), eps)
    assert torch.equal(P.target(SCHED, x0, t, eps, "x0"), x0)


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", [(7, 3), (7, 1, 4, 4)])
def test_every_conversion_recovers_the_truth(shape, seed):
    t, x0, eps, v, x_t = make(shape, seed)
    close = np.testing.assert_allclose
    close(P.x0_from_eps(SCHED, x_t, t, eps).numpy(), x0.numpy(), **TOL)
    close(P.eps_from_x0(SCHED, x_t, t, x0).numpy(), eps.numpy(), **TOL)
    close(P.x0_from_v(SCHED, x_t, t, v).numpy(), x0.numpy(), **TOL)
    close(P.eps_from_v(SCHED, x_t, t, v).numpy(), eps.numpy(), **TOL)
    truth = {"eps": eps, "x0": x0, "v": v}
    for pred in P.PREDICTIONS:
        x0_hat, eps_hat = P.to_x0_eps(SCHED, x_t, t, truth[pred], pred)
        close(x0_hat.numpy(), x0.numpy(), **TOL)
        close(eps_hat.numpy(), eps.numpy(), **TOL)
        close(P.target(SCHED, x0, t, eps, pred).numpy(), truth[pred].numpy(), **TOL)


@pytest.mark.parametrize("src,dst", list(itertools.permutations(P.PREDICTIONS, 2)))
def test_round_trip_every_pair(src, dst):
    # src -> (x0, eps) -> dst -> (x0, eps) -> src gives back the start, for an arbitrary
    # (not self-consistent) network output.
    t, _, _, _, x_t = make((9, 2), seed=3)
    out = torch.randn(x_t.shape, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    x0_hat, eps_hat = P.to_x0_eps(SCHED, x_t, t, out, src)
    mid = P.target(SCHED, x0_hat, t, eps_hat, dst)
    x0_2, eps_2 = P.to_x0_eps(SCHED, x_t, t, mid, dst)
    back = P.target(SCHED, x0_2, t, eps_2, src)
    np.testing.assert_allclose(back.numpy(), out.numpy(), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(x0_2.numpy(), x0_hat.numpy(), rtol=1e-9, atol=1e-9)


def test_dtype_follows_the_data():
    t, x0, eps, v, x_t = make((5, 2))
    for f, args in [(P.x0_from_eps, (x_t, t, eps)), (P.eps_from_x0, (x_t, t, x0)),
                    (P.x0_from_v, (x_t, t, v)), (P.eps_from_v, (x_t, t, v))]:
        assert f(SCHED, *[a.float() if a.is_floating_point() else a for a in args]).dtype == \
            torch.float32


def test_unknown_prediction():
    t, x0, eps, _, x_t = make((3, 2))
    with pytest.raises(ValueError, match="unknown prediction 'score'"):
        P.to_x0_eps(SCHED, x_t, t, eps, "score")
    with pytest.raises(ValueError, match="unknown prediction"):
        P.target(SCHED, x0, t, eps, "noise")
