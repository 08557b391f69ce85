"""Tests of ddpmlab.recipe: the config a preset would hard-code, from the data (issue 32)."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmlab.config import Config, load_config
from ddpmlab.data import ImageData
from ddpmlab.errors import ConfigError
from ddpmlab.recipe import (
    GUIDANCE_LONG,
    GUIDANCE_SHORT,
    LATE_KEYS,
    RECIPE_KEYS,
    SAMPLER_KEYS,
    SAMPLER_LONG,
    SAMPLER_SHORT,
    DataStats,
    after_sizing,
    apply_recipe,
    check_fit,
    guidance_for,
    image_cost,
    level_sizes,
    sampler_for,
)
from ddpmlab.train.setup import resolve_config

MNIST = DataStats(image_size=28, channels=1, count=4500, num_classes=10)


def _for(cfg: Config, stats: DataStats) -> Config:
    """``cfg`` as the trainer hands it to the recipe: the data's size and channels filled."""
    return cfg.replace(model=replace(cfg.model, image_size=stats.image_size,
                                     in_channels=stats.channels))


@pytest.mark.parametrize("preset", ["mnist", "mnist-flow", "mnist-edm"])
def test_the_recipe_gives_the_main_jobs_values_on_mnist(preset):
    """The main job does not change: on MNIST's 4,500 gray 28x28 digits the recipe chooses
    exactly what the preset file says, and only data.recipe (now empty) differs."""
    cfg = load_config(preset)
    # the sampler by length is measured on the DDPM preset's solvers (the others keep theirs)
    by_length = SAMPLER_KEYS if preset == "mnist" else ()
    assert cfg.data.recipe == tuple(k for k in RECIPE_KEYS
                                    if k not in SAMPLER_KEYS or k in by_length)
    out, line = apply_recipe(cfg, MNIST)
    # the guidance (and sampler) wait for the budget's length (after_sizing); ~800 steps give
    # the preset's
    assert out == cfg.replace(data=replace(cfg.data, recipe=("sample.guidance", *by_length)))
    sized, said = after_sizing(out.replace(train=replace(out.train, max_steps=797,
                                                         time_budget_min=0.0)))
    assert sized.sample == cfg.sample and sized.data.recipe == ()
    assert said == "ddpmlab: recipe: guidance 2 (797 steps < 2,000)" + (
        "; sampler dpmpp_2m_sde 10 steps (797 steps < 1,000)" if by_length else "")
    assert line.startswith("ddpmlab: recipe for 4,500 images of 28 px gray, 10 classes: ")
    assert "\n" not in line and "attention at [7] px" in line and "EMA 0.999 " in line


@pytest.mark.parametrize("size, mult, attention, base", [
    (8, (1, 2), (4,), 96),                     # scikit-learn's digits: cheap, so wider
    (16, (1, 2), (8,), 48),
    (28, (1, 2, 2), (7,), 32),                 # MNIST
    (32, (1, 2, 2), (8,), 32),                 # CIFAR-10, emoji
    (64, (1, 2, 2, 2), (16, 8), 32),
    (128, (1, 1, 2, 2, 2), (16, 8), 32),
])
def test_depth_width_and_attention_follow_the_image_size(size, mult, attention, base):
    stats = DataStats(size, 3, 5000, 0)
    out, _ = apply_recipe(_for(load_config("mnist"), stats), stats)
    m = out.model
    assert (m.channel_mult, m.attention_resolutions, m.base_channels) == (mult, attention, base)
    sizes = level_sizes(size, len(mult))
    assert 4 <= sizes[-1] <= 8                                   # lowest level: 4 to 8 px
    # attention sits at the lowest level(s) relative to the depth, never at a fixed size
    assert attention == tuple(sizes[-len(attention):])
    # the widest that costs at most an MNIST image, or the floor of 32
    ref = image_cost(28, 32, (1, 2, 2), (7,))
    assert base == 32 or image_cost(size, base, mult, attention) <= ref \
        < image_cost(size, {48: 64, 96: 128}[base], mult, attention)
    from ddpmlab.nn import UNet

    with torch.device("meta"):                                   # the network accepts it
        assert UNet(m).level_sizes == tuple(sizes)


