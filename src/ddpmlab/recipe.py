"""The recipe: what a preset would hard-code, derived from the data (issue 32).

A preset lists the keys the data may decide in ``data.recipe`` (the ``mnist``, ``mnist-flow``
and ``mnist-edm`` presets list the keys of :data:`RECIPE_KEYS`). ``Config.override`` removes
a key from that list when the user sets it (``key=value``, or a flag such as
``--time-budget``), so **a value the user gives is never changed**; a config file without
``data.recipe`` is used as written. The trainer (``train.setup.resolve_config``) measures the
data (:class:`DataStats`), calls :func:`apply_recipe`, prints its one line and writes the
resolved config, with ``data.recipe`` emptied (every value is now fixed: ``--resume`` and a
copy of ``config.json`` repeat the run as it was chosen).

This module knows no data, network or trainer: it maps four numbers to config values.

**The rules**, each anchored on the main job (the ``mnist`` preset on 4,500 gray 28x28
digits, 10 classes), which they reproduce exactly (``tests/test_recipe.py``):

* **Depth** (``model.channel_mult``): halve the image until its lowest-resolution level is 4
  to 8 px (``levels = max(2, 1 + ceil(log2(size / 8)))``): the lowest level holds the layout
  of the whole image, so it stays the same few pixels whatever the image size (28 px: 28, 14,
  7; 32 px: 32, 16, 8; 64 px: 64, 32, 16, 8). Level 0 and levels larger than 32 px have the
  base width (x1: there the convolutions cost most), the others twice it (x2): (1, 2, 2) at 28
  and 32 px, (1, 2, 2, 2) at 64, (1, 1, 2, 2, 2) at 128.
* **Attention** (``model.attention_resolutions``), at levels relative to the depth, never at
  absolute sizes: the lowest-resolution level, and with 4 levels or more also the one above
  it (16 px at 64 and 128 px, where DDPM's models attend). The middle block always has its
  own. So 28 px gets ``[7]`` (the preset's), 32 px ``[8]``, 64 px ``[16, 8]``.
* **Width** (``model.base_channels``): the widest of 32, 48, 64, 96, 128 whose estimated
  compute per image (:func:`image_cost`: the 3x3 convolutions and the attention of every
  level) is at most the main job's, and at least 32: under a fixed time budget a wider
  network buys quality only where the images are small enough to pay for it (8x8 digits:
  96; 28 and 32 px: 32; above, 32 and more time).
* **Batch** (``train.batch_size``): the main job's 32, but at most a quarter of the images
  (rounded down to a power of two, at least 1), so that an epoch is at least four different
  batches: 50 images train with batches of 8. A batch the user sets is kept; one larger than
  the data set is refused in one line naming ``train.batch_size``.
* **Learning rate** (``train.lr``): the main job's 2e-3 at batch 32, scaled by
  ``sqrt(batch / 32)`` (Adam's square-root rule, Malladi et al. 2022) for the run's batch,
  the recipe's or the user's.
* **Time budget** (``train.time_budget_min``, and ``train.time_limit_min`` = budget + 1 min,
  the preset's margin): as long as the main job's ~800 steps take at the reference speed
  (2 AVX2 cores: 1.9 main-job steps/s, README), at least the main job's 7 minutes and at most
  60: estimated step compute (batch x :func:`image_cost`) over the main job's, times 7 min.
  The time budget then counts the steps on the machine itself.
* **EMA** (``train.ema_decay``): an averaging length ``1 / (1 - decay)`` of half the expected
  steps (the budget's at the reference speed, or ``train.max_steps`` without a budget),
  rounded down to 1, 2 or 5 x 10^k, at least 1,000 and at most 10,000 steps (EDM2: the best
  length is a share of the run; the EMA warm-up ``(1 + t) / (10 + t)`` already covers short
  runs). The main job (~800 steps): 0.999; the fashion-mnist-60min preset's 5,638 steps give
  its 0.9995.
* **Classes** change nothing above: a class is one embedding vector.
* **Guidance** (``sample.guidance``, classifier-free): :data:`GUIDANCE_SHORT` (2) for runs
  of fewer than :data:`GUIDANCE_LONG_STEPS` steps, :data:`GUIDANCE_LONG` (1.5) from there:
  a longer-trained model follows its class without being pushed as hard, and the weight a
  short run needs costs a long one diversity. **By measurement** on the main job's model
  (BENCHMARKS.md §12, 1,000 samples, the preset's sampler and autoguide, bf16): at 850 steps
  w = 2 is best (FID 2.74 and 97.4% read as asked against 3.26 and 93.7% at 1.5); at 1,400
  the FIDs tie (1.94, 1.89) and 1.5 reads 3 points fewer (95.0% against 98.0%); at 3,131 (a
  bf16 machine's 7 minutes) 1.5 is best (FID 1.12 against 1.97, at the real-vs-real floor,
  98.6% read). 2,000 lies between (the issue's probe at 2,000 steps favoured 1.5). The
  steps are the run's ``train.max_steps``; under a time budget they are known only once the
  budget has timed its steps, so the key stays in ``data.recipe`` until then
  (:data:`LATE_KEYS`) and the trainer decides it there (:func:`after_sizing`, one printed
  line) before writing ``config.json`` again. **Only on MNIST**
  (:data:`GUIDANCE_BY_LENGTH_DATA`): what decides is how close the model is to its data,
  which steps do not say across data sets: the emoji set at 5,000 steps (FID 8.6 against a
  floor of 1.7) is guided better at 2 than at 1.5 (FID 8.63 and 64.9% read as the group
  asked against 8.88 and 58.9%), so every other data set keeps 2.
* **Sampler** (``sample.sampler`` with ``sample.steps``, a pair: one the user sets keeps
  both): :data:`SAMPLER_SHORT` for runs of fewer than :data:`SAMPLER_LONG_STEPS` steps,
  :data:`SAMPLER_LONG` from there, decided with the guidance (late under a time budget); only
  where a preset lists the pair (the ``mnist`` preset: its DDPM solvers) and on MNIST (other
  data: :data:`SAMPLER_LONG`, with which every emoji and folder figure was measured). **By
  measurement** (BENCHMARKS.md §12c, 1,000 samples, w = 2 and the preset's autoguide): at 850
  steps the stochastic DPM-Solver++(2M) SDE beats the ODE solver DPM-Solver++(2M) at 20 steps
  (fp32, as the AVX2 machine trains: FID 2.49 at 10 SDE steps against 3.09; bf16: 2.57 and
  2.16 at 10 and 20 SDE steps against 2.74; the AVX2 machine's own 850-step model: 2.55
  against 3.10); at 1,400 the ODE solver wins (1.94 against 2.50 at 10 SDE steps) and at
  2,844 too (1.20 against 1.28 at 20 SDE steps and 2.08 at 10): noise corrects a short run's
  errors, a long run's model is accurate enough for the ODE. 1,000 lies between 850 and 1,400.
* **Augmentation** (``train.augment``): EDM's non-leaking augmentation with p =
  :data:`AUGMENT_P` when each training image is expected to be seen at least
  :data:`AUGMENT_PASSES` times (the expected steps, as for the EMA, x batch / images), else
  off. **By measurement** (``benchmarks/augment_small.py``, BENCHMARKS.md §13; no copies with
  or without it in any row): emoji, 500 images at 51 passes: +3.6 FID (two seeds, spread
  0.76); emoji, 100 images at 256 passes: -3.4 on one seed (AVX2, fp32), +4.5 on another
  (bf16), a wash; Fashion-MNIST, 500 images at 51 passes: +9.5 (two seeds, spread 0.76), 250
  at 128 passes: +8.1. Up to 256 passes nothing copied and it cost FID in four of five
  comparisons, so :data:`AUGMENT_PASSES` is twice that length: no default budget turns it on
  (in theirs 40 images are seen ~490 times, 100 ~195). At 1,024 passes over 50 emoji the
  model copies (6.0% near-copies) and augmentation removes the copies (0.0%) at +6.9 FID,
  one seed: on there. ``train.augment=0.15`` turns it on for any run; the copy watch says
  when copying starts.
* **Copy watch** (``train.watch_copies``): below :data:`WATCH_BELOW` training images,
  :data:`WATCH_SAMPLES` EMA samples at each checkpoint (``runs.CopyWatch``: the share of
  near-copies of training images beside the held-out images' own, in ``metrics.jsonl`` and
  the report, and one warning line when it rises); at or above it, off, so the main job's
  time is unchanged. 64 samples resolve a share to 1/64, finer than the watch's 2% margin,
  and cost about as much as 40 training steps with the presets' 20-step samplers.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

from .config import Config
from .errors import ConfigError

__all__ = ["AUGMENT_P", "AUGMENT_PASSES", "GUIDANCE_BY_LENGTH_DATA", "GUIDANCE_LONG",
           "GUIDANCE_LONG_STEPS", "GUIDANCE_SHORT", "LATE_KEYS", "RECIPE_KEYS", "SAMPLER_KEYS",
           "SAMPLER_LONG", "SAMPLER_LONG_STEPS", "SAMPLER_SHORT", "WATCH_BELOW", "WATCH_SAMPLES",
           "DataStats", "Recipe", "after_sizing", "apply_recipe", "check_fit", "choose",
           "guidance_for", "image_cost", "level_sizes", "sampler_for"]

RECIPE_KEYS: tuple[str, ...] = (
    "model.base_channels", "model.channel_mult", "model.attention_resolutions",
    "train.batch_size", "train.lr", "train.ema_decay", "train.time_budget_min",
    "train.time_limit_min", "train.augment", "train.watch_copies", "sample.guidance",
    "sample.sampler", "sample.steps",
)

# The main job (configs/mnist.yaml on 4,500 MNIST digits) the rules are anchored on.
REF_SIZE, REF_BASE, REF_MULT, REF_ATTN, REF_BLOCKS = 28, 32, (1, 2, 2), (7,), 1
REF_BATCH, REF_LR = 32, 2e-3
REF_BUDGET_MIN, BUDGET_MAX_MIN, LIMIT_MARGIN_MIN = 7.0, 60.0, 1.0
REF_STEPS_PER_S = 1.9           # the main job on the reference machine (2 AVX2 cores, fp32)
WIDTHS = (32, 48, 64, 96, 128)
EMA_MIN, EMA_MAX = 1_000, 10_000
#: augmentation on when each training image is expected to be seen at least this many times:
#: twice the longest measured (256 passes, where it gained on one seed and lost on the other);
#: at 51 and 128 it cost FID and nothing copied at any, so no default budget turns it on;
#: probability AUGMENT_P per transform (EDM used 0.12 on CIFAR-10's 50,000)
AUGMENT_PASSES, AUGMENT_P = 512, 0.15
#: classifier-free guidance by the trained length: GUIDANCE_SHORT below GUIDANCE_LONG_STEPS
#: steps, GUIDANCE_LONG from there (BENCHMARKS.md §12: a longer-trained model needs less)
GUIDANCE_LONG_STEPS, GUIDANCE_SHORT, GUIDANCE_LONG = 2_000, 2.0, 1.5
#: the data the length rules are measured on; elsewhere the guidance stays GUIDANCE_SHORT (the
#: emoji set at 5,000 steps, far from its floor, is guided better at 2 than at 1.5) and the
#: sampler SAMPLER_LONG (every emoji and folder figure was measured with it)
GUIDANCE_BY_LENGTH_DATA: tuple[str, ...] = ("mnist",)
#: the sampler and its steps by the trained length (``sample.sampler`` with ``sample.steps``):
#: SAMPLER_SHORT below SAMPLER_LONG_STEPS steps, SAMPLER_LONG from there (BENCHMARKS.md §12c)
SAMPLER_LONG_STEPS = 1_000
SAMPLER_SHORT: tuple[str, int] = ("dpmpp_2m_sde", 10)
SAMPLER_LONG: tuple[str, int] = ("dpm_solver", 20)
SAMPLER_KEYS: tuple[str, ...] = ("sample.sampler", "sample.steps")
#: keys a time-budgeted run decides once the budget has sized it (:func:`after_sizing`)
LATE_KEYS: tuple[str, ...] = ("sample.guidance", *SAMPLER_KEYS)
#: the copy watch on below this many training images (between the emoji set's 1,683 and the
#: main job's 4,500, which stays unwatched), with this many samples per checkpoint
WATCH_BELOW, WATCH_SAMPLES = 2_000, 64


@dataclass(frozen=True)
class DataStats:
    """What the recipe knows of the data: square images of ``image_size`` px with
    ``channels`` planes, ``count`` training images, ``num_classes`` (0: unlabelled)."""

    image_size: int
    channels: int
    count: int
    num_classes: int


def level_sizes(image_size: int, levels: int) -> list[int]:
    """The UNet's level sizes (``ceil(size / 2**l)``, as ``nn.UNet`` names them)."""
    return [math.ceil(image_size / 2**lvl) for lvl in range(levels)]


