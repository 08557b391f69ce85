"""``ddpmlab report``: the folder it writes, what it says when something is missing, and the
page in a real browser.

The browser tests load each report from disk (``file://``) in Debian's headless ``chromium``
with networking shut (see ``tests/browser.py``) and check: no console error or exception, no
failed request and no request that is not a file of the report folder, every picture loaded,
the forward slider (moved by real key presses) changes the shown image, its pixels and the
coefficients, and the screenshot is not blank. A broken page (an external picture, a script
error) is shown to fail the same checks.

**When Chromium is missing** (``$DDPMLAB_CHROMIUM`` overrides where it is looked for): as root,
or with ``DDPMLAB_REQUIRE_BROWSER=1``, the browser tests fail, since ``scripts/setup.sh``
installs the ``chromium`` package when it runs as root (as ``.ci/run`` does); as another user
they are skipped with the reason and the command that installs it.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from browser import Browser, find_chromium
from ddpmlab.cli import main
from ddpmlab.report import LANGS, ReportPlan, write_report
from ddpmlab.report import page as page_module
from ddpmlab.report.strings import STRINGS

TINY = ["model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
        "model.attention_resolutions=4", "model.num_heads=2", "model.norm_groups=8",
        "diffusion.timesteps=50", "train.batch_size=8", "train.log_every=1",
        "sample.n=4", "sample.sampler=ddim", "sample.steps=5", "sample.guide=",
        "sample.guide_weight=1"]   # (no autoguidance: one checkpoint means one)
# a seconds-fast report (the command's default plan is tested once, through the CLI)
SMALL = ReportPlan(forward_images=3, forward_frames=9, chain_samples=3, chain_frames=8,
                   bpd_images=4, bpd_timesteps=5, checkpoint_samples=4, grid_per_class=3,
                   grid_unconditional=8, guidance=(0.0, 2.0, 4.0), nfe=(2, 4),
                   nfe_samplers=("ddim",), nearest=3)


def _train(out: Path, dataset: str, *extra: str) -> Path:
    code = main(["train", "--dataset", dataset, "--out", str(out), "--no-progress",
                 "--device", "cpu", *extra, *TINY])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def rgb_npz(tmp_path_factory):
    """60 coloured 8x8 digits of three classes (uint8 NHWC, with labels)."""
    from ddpmlab.config import DataConfig
    from ddpmlab.data import load_dataset

    d = load_dataset(DataConfig(dataset="digits"), "all")
    keep = torch.nonzero(d.labels < 3).squeeze(1)[:60]
    g = d.images[keep, 0].numpy().astype(np.int64)
    rgb = np.stack([g, (g * 0.5 + 60).clip(0, 255), 255 - g], axis=-1).astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "rgb.npz"
    np.savez(path, images=rgb, labels=d.labels[keep].numpy())
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory, rgb_npz):
    """Four tiny trained runs: gray/RGB x conditional/unconditional. The gray conditional one
    has two checkpoints and an evaluation; the gray unconditional one a single checkpoint and
    no evaluation."""
    root = tmp_path_factory.mktemp("report-runs")
    out = {
        "gray-cond": _train(root / "gray-cond", "digits", "--max-steps", "4",
                            "train.ckpt_every=2", "train.keep_last=3"),
        "gray-uncond": _train(root / "gray-uncond", "digits", "--max-steps", "3",
                              "--unconditional"),
        "rgb-cond": _train(root / "rgb-cond", str(rgb_npz), "--max-steps", "3"),
        "rgb-uncond": _train(root / "rgb-uncond", str(rgb_npz), "--max-steps", "3",
                             "--unconditional"),
    }
    assert main(["eval", str(out["gray-cond"]), "--n", "16", "--bpd-images", "4",
                 "--bpd-timesteps", "3", "--no-progress"]) == 0
    return out


@pytest.fixture(scope="module")
def reports(runs):
    return {name: write_report(run, lang="en", progress=False, plan=SMALL)
            for name, run in runs.items()}


def _html(index: Path) -> str:
    return index.read_text(encoding="utf-8")


def _blob(html: str) -> dict:
    m = re.search(r'<script id="report-data" type="application/json">(.*?)</script>', html, re.S)
    assert m, "no data blob"
    return json.loads(m.group(1))


def _srcs(html: str) -> list[str]:
    return re.findall(r'<img[^>]* src="([^"]+)"', html)


# ============================================================================ the folder
@pytest.mark.e2e  # over 2 s: the reports of four trained runs
def test_every_picture_is_a_file_of_the_folder(reports):
    for name, index in reports.items():
        html = _html(index)
        blob = _blob(html)
        frames = [f for s in blob["scrubbers"].values() for f in s["frames"]]
        for src in _srcs(html) + frames:
            assert not re.match(r"^[a-z]+:", src), (name, src)   # relative: no http(s), no file
            assert (index.parent / src).is_file(), (name, src)
        for text in ("http://", "https://", "//cdn", "@import", "url("):
            assert text not in html.replace('href="data:,"', ""), (name, text)
        assert set(blob["scrubbers"]) == {"forward", "chain-run", "chain-ddpm"}, name
        for sec in ("forward", "reverse", "objective", "training", "sampling", "evaluation"):
            assert f'<section id="{sec}">' in html, (name, sec)


@pytest.mark.e2e  # over 2 s: the reports of four trained runs
def test_gray_and_rgb_pictures_keep_their_channels(reports):
    for name, index in reports.items():
        frame = Image.open(index.parent / _blob(_html(index))["scrubbers"]["forward"]["frames"][3])
        assert frame.mode == ("RGB" if name.startswith("rgb") else "L"), name


@pytest.mark.e2e  # over 2 s: the reports of four trained runs
def test_forward_readouts_are_the_schedule(reports, runs):
    from ddpmlab import schedules
    from ddpmlab.layout import RunDir

    cfg = RunDir(runs["gray-cond"]).read_config()
    sched = schedules.get(cfg.diffusion.schedule, cfg.diffusion.timesteps)
    f = _blob(_html(reports["gray-cond"]))["scrubbers"]["forward"]["fields"]
    ts = [int(t) for t in f["fwd-t"]]
    assert ts[0] == 0 and ts[-1] == cfg.diffusion.timesteps - 1 and len(ts) == 9
    for k, t in enumerate(ts):
        a, s = float(f["fwd-a"][k]), float(f["fwd-s"][k])
        assert a == pytest.approx(float(sched.sqrt_alpha_bar[t]), rel=2e-3, abs=1e-6)
        assert s == pytest.approx(float(sched.sqrt_one_minus_alpha_bar[t]), rel=2e-3)
        assert float(f["fwd-snr"][k]) == pytest.approx(a * a / (s * s), rel=5e-3)
    # frame k is x_t at ts[k] of the same images and noise: it changes along the slider
    frames = _blob(_html(reports["gray-cond"]))["scrubbers"]["forward"]["frames"]
    first, last = (np.asarray(Image.open(reports["gray-cond"].parent / frames[k]))
                   for k in (0, -1))
    assert first.shape == last.shape and not np.array_equal(first, last)


@pytest.mark.e2e  # over 2 s: the reports of four trained runs
def test_conditional_run_with_checkpoints_and_eval(reports):
    html = _html(reports["gray-cond"])
    assert html.count("<tr><th>step ") == 2                   # two checkpoint rows
    assert 'id="eval-table"' in html and "FID" in html and "ddpmlab eval" in html
    assert "has no evaluation yet" not in html
    assert html.count("<tr><th>w = ") == len(SMALL.guidance)  # the guidance sweep
    assert 'id="nfe"' in html and "img/classes.png" in html
    assert "Only one checkpoint" not in html
    chain = _blob(html)["scrubbers"]["chain-ddpm"]["fields"]
    # the all-T ancestral chain: the last step adds no noise, the others do
    sigma = chain["ddpm-sigma"]
    assert sigma[-1] == "\u2014" and sigma[-2] == STRINGS["en"]["no_noise_last"]
    assert all(float(v) > 0 for v in sigma[:-2])
    assert chain["ddpm-t"][-2] == "0" and chain["ddpm-t"][-1] == "output"


@pytest.mark.e2e  # over 2 s: the reports of four trained runs
def test_one_checkpoint_and_no_eval_say_what_is_missing(reports, runs):
    html = _html(reports["gray-uncond"])
    assert "Only one checkpoint is saved" in html
    assert "This run has no evaluation yet" in html
    assert f"ddpmlab eval {runs['gray-uncond']}" in html
    assert "This run is unconditional" in html and "<tr><th>w = " not in html
    assert html.count("<tr><th>step ") == 1
    # the nearest training images are computed from the report's own samples all the same
    assert "img/nearest.png" in html


@pytest.mark.e2e  # over 2 s: the reports of four trained runs
def test_the_chain_is_the_runs_own_sampling(runs, tmp_path):
    """The report's chains start from the noise ``sample_images`` uses for samples 0..n-1 and
    take the same steps: the ancestral chain's output is ``sample_images(sampler="ddpm")``."""
    from ddpmlab.report.build import _chain, _Images, _Progress
    from ddpmlab.runs import default_labels, load_run, sample_images, sampling_call

    model, cfg, _ = load_run(runs["gray-cond"])
    T = cfg.diffusion.timesteps
    y = default_labels(cfg, 3)
    call = sampling_call(model, cfg, "cpu", sampler="ddpm", steps=T)
    chain = _chain(_Images(tmp_path), "t", cfg, call, 3, 5, y, 6, True, _Progress(0, False))
    ref = sample_images(model, cfg, 3, seed=5, sampler="ddpm", steps=T, y=y)
    torch.testing.assert_close(chain["output"], ref)
    assert chain["states"] == T + 1 and len(chain["frames"]) == 6
    assert chain["sigma"][-2] == "0" and float(chain["sigma"][0]) > 0


