"""Typed, frozen configuration dataclasses and their (strict) loaders.

A :class:`Config` has five sections: ``model``, ``diffusion``, ``data``, ``train`` and ``sample``.
``Config.from_dict`` / ``Config.from_file`` (YAML or TOML) reject unknown keys and wrong types with
a :class:`~ddpmlab.errors.ConfigError` naming the key (``train.lr``) and the file. The resolved
config is written to every run directory as ``config.json``: rebuilding the model needs nothing
else.

The library defaults are the DDPM paper's (T=1000, linear betas 1e-4..0.02, eps prediction,
uniform weighting); ``configs/mnist.yaml`` (the main job) departs from them by name.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import reprlib
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .device import PRECISIONS, format_size
from .errors import ConfigError
from .losses import LOSSES, WEIGHTINGS
from .objectives import EDM_P_MEAN, EDM_P_STD, FLOW_TIMES, OBJECTIVES
from .parametrization import PREDICTIONS
from .reverse import VARIANCES
from .samplers import SAMPLERS, SPACINGS
from .schedules import SCHEDULES, linear_problem

MAX_TIMESTEPS = 1_000_000   # diffusion.timesteps: the literature uses <= 4,000
MAX_GUIDANCE = 1e4          # sample.guidance, --guidance: the literature uses <= 10
OWN_GUIDE = "@"             # sample.guide "@F": the run's own checkpoint at F of its steps
#: the largest relative standard deviation a power-function EMA profile has (at exponent
#: gamma = (sqrt 5 - 3) / 2; Karras et al. 2024): train.phema_sigma_rels and ``ddpmlab ema
#: --sigma-rel`` lie in (0, MAX_SIGMA_REL). Owned here, where the config checks it;
#: :mod:`ddpmlab.train.phema` reads it.
MAX_SIGMA_REL = math.sqrt((math.sqrt(5) - 1) / 2 / ((math.sqrt(5) + 1) / 2) ** 2
                          / ((math.sqrt(5) + 3) / 2))


@dataclass(frozen=True)
class ModelConfig:
    """The UNet noise predictor. ``image_size`` and ``in_channels`` describe the data."""

    in_channels: int = 1
    image_size: int = 28
    base_channels: int = 64                      # channels at the first level
    channel_mult: tuple[int, ...] = (1, 2, 2)    # channels per level = base * mult
    num_res_blocks: int = 2                      # residual blocks per level
    attention_resolutions: tuple[int, ...] = (7,)  # feature-map sizes that get self-attention
    num_heads: int = 4
    dropout: float = 0.0
    norm_groups: int = 32                        # GroupNorm groups (capped by channels)
    norm_eps: float = 1e-5                       # GroupNorm epsilon (the DDPM paper's TF code: 1e-6)
    downsample_pad: str = "symmetric"            # stride-2 convs pad 1 on every side, or "right":
                                                 # 0 left/top, 1 right/bottom (TF "SAME", the DDPM
                                                 # paper's and diffusers' downsample_padding=0)
    num_classes: int = 0                         # 0: unconditional; k: k classes + 1 null class
    learn_sigma: bool = False                    # also output the reverse variance (2C channels:
                                                 # improved DDPM; needs diffusion.loss hybrid|vlb)
    augment_dim: int = 0                         # length of the augmentation labels the net is
                                                 # conditioned on (ddpmlab.data.augment: 5); set
                                                 # when train.augment > 0; 0: no such input

    @property
    def out_channels(self) -> int:
        """Output channels of the network: the prediction, and with ``learn_sigma`` as many
        again for the variance values (:func:`ddpmlab.reverse.split_output`)."""
        return 2 * self.in_channels if self.learn_sigma else self.in_channels

    @property
    def null_class(self) -> int | None:
        """The label of the null (unconditional) class, ``num_classes``; None when unconditional."""
        return self.num_classes if self.num_classes > 0 else None


@dataclass(frozen=True)
class DiffusionConfig:
    """The noising process and the training objective."""

    timesteps: int = 1000                  # T
    schedule: str = "linear"               # a name of schedules.SCHEDULES (linear | cosine | sigmoid)
    prediction: str = "eps"                # what the network predicts: eps | x0 | v
    loss_weighting: str = "uniform"        # uniform | min_snr
    min_snr_gamma: float = 5.0             # gamma of min-SNR weighting (Hang et al. 2023)
    loss: str = "simple"                   # simple | hybrid (L_simple + vlb_weight L_vlb) | vlb
                                           # (importance-sampled t); hybrid/vlb: learn_sigma
    vlb_weight: float = 0.001              # lambda of the hybrid loss (Nichol & Dhariwal 2021)
    objective: str = "ddpm"                # ddpm | edm (Karras et al. 2022) | flow (flow matching);
                                           # edm/flow: timesteps = the size of their noise-level
                                           # grid (ddpmlab.objectives)
    flow_t: str = "uniform"                # flow: t uniform on [0, 1] | logit_normal (SD3)
    sigma_data: float = 0.5                # edm: the data's std in EDM's preconditioning
    p_mean: float = EDM_P_MEAN             # edm: training draws ln sigma ~ N(p_mean, p_std^2)
    p_std: float = EDM_P_STD               # (EDM's CIFAR-10 values, -1.2 and 1.2)


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from. ``dataset`` is a built-in name or a path."""

    dataset: str = "mnist"                 # mnist | fashion-mnist | digits | a folder | a .npz
    image_size: int = 0                    # 0: the data set's own size
    channels: int = 0                      # 0: the data set's own (1 gray, 3 RGB)
    hflip: bool = False                    # random horizontal flips in training
    conditional: str = "false"             # train with the labels (sets model.num_classes):
                                           # true | false | auto (when the data set has labels)
    p_uncond: float = 0.1                  # conditional training: share of labels dropped to null
    recipe: tuple[str, ...] = ()           # keys the data decide (ddpmlab.recipe); a key the
                                           # user sets leaves the list (override)


