r"""The class of the kept pixels, read by the conditional model itself (no classifier).

Inpainting without a class draws the missing part from the null-class model, which often
completes a *different* digit than the kept half shows; told the class it does not
(BENCHMARKS.md §10). This reads the class from the kept pixels with the conditional model's own
likelihood, so the user need not say it.

**The estimate.** In continuous time the diffusion ELBO of x0 under class y, written in the
log signal-to-noise ratio lambda = log(abar / (1 - abar)), is (Kingma et al. 2021, VDM, eq. 17
with the eps parametrization)

    -log p(x0 | y) = c + 1/2 \int E_eps || eps - eps_hat(x_lambda, lambda, y) ||^2 d lambda,

x_lambda = sqrt(abar) x0 + sqrt(1 - abar) eps, with c the same for every y (the prior and
reconstruction ends, which vanish or cancel as the lambda range grows). With the exact noise
predictor the bound is tight (the reverse process then has the forward process's path law), so
the classes' differences are their log-likelihood differences. Restricted to the kept pixels
(``mask`` 0) the integrand is their squared error only; this is exact when the generated pixels
are independent of the kept ones given the class (the network still sees a full x_t: the
generated region is filled with the kept pixels' median, the background of digits and emoji,
before it is noised). The integral is a Riemann sum over the schedule's indices with weights
d lambda (:func:`lambda_weights`), estimated by ``draws`` stratified draws of an index from
those weights, each with one noise shared by all classes (the differences then have little
variance). The diffusion classifiers of Li et al. 2023 and Clark & Jaini 2023 weight the
indices uniformly instead: not a likelihood (``tests/test_edit.py`` shows the uniform weights
failing the same check).

:func:`class_scores` returns the estimates of -log p(x_kept | y) (up to one constant per
image); :func:`infer_class` the most likely class under a prior (uniform by default). Cost:
``draws`` x classes network evaluations per image.
"""

from __future__ import annotations

import torch

from ..forward import q_sample
from ..parametrization import to_x0_eps
from ..reverse import Model, call_model, split_output
from ..samplers.noise import Generators, randn
from ..schedules import Schedule
from .driver import check_mask


def lambda_weights(schedule: Schedule) -> torch.Tensor:
    """d lambda per index (float64 ``[T]``, summing to lambda_0 - lambda_{T-1}): the trapezoid
    weights (lambda_{t-1} - lambda_{t+1}) / 2, with half an interval at either end."""
    lam = schedule.log_snr
    padded = torch.cat([lam[:1], lam, lam[-1:]])
    return (padded[:-2] - padded[2:]) / 2


def _uniforms(n: int, draws: int, generator: Generators) -> torch.Tensor:
    if generator is None or isinstance(generator, torch.Generator):
        return torch.rand(n, draws, generator=generator, dtype=torch.float64)
    gens = list(generator)
    if len(gens) != n:
        raise ValueError(f"got {len(gens)} generators for {n} images")
    return torch.stack([torch.rand(draws, generator=g, dtype=torch.float64) for g in gens])


def class_scores(model: Model, schedule: Schedule, x_known: torch.Tensor, mask: torch.Tensor,
                 num_classes: int, draws: int = 32, generator: Generators = None, *,
                 prediction: str = "eps", learn_sigma: bool = False,
                 weights: torch.Tensor | None = None, batch: int = 512) -> torch.Tensor:
    """``[N, num_classes]`` float64: estimates of -log p(x_kept | y) + c_n for each image n of
    ``x_known`` (``mask`` 1 = generated, 0 = kept; module doc). Per image, ``draws`` indices
    (stratified over ``weights``, default :func:`lambda_weights`) and noises from ``generator``
    (one, or one per image), shared by every class. ``model(x_t, t, y)`` returns the
    ``prediction`` (eps, x0 or v; ``learn_sigma``: and the variance channels)."""
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 1:
        raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    m = check_mask(mask, x_known)
    keep = (1.0 - m).to(x_known)
    w = (lambda_weights(schedule) if weights is None else weights.double()).cpu()
    total = float(w.sum())
    cdf = torch.cumsum(w, 0) / total
    n, dims = x_known.shape[0], tuple(x_known.shape[1:])
    u = (torch.arange(draws, dtype=torch.float64) + _uniforms(n, draws, generator)) / draws
    ts = torch.searchsorted(cdf, u.clamp(max=float(cdf[-1]) - 1e-12)).clamp(max=len(w) - 1)
    eps_rows = randn((n, draws, *dims), generator, None).to(x_known).flatten(0, 1)  # [N K, ..]
    kept = keep.expand_as(x_known).bool()
    fill = torch.stack([xi[ki].median() for xi, ki in zip(x_known, kept, strict=True)])
    x0 = torch.where(kept, x_known, fill.view(-1, *([1] * len(dims))))
    t_rows = ts.flatten().to(x_known.device)
    rows = q_sample(schedule, x0.repeat_interleave(draws, 0), t_rows, eps_rows)
    err = torch.empty(num_classes, n * draws, dtype=torch.float64)
    per_image_keep = kept.to(x_known).repeat_interleave(draws, 0)
    for y in range(num_classes):
        for s in range(0, len(rows), batch):
            xb, tb = rows[s:s + batch], t_rows[s:s + batch]
            yb = torch.full((len(xb),), y, dtype=torch.long, device=xb.device)
            with torch.no_grad():
                out, _ = split_output(call_model(model, xb, tb, yb, learn_sigma), learn_sigma)
            _, eps_hat = to_x0_eps(schedule, xb, tb, out, prediction)
            d = (eps_hat - eps_rows[s:s + batch]) * per_image_keep[s:s + batch]
            err[y, s:s + len(xb)] = d.double().pow(2).flatten(1).sum(1).cpu()
    return 0.5 * total * err.view(num_classes, n, draws).mean(2).T


def infer_class(model: Model, schedule: Schedule, x_known: torch.Tensor, mask: torch.Tensor,
                num_classes: int, draws: int = 32, generator: Generators = None, *,
                prior: torch.Tensor | None = None, **kw) -> torch.Tensor:
    """``[N]`` long: argmax over y of log p(x_kept | y) + log prior(y) (uniform by default),
    from :func:`class_scores` (its keywords pass through)."""
    scores = class_scores(model, schedule, x_known, mask, num_classes, draws, generator, **kw)
    if prior is not None:
        p = torch.as_tensor(prior, dtype=torch.float64)
        if p.shape != (num_classes,) or not bool((p > 0).all()):
            raise ValueError(f"prior must be {num_classes} positive numbers")
        scores = scores - torch.log(p / p.sum())
    return scores.argmin(1)


__all__ = ["class_scores", "infer_class", "lambda_weights"]