@pytest.mark.e2e  # over 2 s: the reports of four trained runs
@pytest.mark.parametrize("guide", ["", "@0.5", "@0.75"])
def test_the_progress_total_is_the_sections_costs_and_the_network_calls(runs, tmp_path,
                                                                        monkeypatch, guide):
    """The bar's total is the sum of the sections' declared costs, and both equal the images
    the networks actually see (counted by wrapped models, guidance's two halves, the
    autoguidance guide's pass and the older checkpoint's row included); a draw two sections
    share (the NFE cell at the run's own sampler and steps is the run's chain) is counted once.
    With the run's own autoguidance (@0.5: its step-2 checkpoint at weight 2) every draw but
    the checkpoint rows (drawn without it, as during training) adds the guide's pass; an own
    guide not on disk (@0.75: step 3 was not kept) is sampled without, and declared so."""
    import ddpmlab.runs
    from ddpmlab.report import build

    run = runs["gray-cond"]
    autoguided = guide == "@0.5"
    if guide:
        run = tmp_path / "autoguided"
        shutil.copytree(runs["gray-cond"], run)
        doc = json.loads((run / "config.json").read_text())
        doc["sample"].update(guide=guide, guide_weight=2.0)
        (run / "config.json").write_text(json.dumps(doc))

    images = [0]

    class Counting(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x, t, y=None):
            images[0] += x.shape[0]
            return self.net(x, t, y)

    real_load = build.load_run

    def load_run(*args, **kwargs):
        model, cfg, ckpt = real_load(*args, **kwargs)
        return Counting(model), cfg, ckpt

    monkeypatch.setattr(ddpmlab.runs, "load_run", load_run)   # (the guide: runs.load_guide)

    bars, costs = [], []

    class Progress(build._Progress):
        def __init__(self, total, enabled):
            super().__init__(total, False)
            self.total, self.done = total, 0
            bars.append(self)

        def add(self, n):
            self.done += n

    real_costs = build.section_costs

    def section_costs(ctx, *args):
        c = real_costs(ctx, *args)
        costs.append(c)
        return c

    monkeypatch.setattr(build, "load_run", load_run)
    monkeypatch.setattr(build, "_Progress", Progress)
    monkeypatch.setattr(build, "section_costs", section_costs)
    plan = dataclasses.replace(SMALL, nfe=(2, 5), nfe_samplers=("ddim", "heun"))
    write_report(run, tmp_path / "rep", progress=False, plan=plan)
    (c,) = costs
    assert list(c) == [s.name for s in build.SECTIONS]
    assert c["forward"] == c["evaluation"] == 0 and c["objective"] == 4 * 5
    assert bars[-1].total == sum(c.values()) == bars[-1].done == images[0]
    from ddpmlab.layout import RunDir

    # the run's guidance w = 2 runs both halves (a batch of twice the images), the guide one
    g = int(autoguided)
    h = 2 + g
    assert RunDir(run).read_config().sample.guidance == 2.0
    assert c["reverse"] == h * 3 * 5 + h * 3 * 50         # ddim at 5 steps, ddpm at all 50
    assert c["training"] == 2 * 2 * 4 * 5                 # two checkpoint rows of 4, unguided
    grid, sweep = h * 30 * 5, 10 * 5 * ((1 + g) + h + h)  # the sweep's w = 0, 2, 4
    # ddim at 2 steps (at 5 it is the run's chain: drawn once), heun at 1 and 3 steps
    nfe_cells = h * 3 * 2 + h * 3 * (1 + 5)
    assert c["sampling"] == grid + sweep + nfe_cells
    html = _html(tmp_path / "rep" / "index.html")
    assert ("drawn without the run's autoguidance guide" in html) == autoguided


