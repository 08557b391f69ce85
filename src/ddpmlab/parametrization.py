r"""Conversions between what a network may predict: eps, x0 and v.

With x_t = a x0 + s eps, a = sqrt(abar_t), s = sqrt(1 - abar_t) (so a^2 + s^2 = 1):

* x0  = (x_t - s eps) / a                 eps = (x_t - a x0) / s
* v   = a eps - s x0                      (Salimans & Ho 2022, https://arxiv.org/abs/2202.00512)
* x0  = a x_t - s v                       eps = s x_t + a v

Every function takes the schedule, x_t, the index ``t`` ``[N]`` and the prediction, and works in
the data's dtype for any shape ``[N, *]``.
"""

from __future__ import annotations

import torch

from .broadcast import expand_like, gather
from .forward import alpha_bar_at
from .schedules import Schedule

PREDICTIONS = ("eps", "x0", "v")


def _coefs(schedule: Schedule, t: torch.Tensor, x: torch.Tensor):
    """(sqrt(abar_t), sqrt(1 - abar_t)) against ``x``; a floating ``t`` may be fractional
    (abar interpolated in log sigma, :func:`ddpmlab.forward.alpha_bar_at`)."""
    if torch.is_tensor(t) and t.is_floating_point():
        abar = alpha_bar_at(schedule, t)
        return expand_like(abar.sqrt(), x), expand_like((1.0 - abar).sqrt(), x)
    return gather(schedule.sqrt_alpha_bar, t, x), gather(schedule.sqrt_one_minus_alpha_bar, t, x)


def x0_from_eps(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor,
                eps: torch.Tensor) -> torch.Tensor:
    a, s = _coefs(schedule, t, x_t)
    return (x_t - s * eps) / a


def eps_from_x0(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor,
                x0: torch.Tensor) -> torch.Tensor:
    a, s = _coefs(schedule, t, x_t)
    return (x_t - a * x0) / s


def v_from_eps_x0(schedule: Schedule, t: torch.Tensor, eps: torch.Tensor,
                  x0: torch.Tensor) -> torch.Tensor:
    a, s = _coefs(schedule, t, x0)
    return a * eps - s * x0


def x0_from_v(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor,
              v: torch.Tensor) -> torch.Tensor:
    a, s = _coefs(schedule, t, x_t)
    return a * x_t - s * v


def eps_from_v(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor,
               v: torch.Tensor) -> torch.Tensor:
    a, s = _coefs(schedule, t, x_t)
    return s * x_t + a * v


def check_prediction(prediction: str) -> str:
    if prediction not in PREDICTIONS:
        raise ValueError(
            f"unknown prediction {prediction!r}; choose one of {', '.join(PREDICTIONS)}"
        )
    return prediction


def to_x0_eps(schedule: Schedule, x_t: torch.Tensor, t: torch.Tensor, out: torch.Tensor,
              prediction: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0_hat, eps_hat) from a network output of kind ``prediction``."""
    check_prediction(prediction)
    if prediction == "eps":
        return x0_from_eps(schedule, x_t, t, out), out
    if prediction == "x0":
        return out, eps_from_x0(schedule, x_t, t, out)
    return x0_from_v(schedule, x_t, t, out), eps_from_v(schedule, x_t, t, out)


def target(schedule: Schedule, x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor,
           prediction: str) -> torch.Tensor:
    """What a network of kind ``prediction`` should output for (x0, eps) at index ``t``."""
    check_prediction(prediction)
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    return v_from_eps_x0(schedule, t, eps, x0)