@dataclass(frozen=True)
class TrainConfig:
    """The optimizer, the loop, logging and checkpoints."""

    batch_size: int = 128                  # global batch (per step, all ranks, after accumulation)
    grad_accum: int = 1                    # micro-batches per optimizer step
    lr: float = 2e-4
    weight_decay: float = 0.0
    warmup_steps: int = 500                # linear LR warm-up
    lr_decay: str = "none"                 # none | cosine (to 0 at max_steps)
    max_steps: int = 10000
    grad_clip: float = 1.0                 # max global grad norm; 0 disables
    ema_decay: float = 0.9999
    ema_warmup: bool = True                # decay_t = min(decay, (1 + t) / (10 + t))
    precision: str = "auto"                # auto (bf16 autocast on CUDA and on CPUs with native
                                           # bf16: AVX512-BF16, AMX; else fp32) | fp32 | bf16 | fp16
    device: str = "auto"                   # auto | cpu | cuda | cuda:N
    compile: bool = False                  # torch.compile the network
    channels_last: bool = False
    seed: int = 0
    log_every: int = 50                    # steps between lines of the run's metrics
    sample_every: int = 0                  # steps between EMA sample grids (0: only at the end)
    ckpt_every: int = 1000                 # steps between checkpoints
    keep_last: int = 2                     # checkpoints kept on disk
    time_limit_min: float = 0.0            # stop (and save) after this many minutes; 0: no limit
    time_budget_min: float = 0.0           # size the run by time: steps 5-40 are timed and
                                           # max_steps (now the most) is set so that training
                                           # ends within this many minutes; 0: off. config.json
                                           # records the max_steps chosen (and 0 here)
    skip_nonfinite: bool = False           # skip (and count) steps with a NaN/Inf loss or gradient
    tensorboard: bool = False              # also log scalars and sample grids to RUN/tensorboard/
                                           # (needs the tensorboard extra)
    phema: bool = False                    # post-hoc EMA (Karras et al. 2024): track power-function
                                           # EMAs and keep snapshots in RUN/phema/, so that
                                           # `ddpmlab ema` reconstructs any EMA length afterwards
    phema_sigma_rels: tuple[float, ...] = (0.05, 0.10)   # the tracked lengths (relative std
                                           # of the averaging profile; distinct, in (0, 0.3003))
    phema_every: int = 100                 # steps between snapshots (and one at each checkpoint)
    watch_copies: int = 0                  # at each checkpoint draw this many EMA samples and
                                           # log the share that are near-copies of training
                                           # images (metrics.jsonl "memorization"); 0: off
    augment: float = 0.0                   # non-leaking augmentation (EDM): each training image
                                           # is x-flipped, turned by 90/180/270 degrees and
                                           # shifted, each with this probability, and the net
                                           # is told which (model.augment_dim); sampling tells
                                           # it "none". 0: off (ddpmlab.data.augment)