@pytest.mark.e2e  # over 2 s: the reports of four trained runs
def test_a_second_report_replaces_the_first(runs, tmp_path):
    out = tmp_path / "rep"
    write_report(runs["rgb-uncond"], out, progress=False, plan=SMALL)
    assert (out / "img" / "forward_008.png").is_file()
    smaller = dataclasses.replace(SMALL, forward_frames=4)
    write_report(runs["rgb-uncond"], out, progress=False, plan=smaller)
    assert not (out / "img" / "forward_008.png").exists()     # nothing stale is left
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no temporary folders


@pytest.mark.e2e  # over 2 s: the reports of four trained runs
def test_eval_writes_the_runs_results_and_never_replaces_a_foreign_file(runs, tmp_path, capsys):
    import shutil

    doc = json.loads((runs["gray-cond"] / "eval.json").read_text())
    assert {"fid", "memorization", "bits_per_dim", "checkpoint"} <= set(doc)
    run = tmp_path / "run"
    shutil.copytree(runs["gray-uncond"], run)
    (run / "eval.json").write_text("my own notes")
    assert main(["eval", str(run), "--n", "8", "--bpd-images", "2", "--bpd-timesteps", "2",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert "eval.json: exists and is not an eval result" in err and len(err.splitlines()) == 1
    assert (run / "eval.json").read_text() == "my own notes"


# ============================================================================ the command
@pytest.mark.e2e  # over 2 s: the reports of four trained runs
def test_command_chinese_with_the_default_plan_and_a_progress_bar(runs, tmp_path, capsys):
    out = tmp_path / "zh"
    assert main(["report", str(runs["gray-uncond"]), "--out", str(out), "--lang", "zh"]) == 0
    cap = capsys.readouterr()
    assert f"wrote {out / 'index.html'}" in cap.out
    assert "report" in cap.err and "100%" in cap.err             # the tqdm bar
    html = _html(out / "index.html")
    assert '<html lang="zh-CN">' in html
    for text in ("前向过程", "反向过程", "目标函数", "训练", "采样", "评估", "只保存了一个检查点",
                 "本次运行还没有评估"):
        assert text in html, text
    assert "Forward process" not in html and "has no evaluation yet" not in html
    # the default plan: 41 forward frames, the all-T ancestral chain in 51 states
    blob = _blob(html)
    assert len(blob["scrubbers"]["forward"]["frames"]) == 41
    assert len(blob["scrubbers"]["chain-ddpm"]["frames"]) == 51


@pytest.mark.e2e  # over 2 s: the reports of four trained runs
@pytest.mark.parametrize("argv,needle", [
    (["report", "/nonexistent/run"], "no such run directory"),
    (["report", "RUNDIR_NO_CKPT"], "holds no complete checkpoint"),
    (["report", "RUN", "--out", "FOREIGN"], "holds no ddpmlab report"),
    (["report", "RUN", "--lang", "fr"], None),
])
def test_errors_are_one_line(argv, needle, runs, tmp_path, capsys):
    no_ckpt = tmp_path / "no-ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text((runs["gray-uncond"] / "config.json").read_text())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    subst = {"RUN": str(runs["gray-uncond"]), "RUNDIR_NO_CKPT": str(no_ckpt),
             "FOREIGN": str(foreign)}
    argv = [subst.get(a, a) for a in argv]
    if needle is None:   # argparse's own choice check
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2
        assert "invalid choice: 'fr'" in capsys.readouterr().err
        return
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert needle in err and len(err.splitlines()) == 1 and "Traceback" not in err
    assert (foreign / "notes.txt").read_text() == "mine"


def test_the_strings_of_both_languages_match():
    assert set(LANGS) == {"en", "zh"}
    en, zh = STRINGS["en"], STRINGS["zh"]
    assert set(en) == set(zh)
    holes = re.compile(r"\{(\w+)\}")
    for key in en:
        assert set(holes.findall(en[key])) == set(holes.findall(zh[key])), key


# ============================================================================ in a browser
def _chromium() -> str:
    exe = find_chromium()
    if exe:
        return exe
    env = os.environ.get("DDPMLAB_CHROMIUM")
    where = f"DDPMLAB_CHROMIUM={env} is no program" if env else "looked for chromium, " \
        "chromium-browser, google-chrome"
    why = (f"headless Chromium not found ({where}): install Debian's package with "
           "`apt-get install chromium` (scripts/setup.sh does when run as root)")
    if os.environ.get("DDPMLAB_REQUIRE_BROWSER") == "1" or (
            hasattr(os, "geteuid") and os.geteuid() == 0):
        pytest.fail(why)
    pytest.skip(why)


def _pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.int16)


