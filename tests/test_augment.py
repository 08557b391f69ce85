"""Non-leaking augmentation (issue 32, point 3): the pipe (ddpmlab.data.augment), the network's
label input, the training path that carries the labels, every sampling path that passes none,
the recipe that turns it on for small data sets, and a run trained with it end to end."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from ddpmlab.config import Config, ModelConfig, load_config
from ddpmlab.data.augment import (
    AUGMENT_DIM,
    apply_augment,
    decode,
    draw_augment,
    encode,
    invert,
    shift_range,
)
from ddpmlab.errors import CheckpointError, ConfigError
from ddpmlab.nn import UNet
from ddpmlab.objectives import OBJECTIVES, with_augment
from ddpmlab.recipe import (
    AUGMENT_P,
    AUGMENT_PASSES,
    RECIPE_KEYS,
    SAMPLER_KEYS,
    WATCH_BELOW,
    WATCH_SAMPLES,
    DataStats,
    apply_recipe,
)

SMALL_NET = ModelConfig(in_channels=1, image_size=8, base_channels=16, channel_mult=(1, 2),
                        num_res_blocks=1, attention_resolutions=(4,), num_heads=2,
                        norm_groups=8)


# ============================================================================ the pipe
def _exactness_problems(apply_fn, size: int = 12, seed: int = 0) -> list[str]:
    """What is wrong with ``apply_fn`` as a labelled transform: the inverse of the transform
    its labels decode to must give the image back, and a zero label must mean "unchanged"."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((64, 3, size, size), generator=g)
    params = draw_augment(g, 64, size, 0.7)
    y = apply_fn(x, params)
    labels = encode(params, size)
    problems = []
    if not torch.equal(invert(y, decode(labels, size)), x):
        problems.append("the labels' inverse does not give the image back")
    still = (labels == 0).all(1)
    if not torch.equal(y[still], x[still]):
        problems.append("a zero label changed its image")
    if not torch.equal(y.flatten(1).sort(1).values, x.flatten(1).sort(1).values):
        problems.append("not a permutation of the pixels")
    return problems


def test_each_transform_is_exact_and_its_labels_decode_to_it():
    assert _exactness_problems(apply_augment) == []
    assert _exactness_problems(apply_augment, size=28, seed=1) == []
    # broken twins fail the same check: labels that say the opposite shift, a turn the labels
    # do not record, a shift that is not a permutation (zero fill)
    wrong_way = lambda x, p: apply_augment(x, p * torch.tensor([1, 1, -1, -1]))  # noqa: E731
    unlabelled_turn = lambda x, p: torch.rot90(apply_augment(x, p), 1, (-2, -1))  # noqa: E731

    def zero_fill(x, p):
        y = apply_augment(x, p)
        y[..., 0] = 0.0
        return y

    for twin in (wrong_way, unlabelled_turn, zero_fill):
        assert _exactness_problems(twin) != []


def test_each_transform_moves_pixels_as_documented():
    x = torch.zeros(1, 1, 8, 8)
    x[0, 0, 1, 2] = 1.0                                     # row 1, column 2

    def where(params):
        y = apply_augment(x, torch.tensor([params]))
        return tuple(torch.nonzero(y[0, 0])[0].tolist())

    assert where([0, 0, 0, 0]) == (1, 2)
    assert where([1, 0, 0, 0]) == (1, 5)                    # mirrored: column 7 - 2
    assert where([0, 1, 0, 0]) == (5, 1)                    # a quarter turn counter-clockwise
    assert where([0, 0, 3, -2]) == (7, 5)                   # +tx right, +ty down, wrapping
    flip = torch.tensor([[1, 0, 0, 0]])
    assert torch.equal(apply_augment(apply_augment(x, flip), flip), x)      # flip twice
    turn = torch.tensor([[0, 1, 0, 0]])
    four = x
    for _ in range(4):
        four = apply_augment(four, turn)
    assert torch.equal(four, x)                                             # four quarter turns
    with pytest.raises(ValueError, match="square"):
        apply_augment(torch.zeros(1, 1, 4, 6), turn)