def _depth(size: int) -> tuple[int, ...]:
    levels = max(2, 1 + math.ceil(math.log2(max(size, 1) / 8)))
    sizes = level_sizes(size, levels)
    return tuple(1 if lvl == 0 or s > 32 else 2 for lvl, s in enumerate(sizes))


def _attention(size: int, levels: int) -> tuple[int, ...]:
    sizes = level_sizes(size, levels)
    return tuple(sizes[-2:]) if levels >= 4 else (sizes[-1],)


def image_cost(size: int, base: int, mult: tuple[int, ...], attention: tuple[int, ...],
               blocks: int = REF_BLOCKS) -> float:
    """Relative compute of one image through the UNet: per level, its 3x3 convolutions
    (``2 * (2 * blocks + 1)`` of them, down and up, ~ pixels x channels^2 x 9) and, at an
    attention level, its attention (~ pixels^2 x channels + projections); the middle block
    counts as one more attention level. Only ratios of this number are used."""
    cost = 0.0
    sizes = level_sizes(size, len(mult))
    for s, m in zip(sizes, mult, strict=True):
        ch, n = base * m, s * s
        cost += 2 * (2 * blocks + 1) * 9 * n * ch * ch
        if s in attention:
            cost += (2 * blocks + 1) * (2 * n * n * ch + 4 * n * ch * ch)
    n, ch = sizes[-1] ** 2, base * mult[-1]
    return cost + 2 * n * n * ch + 4 * n * ch * ch