@dataclass(frozen=True)
class SampleConfig:
    """How samples are drawn (the end-of-training grid and ``ddpmlab sample``)."""

    sampler: str = "ddpm"                  # a name of samplers.SAMPLERS (`ddpmlab samplers`)
    steps: int = 0                         # 0: all T steps
    eta: float | None = None               # share of ancestral noise; null: the sampler's own
                                           # (DDIM 0, the ancestral and SDE samplers 1)
    spacing: str = "auto"                  # auto (the sampler's own) | a name of samplers.SPACINGS
    variance: str = "small"                # DDPM: small (posterior) | large (beta)
    clip_x0: bool = True                   # clip the x0 estimate to [-1, 1]
    guidance: float = 1.0                  # classifier-free guidance weight w
    guide: str = ""                        # autoguidance: a run directory or one of its
                                           # checkpoints/step_* folders (a weaker model of the
                                           # same task); "@F" (0 < F < 1) = this run's own
                                           # checkpoint at the fraction F of its steps, which
                                           # the trainer keeps; "" = none
    guide_weight: float = 1.0              # autoguidance weight: pred_g + w (pred - pred_g);
                                           # 1 = no autoguidance
    guidance_interval: tuple[float, ...] = ()   # [lo, hi]: guide only where lo < sigma_t <= hi
                                           # (the run's own sigma); [] = at every level
    # sampler options (handed to the sampler as ``sample(options=...)``; only heun reads them:
    # EDM Algorithm 2's S_churn, S_tmin, S_tmax, S_noise; churn 0 = deterministic Algorithm 1)
    churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float | None = None            # null: no upper limit (EDM's infinity)
    s_noise: float = 1.0
    n: int = 64
    batch_size: int = 256
    use_ema: bool = True

    def sampler_options(self) -> dict[str, float]:
        """The sampler options of this section, as :func:`ddpmlab.samplers.sample` takes them
        (``options=``): the one place a new option's key is mapped to the samplers."""
        return {"churn": self.churn, "s_tmin": self.s_tmin,
                "s_tmax": math.inf if self.s_tmax is None else self.s_tmax,
                "s_noise": self.s_noise}

    def check_options(self, source: str = "<config>") -> None:
        """Refuse sampler options out of range (ConfigError naming the key and ``source``)."""
        for key in ("churn", "s_tmin", "s_noise"):
            v = getattr(self, key)
            if not (v >= 0 and math.isfinite(v)):
                raise ConfigError(f"{source}: sample.{key}={_short(v)} must be a finite "
                                  "number >= 0")
        if self.s_tmax is not None and not self.s_tmax >= self.s_tmin:
            raise ConfigError(f"{source}: sample.s_tmax={_short(self.s_tmax)} must be >= "
                              f"sample.s_tmin={_short(self.s_tmin)} (or null: no limit)")

    def own_guide(self) -> float | None:
        """The fraction F of ``guide = "@F"`` (this run's own checkpoint at F of its steps,
        :meth:`Config.own_guide_step`), NaN for an ``@`` that is no number, None for a path
        or none."""
        if not self.guide.startswith(OWN_GUIDE):
            return None
        try:
            return float(self.guide[len(OWN_GUIDE):])
        except ValueError:
            return math.nan

    def check_guidance(self, source: str = "<config>", guided: bool | None = None) -> None:
        """Refuse an autoguidance weight out of range or without a guide (``guided``: whether
        one is given; None: ``sample.guide`` says), and a guidance interval that is not [] or
        [lo, hi] (ConfigError naming the key and ``source``)."""
        w, iv = self.guide_weight, self.guidance_interval
        f = self.own_guide()
        if f is not None and not 0 < f < 1:
            raise ConfigError(f"{source}: sample.guide={_short(self.guide)}: '@F' names this "
                              "run's own checkpoint at the fraction F of its steps, 0 < F < 1 "
                              "(e.g. @0.6), kept by the trainer as the autoguidance guide")
        if not (0 <= w <= MAX_GUIDANCE):
            raise ConfigError(f"{source}: sample.guide_weight={_short(w)} must be a finite "
                              f"number in 0..{MAX_GUIDANCE:,.0f}")
        if w != 1.0 and not (bool(self.guide) if guided is None else guided):
            raise ConfigError(f"{source}: sample.guide_weight={_short(w)} needs sample.guide "
                              "(the run or checkpoint that guides; 1 = no autoguidance)")
        if iv and (len(iv) != 2 or not all(math.isfinite(v) for v in iv) or iv[0] < 0):
            raise ConfigError(f"{source}: sample.guidance_interval={_short(list(iv))} must be "
                              "[] (every level) or [lo, hi]: two finite noise levels sigma with "
                              "0 <= lo (lo >= hi: none)")