def test_the_labels_encode_exactly_the_transform():
    size = 28
    m = shift_range(size)
    assert m == 4
    every = torch.tensor([[f, k, tx, ty] for f in (0, 1) for k in range(4)
                          for tx in range(-m, m + 1) for ty in (-m, 0, m)])
    labels = encode(every, size)
    assert labels.shape == (len(every), AUGMENT_DIM) and labels.dtype == torch.float32
    assert torch.equal(decode(labels, size), every)
    assert len({tuple(v.tolist()) for v in labels}) == len(every)           # one per transform
    assert torch.equal((labels == 0).all(1), (every == 0).all(1))           # zero = unchanged
    assert labels.abs().max() <= 2
    with pytest.raises(ValueError, match=r"\[N, 5\]"):
        decode(torch.zeros(3, 4), size)


def test_draws_follow_p_and_use_the_same_numbers_whatever_p():
    states = []
    for p in (0.0, 0.15, 1.0):
        g = torch.Generator().manual_seed(3)
        d = draw_augment(g, 4000, 32, p)
        states.append(g.get_state())
        applied = (d != 0).float().mean(0)
        if p == 0:
            assert (d == 0).all()
        elif p == 1:
            assert (d[:, 0] == 1).all() and ((d[:, 1] >= 1) & (d[:, 1] <= 3)).all()
        else:
            assert abs(applied[0].item() - p) < 0.03                 # flips
            assert abs(applied[1].item() - p) < 0.03                 # turns (k >= 1 when drawn)
        assert d[:, 2:].abs().max() <= shift_range(32)
    assert all(torch.equal(states[0], s) for s in states[1:])


def test_the_step_draws_nothing_more_without_augmentation():
    """train.augment=0 draws exactly what a step always drew (runs without it are unchanged);
    with it, the step's other numbers are the same and the transforms come last."""
    from ddpmlab.objectives import DDPM
    from ddpmlab.train.step import draw

    def run(**kw):
        g = torch.Generator().manual_seed(0)
        r = draw(g, 16, (1, 8, 8), DDPM(50), torch.device("cpu"), 0.1, **kw)
        return r, g.get_state()

    (plain, s0), (off, s1), (on, s2) = run(), run(augment=0.0), run(augment=0.5)
    assert torch.equal(s0, s1) and not torch.equal(s0, s2)
    assert plain.augment is None and off.augment is None and on.augment.shape == (16, 4)
    for a, b in ((plain, off), (plain, on)):
        assert all(torch.equal(getattr(a, k), getattr(b, k))
                   for k in ("level", "eps", "drop", "flip"))
    assert torch.equal(on.slice(slice(4, 8)).augment, on.augment[4:8])


# ============================================================================ the network
def _net(augment_dim: int, seed: int = 0, randomize: bool = True,
         model: ModelConfig | None = None) -> UNet:
    torch.manual_seed(seed)
    net = UNet(model or replace(SMALL_NET, augment_dim=augment_dim)).eval()
    if randomize:
        g = torch.Generator().manual_seed(seed + 1)
        with torch.no_grad():
            for p in net.parameters():               # zero-initialised layers included
                p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def test_the_network_takes_the_labels_and_none_means_zero():
    net = _net(AUGMENT_DIM)
    x, t = torch.randn(4, 1, 8, 8), torch.tensor([0, 10, 20, 49])
    labels = encode(torch.tensor([[1, 1, 1, -1], [0, 2, 0, 0], [0, 0, 0, 0], [1, 3, 1, 1]]), 8)
    with torch.no_grad():
        none, zeros = net(x, t), net(x, t, augment=torch.zeros(4, AUGMENT_DIM))
        told = net(x, t, augment=labels)
    assert torch.equal(none, zeros)
    assert not torch.allclose(told[:2], none[:2]) and torch.equal(told[2], none[2])
    # built last and zero: every other weight is drawn as without it, and a fresh net ignores it
    a, b = _net(0, randomize=False).state_dict(), _net(AUGMENT_DIM, randomize=False).state_dict()
    assert set(b) - set(a) == {"augment_embed.weight"} and not b["augment_embed.weight"].any()
    assert all(torch.equal(a[k], b[k]) for k in a)
    with pytest.raises(ValueError, match="model.augment_dim=0"):
        _net(0)(x, t, augment=labels)
    with pytest.raises(ValueError, match=r"augment must have shape \[N, 5\]"):
        net(x, t, augment=labels[:, :3])


def _spy(monkeypatch) -> list:
    """Every UNet call's ``augment`` argument (the object itself: None when not passed)."""
    seen: list = []
    real = UNet.forward

    def forward(self, x, t, y=None, augment=None):
        seen.append(augment)
        return real(self, x, t, y, augment)

    monkeypatch.setattr(UNet, "forward", forward)
    return seen


