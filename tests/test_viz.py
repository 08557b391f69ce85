"""Tests of ddpmlab.viz: grids (pixel positions) and the tutorial's figures written as PNGs."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmlab import schedules as S
from ddpmlab import viz
from ddpmlab.errors import DataError


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        assert im.format == "PNG"
        im.load()
        return im.size


def plausible(path: Path, min_side: int = 100, max_side: int = 6000) -> tuple[int, int]:
    w, h = png_size(path)
    assert min_side <= w <= max_side and min_side <= h <= max_side, (w, h)
    return w, h


# --------------------------------------------------------------------------- grids
def test_make_grid_tiles_images_at_their_pixel_positions():
    h, w, pad = 3, 4, 2
    imgs = torch.stack([torch.full((1, h, w), 10 * (k + 1), dtype=torch.uint8) for k in range(5)])
    grid = viz.make_grid(imgs, nrow=3, pad=pad, pad_value=255)   # 3 images per row -> 2 rows
    assert grid.shape == (2 * (h + pad) + pad, 3 * (w + pad) + pad, 1)
    for k in range(5):
        r, q = divmod(k, 3)
        y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
        assert (grid[y0:y0 + h, x0:x0 + w] == 10 * (k + 1)).all()
        assert (grid[y0 - pad:y0, x0:x0 + w] == 255).all()          # padding above each image
    r, q = 1, 2                                                       # the empty sixth slot
    y0, x0 = pad + r * (h + pad), pad + q * (w + pad)
    assert (grid[y0:y0 + h, x0:x0 + w] == 255).all()
    assert int((grid != 255).sum()) == 5 * h * w


def test_make_grid_float_range_rgb_and_row_width():
    x = torch.stack([-torch.ones(3, 2, 2), torch.ones(3, 2, 2)])     # [-1, 1] -> 0, 255
    grid = viz.make_grid(x, nrow=8, pad=1, pad_value=7)
    assert grid.shape == (1 * 3 + 1, 2 * 3 + 1, 3)                  # never wider than N images
    assert (grid[1:3, 1:3] == 0).all() and (grid[1:3, 4:6] == 255).all()
    assert grid[0, 0, 0] == 7
    assert viz.make_grid(torch.zeros(9, 1, 2, 2), pad=0).shape == (6, 6, 1)   # default sqrt(N)


def test_save_grid_writes_png_of_grid_size(tmp_path):
    imgs = torch.rand(6, 3, 5, 5) * 2 - 1
    p = viz.save_grid(imgs, tmp_path / "sub" / "g.png", nrow=3, scale=2)
    grid = viz.make_grid(imgs, 3)
    assert png_size(p) == (grid.shape[1] * 2, grid.shape[0] * 2)
    assert not list((tmp_path / "sub").glob(".tmp-*"))


# --------------------------------------------------------------------------- noising strip
def test_strip_timesteps_default_and_scaled():
    assert viz.strip_timesteps(1000) == [0, 50, 100, 200, 400, 600, 800, 999]
    small = viz.strip_timesteps(10)
    assert small[0] == 0 and small[-1] == 9 and small == sorted(set(small))
    with pytest.raises(ValueError, match="in \\[0, 10\\)"):
        viz.strip_timesteps(10, [3, 10])


def test_strip_coefficients_match_alpha_bar_by_hand():
    T = 100
    sched = S.linear(T)
    betas = [1e-4 * 10 + k * (0.02 * 10 - 1e-4 * 10) / (T - 1) for k in range(T)]
    abar, prod = [], 1.0
    for b in betas:
        prod *= 1.0 - b
        abar.append(prod)
    ts = [0, 5, 50, 99]
    a, s = viz.strip_coefficients(sched, ts)
    for t, ak, sk in zip(ts, a, s, strict=True):
        assert ak == pytest.approx(math.sqrt(abar[t]), rel=1e-12)
        assert sk == pytest.approx(math.sqrt(1.0 - abar[t]), rel=1e-12)
    assert a == sorted(a, reverse=True) and s == sorted(s)         # image shrinks, noise grows


def test_noising_frames_first_column_is_x0_and_noise_is_shared():
    sched = S.linear(100)
    x0 = torch.rand(2, 1, 8, 8) * 2 - 1
    ts = [0, 10, 50, 99]
    frames = viz.noising_frames(x0, sched, ts, generator=torch.Generator().manual_seed(0))
    assert frames.shape == (2, 5, 1, 8, 8)
    assert torch.equal(frames[:, 0], x0)
    a, s = viz.strip_coefficients(sched, ts)
    eps = [(frames[:, k + 1] - a[k] * x0) / s[k] for k in range(len(ts))]
    for e in eps[1:]:
        assert (e - eps[0]).abs().max() < 1e-4
    # the same draw as forward.q_sample with that noise, and reproducible from the seed
    again = viz.noising_frames(x0, sched, ts, generator=torch.Generator().manual_seed(0))
    assert torch.equal(frames, again)


def test_noising_strip_writes_png(tmp_path):
    sched = S.cosine(100)
    x0 = torch.rand(1, 1, 8, 8) * 2 - 1
    p = viz.noising_strip(x0, sched, [0, 50, 99], tmp_path / "strip.png",
                          generator=torch.Generator().manual_seed(0))
    w, h = plausible(p)
    assert w > 2 * h                                   # 4 columns (x0 first), 1 row
    with pytest.raises(ValueError, match="C = 1 or 3"):
        viz.noising_strip(torch.zeros(2, 64), sched, None, tmp_path / "bad.png")


# --------------------------------------------------------------------------- denoising chain
def _single_image_model(sched, xstar):
    """The exact eps-prediction when the data distribution is the one image ``xstar``."""
    def model(x, t, y=None):
        a = sched.sqrt_alpha_bar[t].to(x.dtype).view(-1, 1, 1, 1)
        s = sched.sqrt_one_minus_alpha_bar[t].to(x.dtype).view(-1, 1, 1, 1)
        return (x - a * xstar) / s
    return model


def test_chain_frames_end_at_the_single_image():
    sched = S.linear(100)
    xstar = (torch.arange(64, dtype=torch.float32).reshape(1, 1, 8, 8) / 63) * 2 - 1
    model = _single_image_model(sched, xstar)
    titles, xs, hats = viz.chain_frames(model, sched, (2, 1, 8, 8), n_frames=5,
                                        generator=torch.Generator().manual_seed(0))
    assert titles[0] == "t=99" and titles[-1] == "output" and len(titles) == 5
    assert xs.shape == hats.shape == (2, 5, 1, 8, 8)
    assert xs[:, 0].std() > 0.5                          # x_T is pure noise
    assert (xs[:, -1] - xstar).abs().max() < 1e-4       # the output is the image
    assert (hats[:, 2] - xstar).abs().max() < 1e-4      # and so is every x0 estimate


def test_denoising_chain_writes_png_ddim(tmp_path):
    sched = S.linear(100)
    xstar = torch.zeros(1, 1, 8, 8)
    p = viz.denoising_chain(_single_image_model(sched, xstar), sched, (2, 1, 8, 8),
                            tmp_path / "chain.png", sampler="ddim", steps=10, n_frames=3,
                            generator=torch.Generator().manual_seed(0))
    w, h = plausible(p)
    assert w > h
    with pytest.raises(ValueError, match="image-shaped"):
        viz.denoising_chain(lambda x, t: x, sched, (2, 2), tmp_path / "bad.png")


# --------------------------------------------------------------------------- plots
def test_schedule_plot_writes_png(tmp_path):
    p = viz.schedule_plot(tmp_path / "sched.png", T=100)
    w, h = plausible(p)
    assert w > 2 * h
    with pytest.raises(ValueError, match="unknown schedule"):
        viz.schedule_plot(tmp_path / "bad.png", schedules=("quadratic",))


def _write_metrics(path: Path, lines: list) -> Path:
    path.write_text("".join((json.dumps(r) if not isinstance(r, str) else r) + "\n"
                            for r in lines))
    return path


def test_read_losses_skips_other_lines_and_keeps_last_value_of_a_step(tmp_path):
    m = _write_metrics(tmp_path / "metrics.jsonl", [
        {"step": 10, "loss": 0.5, "lr": 1e-4},
        {"event": "eval", "step": 10, "fid": 30.0},
        {"step": 20, "loss": 0.4},
        {"step": 30, "loss": 0.3},
        {"step": 20, "loss": 0.35},          # a resumed run logs step 20 again
        "",
        '{"step": 40, "lo',                  # a truncated last line
    ])
    steps, losses = viz.read_losses(m)
    assert steps.tolist() == [10, 20, 30]
    assert losses.tolist() == [0.5, 0.35, 0.3]


def test_loss_plot_writes_png(tmp_path):
    rows = [{"step": s, "loss": 0.05 + math.exp(-s / 300)} for s in range(10, 2001, 10)]
    m = _write_metrics(tmp_path / "metrics.jsonl", rows + [{"event": "eval", "fid": 1.0}])
    w, h = plausible(viz.loss_plot(m, tmp_path / "loss.png"))
    assert w > h


def test_loss_plot_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope" / "metrics.jsonl"
    with pytest.raises(DataError, match="nope.*not found"):
        viz.loss_plot(missing, tmp_path / "loss.png")
    m = _write_metrics(tmp_path / "metrics.jsonl", [{"event": "eval", "step": 1, "fid": 2.0}])
    with pytest.raises(DataError, match=r"metrics\.jsonl: no training loss"):
        viz.loss_plot(m, tmp_path / "loss.png")
    assert not (tmp_path / "loss.png").exists()


def test_smooth_is_centred_and_exact_at_the_ends():
    v = np.exp(np.linspace(0, -3, 50))           # a straight line in log space
    out = viz.smooth(v, 9)
    np.testing.assert_allclose(out, v, rtol=1e-12)
    assert viz.smooth(np.array([1.0, 3.0]), 1).tolist() == [1.0, 3.0]


def test_vlb_plot_with_nan_terms(tmp_path):
    terms = torch.full((100,), float("nan"), dtype=torch.float64)
    idx = torch.tensor([0, 10, 40, 70, 99])
    terms[idx] = torch.tensor([2.0, 1e-2, 1e-3, 1e-4, 1e-5], dtype=torch.float64)
    plausible(viz.vlb_plot(terms, tmp_path / "vlb.png", total=3.2))
    with pytest.raises(ValueError, match="no finite positive"):
        viz.vlb_plot(torch.full((5,), float("nan")), tmp_path / "bad.png")


def test_class_rows_grid(tmp_path):
    rows = [torch.rand(4, 1, 8, 8) * 2 - 1, torch.rand(2, 1, 8, 8) * 2 - 1,
            torch.zeros(3, 1, 8, 8, dtype=torch.uint8)]
    w, h = plausible(viz.class_rows_grid(rows, tmp_path / "classes.png", ["zero", "one", "two"]))
    assert w > h
    with pytest.raises(ValueError, match="labels"):
        viz.class_rows_grid(rows, tmp_path / "bad.png", ["zero"])
    with pytest.raises(ValueError, match="one shape"):
        viz.class_rows_grid([rows[0], torch.zeros(1, 1, 4, 4)], tmp_path / "bad.png", ["a", "b"])


def test_loss_plot_accepts_the_run_directory(tmp_path):
    _write_metrics(tmp_path / "metrics.jsonl", [{"step": 1, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    steps, losses = viz.read_losses(tmp_path)
    assert steps.tolist() == [1, 2] and losses.tolist() == [1.0, 0.5]
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(DataError, match=r"empty_run/metrics\.jsonl: metrics file not found"):
        viz.read_losses(tmp_path / "empty_run")


def test_chain_recorder_keeps_the_chosen_states_of_one_call():
    """One recorder serves the figure (evenly from x_T to the output) and the report (evenly,
    plus the last step's input); ``on_step`` sees every step; the output is the last state."""
    sched = S.linear(100)
    xstar = torch.zeros(1, 1, 8, 8)
    model = _single_image_model(sched, xstar)
    seen = []
    even = viz.ChainRecorder(4)
    last = viz.ChainRecorder(4, last_step=True, on_step=lambda info: seen.append(info["i"]))
    every = viz.ChainRecorder(None)

    def both(info):
        for rec in (even, last, every):
            rec(info)

    g = torch.Generator().manual_seed(0)
    out = viz.sample(model, sched, (2, 1, 8, 8), sampler="ddim", steps=9, generator=g,
                     callback=both)
    for rec in (even, last, every):
        rec.finish(out)
        assert rec.total == 9 and torch.equal(rec.xs[9], out)
        assert torch.equal(rec.hats[9], every.hats[8])  # the output beside the last estimate
    assert even.keep == [0, 3, 6, 9]
    assert last.keep == [0, 4, 8, 9]                      # 0..8 in 3, then the output
    assert every.keep == list(range(10)) and seen == list(range(9))
    assert set(last.xs) == {0, 4, 8, 9} and isinstance(last.ts[4], int)
    torch.testing.assert_close(every.xs[4], last.xs[4])
    assert every.xs[0].std() > 0.5
    with pytest.raises(ValueError, match="n_frames must be an integer >= 2"):
        viz.ChainRecorder(1)