SECTIONS: dict[str, type] = {
    "model": ModelConfig,
    "diffusion": DiffusionConfig,
    "data": DataConfig,
    "train": TrainConfig,
    "sample": SampleConfig,
}

#: train.time_budget_min times the steps from the end of step 5 (past the first steps' one-off
#: costs) to the end of step 40, then sets max_steps; owned here: the trainer reads it
BUDGET_WINDOW = (5, 40)
LR_DECAYS = ("none", "cosine")             # owned here: the trainer reads train.lr_decay
DOWNSAMPLE_PADS = ("symmetric", "right")    # owned here: the UNet reads model.downsample_pad
CONDITIONAL = ("auto", "true", "false")     # data.conditional's tri-state

# Every key with a fixed set of choices, read from the choice's owner (never a copy of it).
_CHOICES: dict[str, tuple[str, ...]] = {
    "diffusion.schedule": tuple(SCHEDULES),
    "diffusion.prediction": tuple(PREDICTIONS),
    "diffusion.loss_weighting": tuple(WEIGHTINGS),
    "diffusion.loss": tuple(LOSSES),
    "diffusion.objective": tuple(OBJECTIVES),
    "diffusion.flow_t": tuple(FLOW_TIMES),
    "train.precision": tuple(PRECISIONS),
    "train.lr_decay": LR_DECAYS,
    "data.conditional": CONDITIONAL,
    "sample.sampler": tuple(SAMPLERS),
    "sample.variance": tuple(VARIANCES),
    "sample.spacing": ("auto", *SPACINGS),
    "model.downsample_pad": DOWNSAMPLE_PADS,
}


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SampleConfig = field(default_factory=SampleConfig)

    # ----------------------------------------------------------------- construction
    @classmethod
    def from_dict(cls, d: Any, source: str = "<dict>") -> Config:
        """Build a config from nested dicts; unknown keys and wrong types raise ConfigError."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping of sections, got {type(d).__name__}")
        sections = {}
        for name, value in d.items():
            if name not in SECTIONS:
                raise ConfigError(
                    f"{source}: unknown section {name!r} (known: {', '.join(SECTIONS)})"
                )
            sections[name] = _section_from_dict(SECTIONS[name], name, value, source)
        cfg = cls(**sections)
        cfg.validate(source)
        return cfg

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> Config:
        """Read a YAML (.yaml/.yml), TOML (.toml) or JSON (.json) file, strictly."""
        return cls.from_dict(read_config_file(path), source=str(path))

    def own_guide_step(self, max_steps: int | None = None) -> int | None:
        """The step of the checkpoint ``sample.guide = "@F"`` names: round(F x
        ``train.max_steps``) (or of ``max_steps``: a time budget's candidate run lengths), at
        least 1 (None for another guide, or an F out of (0, 1), which
        :meth:`SampleConfig.check_guidance` refuses). The trainer keeps that checkpoint past
        ``train.keep_last``; ``runs.resolve_own_guide`` finds it."""
        f = self.sample.own_guide()
        if f is None or not 0 < f < 1:
            return None
        return max(1, round(f * (self.train.max_steps if max_steps is None else max_steps)))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        out: dict[str, dict[str, Any]] = {}
        for name in SECTIONS:
            sec = dataclasses.asdict(getattr(self, name))
            out[name] = {k: list(v) if isinstance(v, tuple) else v for k, v in sec.items()}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    def replace(self, **sections: Any) -> Config:
        return dataclasses.replace(self, **sections)

    def override(self, assignments: dict[str, Any], source: str = "command line") -> Config:
        """Apply ``{"train.lr": 1e-3, ...}`` (values already typed or strings to parse)."""
        d = self.to_dict()
        for key, value in assignments.items():
            if "." not in key:
                raise ConfigError(f"{source}: override {key!r} must look like section.key")
            sec, _, name = key.partition(".")
            if sec not in SECTIONS:
                raise ConfigError(f"{source}: unknown section {sec!r} in {key!r}")
            if name not in {f.name for f in dataclasses.fields(SECTIONS[sec])}:
                raise ConfigError(f"{source}: unknown key {_short(key)}")
            if isinstance(value, str):
                value = _parse_scalar(value, _field_type(SECTIONS[sec], name), key, source)
            d[sec][name] = value
        if "data.recipe" not in assignments:   # a value the user sets is theirs, not the recipe's
            d["data"]["recipe"] = [k for k in d["data"]["recipe"] if k not in assignments]
        return Config.from_dict(d, source)

    # ----------------------------------------------------------------- validation
    def validate(self, source: str = "<config>") -> None:
        """Range checks that types alone cannot express (each error names the key and
        ``source``): choices, counts, numbers, then the keys that depend on each other."""

        def bad(key: str, value: Any, why: str) -> ConfigError:
            return ConfigError(f"{source}: {key}={_short(value)} {why}")

        for key, choices in _CHOICES.items():
            sec, name = key.split(".")
            value = getattr(getattr(self, sec), name)
            if value not in choices:
                raise bad(key, value, f"is not one of {', '.join(choices)}")
        self._check_counts(bad)
        self._check_numbers(bad)
        self._check_combinations(bad)
        self._check_phema(bad)
        self.sample.check_options(source)
        self.sample.check_guidance(source)

    def _check_counts(self, bad: Callable) -> None:
        """Counts and sizes that must be >= 1 or bounded."""
        m, dif, tr, s = self.model, self.diffusion, self.train, self.sample
        positive = {
            "model.in_channels": m.in_channels, "model.image_size": m.image_size,
            "model.base_channels": m.base_channels, "model.num_res_blocks": m.num_res_blocks,
            "model.num_heads": m.num_heads, "model.norm_groups": m.norm_groups,
            "diffusion.timesteps": dif.timesteps, "train.batch_size": tr.batch_size,
            "train.grad_accum": tr.grad_accum, "train.max_steps": tr.max_steps,
            "train.log_every": tr.log_every, "train.ckpt_every": tr.ckpt_every,
            "train.keep_last": tr.keep_last, "train.phema_every": tr.phema_every,
            "sample.n": s.n, "sample.batch_size": s.batch_size,
        }
        for key, value in positive.items():
            if value < 1:
                raise bad(key, value, "must be >= 1")
        if dif.timesteps > MAX_TIMESTEPS:  # (the schedule's float64 columns: ~160 bytes per t)
            raise bad("diffusion.timesteps", dif.timesteps, f"must be <= {MAX_TIMESTEPS:,} (its "
                      f"schedule alone would take {format_size(dif.timesteps * 160)})")
        if dif.objective == "ddpm" and dif.schedule == "linear" \
                and (why := linear_problem(dif.timesteps)) is not None:
            raise bad("diffusion.timesteps", dif.timesteps, f"with diffusion.schedule=linear: {why}")
        if not m.channel_mult or any(c < 1 for c in m.channel_mult):
            raise bad("model.channel_mult", list(m.channel_mult), "must be positive integers")
        if any(r < 1 for r in m.attention_resolutions):
            raise bad("model.attention_resolutions", list(m.attention_resolutions), "must be >= 1")

    def _check_numbers(self, bad: Callable) -> None:
        """Numbers that must be finite, non-negative or in a range."""
        m, dif, data, tr, s = self.model, self.diffusion, self.data, self.train, self.sample
        nonneg = {
            "model.num_classes": m.num_classes, "data.image_size": data.image_size,
            "data.channels": data.channels, "train.warmup_steps": tr.warmup_steps,
            "train.weight_decay": tr.weight_decay, "train.grad_clip": tr.grad_clip,
            "train.sample_every": tr.sample_every, "train.time_limit_min": tr.time_limit_min,
            "train.watch_copies": tr.watch_copies, "model.augment_dim": m.augment_dim,
            "train.time_budget_min": tr.time_budget_min,
            "sample.steps": s.steps, "sample.eta": 0.0 if s.eta is None else s.eta,
            "sample.guidance": s.guidance,
            "diffusion.min_snr_gamma": dif.min_snr_gamma,
            "diffusion.vlb_weight": dif.vlb_weight,
        }
        for key, value in nonneg.items():
            if not value >= 0 or (isinstance(value, float) and not math.isfinite(value)):
                raise bad(key, value, "must be a finite number >= 0")
        if s.guidance > MAX_GUIDANCE:  # (w (eps_c - eps_u) overflows: all-zero images)
            raise bad("sample.guidance", s.guidance, f"must be at most {MAX_GUIDANCE:,.0f}")
        if not (0 < m.norm_eps < 1):
            raise bad("model.norm_eps", m.norm_eps, "must be in (0, 1)")
        if not 0 <= m.dropout < 1:
            raise bad("model.dropout", m.dropout, "must be in [0, 1)")
        if not 0 <= data.p_uncond <= 1:
            raise bad("data.p_uncond", data.p_uncond, "must be in [0, 1]")
        if not 0 <= tr.augment <= 1:
            raise bad("train.augment", tr.augment, "must be a probability in [0, 1] (0: off)")
        if not 0 <= tr.seed < 2**63:
            raise bad("train.seed", tr.seed, "must be in 0..2**63-1")
        if not (tr.lr > 0 and math.isfinite(tr.lr)):
            raise bad("train.lr", tr.lr, "must be a finite number > 0")
        if not 0 <= tr.ema_decay < 1:
            raise bad("train.ema_decay", tr.ema_decay, "must be in [0, 1)")

    def _check_combinations(self, bad: Callable) -> None:
        """Keys whose valid values depend on other keys."""
        m, dif, data, tr, s = self.model, self.diffusion, self.data, self.train, self.sample
        if tr.time_budget_min and tr.lr_decay != "none" and tr.warmup_steps < BUDGET_WINDOW[1]:
            raise bad("train.time_budget_min", tr.time_budget_min, f"with train.lr_decay="
                      f"{tr.lr_decay} needs train.warmup_steps >= {BUDGET_WINDOW[1]} (the LR of "
                      "the timed steps must not depend on the max_steps they choose)")
        if s.steps > dif.timesteps:
            raise bad("sample.steps", s.steps, f"exceeds diffusion.timesteps={dif.timesteps}")
        if data.channels not in (0, 1, 3):
            raise bad("data.channels", data.channels, "must be 0 (as stored), 1 or 3")
        if tr.batch_size % tr.grad_accum:
            raise bad("train.batch_size", tr.batch_size,
                      f"must be divisible by train.grad_accum={tr.grad_accum}")
        if dif.loss != "simple" and not m.learn_sigma:
            raise bad("diffusion.loss", dif.loss, "trains the reverse variance: it needs "
                      "model.learn_sigma=true")
        if m.learn_sigma and dif.loss == "simple":
            raise bad("model.learn_sigma", True, "needs diffusion.loss=hybrid or vlb (the simple "
                      "loss does not train the variance)")
        if dif.loss == "hybrid" and not dif.vlb_weight > 0:
            raise bad("diffusion.vlb_weight", dif.vlb_weight, "must be > 0 with "
                      "diffusion.loss=hybrid (0 leaves the variance untrained)")
        if dif.loss == "vlb" and dif.loss_weighting != "uniform":
            raise bad("diffusion.loss_weighting", dif.loss_weighting, "weights the simple loss, "
                      "which diffusion.loss=vlb does not use")
        if not (dif.sigma_data > 0 and math.isfinite(dif.sigma_data)):
            raise bad("diffusion.sigma_data", dif.sigma_data, "must be a finite number > 0")
        if not math.isfinite(dif.p_mean):
            raise bad("diffusion.p_mean", dif.p_mean, "must be a finite number")
        if not (dif.p_std > 0 and math.isfinite(dif.p_std)):
            raise bad("diffusion.p_std", dif.p_std, "must be a finite number > 0")
        _check_objective_keys(dif, m.learn_sigma, bad)
        if m.learn_sigma and s.variance != "small":
            raise bad("sample.variance", s.variance, "is a fixed variance; a model.learn_sigma "
                      "run samples with its own")

    def _check_phema(self, bad: Callable) -> None:
        """The post-hoc EMA's lengths."""
        sig = self.train.phema_sigma_rels
        if not sig or len(set(sig)) != len(sig):
            raise bad("train.phema_sigma_rels", list(sig), "must be one or more distinct numbers")
        if not all(0 < v < MAX_SIGMA_REL for v in sig):
            raise bad("train.phema_sigma_rels", list(sig), f"must each lie in (0, "
                      f"{MAX_SIGMA_REL:.4f}) (the relative std of a power-function EMA)")


def _check_objective_keys(dif: DiffusionConfig, learn_sigma: bool, bad: Callable) -> None:
    """The one rule for every objective of ``OBJECTIVES``: a ``diffusion.*`` key that some
    objective reads (its class's ``reads``) but the run's objective does not must keep its
    default, and so must ``model.learn_sigma`` (read by the objectives with
    ``learned_variance``). A new objective declares its keys and needs no rule here."""
    chosen, default = OBJECTIVES[dif.objective], DiffusionConfig()

    def owners(has: Callable[[type], bool]) -> str:
        return " or ".join(name for name, cls in OBJECTIVES.items() if has(cls))

    preset = f"mnist-{dif.objective}"
    hint = f", or start from the {preset} preset" if preset in PRESETS else ""
    for f in dataclasses.fields(DiffusionConfig):
        value, want = getattr(dif, f.name), getattr(default, f.name)
        if f.name in chosen.reads or value == want:
            continue
        readers = owners(lambda cls, key=f.name: key in cls.reads)
        if readers:
            raise bad(f"diffusion.{f.name}", value, f"applies to diffusion.objective={readers} "
                      f"only (this run's is {dif.objective!r}): set it to {want!r}{hint}")
    if learn_sigma and not chosen.learned_variance:
        raise bad("model.learn_sigma", True, "applies to diffusion.objective="
                  f"{owners(lambda cls: cls.learned_variance)} only (this run's is "
                  f"{dif.objective!r})")


PRESETS = ("mnist", "fashion-mnist", "fashion-mnist-10min", "fashion-mnist-60min",
           "cifar10", "mnist-flow", "mnist-edm")


def preset_path(name: str) -> Path:
    """The packaged config file of a preset (one of :data:`PRESETS`)."""
    return Path(__file__).parent / "configs" / f"{name}.yaml"


def load_config(name_or_path: str | os.PathLike) -> Config:
    """A preset name or a config file path -> Config (files are read strictly)."""
    if str(name_or_path) in PRESETS:
        return Config.from_file(preset_path(str(name_or_path)))
    return Config.from_file(name_or_path)


MAX_CONFIG_BYTES = 1 << 20     # a config is a few hundred bytes; 1 MiB bounds a hostile one
MAX_YAML_ALIASES = 20          # YAML aliases ("*name") per file: bounds an alias bomb


def _short(value: Any, limit: int = 80) -> str:
    """A bounded ``repr(value)`` for error messages: strings are cut to ``limit`` characters,
    containers to a few items and levels (``reprlib``), so a hostile value never makes a long
    or slow message."""
    if isinstance(value, str) and len(value) > limit:
        return f"{value[:limit]!r}... ({len(value)} characters)"
    r = reprlib.Repr()
    r.maxlevel, r.maxlist, r.maxtuple, r.maxdict, r.maxstring, r.maxother = 3, 6, 6, 6, limit, limit
    return r.repr(value)


def _load_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses more than :data:`MAX_YAML_ALIASES` aliases (a 468-byte
    document of nested aliases otherwise expands to gigabytes)."""
    import yaml

    class Loader(yaml.SafeLoader):
        aliases = 0

        def compose_node(self, parent, index):  # type: ignore[override]
            if self.check_event(yaml.AliasEvent):
                Loader.aliases += 1
                if Loader.aliases > MAX_YAML_ALIASES:
                    raise ValueError(f"more than {MAX_YAML_ALIASES} YAML aliases")
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def read_config_file(path: str | os.PathLike) -> Any:
    """Parse a YAML/TOML/JSON file as plain data (never executes anything). Only a regular
    file of at most :data:`MAX_CONFIG_BYTES` is read (not a FIFO or a device)."""
    p = Path(path)
    try:
        if not p.exists():
            raise FileNotFoundError
        if not p.is_file():
            raise ConfigError(f"{p}: not a regular file (a config must be a YAML, TOML or "
                              "JSON file)")
        if p.stat().st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{p}: {p.stat().st_size} bytes is too large for a config file "
                              f"(at most {MAX_CONFIG_BYTES})")
        with open(p, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES + 1).decode("utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{p}: config file not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{p}: cannot read config file ({e})") from None
    suffix = p.suffix.lower()
    if suffix == ".json":   # bounded: duplicate keys, depth, integer length (io.loads_json)
        from .io import loads_json

        return loads_json(text, str(p), ConfigError)
    try:
        if suffix in (".yaml", ".yml"):
            import yaml

            doc = _load_yaml(text) or {}
            # a key given twice used to take the last value silently; aliases are not
            # followed (each node is visited once), so this walk stays linear
            stack, seen = [yaml.compose(text, Loader=yaml.SafeLoader)], set()
            while stack:
                node = stack.pop()
                if node is None or id(node) in seen:
                    continue
                seen.add(id(node))
                if isinstance(node, yaml.MappingNode):
                    keys: set[str] = set()
                    for k, _ in node.value:
                        if isinstance(k, yaml.ScalarNode):
                            if k.value in keys:
                                raise ValueError(f"duplicate key {k.value[:80]!r}")
                            keys.add(k.value)
                    stack += [n for pair in node.value for n in pair]
                elif isinstance(node, yaml.SequenceNode):
                    stack += node.value
            return doc
        if suffix == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python 3.10
                import tomli as tomllib  # type: ignore[no-redef]
            return tomllib.loads(text)
    except Exception as e:  # every parser's own error type -> one clear message
        why = " ".join(str(e).split())[:200]
        raise ConfigError(f"{p}: not valid {suffix[1:].upper()} ({why})") from None
    raise ConfigError(f"{p}: unknown config format {suffix!r} (use .yaml, .toml or .json)")


# --------------------------------------------------------------------------- helpers
def _field_type(cls: type, name: str) -> Any:
    return typing.get_type_hints(cls)[name]


def _section_from_dict(cls: type, section: str, d: Any, source: str) -> Any:
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: section {section!r} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in d.items():
        if not isinstance(key, str) or key not in hints:
            known = ", ".join(f.name for f in dataclasses.fields(cls))
            name = str(key) if len(str(key)) <= 60 else f"{str(key)[:60]}..."
            raise ConfigError(f"{source}: unknown key '{section}.{name}' (known: {known})")
        if (section, key) == ("data", "conditional") and isinstance(value, bool):
            value = "true" if value else "false"  # YAML's true/false for the tri-state
        kwargs[key] = _coerce(value, hints[key], f"{section}.{key}", source)
    return cls(**kwargs)


def _coerce(value: Any, typ: Any, key: str, source: str) -> Any:
    """Check ``value`` against ``typ`` (int, float, bool, str, tuple[int, ...]); no guessing."""

    def wrong() -> ConfigError:
        return ConfigError(
            f"{source}: {key} must be {_type_name(typ)}, got {_short(value)} "
            f"({type(value).__name__})"
        )

    origin = typing.get_origin(typ)
    if origin is tuple:
        (elem, _) = typing.get_args(typ)
        if not isinstance(value, (list, tuple)):
            raise wrong()
        return tuple(_coerce(v, elem, key, source) for v in value)
    if origin in (typing.Union, types.UnionType):   # only "X | None" is used
        inner = [a for a in typing.get_args(typ) if a is not type(None)]
        if value is None:
            return None
        if len(inner) != 1:
            raise wrong()
        return _coerce(value, inner[0], key, source)
    if typ is bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    if typ is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wrong()
        return value
    if typ is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise wrong()
        try:
            return float(value)
        except OverflowError:  # an integer beyond the float range (JSON/YAML allow any size)
            raise ConfigError(f"{source}: {key}={str(value)[:12]}... is too large for a number")\
                from None
    if typ is str:
        if not isinstance(value, str):
            raise wrong()
        return value
    raise wrong()


def _type_name(typ: Any) -> str:
    if typing.get_origin(typ) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(typ) if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    if typing.get_origin(typ) is tuple:
        return f"a list of {_type_name(typing.get_args(typ)[0])}s"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        typ, str(typ)
    )


def _parse_scalar(text: str, typ: Any, key: str, source: str) -> Any:
    """Parse a command-line override (``train.lr=1e-3``, ``model.channel_mult=1,2,2``)."""
    try:
        if typing.get_origin(typ) in (typing.Union, types.UnionType):
            if text.strip().lower() in ("none", "null", ""):
                return None
            inner = [a for a in typing.get_args(typ) if a is not type(None)]
            return _parse_scalar(text, inner[0], key, source)
        if typing.get_origin(typ) is tuple:
            elem = typing.get_args(typ)[0]
            parts = [p for p in text.replace("[", "").replace("]", "").split(",") if p.strip()]
            return tuple(_parse_scalar(p.strip(), elem, key, source) for p in parts)
        if typ is bool:
            low = text.strip().lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if typ is int:
            return int(text)
        if typ is float:
            return float(text)
        return text
    except ValueError:
        raise ConfigError(f"{source}: {key} must be {_type_name(typ)}, got {text!r}") from None
