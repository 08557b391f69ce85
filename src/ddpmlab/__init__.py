"""ddpmlab: denoising diffusion probabilistic models, exact and fast.

The public API re-exports only; see README.md for a tour.
"""

# Everything is imported on first use (PEP 562), so that ``import ddpmlab`` (and the command,
# whose first line installs its signal handlers) does not wait for torch.
_MODULES = ("forward", "likelihood", "losses", "parametrization", "reverse", "samplers",
            "schedules")
_FROM = {
    "config": ("Config", "DataConfig", "DiffusionConfig", "ModelConfig", "SampleConfig",
               "TrainConfig"),
    "errors": ("CheckpointError", "ConfigError", "DataError", "DDPMLabError"),
    "forward": ("q_mean_var", "q_posterior", "q_sample", "q_step"),
    "likelihood": ("BitsPerDim", "bits_per_dim"),
    "losses": ("normal_kl", "simple_loss"),
    "reverse": ("p_mean_var",),
    "runs": ("load_run", "sample_images"),
    "samplers": ("SAMPLERS", "classifier_free_guidance", "sample"),
    "schedules": ("Schedule",),
}
_WHERE = {name: mod for mod, names in _FROM.items() for name in names}


def __getattr__(name: str):
    import importlib

    if name in _MODULES:
        return importlib.import_module(f".{name}", __name__)
    if name in _WHERE:
        return getattr(importlib.import_module(f".{_WHERE[name]}", __name__), name)
    raise AttributeError(f"module 'ddpmlab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


__version__ = "0.1.0"

__all__ = [
    "BitsPerDim", "CheckpointError", "Config", "ConfigError", "DataConfig", "DataError",
    "DDPMLabError", "DiffusionConfig", "ModelConfig", "SampleConfig", "Schedule", "TrainConfig",
    "SAMPLERS", "bits_per_dim", "classifier_free_guidance", "forward", "likelihood", "load_run",
    "losses", "normal_kl",
    "p_mean_var", "parametrization", "q_mean_var", "q_posterior", "q_sample", "q_step",
    "reverse", "sample", "sample_images", "samplers", "schedules", "simple_loss",
]
