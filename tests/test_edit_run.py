"""``ddpmlab edit`` (ddpmlab.edit_run): every operation end to end on a tiny trained run, the
inputs and masks it reads, what it writes, the network evaluations it declares, and one line
for each bad input with nothing written. The math of each operation is proven in
``tests/test_edit.py``."""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmlab.cli import build_parser, main
from ddpmlab.edit import EDITS, translate
from ddpmlab.edit_run import (
    MASKS,
    OPERATIONS,
    RUNNERS,
    EditRequest,
    EditSettings,
    edit_command,
    edit_cost,
    psnr,
    read_inputs,
    read_mask,
    run_edit,
)
from ddpmlab.io import is_our_npz, is_our_png
from ddpmlab.layout import RunDir
from ddpmlab.runs import load_run, sampling_call

TINY = ["model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
        "model.attention_resolutions=4", "model.num_heads=2", "model.norm_groups=8",
        "diffusion.timesteps=50", "train.batch_size=8", "train.log_every=1",
        "sample.n=4", "sample.sampler=ddim", "sample.steps=5", "train.precision=fp32"]


def _train(out: Path, *extra: str) -> Path:
    assert main(["train", "--dataset", "digits", "--out", str(out), "--no-progress",
                 "--device", "cpu", "--no-samples", *extra, *TINY]) == 0
    return out


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A tiny conditional run (guidance 2, the mnist preset's) and an unconditional one."""
    root = tmp_path_factory.mktemp("edit-runs")
    return {"cond": _train(root / "cond", "--max-steps", "3"),
            "uncond": _train(root / "uncond", "--max-steps", "2", "--unconditional")}


def _files(*folders: Path) -> set[tuple[str, float]]:
    return {(str(p), p.stat().st_mtime) for f in folders for p in f.rglob("*")}


# ============================================================================ the registry
def test_the_operations_are_the_registrys_names():
    assert set(RUNNERS) <= set(EDITS)
    assert list(OPERATIONS) == [n for n in EDITS if n in RUNNERS]
    assert set(OPERATIONS) == {"inpaint", "img2img", "invert", "interpolate", "translate"}
    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["edit"]
    op = next(a for a in sub._actions if a.dest == "operation")
    assert list(op.choices) == list(OPERATIONS)


def test_named_masks_by_hand():
    m = {name: read_mask(name, 8)[0, 0] for name in MASKS}
    assert m["left"][:, :4].eq(1).all() and m["left"][:, 4:].eq(0).all()
    assert m["right"][:, 4:].eq(1).all() and m["right"][:, :4].eq(0).all()
    assert m["top"][:4].eq(1).all() and m["bottom"][4:].eq(1).all() and m["bottom"][:4].eq(0).all()
    assert m["centre"].sum() == 16 and m["centre"][2:6, 2:6].eq(1).all()
    assert read_mask("right", 7)[0, 0].sum() == 7 * 3      # odd sides: the named half, floored


def test_a_mask_png_is_thresholded_and_resized(tmp_path):
    arr = np.zeros((16, 16), np.uint8)
    arr[:, 8:] = 200                                          # grey >= 128: generate
    Image.fromarray(arr).save(tmp_path / "m.png")
    torch.testing.assert_close(read_mask(str(tmp_path / "m.png"), 8), read_mask("right", 8))


# ============================================================================ inputs
@pytest.mark.e2e
def test_inputs_from_files_a_folder_and_an_npz_fit_the_run(runs, tmp_path):
    cfg = RunDir(runs["cond"]).read_config()
    folder = tmp_path / "imgs"
    folder.mkdir()
    rgb = np.zeros((16, 16, 3), np.uint8)
    rgb[..., 0] = 255                                         # pure red, twice the run's size
    Image.fromarray(rgb).save(folder / "a.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(folder / "b.png")
    (folder / "notes.txt").write_text("not an image")
    x, labels = read_inputs(cfg, folder, None)
    assert x.shape == (2, 1, 8, 8) and labels is None
    # red -> grey by ITU-R 601 luma (76 of 255), white stays white
    assert torch.allclose(x[0], torch.full((1, 8, 8), 76 / 127.5 - 1), atol=1e-6)
    assert x[1].eq(1).all()
    one, _ = read_inputs(cfg, folder / "b.png", None)
    torch.testing.assert_close(one, x[1:])
    npz = tmp_path / "x.npz"
    np.savez(npz, arr_0=np.full((3, 8, 8, 3), 255, np.uint8), labels=np.array([1, 2, 3]))
    x, labels = read_inputs(cfg, npz, None)
    assert x.shape == (3, 1, 8, 8) and labels.tolist() == [1, 2, 3]
    x, labels = read_inputs(cfg, None, 5)
    assert x.shape == (5, 1, 8, 8) and labels is not None and len(labels) == 5
    # --held-out N: N images evenly spaced over the held-out split (floor(k len / N))
    from ddpmlab.data import load_dataset, to_model_range

    held = load_dataset(cfg.data, "test")
    pick = [k * len(held) // 5 for k in range(5)]
    assert torch.equal(x, to_model_range(held.images[pick]))
    assert labels.tolist() == held.labels[pick].tolist()


# ============================================================================ end to end
ARGS = {
    "inpaint": ["--mask", "right", "--jump-length", "2", "--jump-n-sample", "2"],
    "img2img": ["--strength", "0.6", "--mask", "top"],
    "invert": ["--sampler", "dpm_solver"],
    "interpolate": [],
    "translate": ["--target-class", "0,3"],
}
COLUMNS = {"inpaint": 3, "img2img": 3, "invert": 3, "interpolate": 10, "translate": 3}


@pytest.mark.e2e
@pytest.mark.parametrize("op", list(ARGS))
def test_every_operation_end_to_end(runs, tmp_path, capsys, op):
    out, npz = tmp_path / "grid.png", tmp_path / "res.npz"
    assert main(["edit", str(runs["cond"]), op, "--held-out", "4", "--out", str(out),
                 "--npz", str(npz), "--device", "cpu", *ARGS[op]]) == 0
    said = capsys.readouterr().out
    assert f"{op} of 4 image(s)" in said and str(out) in said and str(npz) in said
    assert is_our_png(out) and is_our_npz(npz)
    rows = 2 if op == "interpolate" else 4
    w, h = Image.open(out).size                 # scale 2, 2 px of padding between 8 px images
    assert (w, h) == (2 * (2 + COLUMNS[op] * 10), 2 * (2 + rows * 10))
    with np.load(npz) as f:
        arr = f["arr_0"]
        labels = f["labels"] if "labels" in f.files else None
    per_row = {"interpolate": 8, "translate": 2}.get(op, 1)
    assert arr.shape == (rows * per_row, 8, 8, 1) and arr.dtype == np.uint8
    if op == "translate":
        assert labels.tolist() == [0, 3] * 4
    if op == "invert":
        assert "reconstruction PSNR" in said


@pytest.mark.e2e
def test_inpainting_keeps_the_known_pixels_exactly(runs, tmp_path):
    held = RunDir(runs["cond"]).read_config()
    npz = tmp_path / "r.npz"
    edit_command(EditRequest(runs["cond"], "inpaint", held_out=3, mask="left", npz=npz,
                             out=tmp_path / "g.png"))
    from ddpmlab.data import load_dataset

    real = load_dataset(held.data, "test").spread(3).images[:, 0].numpy()
    with np.load(npz) as f:
        got = f["arr_0"][..., 0]
    assert (got[:, :, 4:] == real[:, :, 4:]).all()            # the kept right half
    assert (got[:, :, :4] != real[:, :, :4]).any()


@pytest.mark.e2e
def test_inpainting_reads_the_class_from_the_kept_pixels(runs, tmp_path, capsys):
    """--target-class auto: each image's class is infer_class's on the kept half (the run's
    network, CLASS_DRAWS draws per class, seeded by (seed, image)), the inpainting is
    conditioned on it, and its cost is counted."""
    from ddpmlab.edit import infer_class
    from ddpmlab.edit_run import CLASS_DRAWS, CLASS_SEED, read_mask
    from ddpmlab.samplers import per_sample_generators

    npz = tmp_path / "r.npz"
    assert main(["edit", str(runs["cond"]), "inpaint", "--held-out", "5", "--target-class",
                 "auto", "--npz", str(npz), "--out", str(tmp_path / "g.png"), "--device",
                 "cpu", "--seed", "3"]) == 0
    said = capsys.readouterr().out
    model, cfg, _ = load_run(runs["cond"])
    call = sampling_call(model, cfg, "cpu")
    x, _ = read_inputs(cfg, None, 5)
    want = infer_class(call.model, call.schedule, x, read_mask("right", 8), 10, CLASS_DRAWS,
                       per_sample_generators(3 + CLASS_SEED, range(5)),
                       prediction=call.prediction)
    with np.load(npz) as f:
        assert f["labels"].tolist() == want.tolist()
    assert "classes read from the kept pixels (image: class): " + ", ".join(
        f"{k}: {c}" for k, c in enumerate(want.tolist())) in said
    given = edit_command(EditRequest(runs["cond"], "inpaint", held_out=5,
                                     out=tmp_path / "h.png"))
    assert f"{given.nfe + CLASS_DRAWS * 10:g} network evaluations per image" in said


@pytest.mark.e2e
def test_results_depend_on_the_seed_and_the_index_only(runs, tmp_path):
    def draw(**kw):
        npz = tmp_path / "r.npz"
        edit_command(EditRequest(runs["cond"], "img2img", held_out=3, strength=0.8, npz=npz,
                                 out=tmp_path / "g.png", **kw))
        with np.load(npz) as f:
            return f["arr_0"]

    a = draw(batch_size=1).astype(int)
    assert np.abs(a - draw()).max() <= 1            # (float rounding of other batch shapes)
    assert np.abs(a - draw(seed=1)).max() > 8


@pytest.mark.e2e
def test_strength_zero_returns_the_inputs(runs, tmp_path):
    npz = tmp_path / "r.npz"
    r = edit_command(EditRequest(runs["cond"], "img2img", held_out=2, strength=0.0, npz=npz,
                                 out=tmp_path / "g.png"))
    assert r.nfe == 0
    cfg = RunDir(runs["cond"]).read_config()
    from ddpmlab.data import load_dataset

    with np.load(npz) as f:
        assert (f["arr_0"][..., 0] == load_dataset(cfg.data, "test").spread(2).images[:, 0].numpy()).all()


def _call(run: Path, **kw):
    model, cfg, _ = load_run(run)
    return cfg, sampling_call(model, cfg, "cpu", **kw)


@pytest.mark.e2e
def test_inversion_reconstruction_error_falls_with_steps(runs):
    cfg, _ = _call(runs["cond"])
    x, y = read_inputs(cfg, None, 4)
    got = {}
    for sampler in ("ddim", "dpm_solver"):
        for steps in (5, 10, 25):
            _, call = _call(runs["cond"], sampler=sampler, steps=steps, guidance=1.0)
            res = run_edit(call, EditSettings("invert"), x, y)
            got[sampler, steps] = float(psnr(res.columns[0], res.columns[2]).mean())
        assert got[sampler, 5] < got[sampler, 10] < got[sampler, 25], got
    assert got["dpm_solver", 10] > got["ddim", 10]            # second order beats first


@pytest.mark.e2e
def test_translate_is_ddib_with_one_inversion(runs):
    cfg, call = _call(runs["cond"], sampler="ddim", steps=5, guidance=1.0)
    x, y = read_inputs(cfg, None, 3)
    res = run_edit(call, EditSettings("translate", targets=(4, 7)), x, y)
    kw = {k: v for k, v in call.edit_kwargs().items() if k not in ("eta", "clip_x0")}
    for j, k in enumerate((4, 7)):
        ref = translate(call.model, call.schedule, x, y, k, **kw)
        torch.testing.assert_close(res.columns[1 + j], ref)


class _Images:
    """Counts the images the network sees (guidance's two halves included)."""

    def __init__(self, net):
        self.net, self.n = net, 0

    def __call__(self, x, t, y=None):
        self.n += x.shape[0]
        return self.net(x, t, y)


@pytest.mark.e2e
@pytest.mark.parametrize("op,settings,guided", [
    ("inpaint", {"mask": read_mask("right", 8), "jump_length": 2, "jump_n_sample": 3}, True),
    ("img2img", {"strength": 0.3}, True),
    ("img2img", {"strength": 0.0}, True),
    ("invert", {}, False),
    ("interpolate", {"strip": 3}, False),
    ("translate", {"targets": (1, 2, 5)}, False)])
@pytest.mark.parametrize("autoguided", [False, True])
def test_the_declared_cost_is_the_counted_network_calls(runs, op, settings, guided, autoguided):
    """... with an autoguidance guide too (its images counted with the model's): every
    operation but translate's unguided inversion adds the guide's pass."""
    model, cfg, _ = load_run(runs["cond"])
    counter = _Images(model)
    over = {} if guided else {"guidance": 1.0, "sampler": "dpm_solver"}
    if autoguided:
        class Guide(torch.nn.Module):          # (a guide is a module of the run's config)
            def __init__(self, net):
                super().__init__()
                self.net = net

            def forward(self, x, t, y=None):
                counter.n += x.shape[0]
                return self.net(x, t, y)

        over.update(guide=Guide(load_run(runs["cond"])[0]), guide_weight=2.0)
    else:                                      # (not the run's own @F guide either)
        over.update(guide_weight=1.0)
    call = sampling_call(counter, cfg, "cpu", steps=6, **over)
    assert call.guidance == (2.0 if guided else 1.0)
    x, y = read_inputs(cfg, None, 4)
    s = EditSettings(op, **settings)
    run_edit(call, s, x, y, batch_size=3)
    assert counter.n == edit_cost(call, s, 4, labelled=True)
    assert (counter.n > 0) == (op != "img2img" or s.strength > 0)


# ============================================================================ bad inputs
def _bad_inputs(tmp: Path) -> dict[str, Path]:
    Image.fromarray(np.zeros((8, 6), np.uint8)).save(tmp / "wide.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp / "black.png")
    Image.fromarray(np.full((8, 8), 255, np.uint8)).save(tmp / "white.png")
    np.savez(tmp / "rgba.npz", arr_0=np.zeros((2, 8, 8, 4), np.uint8))
    (tmp / "mine.png").write_bytes(b"my own picture")
    return {"tmp": tmp}


BAD = [
    ("cond", ["inpaint", "--input", "{tmp}/wide.png"], "wide.png: 6x8 is not square"),
    ("cond", ["inpaint", "--input", "{tmp}/rgba.npz"], "rgba.npz: key 'arr_0' must be NHWC"),
    ("cond", ["inpaint", "--held-out", "2", "--mask", "{tmp}/black.png"], "generates no pixel"),
    ("cond", ["inpaint", "--held-out", "2", "--mask", "{tmp}/white.png"], "keeps no pixel"),
    ("cond", ["inpaint", "--held-out", "2", "--mask", "diagonal"], "--mask diagonal: neither"),
    ("cond", ["img2img", "--held-out", "2", "--strength", "1.5"], "--strength 1.5 must be in"),
    ("cond", ["img2img", "--held-out", "2", "--strength=-0.1"], "--strength -0.1 must be in"),
    ("cond", ["img2img", "--held-out", "2", "--jump-length", "2"], "--jump-length: img2img"),
    ("cond", ["invert", "--held-out", "2", "--sampler", "ddpm"], "ddpm is stochastic"),
    ("cond", ["translate", "--input", "{tmp}/black.png"], "give --source-class K"),
    ("cond", ["translate", "--held-out", "2", "--target-class", "10"], "classes 0..9"),
    ("cond", ["inpaint", "--held-out", "999"], "has 180 images"),
    ("cond", ["interpolate", "--held-out", "3"], "pairs of images"),
    ("cond", ["inpaint", "--held-out", "2", "--out", "{tmp}/mine.png"], "mine.png: exists"),
    ("cond", ["inpaint", "--held-out", "2", "--input", "{tmp}/black.png"], "one of them"),
    ("cond", ["inpaint", "--held-out", "2", "--steps", "51"], "--steps=51"),
    ("uncond", ["inpaint", "--held-out", "2", "--target-class", "3"], "is unconditional"),
    ("uncond", ["inpaint", "--held-out", "2", "--target-class", "auto"], "is unconditional"),
    ("cond", ["img2img", "--held-out", "2", "--target-class", "auto"], "only inpaint reads"),
    ("uncond", ["invert", "--held-out", "2", "--source-class", "1"], "is unconditional"),
    ("uncond", ["translate", "--held-out", "2"], "is unconditional"),
]


@pytest.mark.e2e
@pytest.mark.parametrize("which,argv,message", BAD, ids=[" ".join(b[1])[:40] for b in BAD])
def test_each_bad_input_is_one_line_and_writes_nothing(runs, tmp_path, capsys, which, argv,
                                                        message):
    names = _bad_inputs(tmp_path)
    argv = [a.format(tmp=names["tmp"]) for a in argv]
    before = _files(tmp_path, runs[which])
    assert main(["edit", str(runs[which]), *argv, "--npz", str(tmp_path / "r.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
    assert _files(tmp_path, runs[which]) == before
    assert (tmp_path / "mine.png").read_bytes() == b"my own picture"


@pytest.mark.e2e
def test_force_replaces_a_foreign_file_and_the_default_grid_is_in_the_run(runs, tmp_path):
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"my own picture")
    assert main(["edit", str(runs["cond"]), "img2img", "--held-out", "1", "--out", str(mine),
                 "--force"]) == 0
    assert is_our_png(mine)
    r = edit_command(EditRequest(runs["cond"], "invert", held_out=1, steps=4))
    assert r.grid == RunDir(runs["cond"]).edit_grid("invert", "ddim", 4, 0) and r.grid.is_file()
    os.remove(r.grid)


# ============================================================================ Fig. 7
@pytest.mark.e2e
def test_figures_draw_what_is_decided_when(runs, tmp_path, monkeypatch):
    """``ddpmlab figures`` adds the DDPM paper's Fig. 7: x0, then per t its one x_t and
    DECIDED_SAMPLES samples drawn from it (the one x_t is q(x_t | x0) at that t)."""
    from ddpmlab import runs as R

    seen = {}
    real = R.class_rows_grid

    def grid(images, path, labels):
        seen[Path(path).name] = (images, labels)
        return real(images, path, labels)

    monkeypatch.setattr(R, "class_rows_grid", grid)
    written = R.run_figures(runs["cond"], tmp_path / "fig", chain_steps=5)
    assert tmp_path / "fig" / "decided_when.png" in written
    images, labels = seen["decided_when.png"]
    assert labels == ["x0", "t = 11", "t = 24", "t = 37", "t = 49"]      # T = 50
    assert images[0].shape == (1, 1, 8, 8)
    assert all(r.shape == (1 + R.DECIDED_SAMPLES, 1, 8, 8) for r in images[1:])
    # samples from a low level keep more of x0 than samples from pure noise
    far = [float((r[1:] - images[0]).abs().mean()) for r in images[1:]]
    assert far[0] < far[-1], far


# ============================================================================ the report
@pytest.mark.e2e
@pytest.mark.parametrize("which", ["cond", "uncond"])
def test_the_reports_editing_section(runs, tmp_path, which):
    from ddpmlab.report import ReportPlan, write_report
    from ddpmlab.report.build import SECTIONS

    assert [s.name for s in SECTIONS][-1] == "editing"
    plan = ReportPlan(forward_images=2, forward_frames=3, chain_samples=2, chain_frames=3,
                      bpd_images=2, bpd_timesteps=2, checkpoint_samples=2, grid_per_class=1,
                      grid_unconditional=2, guidance=(1.0,), nfe=(2,), nfe_samplers=("ddim",),
                      nearest=1, edit_images=3, edit_strengths=(0.2, 0.8), edit_jump=(2, 2))
    html = {lang: write_report(runs[which], tmp_path / lang, lang=lang, progress=False,
                               plan=plan).read_text(encoding="utf-8") for lang in ("en", "zh")}
    en = html["en"].split('<section id="editing">')[1]
    keys = ["replacement", "repaint", "img2img", "img2img", "invert"] + \
        (["translate"] if which == "cond" else [])
    shown = re.findall(r'<img class="px" src="(img/edit_[a-z0-9]+_\d\d\.png)" alt="([a-z0-9]+)"',
                       en)
    assert [alt for _, alt in shown] == keys
    cols = {"replacement": 3, "repaint": 3, "img2img": 2, "invert": 3, "translate": 11}
    for src, key in shown:          # (one row per image, 2 px of padding around 8 px images)
        w, h = Image.open(tmp_path / "en" / src).size
        rows = 2 if key == "translate" else 3
        assert w * (2 + 10 * rows) == h * (2 + 10 * cols[key]), (key, w, h)
    assert "strength 0.2" in en and "strength 0.8" in en and "j = 2 levels" in en
    assert "Reconstruction PSNR" in en and ("w = 2" in en) == (which == "cond")
    assert "7. 用模型编辑图像" in html["zh"] and "平均重建 PSNR" in html["zh"]