def _rect(b: Browser, ident: str) -> dict:
    return b.js(f"(() => {{ const r = document.getElementById('{ident}')"
                ".getBoundingClientRect(); return {x: r.x + scrollX, y: r.y + scrollY, "
                "width: r.width, height: r.height}; })()")


def _check_page(b: Browser, index: Path) -> None:
    assert b.console_errors() == []
    assert b.failed_requests() == []
    folder = index.parent.resolve().as_uri() + "/"
    assert all(u.startswith(folder) or u.startswith("data:") for u in b.requests()), \
        [u for u in b.requests() if not u.startswith(folder)]
    broken = b.js("[...document.images].filter(i => !i.complete || i.naturalWidth === 0)"
                  ".map(i => i.src)")
    assert broken == []


@pytest.mark.e2e  # a browser
@pytest.mark.parametrize("name", ["gray-cond", "gray-uncond", "rgb-cond", "rgb-uncond"])
def test_the_page_in_headless_chromium(name, reports):
    index = reports[name]
    with Browser(_chromium()) as b:
        b.open(index.resolve().as_uri())
        _check_page(b, index)
        state = ("[document.getElementById('fwd-img').src, "
                 "document.getElementById('fwd-a').textContent, "
                 "document.getElementById('fwd-s').textContent, "
                 "document.getElementById('fwd-t').textContent, "
                 "document.getElementById('fwd-marker').getAttribute('x1')]")
        b.js("document.getElementById('fwd-slider').scrollIntoView({block: 'center'})")
        before, shot_before = b.js(state), b.screenshot(_rect(b, "fwd-img"))
        b.js("document.getElementById('fwd-slider').focus()")
        for _ in range(3):   # real key presses on the focused slider
            b.press("ArrowRight", "ArrowRight", 39)
        b.js("new Promise(r => { const i = document.getElementById('fwd-img'); "
             "i.complete ? r() : i.addEventListener('load', () => r()); })")
        after, shot_after = b.js(state), b.screenshot(_rect(b, "fwd-img"))
        assert all(a != c for a, c in zip(before, after, strict=True)), (before, after)
        assert int(after[3]) > int(before[3])                # t moved on
        assert float(after[1]) < float(before[1]) and float(after[2]) > float(before[2])
        px0, px1 = _pixels(shot_before), _pixels(shot_after)
        assert px0.shape == px1.shape and np.abs(px0 - px1).mean() > 1.0   # the image changed
        # the reverse chains move as well
        b.js("(() => { const s = document.getElementById('ddpm-slider'); s.value = '0'; "
             "s.dispatchEvent(new Event('input')); })()")
        assert b.js("document.getElementById('ddpm-t').textContent") == "49"
        full = _pixels(b.screenshot(full_page=True))
        assert full.shape[0] > 2000 and full.shape[1] >= 1000
        assert full.std() > 20                                # not blank
        assert (np.abs(full - 255).sum(-1) > 60).mean() > 0.05  # much more than background
        _check_page(b, index)                                 # also after the interaction