@pytest.mark.parametrize("objective, sampler", [
    ("ddpm", "ddpm"), ("ddpm", "ddim"), ("ddpm", "dpm_solver"), ("ddpm", "unipc"),
    ("edm", "heun"), ("flow", "flow_heun"), ("ddpm", "dpmpp_2m_sde")])
def test_every_sampler_passes_no_labels_and_zeros_give_the_same_samples(objective, sampler,
                                                                        monkeypatch):
    from ddpmlab.runs import sample_images

    cfg = Config.from_dict({"model": {**_model_dict(), "num_classes": 3},
                            "diffusion": {"timesteps": 50, "objective": objective},
                            "sample": {"sampler": sampler, "steps": 4, "guidance": 2.0}})
    net = _net(AUGMENT_DIM, model=cfg.model)
    with torch.no_grad():
        net.augment_embed.weight.normal_(0, 1.0)       # labels would change the output a lot
    y = torch.tensor([0, 1, 2, 3])                        # 3: the null class
    seen = _spy(monkeypatch)
    plain = sample_images(net, cfg, n=4, seed=0, y=y)
    assert seen and all(a is None for a in seen)
    monkeypatch.undo()

    class Told(torch.nn.Module):               # the same network, handed explicit labels
        def __init__(self, labels):
            super().__init__()
            self.net, self.labels = net, labels

        def forward(self, x, t, y=None):
            return self.net(x, t, y, augment=self.labels.expand(x.shape[0], -1))

    zeros = sample_images(Told(torch.zeros(1, AUGMENT_DIM)), cfg, n=4, seed=0, y=y)
    assert torch.equal(plain, zeros)
    # the check can fail: labels saying "flipped" leak into the samples
    flipped = sample_images(Told(encode(torch.tensor([[1, 0, 0, 0]]), 8)), cfg, n=4, seed=0, y=y)
    assert not torch.allclose(plain, flipped, atol=1e-3)


def _model_dict() -> dict:
    m = SMALL_NET
    return {"in_channels": 1, "image_size": 8, "base_channels": m.base_channels,
            "channel_mult": list(m.channel_mult), "num_res_blocks": 1,
            "attention_resolutions": [4], "num_heads": 2, "norm_groups": 8,
            "augment_dim": AUGMENT_DIM}


# ============================================================================ training
@pytest.mark.parametrize("objective", sorted(OBJECTIVES))
def test_every_objectives_loss_gives_the_network_the_labels(objective, monkeypatch):
    from ddpmlab.objectives import build
    from ddpmlab.train.step import draw, training_losses

    cfg = Config.from_dict({"diffusion": {"timesteps": 50, "objective": objective}})
    obj = build(cfg.diffusion)
    net = _net(AUGMENT_DIM)
    g = torch.Generator().manual_seed(0)
    r = draw(g, 6, (1, 8, 8), obj, torch.device("cpu"), augment=0.5)
    labels = encode(r.augment, 8)
    seen = _spy(monkeypatch)
    per = training_losses(net, obj, obj.schedule(), torch.rand(6, 1, 8, 8) * 2 - 1, r.level,
                          r.eps, None, labels)
    assert per.shape == (6,) and torch.isfinite(per).all()
    assert seen and all(a is labels for a in seen)
    seen.clear()
    training_losses(net, obj, obj.schedule(), torch.zeros(6, 1, 8, 8), r.level, r.eps)
    assert seen and all(a is None for a in seen)
    with pytest.raises(ValueError, match="labels for 6 images"):
        with_augment(net, labels)(torch.zeros(2, 1, 8, 8), torch.zeros(2, dtype=torch.long))


def test_bad_augmentation_settings_are_one_line_naming_the_key(tiny_cfg):
    from ddpmlab.data import load_dataset
    from ddpmlab.train.setup import resolve_config

    for key, value in (("train.augment", "1.5"), ("train.augment", "-0.1"),
                       ("model.augment_dim", "-1")):
        with pytest.raises(ConfigError, match=rf"{key}=") as e:
            tiny_cfg.override({key: value})
        assert "\n" not in str(e.value)
    data = load_dataset(tiny_cfg.data, "train")
    with pytest.raises(ConfigError, match=r"model.augment_dim=7 must be 0 .* or 5"):
        resolve_config(tiny_cfg.override({"model.augment_dim": "7"}), data)
    on = resolve_config(tiny_cfg.override({"train.augment": "0.2"}), data)
    assert on.model.augment_dim == AUGMENT_DIM
    assert resolve_config(tiny_cfg, data).model.augment_dim == 0


