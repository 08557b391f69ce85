"""``ddpm``: the discrete objective of Ho et al. 2020 and its improvements by name.

The level is an int64 index t into a named schedule (``diffusion.schedule``), drawn uniformly
("1 of 1000") or, for the ``vlb`` loss, from :class:`ddpmlab.losses.LossHistory`'s importance
distribution (``t_probs``). The network predicts eps, x0 or v (``diffusion.prediction``); the
loss is :func:`ddpmlab.losses.diffusion_loss` (``simple`` with its weighting, or ``hybrid`` /
``vlb`` with a learned variance, ``model.learn_sigma``: Nichol & Dhariwal 2021). The samplers
call the network itself.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..forward import q_sample
from ..losses import diffusion_loss
from ..schedules import Schedule, get
from .base import Objective


class DDPM(Objective):
    """DDPM's objective; the keywords are the ``diffusion.*`` keys of the same names (their
    defaults are the paper's) and ``model.learn_sigma``."""

    name = "ddpm"
    reads = ("schedule", "prediction", "loss_weighting", "min_snr_gamma", "loss", "vlb_weight")
    learned_variance = True
    level_name = "t"          # int64 indices in [0, T)

    def __init__(self, timesteps: int = 1000, schedule: str = "linear", prediction: str = "eps",
                 loss_weighting: str = "uniform", min_snr_gamma: float = 5.0,
                 loss: str = "simple", vlb_weight: float = 0.001,
                 learn_sigma: bool = False) -> None:
        super().__init__(timesteps)
        self.schedule_name = schedule
        self.prediction = prediction
        self.loss_weighting = loss_weighting
        self.min_snr_gamma = min_snr_gamma
        self.loss = loss
        self.vlb_weight = vlb_weight
        self.learn_sigma = learn_sigma

    def schedule(self) -> Schedule:
        return get(self.schedule_name, self.timesteps)

    def draw_levels(self, generator: torch.Generator, batch: int,
                    device: torch.device | None = None, t_probs: torch.Tensor | None = None,
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Indices t ``[batch]`` (int64): uniform, or from ``t_probs`` ``[T]`` with replacement
        (``dtype`` is not used: indices are integers)."""
        gdev, T = generator.device, self.timesteps
        if t_probs is None:
            t = torch.randint(0, T, (batch,), generator=generator, device=gdev)
        else:
            if tuple(t_probs.shape) != (T,):
                raise ValueError(f"t_probs must have shape ({T},), got {tuple(t_probs.shape)}")
            t = torch.multinomial(t_probs.to(gdev), batch, replacement=True, generator=generator)
        return t if device is None else t.to(device)

    def losses(self, net: Callable, schedule: Schedule, x0: torch.Tensor, level: torch.Tensor,
               eps: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The seed's steps 2-4 at indices ``level``: x0 -> x_t in one step, the network's
        prediction there, :func:`ddpmlab.losses.diffusion_loss`."""
        x_t = q_sample(schedule, x0, level, noise=eps)                 # x0 -> x_t in one step
        out = net(x_t, level) if y is None else net(x_t, level, y)    # predict (eps | x0 | v)
        return diffusion_loss(schedule, out, x0, x_t, level, eps, self.prediction, self.loss,
                              self.learn_sigma, self.loss_weighting, self.min_snr_gamma,
                              self.vlb_weight)

    def sampler_model(self, net: Callable, schedule: Schedule) -> Callable:
        """The network itself: it already predicts what ``prediction`` names."""
        return net

    @property
    def sampler_prediction(self) -> str:
        return self.prediction
