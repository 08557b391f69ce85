r"""Bits per dimension through the ELBO (Ho et al. eq. 5; improved-diffusion ``calc_bpd_loop``).

    bpd(x0) = [ L_T + sum_{t=1}^{T-1} L_t + L_0 ] / (D ln 2)

with every term in bits/dim already (see :mod:`ddpmlab.losses`): ``prior`` is L_T, ``decoder``
is L_0 (index 0), ``terms[t]`` is the term at index t (``terms[0]`` = decoder).

Each L_t is an expectation over x_t ~ q(x_t | x0): we use one draw per image and timestep, so
the total is an unbiased single-sample estimate of the ELBO.

**Subset estimator.** With ``n_timesteps = K < T``, the decoder (index 0) is always computed and
the sum of the other ``T - 1`` terms is estimated from ``K - 1`` indices chosen by stratified
sampling (one uniform draw in each of ``K - 1`` equal strata of ``[1, T)``), each weighted by the
size of its stratum. The estimator is unbiased; its variance is small because L_t varies slowly
in t. ``terms`` then holds NaN at the indices not evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .forward import q_sample
from .losses import prior_bpd, vlb_terms
from .reverse import Model
from .schedules import Schedule


@dataclass
class BitsPerDim:
    """ELBO bound on -log2 p(x0) per dimension, averaged over the batch.

    ``total`` = ``prior`` + ``decoder`` + ``diffusion`` (the sum of L_1..L_{T-1}, estimated when
    a subset of timesteps was used); ``terms`` is ``[T]`` (NaN where not evaluated);
    ``per_sample`` is each image's total ``[N]``.
    """

    total: float
    prior: float
    decoder: float
    diffusion: float
    terms: torch.Tensor
    per_sample: torch.Tensor
    timesteps: torch.Tensor


def _chosen_timesteps(T: int, n_timesteps: int | None, generator: torch.Generator | None):
    """The evaluated indices and the weight of each in the estimated sum."""
    if n_timesteps is None or n_timesteps >= T:
        return torch.arange(T), torch.ones(T, dtype=torch.float64)
    if n_timesteps < 2:
        raise ValueError(f"n_timesteps must be >= 2 (the decoder and one more), got {n_timesteps}")
    k = n_timesteps - 1
    edges = torch.linspace(1, T, k + 1, dtype=torch.float64)
    u = torch.rand(k, generator=generator, dtype=torch.float64)
    picks = torch.floor(edges[:-1] + u * (edges[1:] - edges[:-1])).long().clamp(1, T - 1)
    weights = torch.cat([torch.ones(1, dtype=torch.float64), edges[1:] - edges[:-1]])
    return torch.cat([torch.zeros(1, dtype=torch.long), picks]), weights


def bits_per_dim(
    model: Model,
    schedule: Schedule,
    x0: torch.Tensor,
    prediction: str = "eps",
    variance: str = "small",
    y: torch.Tensor | None = None,
    n_timesteps: int | None = None,
    generator: torch.Generator | None = None,
    clip_x0: bool = False,
    progress: bool = False,
    learn_sigma: bool = False,
) -> BitsPerDim:
    """The ELBO in bits/dim of a batch ``x0`` (``[N, *]`` in [-1, 1], 8-bit data).

    With ``learn_sigma`` the model returns 2C channels and every term uses its learned variance
    (:func:`ddpmlab.reverse.learned_log_var`) instead of the fixed ``variance``."""
    T = schedule.T
    sched = schedule.to(x0.device)
    ts, weights = _chosen_timesteps(T, n_timesteps, generator)
    terms = torch.full((T,), float("nan"), dtype=torch.float64)
    per_sample = torch.zeros(x0.shape[0], dtype=torch.float64)
    iterator = ts.tolist()
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc="bits/dim", unit="t", leave=False)
    diffusion = torch.zeros(x0.shape[0], dtype=torch.float64)
    decoder = torch.zeros(x0.shape[0], dtype=torch.float64)
    with torch.inference_mode():
        for j, t in enumerate(iterator):
            tt = torch.full((x0.shape[0],), t, dtype=torch.long, device=x0.device)
            noise = torch.randn(x0.shape, generator=generator, dtype=x0.dtype).to(x0.device)
            x_t = q_sample(sched, x0, tt, noise=noise)
            term = vlb_terms(model, sched, x0, x_t, tt, prediction, variance, y, clip_x0,
                             learn_sigma)
            term = term.double().cpu()
            terms[t] = term.mean()
            if t == 0:
                decoder = term
            else:
                diffusion = diffusion + weights[j] * term
        prior = prior_bpd(sched, x0).double().cpu()
    per_sample = prior + decoder + diffusion
    return BitsPerDim(
        total=float(per_sample.mean()),
        prior=float(prior.mean()),
        decoder=float(decoder.mean()),
        diffusion=float(diffusion.mean()),
        terms=terms,
        per_sample=per_sample,
        timesteps=ts,
    )