def _trained(cfg: Config, run, steps: int, resume: bool = False):
    from ddpmlab.train import Trainer

    t = Trainer(cfg.override({"train.max_steps": str(steps)}), run, resume=resume,
                progress=False, log=lambda m: None)
    t.train()
    return t


@pytest.mark.e2e  # over 2 s: three short trainings
def test_an_augmented_run_trains_and_resumes_exactly(tiny_cfg, tmp_path):
    cfg = tiny_cfg.override({"train.augment": "0.5", "train.ckpt_every": "3"})
    whole = _trained(cfg, tmp_path / "whole", 6)
    assert whole.cfg.model.augment_dim == AUGMENT_DIM
    stored = json.loads((tmp_path / "whole" / "config.json").read_text())
    assert stored["model"]["augment_dim"] == AUGMENT_DIM and stored["train"]["augment"] == 0.5
    w = whole.model.augment_embed.weight
    assert w.abs().sum() > 0                              # it learns from the labels
    _trained(cfg, tmp_path / "parts", 3)
    parts = _trained(cfg, tmp_path / "parts", 6, resume=True)
    for a, b in zip(whole.model.state_dict().values(), parts.model.state_dict().values(),
                    strict=True):
        assert torch.equal(a, b)
    # the augmentation changes what is trained: the same run without it ends elsewhere
    plain = _trained(tiny_cfg.override({"train.ckpt_every": "3"}), tmp_path / "plain", 6)
    assert not torch.equal(plain.model.conv_in.weight, whole.model.conv_in.weight)
    # switching it on when resuming a run built without the labels is one line
    with pytest.raises(CheckpointError, match="model.augment_dim=0 in the run, but 5 now"):
        _trained(tiny_cfg.override({"train.augment": "0.5"}), tmp_path / "plain", 8,
                 resume=True)


# ============================================================================ the recipe
def _for(cfg: Config, stats: DataStats) -> Config:
    return cfg.replace(model=replace(cfg.model, image_size=stats.image_size,
                                     in_channels=stats.channels))


def _all_keys(preset: str = "mnist") -> Config:
    """The preset with every key the recipe chooses (the two new ones included; the sampler
    pair only for the mnist preset, whose solvers it was measured with)."""
    keys = [k for k in RECIPE_KEYS if preset == "mnist" or k not in SAMPLER_KEYS]
    return load_config(preset).override({"data.recipe": ",".join(keys)})


@pytest.mark.parametrize("count, watch", [
    (40, WATCH_SAMPLES), (100, WATCH_SAMPLES), (500, WATCH_SAMPLES), (999, WATCH_SAMPLES),
    (WATCH_BELOW - 1, WATCH_SAMPLES), (WATCH_BELOW, 0), (4500, 0), (60_000, 0)])
def test_the_recipe_watches_small_data_sets(count, watch):
    stats = DataStats(32, 3, count, 0)
    out, line = apply_recipe(_for(_all_keys(), stats), stats)
    assert out.train.watch_copies == watch and ("copy watch of" in line) == bool(watch)
    assert WATCH_BELOW < 4500                            # the main job stays as it was


@pytest.mark.parametrize("count, max_steps, augment", [
    (100, 1600, 0.0),           # batch 16: 256 passes (measured: a wash over two seeds)
    (500, 800, 0.0),            # batch 32: 51 passes (measured: it cost FID)
    (250, 1000, 0.0),           # 128 passes (measured on Fashion-MNIST: it cost FID)
    (500, 8000, AUGMENT_P),     # 512 passes: the threshold itself is on
    (500, 7999, 0.0),           # 511.9
    (40, 2560, AUGMENT_P),      # batch 8: 512 passes
    (4500, 5000, 0.0),          # 36 passes
])
def test_augmentation_follows_the_passes_over_the_data(count, max_steps, augment):
    """On when each image is expected to be seen >= AUGMENT_PASSES times (steps x batch /
    images): every measured length (51, 128, 256 passes) off."""
    stats = DataStats(32, 3, count, 0)
    cfg = _for(_all_keys(), stats).override({"train.time_budget_min": "0",
                                             "train.max_steps": str(max_steps)})
    out, line = apply_recipe(cfg, stats)
    passes = max_steps * out.train.batch_size / count
    assert out.train.augment == augment == (AUGMENT_P if passes >= AUGMENT_PASSES else 0.0)
    assert ("augmentation p=" in line) == bool(augment)
    if augment:
        assert f"seen ~{passes:,.0f} times" in line


