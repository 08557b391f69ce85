"""[seed 4] One training step of DDPM (Ho et al. Algorithm 1), as one function.

1. pick a random timestep t for each image (uniform over the T steps: "1 of 1000");
2. noise x0 to x_t in one step with the closed form, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps;
3. the network, told t through its time embedding, predicts the noise (or x0, or v);
4. the loss is the (weighted) mean squared error to the target.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..forward import q_sample
from ..losses import simple_loss
from ..schedules import Schedule


@dataclass
class StepRandomness:
    """Everything random about one step, drawn for the whole global batch (see :func:`draw`).

    Drawing for the global batch and slicing per rank/micro-batch makes a run's numbers the same
    whatever the number of processes or the gradient accumulation.
    """

    t: torch.Tensor          # int64 [B]
    eps: torch.Tensor        # [B, *]
    drop: torch.Tensor       # bool [B]: label dropped to the null class (classifier-free guidance)
    flip: torch.Tensor       # bool [B]: horizontal flip

    def slice(self, sl: slice) -> StepRandomness:
        return StepRandomness(self.t[sl], self.eps[sl], self.drop[sl], self.flip[sl])


def draw(generator: torch.Generator, batch: int, sample_shape: tuple[int, ...], T: int,
         device: torch.device, p_uncond: float = 0.0,
         dtype: torch.dtype = torch.float32) -> StepRandomness:
    """Draw a step's timesteps, noise and masks from ``generator`` (on ``generator.device``).

    The same four draws happen every step whatever the options, so that a run's random stream
    does not depend on whether labels or flips are used.
    """
    gdev = generator.device
    t = torch.randint(0, T, (batch,), generator=generator, device=gdev)
    eps = torch.randn((batch, *sample_shape), generator=generator, device=gdev, dtype=dtype)
    u = torch.rand((2, batch), generator=generator, device=gdev)
    return StepRandomness(t.to(device), eps.to(device), (u[0] < p_uncond).to(device),
                          (u[1] < 0.5).to(device))


def training_loss(model, schedule: Schedule, x0: torch.Tensor, t: torch.Tensor,
                  eps: torch.Tensor, y: torch.Tensor | None = None, prediction: str = "eps",
                  weighting: str = "uniform", gamma: float = 5.0) -> torch.Tensor:
    """The seed's training step for given (x0, t, eps): mean loss over the batch (a scalar)."""
    x_t = q_sample(schedule, x0, t, noise=eps)                     # x0 -> x_t in one step
    out = model(x_t, t) if y is None else model(x_t, t, y)         # predict (eps | x0 | v)
    return simple_loss(schedule, out, x0, t, eps, prediction, weighting, gamma).mean()
