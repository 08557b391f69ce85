"""Training: the seed's step, EMA, checkpoints and the Trainer loop.

This package knows nothing of sampling figures or evaluation: the run layer
(:mod:`ddpmlab.runs`) composes them, and the Trainer reports through its ``on_sample`` hook.
"""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .ema import ema_decay_at, ema_update
from .loop import Trainer, TrainingError, TrainResult
from .step import draw, training_loss, training_losses

__all__ = [
    "Trainer", "TrainResult", "TrainingError", "draw", "ema_decay_at", "ema_update",
    "latest_checkpoint", "load_checkpoint", "save_checkpoint", "training_loss", "training_losses",
]