def test_a_time_budget_gives_the_passes_it_expects():
    """Under the recipe's own budget no data set is seen often enough (40 or 100 images
    ~490 and ~195 times, 500 about 56, MNIST's 4,500 about 6): off; an hour on 40 images
    (~1,300 passes) turns it on."""
    got = {}
    for count in (40, 100, 500, 4500):
        stats = DataStats(32, 3, count, 0)
        got[count] = apply_recipe(_for(_all_keys(), stats), stats)[0].train.augment
    assert got == {40: 0.0, 100: 0.0, 500: 0.0, 4500: 0.0}
    stats = DataStats(32, 3, 40, 0)
    hour = _for(_all_keys(), stats).override({"train.time_budget_min": "60"})
    assert apply_recipe(hour, stats)[0].train.augment == AUGMENT_P


@pytest.mark.parametrize("preset", ["mnist", "mnist-flow", "mnist-edm"])
def test_the_main_job_is_unchanged_with_the_new_keys(preset):
    """MNIST's 4,500 digits are above both thresholds: with the two keys in data.recipe the
    recipe chooses exactly the preset file's values (no augmentation, no watch)."""
    mnist = DataStats(28, 1, 4500, 10)
    cfg = _all_keys(preset)
    out, line = apply_recipe(cfg, mnist)       # (the guidance waits for the budget's length)
    late = ("sample.guidance", *(SAMPLER_KEYS if preset == "mnist" else ()))
    assert out == load_config(preset).replace(data=replace(cfg.data, recipe=late))
    assert "no augmentation; no copy watch" in line
    assert set(load_config(preset).data.recipe) <= set(RECIPE_KEYS)


def test_a_value_the_user_sets_is_kept_by_the_recipe():
    stats = DataStats(32, 3, 100, 0)
    cfg = _all_keys().override({"train.augment": "0", "train.watch_copies": "8"})
    out, line = apply_recipe(_for(cfg, stats), stats)
    assert (out.train.augment, out.train.watch_copies) == (0.0, 8)
    assert "augmentation" not in line and "copy watch" not in line


def test_the_trainer_gives_a_small_data_set_the_watch_and_augmentation_its_labels():
    """60 images under the recipe's budget: the watch, and augmentation with the network's
    transform labels; train.augment=0 set by the user: neither."""
    from ddpmlab.data import ImageData
    from ddpmlab.train.setup import resolve_config

    g = torch.Generator().manual_seed(0)
    data = ImageData(torch.randint(0, 256, (60, 3, 16, 16), generator=g, dtype=torch.uint8),
                     None, [], "test:train")
    said: list[str] = []
    out = resolve_config(_all_keys().override({"data.dataset": "x"}), data, said.append)
    assert out.train.augment == AUGMENT_P and out.model.augment_dim == AUGMENT_DIM  # (60 images:
    assert out.train.watch_copies == WATCH_SAMPLES and len(said) == 1          # many passes)
    out = resolve_config(_all_keys().override({"data.dataset": "x", "train.augment": "0"}),
                         data, said.append)
    assert (out.train.augment, out.model.augment_dim) == (0.0, 0)


# ============================================================================ end to end
TINY = ["model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
        "model.attention_resolutions=4", "model.num_heads=2", "model.norm_groups=8",
        "diffusion.timesteps=50", "train.batch_size=8", "train.log_every=1",
        "sample.n=4", "sample.sampler=ddim", "sample.steps=5"]