REF_COST = image_cost(REF_SIZE, REF_BASE, REF_MULT, REF_ATTN) * REF_BATCH


def _nice_floor(x: float) -> int:
    """The largest 1, 2 or 5 x 10^k that is <= x (x >= 1)."""
    k = 10 ** math.floor(math.log10(x))
    return max(m * k for m in (1, 2, 5) if m * k <= x)


@dataclass(frozen=True)
class Recipe:
    """The values the recipe chose (config key -> value) and, per key, why."""

    values: dict[str, Any]
    reasons: dict[str, str]
    late: tuple[str, ...] = ()    # keys left for after the time budget's sizing

    def line(self, stats: DataStats) -> str:
        """The one line the trainer prints."""
        kind = f"{stats.image_size} px {'RGB' if stats.channels == 3 else 'gray'}"
        classes = f"{stats.num_classes} classes" if stats.num_classes else "unlabelled"
        said = "; ".join(self.reasons[k] for k in self.reasons)
        return (f"ddpmlab: recipe for {stats.count:,} images of {kind}, {classes}: {said} "
                "(set a key to choose it)")


def choose(stats: DataStats, cfg: Config, keys: set[str]) -> Recipe:
    """The recipe's values for ``keys`` (a subset of :data:`RECIPE_KEYS`); every other value
    (the user's or the preset's) is read from ``cfg`` and kept."""
    m, tc, size = cfg.model, cfg.train, stats.image_size
    values: dict[str, Any] = {}
    why: dict[str, str] = {}
    mult = _depth(size) if "model.channel_mult" in keys else m.channel_mult
    attn = _attention(size, len(mult)) if "model.attention_resolutions" in keys \
        else m.attention_resolutions
    base = m.base_channels
    if "model.base_channels" in keys:
        fits = [w for w in WIDTHS if image_cost(size, w, mult, attn, m.num_res_blocks)
                <= image_cost(REF_SIZE, REF_BASE, REF_MULT, REF_ATTN)]
        base = max(fits, default=WIDTHS[0])
    cost = image_cost(size, base, mult, attn, m.num_res_blocks)
    rel = cost / image_cost(REF_SIZE, REF_BASE, REF_MULT, REF_ATTN)
    if "model.base_channels" in keys:
        values["model.base_channels"] = base
        why["model.base_channels"] = (f"base_channels {base} (the widest at most an MNIST "
                                      f"image's compute, >= 32; {rel:.2g}x)")
    if "model.channel_mult" in keys:
        values["model.channel_mult"] = mult
        why["model.channel_mult"] = (f"channel_mult {list(mult)} ({len(mult)} levels, down to "
                                     f"{level_sizes(size, len(mult))[-1]} px)")
    if "model.attention_resolutions" in keys:
        values["model.attention_resolutions"] = attn
        which = "the two lowest-resolution levels" if len(attn) == 2 \
            else "the lowest-resolution level"
        why["model.attention_resolutions"] = f"attention at {list(attn)} px ({which})"
    batch = tc.batch_size
    if "train.batch_size" in keys:
        batch = max(1, min(REF_BATCH, 2 ** math.floor(math.log2(max(stats.count // 4, 1)))))
        values["train.batch_size"] = batch
        why["train.batch_size"] = f"batch {batch}" + (
            f" (at most a quarter of the {stats.count} images)" if batch < REF_BATCH else "")
    if "train.lr" in keys:
        lr = float(f"{REF_LR * math.sqrt(batch / REF_BATCH):.3g}")
        values["train.lr"] = lr
        why["train.lr"] = f"lr {lr:g} (2e-3 x sqrt(batch/32))"
    steps = _time(stats, tc, keys, batch * cost / REF_COST, values, why)
    _protection(stats, keys, values, why, steps * batch / max(stats.count, 1))
    measured = cfg.data.dataset.strip().lower() in GUIDANCE_BY_LENGTH_DATA
    late: list[str] = []
    for rule in _length_rules():
        if not set(rule.keys) <= keys:       # (a pair: one the user set keeps both)
            continue
        if not measured:
            values.update(rule.elsewhere[0])
            why[rule.keys[0]] = rule.elsewhere[1]
        elif tc.time_budget_min:             # the steps are known once the budget has timed them
            late.extend(rule.keys)
            why[rule.keys[0]] = rule.pending
        else:
            chosen, why[rule.keys[0]] = rule.decide(tc.max_steps)
            values.update(chosen)
    return Recipe(values, why, tuple(late))


def _sampler(choice: tuple[str, int]) -> str:
    return f"{choice[0]} {choice[1]} steps"


@dataclass(frozen=True)
class _LengthRule:
    """Keys the recipe decides by the trained length (:data:`LATE_KEYS`): ``decide(steps)``
    gives their values and why; ``elsewhere`` the values and why on data the rule was not
    measured on; ``pending`` what the recipe line says while a time budget has not yet sized
    the run."""

    keys: tuple[str, ...]
    decide: Callable[[int], tuple[dict[str, Any], str]]
    elsewhere: tuple[dict[str, Any], str]
    pending: str


def _length_rules() -> tuple[_LengthRule, ...]:
    """The guidance (:func:`guidance_for`) and the sampler pair (:func:`sampler_for`)."""
    def guidance(n: int) -> tuple[dict[str, Any], str]:
        w, why = guidance_for(n)
        return {"sample.guidance": w}, why

    def sampler(n: int) -> tuple[dict[str, Any], str]:
        name, k, why = sampler_for(n)
        return {"sample.sampler": name, "sample.steps": k}, why

    return (
        _LengthRule(("sample.guidance",), guidance,
                    ({"sample.guidance": GUIDANCE_SHORT},
                     f"guidance {GUIDANCE_SHORT:g} (a lower weight for long runs is measured "
                     "on MNIST only)"),
                    f"guidance {GUIDANCE_SHORT:g} below {GUIDANCE_LONG_STEPS:,} steps, else "
                    f"{GUIDANCE_LONG:g} (chosen when the budget has sized the run)"),
        _LengthRule(SAMPLER_KEYS, sampler,
                    ({"sample.sampler": SAMPLER_LONG[0], "sample.steps": SAMPLER_LONG[1]},
                     f"sampler {_sampler(SAMPLER_LONG)} (the SDE sampler for short runs is "
                     "measured on MNIST only)"),
                    f"sampler {_sampler(SAMPLER_SHORT)} below {SAMPLER_LONG_STEPS:,} steps, "
                    f"else {_sampler(SAMPLER_LONG)} (chosen when the budget has sized the run)"),
    )


def sampler_for(steps: int) -> tuple[str, int, str]:
    """The sampler and its steps for a run of ``steps`` training steps, and why: the
    stochastic DPM-Solver++(2M) SDE at 10 steps corrects a short run's errors where a
    deterministic solver follows them; a long run's model is accurate enough for the ODE
    solver at 20 (BENCHMARKS.md §12c)."""
    long = steps >= SAMPLER_LONG_STEPS
    sampler, n = SAMPLER_LONG if long else SAMPLER_SHORT
    side = ">=" if long else "<"
    return sampler, n, f"sampler {_sampler((sampler, n))} ({steps:,} steps {side} " \
        f"{SAMPLER_LONG_STEPS:,})"


def guidance_for(steps: int) -> tuple[float, str]:
    """The classifier-free guidance weight for a run of ``steps`` steps, and why: a model
    trained longer follows its class without being pushed as hard, and a weight that helps a
    short run costs a long one diversity (BENCHMARKS.md §12, the main job's model: at 850 steps
    w = 2 beats 1.5, FID 2.74 against 3.26; at 3,131, 1.5 beats 2, 1.12 against 1.97)."""
    w = GUIDANCE_LONG if steps >= GUIDANCE_LONG_STEPS else GUIDANCE_SHORT
    side = ">=" if steps >= GUIDANCE_LONG_STEPS else "<"
    return w, f"guidance {w:g} ({steps:,} steps {side} {GUIDANCE_LONG_STEPS:,})"


def _protection(stats: DataStats, keys: set[str], values: dict[str, Any],
                why: dict[str, str], passes: float) -> None:
    """Augmentation from ``passes`` (the expected times each image is seen), the copy watch
    below its data size."""
    n = stats.count
    if "train.augment" in keys:
        on = passes >= AUGMENT_PASSES
        values["train.augment"] = AUGMENT_P if on else 0.0
        why["train.augment"] = (f"augmentation p={AUGMENT_P:g} (each image seen ~{passes:,.0f} "
                                f"times, >= {AUGMENT_PASSES})" if on else "no augmentation")
    if "train.watch_copies" in keys:
        small = n < WATCH_BELOW
        values["train.watch_copies"] = WATCH_SAMPLES if small else 0
        why["train.watch_copies"] = (f"copy watch of {WATCH_SAMPLES} samples per checkpoint "
                                     f"(under {WATCH_BELOW:,} images)" if small
                                     else "no copy watch")


def _time(stats: DataStats, tc: Any, keys: set[str], step_rel: float, values: dict[str, Any],
          why: dict[str, str]) -> float:
    """The time budget (and its limit) and the EMA length from the step's relative cost; the
    steps expected (the budget's at the reference speed, or ``train.max_steps``)."""
    budget = tc.time_budget_min
    if "train.time_budget_min" in keys:
        budget = float(min(BUDGET_MAX_MIN, max(REF_BUDGET_MIN,
                                               math.ceil(REF_BUDGET_MIN * step_rel))))
        values["train.time_budget_min"] = budget
        why["train.time_budget_min"] = (f"time budget {budget:g} min (a step {step_rel:.2g}x "
                                        "the main job's, 7-60 min)")
        if "train.time_limit_min" in keys:
            values["train.time_limit_min"] = budget + LIMIT_MARGIN_MIN
    if budget:
        steps = budget * 60 * REF_STEPS_PER_S / max(step_rel, 1e-9)
        source = f"the ~{steps:,.0f} steps expected"
    else:
        steps, source = float(tc.max_steps), f"max_steps={tc.max_steps}"
    if "train.ema_decay" in keys:
        length = min(EMA_MAX, max(EMA_MIN, _nice_floor(max(steps / 2, 1))))
        decay = round(1 - 1 / length, 6)
        values["train.ema_decay"] = decay
        why["train.ema_decay"] = f"EMA {decay:g} ({length:,} steps: half {source}, >= 1,000)"
    return steps


def apply_recipe(cfg: Config, stats: DataStats) -> tuple[Config, str | None]:
    """``cfg`` with the recipe's values for the keys in ``cfg.data.recipe`` and that list
    emptied, and the one line that says what was chosen and why (None: nothing to choose)."""
    keys = set(cfg.data.recipe)
    unknown = sorted(keys - set(RECIPE_KEYS))
    if unknown:
        raise ConfigError(f"data.recipe: {unknown} cannot be chosen by the recipe (it chooses "
                          f"{', '.join(RECIPE_KEYS)})")
    data = replace(cfg.data, recipe=())
    if not keys:
        return replace(cfg, data=data), None
    recipe = choose(stats, cfg, keys)
    return (_with(replace(cfg, data=replace(data, recipe=recipe.late)), recipe.values),
            recipe.line(stats))


def after_sizing(cfg: Config) -> tuple[Config, str | None]:
    """``cfg`` (whose ``train.max_steps`` a time budget has just set) with the keys the recipe
    left for then (:data:`LATE_KEYS`, still in ``data.recipe``) decided, the list emptied, and
    the line to print (None: nothing was left)."""
    keys, n = set(cfg.data.recipe) & set(LATE_KEYS), cfg.train.max_steps
    if not keys:
        return cfg, None
    values: dict[str, Any] = {}
    said: list[str] = []
    for rule in _length_rules():
        if set(rule.keys) <= keys:
            chosen, why = rule.decide(n)
            values.update(chosen)
            said.append(why)
    out = _with(replace(cfg, data=replace(cfg.data, recipe=())), values)
    return out, "ddpmlab: recipe: " + "; ".join(said)


def _with(cfg: Config, values: dict[str, Any]) -> Config:
    """``cfg`` with ``values`` (``"section.name"`` -> value) set."""
    sections: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        sec, name = key.split(".")
        sections.setdefault(sec, {})[name] = value
    return replace(cfg, **{sec: replace(getattr(cfg, sec), **fields)
                           for sec, fields in sections.items()})


def check_fit(cfg: Config, preset_size: int) -> None:
    """A preset's fixed ``model.attention_resolutions`` that names no level of the data's
    network: one line saying which key to change and to what (the UNet would refuse it with
    the sizes only)."""
    m = cfg.model
    sizes = level_sizes(m.image_size, len(m.channel_mult))
    unknown = sorted(set(m.attention_resolutions) - set(sizes))
    if not unknown:
        return
    made = f" (set for {preset_size} px images)" if preset_size != m.image_size else ""
    fit = _attention(m.image_size, len(sizes))
    which = "the two lowest-resolution levels" if len(fit) == 2 else "the lowest-resolution level"
    raise ConfigError(
        f"model.attention_resolutions={list(m.attention_resolutions)}{made}: {unknown} match no "
        f"level of the network for {m.image_size} px data (level sizes {sizes}); set "
        f"model.attention_resolutions={','.join(map(str, fit))} ({which}), or let the recipe "
        "choose it (data.recipe=model.attention_resolutions)")
