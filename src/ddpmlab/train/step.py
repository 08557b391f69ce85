"""[seed 4] One training step of DDPM (Ho et al. Algorithm 1), as one function.

1. pick a random timestep t for each image (uniform over the T steps: "1 of 1000");
2. noise x0 to x_t in one step with the closed form, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps;
3. the network, told t through its time embedding, predicts the noise (or x0, or v);
4. the loss is the (weighted) mean squared error to the target.

Improved DDPM (Nichol & Dhariwal 2021) changes steps 1 and 4 by name: with ``diffusion.loss``
``hybrid`` or ``vlb`` the network also outputs its variance and the loss adds (or is) the VLB
term (:func:`ddpmlab.losses.diffusion_loss`); ``vlb`` draws t from the importance distribution
of :class:`ddpmlab.losses.LossHistory` (``t_probs``) and weights each term by 1 / (T p_t).

Every step is the objective's (:mod:`ddpmlab.objectives`, one object per run): step 1 is its
:meth:`~ddpmlab.objectives.Objective.draw_levels` (DDPM: the index t above; EDM: a log-normal
sigma; flow: a uniform or logit-normal time t), steps 2-4 its
:meth:`~ddpmlab.objectives.Objective.losses` (DDPM: the above; EDM's preconditioned, weighted
denoiser loss; the flow's velocity MSE).

Non-leaking augmentation (``train.augment`` = p > 0, :mod:`ddpmlab.data.augment`) changes
step 1's input: x0 may be flipped, turned or shifted before it is noised, and the network
gets the transform's labels beside t (``training_losses(..., augment=labels)``); samplers
never pass labels, which means "no transform".
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data.augment import draw_augment
from ..objectives import DDPM, Objective, with_augment
from ..schedules import Schedule


@dataclass
class StepRandomness:
    """Everything random about one step, drawn for the whole global batch (see :func:`draw`).

    Drawing for the global batch and slicing per rank/micro-batch makes a run's numbers the same
    whatever the number of processes or the gradient accumulation.
    """

    level: torch.Tensor      # [B] the objective's training level (its ``level_name``): int64
                             # index t (ddpm), float sigma (edm), float flow time t (flow)
    eps: torch.Tensor        # [B, *]
    drop: torch.Tensor       # bool [B]: label dropped to the null class (classifier-free guidance)
    flip: torch.Tensor       # bool [B]: horizontal flip
    augment: torch.Tensor | None = None   # int64 [B, 4]: each image's augmentation (flip, turn,
                                          # tx, ty; ddpmlab.data.augment); None: augmentation off

    def slice(self, sl: slice) -> StepRandomness:
        aug = None if self.augment is None else self.augment[sl]
        return StepRandomness(self.level[sl], self.eps[sl], self.drop[sl], self.flip[sl], aug)


def draw(generator: torch.Generator, batch: int, sample_shape: tuple[int, ...],
         objective: Objective, device: torch.device, p_uncond: float = 0.0,
         t_probs: torch.Tensor | None = None,
         dtype: torch.dtype = torch.float32, augment: float = 0.0) -> StepRandomness:
    """Draw a step's levels, noise and masks from ``generator`` (on ``generator.device``).

    The same draws happen every step whatever the options, in this order: the objective's
    levels (:meth:`~ddpmlab.objectives.Objective.draw_levels`; ``t_probs`` ``[T]``, the ``vlb``
    loss's importance distribution, draws ddpm's t from it instead of uniformly), the noise,
    then two uniforms per sample for the label drop and the flip, so that a run's random stream
    does not depend on whether labels or flips are used. With ``augment`` = p > 0 the images'
    transforms (:func:`ddpmlab.data.augment.draw_augment`) are drawn last; with p = 0 nothing
    more is drawn (a run without augmentation draws what it always drew).
    """
    gdev = generator.device
    level = objective.draw_levels(generator, batch, t_probs=t_probs, dtype=dtype)
    eps = torch.randn((batch, *sample_shape), generator=generator, device=gdev, dtype=dtype)
    u = torch.rand((2, batch), generator=generator, device=gdev)
    aug = (draw_augment(generator, batch, sample_shape[-1], augment, device)
           if augment > 0 else None)
    return StepRandomness(level.to(device), eps.to(device), (u[0] < p_uncond).to(device),
                          (u[1] < 0.5).to(device), aug)


def training_losses(model, objective: Objective, schedule: Schedule, x0: torch.Tensor,
                    level: torch.Tensor, eps: torch.Tensor, y: torch.Tensor | None = None,
                    augment: torch.Tensor | None = None) -> torch.Tensor:
    """The seed's training step for given (x0, level, eps): each sample's loss ``[N]``
    (``schedule``: ``objective.schedule()``, on x0's device). ``augment`` ``[N, D]``: the
    augmentation labels of x0 (:func:`ddpmlab.data.augment.encode`), given to every network
    call the objective makes (:func:`ddpmlab.objectives.with_augment`)."""
    return objective.losses(with_augment(model, augment), schedule, x0, level, eps, y)


def training_loss(model, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor,
                  eps: torch.Tensor, y: torch.Tensor | None = None,
                  objective: Objective | None = None,
                  weights: torch.Tensor | None = None) -> torch.Tensor:
    """The seed's training step for given (x0, t, eps): mean loss over the batch (a scalar).
    ``objective`` None is DDPM with the paper's settings (eps prediction, the simple loss);
    ``weights`` ``[N]`` (importance sampling's 1 / (T p_t)) multiply each sample's loss."""
    if objective is None:
        objective = DDPM(schedule.T)
    per = training_losses(model, objective, schedule, x0, t, eps, y)
    if weights is not None:
        per = per * weights.to(device=per.device, dtype=per.dtype)
    return per.mean()