@pytest.fixture(scope="module")
def augmented_run(tmp_path_factory):
    """A tiny conditional run on the 8x8 digits trained with augmentation and the copy watch
    (two checkpoints), its augmentation weights made large so that any labels would show."""
    from ddpmlab.cli import main
    from ddpmlab.io import save_tensors
    from ddpmlab.runs import load_run

    run = tmp_path_factory.mktemp("augmented") / "run"
    assert main(["train", "--dataset", "digits", "--out", str(run), "--no-progress",
                 "--device", "cpu", "--max-steps", "4", "--conditional", "train.augment=0.5",
                 "train.watch_copies=8", "train.ckpt_every=2", "train.keep_last=3",
                 *TINY]) == 0
    model, _, ckpt = load_run(run)
    with torch.no_grad():
        model.augment_embed.weight.normal_(0, 1.0)
    for f in ("model.safetensors", "ema.safetensors"):
        save_tensors(ckpt / f, model.state_dict())
    return run


@pytest.mark.e2e  # over 2 s: trains, samples, evaluates, writes a report
def test_sample_eval_and_report_of_an_augmented_run_pass_no_labels(augmented_run, tmp_path,
                                                                    monkeypatch):
    from ddpmlab.cli import main
    from ddpmlab.report import ReportPlan, write_report

    seen = _spy(monkeypatch)
    assert main(["sample", str(augmented_run), "--n", "4", "--out", str(tmp_path / "s.png"),
                 "--no-progress"]) == 0
    assert main(["eval", str(augmented_run), "--n", "8", "--bpd-images", "2",
                 "--bpd-timesteps", "3", "--no-progress"]) == 0
    plan = ReportPlan(forward_images=2, forward_frames=3, chain_samples=2, chain_frames=3,
                      bpd_images=2, bpd_timesteps=3, checkpoint_samples=2, grid_per_class=1,
                      grid_unconditional=4, guidance=(0.0, 2.0), nfe=(2,),
                      nfe_samplers=("ddim",), nearest=2, edit_images=1, edit_strengths=(0.5,))
    index = write_report(augmented_run, tmp_path / "report", lang="en", progress=False,
                         plan=plan)
    assert len(seen) > 100 and all(a is None for a in seen)
    html = index.read_text(encoding="utf-8")
    assert "non-leaking augmentation (train.augment = 0.5)" in html
    assert 'id="copy-watch"' in html
    table = html.split('id="copy-watch"')[1].split("</table>")[0]
    assert table.count("<tr") == 3                      # the header and two checkpoints
    assert "<td>2</td>" in table and "<td>4</td>" in table


@pytest.mark.e2e  # over 2 s: exports and loads in diffusers
def test_an_augmented_run_exports_to_diffusers_with_zero_labels(augmented_run, tmp_path):
    diffusers = pytest.importorskip("diffusers")
    from ddpmlab.interop import export_diffusers
    from ddpmlab.runs import load_run

    out = export_diffusers(augmented_run, tmp_path / "exp")
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet").eval()
    ours, _, _ = load_run(augmented_run)
    assert ours.augment_embed.weight.abs().sum() > 0
    x = torch.randn(3, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    t, y = torch.tensor([0, 17, 49]), torch.tensor([1, 5, 10])
    with torch.no_grad():
        torch.testing.assert_close(ours(x, t, y), unet(x, t, class_labels=y).sample,
                                   rtol=1e-3, atol=2e-4)


@pytest.mark.e2e  # over 2 s: torchrun with 2 processes
@pytest.mark.parametrize("sets", [["train.augment=0.5"],
                                  ["model.augment_dim=5", "train.augment=0"]])
def test_two_processes_train_an_augmented_run_as_one_does(tmp_path, sets):
    """The transforms are drawn for the global batch and sliced per rank, so DDP gives one
    process's weights; with the labels' input but the augmentation off (a resumed run that
    turned it off) the input still takes part in every step, as DDP requires."""
    import os
    import socket
    import subprocess
    import sys

    from ddpmlab.cli import main
    from ddpmlab.io import load_tensors
    from ddpmlab.train.checkpoint import latest_checkpoint

    common = ["train", "--dataset", "digits", "--device", "cpu", "--no-progress",
              "--max-steps", "3", *TINY, "train.precision=fp32", *sets]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                        "--master_addr", "127.0.0.1", "--master_port", str(port), "-m",
                        "ddpmlab", *common, "--out", str(tmp_path / "two")],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 0, r.stderr[-3000:]
    one, two = (load_tensors(latest_checkpoint(tmp_path / n) / "model.safetensors")
                for n in ("one", "two"))
    assert one.keys() == two.keys() and "augment_embed.weight" in one
    for k in one:
        assert torch.allclose(one[k], two[k], atol=1e-5), k