@pytest.mark.e2e  # a browser
@pytest.mark.parametrize("breakage", [
    '<img src="https://example.com/x.png" alt="">',
    "<script>undefined_function_of_the_report();</script>",
])
def test_the_browser_check_catches_a_broken_page(breakage, reports, tmp_path):
    """A page with a request to the network, or a script error, fails the checks above."""
    src = reports["gray-uncond"].parent
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "img").symlink_to(src / "img")
    html = _html(reports["gray-uncond"]).replace("</main>", breakage + "</main>", 1)
    (bad / "index.html").write_text(html, encoding="utf-8")
    with Browser(_chromium()) as b:
        b.open((bad / "index.html").as_uri())
        with pytest.raises(AssertionError):
            _check_page(b, bad / "index.html")


@pytest.mark.e2e  # writes a report
def test_a_run_named_like_the_pages_placeholders_stays_text(runs, tmp_path):
    """A run (or class) name that spells the page's placeholders ``{{data}}`` / ``{{js}}`` is
    text in the page: the template is filled in one pass, so the page's data blob and script
    appear once each (sequential replaces pasted them into the name; issue 34)."""
    import shutil

    odd = tmp_path / "run-{{js}}-{{data}}"
    shutil.copytree(runs["gray-uncond"], odd)
    html = _html(write_report(odd, lang="en", progress=False, plan=SMALL))
    assert html.count('<script id="report-data"') == 1
    assert html.count("run-{{js}}-{{data}}") >= 1
    template = (Path(page_module.__file__).parent / "page.html").read_text(encoding="utf-8")
    assert html.count("<script") == template.count("<script")