@pytest.mark.parametrize("count, batch, lr", [
    (60_000, 32, 2e-3), (4500, 32, 2e-3), (128, 32, 2e-3), (127, 16, 1.41e-3), (50, 8, 1e-3),
    (10, 2, 5e-4), (3, 1, 3.54e-4),
])
def test_batch_and_learning_rate_follow_the_image_count(count, batch, lr):
    stats = DataStats(32, 3, count, 2)
    out, line = apply_recipe(_for(load_config("mnist"), stats), stats)
    assert out.train.batch_size == batch and out.train.lr == pytest.approx(lr, rel=1e-3)
    assert batch <= max(1, count // 4)
    assert ("at most a quarter" in line) == (batch < 32)


def test_the_time_budget_and_ema_follow_the_step_cost():
    small = DataStats(32, 3, 1683, 9)
    big = DataStats(64, 3, 1683, 9)
    a, _ = apply_recipe(_for(load_config("mnist"), small), small)
    b, _ = apply_recipe(_for(load_config("mnist"), big), big)
    assert 7 < a.train.time_budget_min < b.train.time_budget_min <= 60
    for c in (a, b):
        assert c.train.time_limit_min == c.train.time_budget_min + 1       # the preset's margin
        assert c.train.ema_decay == 0.999                                  # ~800 steps either way
    huge = DataStats(128, 3, 100_000, 0)
    assert apply_recipe(_for(load_config("mnist"), huge), huge)[0].train.time_budget_min == 60
    # without a budget the EMA follows max_steps: the fashion-mnist-60min run's 5,638 steps
    # give that preset's 0.9995; DDPM's 800k steps the cap, 0.9999
    for steps, decay in ((5638, 0.9995), (800_000, 0.9999), (3, 0.999)):
        cfg = load_config("mnist").override({"train.max_steps": str(steps),
                                             "train.time_budget_min": "0"})
        out, _ = apply_recipe(_for(cfg, small), small)
        assert out.train.ema_decay == decay and out.train.time_budget_min == 0
        assert out.train.time_limit_min == 8          # the limit is left to respect_run_length


def test_a_value_the_user_sets_is_kept():
    """Config.override takes a key off data.recipe; the recipe then reads it (the lr follows the
    user's batch) and changes nothing the user gave."""
    stats = DataStats(64, 3, 40, 2)
    cfg = load_config("mnist").override({"train.batch_size": "4", "model.base_channels": "64",
                                         "model.attention_resolutions": "8"})
    assert "train.batch_size" not in cfg.data.recipe
    out, line = apply_recipe(_for(cfg, stats), stats)
    assert (out.train.batch_size, out.model.base_channels) == (4, 64)
    assert out.model.attention_resolutions == (8,)
    assert out.train.lr == pytest.approx(2e-3 * (4 / 32) ** 0.5, rel=1e-3)
    assert "batch" not in line.split(": ", 1)[1].replace("batch/32", "")
    # a config file without data.recipe is used as written
    plain = Config.from_dict({"model": {"base_channels": 16}})
    assert apply_recipe(plain, stats) == (plain, None)
    with pytest.raises(ConfigError, match=r"data.recipe: \['model.dropout'\] cannot be chosen"):
        apply_recipe(plain.override({"data.recipe": "model.dropout"}), stats)


def test_a_presets_fixed_attention_that_fits_no_level_names_the_key():
    cfg = load_config("fashion-mnist-10min")                      # no data.recipe: fixed [7]
    sixty_four = _for(cfg, DataStats(64, 3, 100, 2))
    with pytest.raises(ConfigError) as e:
        check_fit(sixty_four, 28)
    msg = str(e.value)
    assert "model.attention_resolutions=[7] (set for 28 px images): [7] match no level" in msg
    # the preset's own depth (3 levels: 64, 32, 16 px) decides where its lowest level is
    assert "set model.attention_resolutions=16 (the lowest-resolution level)" in msg
    assert "data.recipe=model.attention_resolutions" in msg
    check_fit(_for(cfg, MNIST), 28)                               # fits: nothing said


def _data(n: int, size: int, channels: int, classes: int) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    y = torch.arange(n) % classes
    return ImageData(x, y, [f"c{i}" for i in range(classes)], "test:train")


def test_the_trainer_applies_it_once_says_it_in_one_line_and_records_it():
    said: list[str] = []
    cfg = load_config("mnist").override({"data.dataset": "x"})
    out = resolve_config(cfg, _data(40, 64, 3, 2), said.append)
    assert len(said) == 1 and said[0].startswith("ddpmlab: recipe for 40 images of 64 px RGB, "
                                                 "2 classes: ")
    assert out.model.attention_resolutions == (16, 8) and out.train.batch_size == 8
    assert out.data.recipe == () and out.model.num_classes == 2
    # config.json holds the chosen values: resuming from it chooses nothing again
    stored = Config.from_dict(json.loads(out.to_json()), "config.json")
    again: list[str] = []
    assert resolve_config(stored, _data(40, 64, 3, 2), again.append) == out and again == []
    # the preset's fixed values on 64 px data without the recipe: one line naming the key
    fixed = cfg.override({"data.recipe": ""})
    with pytest.raises(ConfigError, match=r"set model.attention_resolutions=16 \(the lowest"):
        resolve_config(fixed, _data(40, 64, 3, 2))


@pytest.mark.e2e
def test_a_folder_of_64px_rgb_jpegs_trains_with_no_flags(tmp_path, capsys):
    """Issue 32's first line: `ddpmlab train --dataset my_photos` on 64x64 JPEGs in two class
    subfolders used to stop on `model.attention_resolutions=[7]: [7] match no level`. Only the
    run's length and the grid are cut here, for speed; the network is the recipe's."""
    from ddpmlab.cli import main

    rng = np.random.default_rng(0)
    for cls, colour in (("cats", (200, 120, 40)), ("dogs", (60, 90, 200))):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for i in range(20):
            a = np.clip(rng.normal(colour, 30, (64, 64, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(a).save(tmp_path / "photos" / cls / f"{i}.jpg")
    out = tmp_path / "run"
    code = main(["train", "--dataset", str(tmp_path / "photos"), "--out", str(out),
                 "--max-steps", "2", "--no-progress", "--device", "cpu",
                 "diffusion.timesteps=50", "sample.n=2", "sample.steps=2"])
    said = capsys.readouterr()
    assert code == 0, said.err
    assert "ddpmlab: recipe for 40 images of 64 px RGB, 2 classes: " in said.out
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model"]["image_size"] == 64 and cfg["model"]["in_channels"] == 3
    assert cfg["model"]["attention_resolutions"] == [16, 8]
    assert cfg["model"]["channel_mult"] == [1, 2, 2, 2] and cfg["train"]["batch_size"] == 8
    assert cfg["model"]["num_classes"] == 2 and cfg["data"]["recipe"] == []
    assert (out / "samples.png").is_file()


def test_the_guidance_follows_the_trained_length():
    """sample.guidance: 2 below GUIDANCE_LONG_STEPS steps, 1.5 from there; decided at once from
    train.max_steps without a time budget, after the budget has sized the run with one; a
    weight the user sets is kept through both."""
    assert [guidance_for(n)[0] for n in (1, 850, 1_999, 2_000, 3_131)] == [2, 2, 2, 1.5, 1.5]
    assert (GUIDANCE_SHORT, GUIDANCE_LONG) == (2.0, 1.5)
    cfg = _for(load_config("mnist"), MNIST)
    steps = cfg.override({"train.time_budget_min": "0", "train.max_steps": "3000"})
    out, line = apply_recipe(steps, MNIST)
    assert out.sample.guidance == 1.5 and out.data.recipe == ()
    assert "guidance 1.5 (3,000 steps >= 2,000)" in line
    assert after_sizing(out) == (out, None)                 # nothing left for later
    budget, line = apply_recipe(cfg, MNIST)
    assert budget.data.recipe == LATE_KEYS and budget.sample.guidance == 2.0
    assert "guidance 2 below 2,000 steps, else 1.5 (chosen when the budget" in line
    long, said = after_sizing(budget.replace(train=replace(budget.train, max_steps=3131)))
    assert long.sample.guidance == 1.5 and long.data.recipe == ()
    assert said.startswith("ddpmlab: recipe: guidance 1.5 (3,131 steps >= 2,000); ")
    # other data keep 2 whatever the length (the rule is measured on MNIST only)
    for other in (budget, steps):
        emoji, line = apply_recipe(other.override({"data.dataset": "emoji"}), MNIST)
        assert emoji.sample.guidance == 2.0 and emoji.data.recipe == ()
        assert "guidance 2 (a lower weight for long runs is measured on MNIST only)" in line
    mine, _ = apply_recipe(cfg.override({"sample.guidance": "3", "sample.sampler": "ddim"}),
                           MNIST)
    assert mine.data.recipe == () and mine.sample.guidance == 3.0
    assert after_sizing(mine.replace(train=replace(mine.train, max_steps=3131)))[0] == \
        mine.replace(train=replace(mine.train, max_steps=3131))


def test_the_sampler_follows_the_trained_length():
    """sample.sampler with sample.steps (the mnist preset's pair): DPM-Solver++(2M) SDE at 10
    steps below SAMPLER_LONG_STEPS, DPM-Solver++(2M) at 20 from there; at once from max_steps
    or after the budget's sizing; one key of the pair set by the user keeps both as given;
    other data and the flow/EDM presets keep their sampler."""
    assert [sampler_for(n)[:2] for n in (1, 850, 999, 1_000, 3_131)] == \
        [SAMPLER_SHORT] * 3 + [SAMPLER_LONG] * 2
    assert (SAMPLER_SHORT, SAMPLER_LONG) == (("dpmpp_2m_sde", 10), ("dpm_solver", 20))
    cfg = _for(load_config("mnist"), MNIST)
    for max_steps, want in ((850, SAMPLER_SHORT), (3000, SAMPLER_LONG)):
        fixed = cfg.override({"train.time_budget_min": "0", "train.max_steps": str(max_steps)})
        out, line = apply_recipe(fixed, MNIST)
        assert (out.sample.sampler, out.sample.steps) == want and out.data.recipe == ()
        assert f"sampler {want[0]} {want[1]} steps ({max_steps:,} steps" in line
    budget, line = apply_recipe(cfg, MNIST)
    assert set(SAMPLER_KEYS) <= set(budget.data.recipe)
    assert "sampler dpmpp_2m_sde 10 steps below 1,000 steps, else dpm_solver 20 steps" in line
    for n, want in ((797, SAMPLER_SHORT), (2_844, SAMPLER_LONG)):
        sized, said = after_sizing(budget.replace(train=replace(budget.train, max_steps=n)))
        assert (sized.sample.sampler, sized.sample.steps) == want and sized.data.recipe == ()
        assert said.endswith(f"; sampler {want[0]} {want[1]} steps ({n:,} steps "
                             f"{'<' if want == SAMPLER_SHORT else '>='} 1,000)")
    # one of the pair given: both stay (the user's steps with the preset's sampler)
    mine, _ = apply_recipe(cfg.override({"sample.steps": "30"}), MNIST)
    assert not set(SAMPLER_KEYS) & set(mine.data.recipe)  # (an incomplete pair: left alone)
    kept, _ = after_sizing(mine.replace(train=replace(mine.train, max_steps=3131)))
    assert (kept.sample.sampler, kept.sample.steps) == ("dpmpp_2m_sde", 30)
    # other data: DPM-Solver++(2M) at 20 whatever the length, nothing left for later
    for other in (cfg, cfg.override({"train.time_budget_min": "0", "train.max_steps": "850"})):
        emoji, line = apply_recipe(other.override({"data.dataset": "emoji"}), MNIST)
        assert (emoji.sample.sampler, emoji.sample.steps) == SAMPLER_LONG
        assert not set(SAMPLER_KEYS) & set(emoji.data.recipe)
        assert "sampler dpm_solver 20 steps (the SDE sampler for short runs is measured on " \
            "MNIST only)" in line
    flow, _ = apply_recipe(_for(load_config("mnist-flow"), MNIST), MNIST)
    sized, _ = after_sizing(flow.replace(train=replace(flow.train, max_steps=3131)))
    assert (sized.sample.sampler, sized.sample.steps) == ("flow_heun", 10)
