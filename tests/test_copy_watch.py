"""The copy watch (``train.watch_copies``, ``runs.CopyWatch``) on models that copy by
construction, and what the report shows of it (issue 32, point 3).

A model that copies by construction: the exact denoiser of the empirical distribution of a set
of images, x0_hat(x_t) = sum_k softmax_k(-|x_t - sqrt(abar_t) X_k|^2 / 2(1 - abar_t)) X_k, is
what a network trained to its optimum on those images would compute, and sampling it gives those
images back (the reason small data sets get memorized). Its twin is the same denoiser of other
images of the same kind: it does not copy the training set."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from ddpmlab.config import Config
from ddpmlab.data import ImageData, load_dataset, to_model_range
from ddpmlab.layout import RunDir
from ddpmlab.objectives import build
from ddpmlab.report.build import copy_watch_rows
from ddpmlab.report.page import _protection, _Text
from ddpmlab.runs import COPY_WATCH_MARGIN, CopyWatch


class Empirical(nn.Module):
    """The exact x0 denoiser of a uniform choice among ``images`` (uint8 ``[K, C, H, W]``)."""

    def __init__(self, images: torch.Tensor, alpha_bar: torch.Tensor):
        super().__init__()
        self.register_buffer("x", to_model_range(images).flatten(1).double())
        self.register_buffer("abar", alpha_bar.double())

    def forward(self, x, t, y=None):
        a = self.abar[t.long()].view(-1, 1, 1)                                 # [N, 1, 1]
        d2 = (x.flatten(1).double()[:, None, :] - a.sqrt() * self.x[None]).square().sum(-1)
        w = torch.softmax(-d2 / (2 * (1 - a[:, :, 0])), dim=1)               # [N, K]
        return (w @ self.x).view_as(x).to(x.dtype)


def _cfg(dataset: str) -> Config:
    return Config.from_dict({
        "model": {"in_channels": 1, "image_size": 8},
        "diffusion": {"timesteps": 100, "prediction": "x0"},
        "data": {"dataset": dataset},
        "train": {"watch_copies": 24, "device": "cpu", "precision": "fp32"},
        "sample": {"sampler": "ddim", "steps": 10},
    })


def _trainer(cfg: Config, train: ImageData, model: nn.Module, tmp_path) -> SimpleNamespace:
    """What CopyWatch reads of a Trainer."""
    notes: list[str] = []
    (tmp_path / "run").mkdir(exist_ok=True)
    return SimpleNamespace(cfg=cfg, data=train, ema=model, device=torch.device("cpu"),
                           run=RunDir(tmp_path / "run"),
                           events=SimpleNamespace(note=notes.append), notes=notes)


def _events(tmp_path) -> list[dict]:
    return [r for r in RunDir(tmp_path / "run").read_metrics() if r.get("event") == "memorization"]


def test_a_model_that_copies_is_caught_and_its_twin_is_not(tmp_path):
    """On the 8x8 digits (a separate held-out split): the denoiser of the training images
    copies (share near 1, one warning line), the denoiser of the held-out images does not
    (share at the held-out images' own level, no warning)."""
    cfg = _cfg("digits")
    train, held = load_dataset(cfg.data, "train"), load_dataset(cfg.data, "test")
    abar = build(cfg.diffusion).schedule().alpha_bar
    twin = _trainer(cfg, train, Empirical(held.images, abar), tmp_path)
    watch = CopyWatch(twin)
    assert watch.held is not None
    watch.checkpoint(100, tmp_path)
    assert twin.notes == []
    twin.ema = Empirical(train.images, abar)                 # the same run, now copying
    watch.checkpoint(200, tmp_path)
    first, second = _events(tmp_path)
    assert (first["step"], second["step"]) == (100, 200) and first["n"] == second["n"] == 24
    assert first["share"] <= first["heldout_share"] + COPY_WATCH_MARGIN
    assert second["share"] >= 0.9
    assert len(twin.notes) == 1 and "\n" not in twin.notes[0]
    assert "at step 200 are near-copies of training images" in twin.notes[0]
    assert "step 100: " in twin.notes[0]
    # the report draws the same rows: the second one flagged
    rows = copy_watch_rows(RunDir(tmp_path / "run").read_metrics())
    assert [(r["step"], r["rise"]) for r in rows] == [(100, False), (200, True)]


def _few(tmp_path):
    """12 digits as an .npz (no held-out split), 12 other digits, the config, the schedule."""
    digits = load_dataset(_cfg("digits").data, "all")
    mine, others = digits.images[:12], digits.images[100:112]
    npz = tmp_path / "few.npz"
    np.savez(npz, images=mine.permute(0, 2, 3, 1).numpy())
    cfg = _cfg(str(npz))
    return cfg, load_dataset(cfg.data, "train"), mine, others, \
        build(cfg.diffusion).schedule().alpha_bar


def test_without_a_held_out_split_the_watch_scales_leave_one_out(tmp_path):
    """A folder or an .npz has no held-out split (its test split is its training set): the
    watch scales by the training images' distances to each other, as eval does, instead of
    stopping on a zero scale; a copier of those 12 images is caught, other digits are not."""
    cfg, train, mine, others, abar = _few(tmp_path)
    for model, copies in ((Empirical(others, abar), False), (Empirical(mine, abar), True)):
        where = tmp_path / ("copier" if copies else "twin")
        where.mkdir()
        t = _trainer(cfg, train, model, where)
        watch = CopyWatch(t)
        assert watch.held is None
        watch.checkpoint(10, where)
        (event,) = _events(where)
        assert (event["share"] >= 0.9) == copies and (event["share"] <= 0.1) != copies
        assert bool(t.notes) == copies
        assert not t.notes or "real images, leave-one-out" in t.notes[0]


def test_a_data_set_the_measure_cannot_scale_stops_the_watch_not_training(tmp_path):
    same = torch.full((6, 1, 8, 8), 7, dtype=torch.uint8)
    npz = tmp_path / "same.npz"
    np.savez(npz, images=same.permute(0, 2, 3, 1).numpy())
    cfg = _cfg(str(npz))
    abar = build(cfg.diffusion).schedule().alpha_bar
    t = _trainer(cfg, load_dataset(cfg.data, "train"), Empirical(same, abar), tmp_path)
    watch = CopyWatch(t)
    watch.checkpoint(1, tmp_path)
    watch.checkpoint(2, tmp_path)
    assert len(t.notes) == 1 and t.notes[0].startswith("ddpmlab: the copy watch stops (")
    assert _events(tmp_path) == []


def test_the_reports_table_reads_only_numbers_and_escapes_everything():
    records = [
        {"event": "memorization", "step": 500, "n": 64, "share": 0.03, "heldout_share": 0.02},
        {"event": "memorization", "step": 1000, "n": 64, "share": 0.25, "heldout_share": 0.02},
        {"event": "memorization", "step": 1000, "n": 64, "share": 0.30, "heldout_share": 0.02},
        {"event": "memorization", "step": "<script>", "n": 64, "share": 0.5,
         "heldout_share": 0.0},
        {"event": "memorization", "step": 1500, "n": 64, "share": float("nan"),
         "heldout_share": 0.0},
        {"event": "memorization", "step": 2000, "n": True, "share": 0.1, "heldout_share": 0.0},
        {"event": "eval", "step": 3, "share": 1.0},
        {"step": 10, "loss": 0.1},
    ]
    rows = copy_watch_rows(records)
    assert [(r["step"], r["share"], r["rise"]) for r in rows] == [(500, 0.03, False),
                                                                 (1000, 0.30, True)]
    for lang in ("en", "zh"):
        html = _protection({"watch": rows, "augment": {"p": 0.15, "dim": 5}}, _Text(lang))
        assert html.count("<tr") == 3 and html.count('class="rise"') == 1
        assert "<script" not in html and "30.0%" in html and "2.0%" in html
    assert "train.augment = 0.15" in _protection({"augment": {"p": 0.15, "dim": 5}},
                                                 _Text("en"))
    assert _protection({"watch": [], "augment": {"p": 0.0, "dim": 0}}, _Text("en")) == ""
    # an old report's data (no such keys) shows nothing
    assert _protection({}, _Text("en")) == ""


def test_the_recipes_watch_is_written_to_the_resolved_config(tmp_path):
    from ddpmlab.recipe import WATCH_SAMPLES
    from ddpmlab.train.setup import resolve_config

    cfg = Config.from_dict({"model": {"channel_mult": [1, 2], "attention_resolutions": [4]},
                            "data": {"dataset": "digits", "recipe": ["train.watch_copies"]}})
    out = resolve_config(cfg, load_dataset(cfg.data, "train"))
    assert out.train.watch_copies == WATCH_SAMPLES and out.data.recipe == ()
    assert json.loads(out.to_json())["train"]["watch_copies"] == WATCH_SAMPLES


@pytest.mark.e2e  # over 2 s: trains a new run through the CLI
def test_a_new_run_watches_when_only_the_recipe_asks(tmp_path):
    """``ddpmlab train --dataset digits`` (1,617 images: the recipe turns the watch on) writes a
    memorization event at each checkpoint of a *new* run; the watch must follow the trainer's
    resolved config, not the config it was handed (whose train.watch_copies is still 0)."""
    from ddpmlab.cli import main

    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--max-steps", "4", "--out", str(out),
                 "--no-progress", "--no-samples", "--device", "cpu",
                 "model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
                 "model.attention_resolutions=4", "model.num_heads=2", "model.norm_groups=8",
                 "diffusion.timesteps=50", "train.batch_size=8", "train.ckpt_every=2",
                 "sample.sampler=ddim", "sample.steps=2"]) == 0
    recs = [json.loads(v) for v in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if r.get("event") == "memorization"] == [2, 4]


@pytest.mark.parametrize("margin_above", [True, False])
def test_the_warning_needs_a_rise_above_both_levels(tmp_path, margin_above):
    """A copier warns at its first checkpoint; at the next, a share as high as the last one
    is no rise (no second line) unless the last one had been lower by the margin."""
    cfg, train, mine, _, abar = _few(tmp_path)
    t = _trainer(cfg, train, Empirical(mine, abar), tmp_path)
    watch = CopyWatch(t)
    watch.checkpoint(1, tmp_path)
    assert len(t.notes) == 1
    if margin_above:
        watch.last = (1, 1.0 - 2 * COPY_WATCH_MARGIN)   # as if the last share had been lower
    watch.checkpoint(2, tmp_path)
    assert len(t.notes) == (2 if margin_above else 1)
