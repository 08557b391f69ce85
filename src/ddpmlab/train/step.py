"""[seed 4] One training step of DDPM (Ho et al. Algorithm 1), as one function.

1. pick a random timestep t for each image (uniform over the T steps: "1 of 1000");
2. noise x0 to x_t in one step with the closed form, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps;
3. the network, told t through its time embedding, predicts the noise (or x0, or v);
4. the loss is the (weighted) mean squared error to the target.

Improved DDPM (Nichol & Dhariwal 2021) changes steps 1 and 4 by name: with ``diffusion.loss``
``hybrid`` or ``vlb`` the network also outputs its variance and the loss adds (or is) the VLB
term (:func:`ddpmlab.losses.diffusion_loss`); ``vlb`` draws t from the importance distribution
of :class:`ddpmlab.losses.LossHistory` (``t_probs``) and weights each term by 1 / (T p_t).

The continuous objectives (``diffusion.objective`` ``edm`` or ``flow``, :mod:`ddpmlab.objectives`)
change steps 1-4 by name too: step 1 draws a noise level instead of an index (EDM's log-normal
sigma, the flow's uniform or logit-normal t), and steps 2-4 are :func:`ddpmlab.objectives.
objective_loss` (EDM's preconditioned, weighted denoiser loss; the flow's velocity MSE).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..forward import q_sample
from ..losses import diffusion_loss
from ..objectives import EDM_P_MEAN, EDM_P_STD, draw_levels, objective_loss
from ..schedules import Schedule


@dataclass
class StepRandomness:
    """Everything random about one step, drawn for the whole global batch (see :func:`draw`).

    Drawing for the global batch and slicing per rank/micro-batch makes a run's numbers the same
    whatever the number of processes or the gradient accumulation.
    """

    t: torch.Tensor          # int64 [B]; float [B] for edm (sigma) and flow (t)
    eps: torch.Tensor        # [B, *]
    drop: torch.Tensor       # bool [B]: label dropped to the null class (classifier-free guidance)
    flip: torch.Tensor       # bool [B]: horizontal flip

    def slice(self, sl: slice) -> StepRandomness:
        return StepRandomness(self.t[sl], self.eps[sl], self.drop[sl], self.flip[sl])


def draw(generator: torch.Generator, batch: int, sample_shape: tuple[int, ...], T: int,
         device: torch.device, p_uncond: float = 0.0,
         dtype: torch.dtype = torch.float32,
         t_probs: torch.Tensor | None = None, objective: str = "ddpm",
         flow_t: str = "uniform", p_mean: float = EDM_P_MEAN,
         p_std: float = EDM_P_STD) -> StepRandomness:
    """Draw a step's timesteps, noise and masks from ``generator`` (on ``generator.device``).

    The same four draws happen every step whatever the options, so that a run's random stream
    does not depend on whether labels or flips are used. ``t_probs`` (``[T]``, the ``vlb``
    loss's importance distribution) draws t from it instead of uniformly (None: uniform).
    ``objective`` ``edm`` / ``flow`` draws its noise levels in t's place
    (:func:`ddpmlab.objectives.draw_levels`; ``p_mean``/``p_std``: EDM's log-normal).
    """
    gdev = generator.device
    if objective != "ddpm":
        t = draw_levels(objective, generator, batch, flow_t, dtype, p_mean, p_std)
    elif t_probs is None:
        t = torch.randint(0, T, (batch,), generator=generator, device=gdev)
    else:
        if tuple(t_probs.shape) != (T,):
            raise ValueError(f"t_probs must have shape ({T},), got {tuple(t_probs.shape)}")
        t = torch.multinomial(t_probs.to(gdev), batch, replacement=True, generator=generator)
    eps = torch.randn((batch, *sample_shape), generator=generator, device=gdev, dtype=dtype)
    u = torch.rand((2, batch), generator=generator, device=gdev)
    return StepRandomness(t.to(device), eps.to(device), (u[0] < p_uncond).to(device),
                          (u[1] < 0.5).to(device))


def training_losses(model, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor,
                    eps: torch.Tensor, y: torch.Tensor | None = None, prediction: str = "eps",
                    weighting: str = "uniform", gamma: float = 5.0, loss: str = "simple",
                    learn_sigma: bool = False, vlb_weight: float = 0.001,
                    objective: str = "ddpm", sigma_data: float = 0.5) -> torch.Tensor:
    """The seed's training step for given (x0, t, eps): each sample's loss ``[N]``
    (``objective`` edm / flow: ``t`` is the noise level, see the module docstring)."""
    if objective != "ddpm":
        return objective_loss(model, objective, x0, t, eps, y, sigma_data)
    x_t = q_sample(schedule, x0, t, noise=eps)                     # x0 -> x_t in one step
    out = model(x_t, t) if y is None else model(x_t, t, y)         # predict (eps | x0 | v)
    return diffusion_loss(schedule, out, x0, x_t, t, eps, prediction, loss, learn_sigma,
                          weighting, gamma, vlb_weight)


def training_loss(model, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor,
                  eps: torch.Tensor, y: torch.Tensor | None = None, prediction: str = "eps",
                  weighting: str = "uniform", gamma: float = 5.0, loss: str = "simple",
                  learn_sigma: bool = False, vlb_weight: float = 0.001,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """The seed's training step for given (x0, t, eps): mean loss over the batch (a scalar);
    ``weights`` ``[N]`` (importance sampling's 1 / (T p_t)) multiply each sample's loss."""
    per = training_losses(model, schedule, x0, t, eps, y, prediction, weighting, gamma, loss,
                          learn_sigma, vlb_weight)
    if weights is not None:
        per = per * weights.to(device=per.device, dtype=per.dtype)
    return per.mean()
