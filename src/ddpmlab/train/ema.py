"""Exponential moving average of the weights (Polyak averaging), with warm-up.

``ema <- decay_t * ema + (1 - decay_t) * theta`` after every optimizer step, with
``decay_t = min(decay, (1 + n) / (10 + n))`` when warm-up is on (n = updates so far; the
TensorFlow ``ExponentialMovingAverage`` num_updates rule): early averages forget the random
initialisation quickly, late ones average over ~1 / (1 - decay) steps. Buffers are copied.
"""

from __future__ import annotations

import torch
from torch import nn


def ema_decay_at(decay: float, num_updates: int, warmup: bool = True) -> float:
    """The decay used for update number ``num_updates`` (0-based)."""
    if not warmup:
        return decay
    return min(decay, (1.0 + num_updates) / (10.0 + num_updates))


@torch.no_grad()
def ema_update(ema_model: nn.Module, model: nn.Module, decay: float) -> None:
    """In-place ``ema = decay * ema + (1 - decay) * model``; parameter names must match."""
    ema_params = dict(ema_model.named_parameters())
    params = dict(model.named_parameters())
    if ema_params.keys() != params.keys():
        raise ValueError("EMA and model have different parameters")
    names = list(params)
    e = [ema_params[k] for k in names]
    p = [params[k].detach() for k in names]
    torch._foreach_lerp_(e, p, 1.0 - decay)
    for (_, b_ema), (_, b) in zip(ema_model.named_buffers(), model.named_buffers(), strict=True):
        b_ema.copy_(b)
