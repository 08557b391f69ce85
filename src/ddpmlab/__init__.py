"""ddpmlab: denoising diffusion probabilistic models, exact and fast.

The public API re-exports only; see README.md for a tour.
"""

from . import forward, likelihood, losses, parametrization, reverse, samplers, schedules
from .config import Config, DataConfig, DiffusionConfig, ModelConfig, SampleConfig, TrainConfig
from .errors import CheckpointError, ConfigError, DataError, DDPMLabError
from .forward import q_mean_var, q_posterior, q_sample, q_step
from .likelihood import BitsPerDim, bits_per_dim
from .losses import normal_kl, simple_loss
from .reverse import p_mean_var
from .runs import load_run, sample_images
from .samplers import SAMPLERS, classifier_free_guidance, sample
from .schedules import Schedule

__version__ = "0.1.0"

__all__ = [
    "BitsPerDim", "CheckpointError", "Config", "ConfigError", "DataConfig", "DataError",
    "DDPMLabError", "DiffusionConfig", "ModelConfig", "SampleConfig", "Schedule", "TrainConfig",
    "SAMPLERS", "bits_per_dim", "classifier_free_guidance", "forward", "likelihood", "load_run",
    "losses", "normal_kl",
    "p_mean_var", "parametrization", "q_mean_var", "q_posterior", "q_sample", "q_step",
    "reverse", "sample", "sample_images", "samplers", "schedules", "simple_loss",
]
