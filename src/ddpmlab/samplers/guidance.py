r"""Guidance as model wrappers: classifier-free guidance (Ho & Salimans 2022), autoguidance
(Karras et al. 2024, "Guiding a diffusion model with a bad version of itself") and the guidance
interval (Kynkäänniemi et al. 2024).

**Classifier-free guidance.** ``pred = pred_u + w (pred_c - pred_u)``, where
``pred_c = model(x, t, y)`` and ``pred_u`` is the prediction for the null class. ``w = 1`` is
purely conditional (one network call), ``w = 0`` purely unconditional, ``w > 1`` sharpens the
class. Because x0 and v are affine in eps for a fixed x_t, guiding any of eps, x0 or v
predictions is the same operation. The null class is ``null_class`` (an integer label, the
UNet's ``num_classes``) when given: both halves then run as one batch of 2N. Without it, the
unconditional half is ``model(x, t)``.

**Autoguidance.** ``pred = pred_g + w (pred_c - pred_g)`` with ``pred_g = guide(x, t, y)``, a
weaker model of the same task (fewer steps or parameters: an early checkpoint of the same run),
called with the same labels (``guide(x, t)`` without them). It must predict the same quantity
(eps, x0 or v) on the same schedule as ``model``. Combined with classifier-free guidance
(``cfg`` != 1), the two directions add, each measured from the conditional prediction:
``pred = pred_c + (w - 1) (pred_c - pred_g) + (cfg - 1) (pred_c - pred_u)``; with ``cfg = 1``
it is autoguidance alone (written as above), with ``w = 1`` classifier-free guidance alone.
``cfg = 0`` (purely unconditional, as ``w = 0`` above) guides the unconditional prediction by
the guide's: ``pred = pred_gu + w (pred_u - pred_gu)``, both called with the null class (or
without labels), two network calls.

**Guidance interval.** ``interval=(sigma_lo, sigma_hi)`` guides only where the noise level
satisfies ``sigma_lo < sigma_t <= sigma_hi`` (the paper's half-open interval); elsewhere the
wrapper returns the plain conditional prediction ``model(x, t, y)`` (``model(x, t)`` without
labels), exactly what sampling with ``w = 1`` computes, in one network call. The wrappers
receive the samplers' index tensor ``t`` (int64, or float64 for a fractional spacing), so the
``schedule`` being sampled converts it: ``sigma_t = schedule.sigmas[t]`` for an integer index,
:func:`ddpmlab.schedules.sigma_at` between indices, sigma = sqrt((1 - abar) / abar), the noise
level of x_t / sqrt(abar) = x0 + sigma eps (EDM's sigma for ``edm``, t / (1 - t) for ``flow``).
``(0, inf)`` is every level (today's guidance, exactly); ``sigma_lo >= sigma_hi`` none.

A learn_sigma model (``learn_sigma=True``: outputs ``[N, 2C, ...]``; the guide too) is guided on
its prediction half only; the variance half is the conditional model's (GLIDE's practice), since
extrapolating a log-variance interpolation weight has no meaning (the unconditional model's
when the prediction is purely unconditional, ``w = 0`` or ``cfg = 0``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..reverse import Model, split_output
from ..schedules import Schedule, sigma_at

Interval = tuple[float, float]


def _check_weight(w: float, what: str = "guidance weight") -> float:
    if not isinstance(w, (int, float)) or not w >= 0:
        raise ValueError(f"{what} must be >= 0, got {w!r}")
    return float(w)


def check_interval(interval: Interval | None, schedule: Schedule | None) -> Interval | None:
    """``(sigma_lo, sigma_hi)`` as floats (None: guide at every level); a schedule is needed to
    read the noise level of an index."""
    if interval is None:
        return None
    try:
        lo, hi = (float(v) for v in interval)
    except (TypeError, ValueError):
        raise ValueError(f"a guidance interval is (sigma_lo, sigma_hi), got {interval!r}") from None
    if math.isnan(lo) or math.isnan(hi) or lo < 0:
        raise ValueError(f"a guidance interval needs 0 <= sigma_lo and no NaN, got {interval!r}")
    if schedule is None:
        raise ValueError("a guidance interval needs the schedule (to read sigma at an index)")
    return lo, hi


def _inside(interval: Interval | None, schedule: Schedule | None
            ) -> Callable[[torch.Tensor], torch.Tensor | None]:
    """t -> bool [N] (guided there), or None when every level is guided."""
    if interval is None:
        return lambda t: None
    lo, hi = interval
    assert schedule is not None
    table = schedule.sigmas

    def inside(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point():
            sig = sigma_at(schedule, t)
        else:
            sig = table[t.to(table.device)]
        return ((sig > lo) & (sig <= hi)).to(t.device)

    return inside


def _labels(y: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor | None:
    if y is None:
        return None
    return y.to(x.device).expand(x.shape[0]) if y.ndim == 0 else y.to(x.device)


def _within(inside: Callable, plain: Callable, guided: Callable, learn_sigma: bool) -> Model:
    """The wrapper: ``guided(x, t) -> (pred, cond)`` where the interval holds, else
    ``plain(x, t)``; the variance half (learn_sigma) is the conditional model's."""

    def wrapper(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        mask = inside(t)
        if mask is not None and not bool(mask.any()):
            return plain(x, t)
        pred, cond = guided(x, t)
        if learn_sigma:
            pred = torch.cat([pred, split_output(cond, True)[1]], dim=1)
        if mask is None or bool(mask.all()):
            return pred
        return torch.where(mask.reshape(-1, *[1] * (x.ndim - 1)), pred, cond)

    return wrapper


def _halves(out: torch.Tensor, learn_sigma: bool) -> torch.Tensor:
    return split_output(out, True)[0] if learn_sigma else out


def classifier_free_guidance(model: Model, y: torch.Tensor, w: float,
                             null_class: int | None = None, learn_sigma: bool = False,
                             interval: Interval | None = None,
                             schedule: Schedule | None = None) -> Model:
    """An unconditional-signature model ``f(x, t)`` that guides ``model`` towards labels ``y``
    (only at noise levels inside ``interval``, with ``schedule``: module docstring)."""
    w = _check_weight(w)
    y = torch.as_tensor(y).long()
    inside = _inside(check_interval(interval, schedule), schedule)

    def plain(x, t):
        return model(x, t, _labels(y, x))

    if w == 1.0:
        return plain

    def guided(x, t):
        yy = _labels(y, x)
        if w == 0.0:
            uncond = _uncond(model, x, t, yy, null_class)
            # (the variance half, learn_sigma, is the unconditional call's here)
            return _halves(uncond, learn_sigma), uncond
        cond, uncond = _cond_uncond(model, x, t, yy, null_class)
        c, u = _halves(cond, learn_sigma), _halves(uncond, learn_sigma)
        return u + w * (c - u), cond

    return _within(inside, plain, guided, learn_sigma)


def _uncond(model: Model, x, t, yy, null_class):
    """The unconditional prediction: the null class's, or ``model(x, t)`` without one."""
    return model(x, t) if null_class is None else model(x, t, torch.full_like(yy, null_class))


def _cond_uncond(model: Model, x, t, yy, null_class):
    if null_class is not None:
        null = torch.full_like(yy, null_class)
        both = model(torch.cat([x, x]), torch.cat([t, t]), torch.cat([yy, null]))
        return both.chunk(2)
    return model(x, t, yy), model(x, t)


def autoguidance(model: Model, guide: Model, w: float, y: torch.Tensor | None = None,
                 cfg: float = 1.0, null_class: int | None = None, learn_sigma: bool = False,
                 interval: Interval | None = None, schedule: Schedule | None = None) -> Model:
    """An unconditional-signature model ``f(x, t)``: ``model`` guided away from the weaker
    ``guide`` with weight ``w`` (``pred_g + w (pred_c - pred_g)``), plus classifier-free
    guidance ``cfg`` towards labels ``y`` when ``cfg`` != 1, only inside ``interval``
    (module docstring)."""
    w, cfg = _check_weight(w), _check_weight(cfg, "classifier-free guidance weight")
    if cfg != 1.0 and y is None:
        raise ValueError("classifier-free guidance (cfg != 1) needs labels y")
    if w == 1.0 and y is not None:      # no autoguidance: classifier-free guidance or none
        return classifier_free_guidance(model, y, cfg, null_class, learn_sigma, interval,
                                        schedule)
    y = None if y is None else torch.as_tensor(y).long()
    inside = _inside(check_interval(interval, schedule), schedule)

    def call(net, x, t):
        yy = _labels(y, x)
        return net(x, t) if yy is None else net(x, t, yy)

    if w == 1.0:
        return lambda x, t: call(model, x, t)

    def guided(x, t):
        if cfg == 0.0:      # unconditional: the model and the guide both without the labels
            yy = _labels(y, x)
            uncond = _uncond(model, x, t, yy, null_class)
            u = _halves(uncond, learn_sigma)
            g = _halves(_uncond(guide, x, t, yy, null_class), learn_sigma)
            return g + w * (u - g), uncond
        if cfg == 1.0:
            cond = call(model, x, t)
            c, g = _halves(cond, learn_sigma), _halves(call(guide, x, t), learn_sigma)
            return g + w * (c - g), cond
        cond, uncond = _cond_uncond(model, x, t, _labels(y, x), null_class)
        c, u = _halves(cond, learn_sigma), _halves(uncond, learn_sigma)
        g = _halves(call(guide, x, t), learn_sigma)
        return c + (cfg - 1.0) * (c - u) + (w - 1.0) * (c - g), cond

    return _within(inside, lambda x, t: call(model, x, t), guided, learn_sigma)


def images_per_evaluation(labelled: bool, guidance: float = 1.0, guide: bool = False,
                          guide_weight: float = 1.0) -> int:
    """Images the network(s) see per sample and evaluation where :func:`guided_model`'s
    wrapper guides (outside a guidance interval: 1): the model's two halves when
    classifier-free guidance (``labelled``) is neither 0 nor 1, else one, plus the guide's
    one when autoguidance applies (``guide`` given, ``guide_weight`` != 1)."""
    cfg = guidance if labelled else 1.0
    return (2 if cfg not in (0.0, 1.0) else 1) + (1 if guide and guide_weight != 1.0 else 0)


def guided_model(model: Model, y: torch.Tensor | None, guidance: float = 1.0, *,
                 null_class: int | None = None, learn_sigma: bool = False,
                 guide: Model | None = None, guide_weight: float = 1.0,
                 interval: Interval | None = None, schedule: Schedule | None = None
                 ) -> tuple[Model, torch.Tensor | None]:
    """What a sampling call runs: ``(net, cond_y)``, where ``cond_y`` (labels ``[N]`` or None)
    is passed to ``net`` by the step context and ``net`` is ``model`` itself or a guidance
    wrapper (which holds the labels; ``cond_y`` is then None). ``guidance`` is the
    classifier-free weight (needs ``y``), ``guide`` + ``guide_weight`` autoguidance, ``interval``
    the guidance interval (with ``schedule``). No guidance to apply (``guidance`` = 1 or no
    labels, no guide): ``model`` and ``y`` unchanged, whatever the interval."""
    _check_weight(guidance, "guidance")
    _check_weight(guide_weight, "autoguidance weight")
    check_interval(interval, schedule)
    if guide is not None and guide_weight != 1.0:
        return autoguidance(model, guide, guide_weight, y, cfg=guidance if y is not None else 1.0,
                            null_class=null_class, learn_sigma=learn_sigma, interval=interval,
                            schedule=schedule), None
    if y is None or guidance == 1.0:
        return model, y
    return classifier_free_guidance(model, y, guidance, null_class, learn_sigma, interval,
                                    schedule), None
