"""Training: the seed's step, EMA, checkpoints and the Trainer loop."""

from .checkpoint import latest_checkpoint, load_tensors, save_checkpoint
from .ema import ema_decay_at, ema_update
from .loop import Trainer, TrainingError, TrainResult
from .sampling import load_run, sample_images, sample_images_sharded, save_npz
from .step import draw, training_loss

__all__ = [
    "Trainer", "TrainResult", "TrainingError", "draw", "ema_decay_at", "ema_update",
    "latest_checkpoint", "load_run", "load_tensors", "sample_images", "sample_images_sharded",
    "save_checkpoint", "save_npz", "training_loss",
]
