"""The run layer's one sampling call (:func:`ddpmlab.runs.sampling_call`) and its held-out
ELBO report: a sampler option set in the config, in an override or on the command line reaches
``sample()``; every drawing of a run goes through the same call."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpmlab.config import Config
from ddpmlab.errors import ConfigError
from ddpmlab.nn import UNet
from ddpmlab.runs import (
    elbo_bits_report,
    heldout_elbo,
    run_schedule,
    sample_images,
    sampling_call,
)

TINY = {"model": {"in_channels": 1, "image_size": 8, "base_channels": 16,
                  "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
                  "num_heads": 2, "norm_groups": 8},
        "diffusion": {"timesteps": 50},
        "sample": {"sampler": "heun", "steps": 4}}


def _cfg(**sample) -> Config:
    d = {k: dict(v) for k, v in TINY.items()}
    d["sample"].update(sample)
    return Config.from_dict(d)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(_cfg().model).eval()


def test_the_call_carries_every_setting_of_the_config(net):
    cfg = _cfg(eta=0.5, spacing="uniform", variance="large", clip_x0=False, guidance=2.0,
               churn=3.0, s_tmin=0.1, s_tmax=5.0, s_noise=1.003)
    call = sampling_call(net, cfg, precision="fp32")
    kw = call.kwargs()
    assert (kw["sampler"], kw["steps"], kw["eta"], kw["spacing"], kw["variance"]) == \
        ("heun", 4, 0.5, "uniform", "large")
    assert (kw["clip_x0"], kw["guidance"], kw["prediction"], kw["learn_sigma"]) == \
        (False, 2.0, "eps", False)
    assert kw["options"] == {"churn": 3.0, "s_tmin": 0.1, "s_tmax": 5.0, "s_noise": 1.003}
    assert torch.equal(kw["schedule"].betas, run_schedule(cfg).betas)
    assert call.nfe == 2 * 4 - 1                     # heun: two per step, one for the last
    # overrides win; None keeps the run's; "auto" is the sampler's own spacing; steps 0 = T
    o = sampling_call(net, cfg, sampler="ddim", steps=7, eta=0.0, spacing="auto",
                      guidance=1.0, options={"churn": 0.0}, precision="fp32").kwargs()
    assert (o["sampler"], o["steps"], o["eta"], o["spacing"], o["guidance"]) == \
        ("ddim", 7, 0.0, None, 1.0)
    assert o["options"]["churn"] == 0.0 and o["options"]["s_tmin"] == 0.1
    assert sampling_call(net, _cfg(steps=0), precision="fp32").steps is None
    assert sampling_call(net, _cfg(), precision="fp32").options == \
        {"churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}


@pytest.mark.parametrize("options, needle", [
    ({"churn": -1.0}, "sample.churn=-1.0 must be a finite number >= 0"),
    ({"s_noise": math.nan}, "sample.s_noise=nan"),
    ({"s_tmin": 2.0, "s_tmax": 1.0}, "sample.s_tmax=1.0 must be >= sample.s_tmin=2.0"),
    ({"chrun": 1.0}, "unknown sampler option(s) 'chrun'; known: churn, s_tmin"),
])
def test_bad_sampler_options_are_refused_by_name(net, options, needle):
    with pytest.raises(ConfigError) as e:
        sampling_call(net, _cfg(), options=options)
    assert needle in str(e.value)
    with pytest.raises(ConfigError, match="steps=51: the run has diffusion.timesteps=50"):
        sampling_call(net, _cfg(), steps=51)


def test_heun_churn_in_the_config_reaches_the_sampler(net):
    """Heun with churn 0 is EDM's deterministic Algorithm 1; churn > 0 adds fresh noise at each
    step (Algorithm 2), so the same seed gives other images, and one x_T two results; an
    S_tmax below every noise level switches the churn off again."""
    plain = sample_images(net, _cfg(), 3, seed=1, precision="fp32")
    again = sample_images(net, _cfg(churn=0.0), 3, seed=1, precision="fp32")
    churned = sample_images(net, _cfg(churn=20.0), 3, seed=1, precision="fp32")
    assert torch.equal(plain, again)
    assert (churned - plain).abs().max() > 1e-3
    off = sample_images(net, _cfg(churn=20.0, s_tmax=1e-6), 3, seed=1, precision="fp32")
    assert torch.equal(off, plain)
    # the same option as an override of the call (what `ddpmlab sample --churn` passes)
    assert torch.equal(sample_images(net, _cfg(), 3, seed=1, precision="fp32",
                                     options={"churn": 20.0}), churned)
    # one starting noise, two churned runs with other generators: they differ
    call = sampling_call(net, _cfg(churn=20.0), precision="fp32")
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    a = call.run(x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(4))
    b = call.run(x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(5))
    assert (a - b).abs().max() > 1e-3


@pytest.mark.e2e  # over 1.3 s: trains and samples
def test_sample_images_is_the_call_run_per_sample(net):
    """``sample_images`` draws through the call: the same images as ``call.run`` with the
    per-sample generators, in any batch size."""
    from ddpmlab.samplers import per_sample_generators

    cfg = _cfg(sampler="ddim", steps=5, eta=1.0)
    call = sampling_call(net, cfg, precision="fp32")
    ref = call.run((4, 1, 8, 8), generator=per_sample_generators(2, list(range(4))))
    got = sample_images(net, cfg, 4, seed=2, precision="fp32", batch_size=3)
    torch.testing.assert_close(got, ref.float(), rtol=0, atol=0)


class _Held:
    """A held-out split: 10 random 8x8 uint8 images."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (10, 1, 8, 8), generator=g, dtype=torch.uint8)
        self.source = "test"

    def __len__(self) -> int:
        return len(self.images)


@pytest.mark.e2e  # over 1.3 s: trains, then the ELBO
def test_the_heldout_elbo_is_bits_per_dim_of_the_seeds_pick(net, tmp_path):
    from ddpmlab import schedules
    from ddpmlab.data import to_model_range
    from ddpmlab.likelihood import bits_per_dim

    cfg, held = _cfg(), _Held()
    x0, bpd = heldout_elbo(net, cfg, held, seed=4, images=3, timesteps=5)
    g = torch.Generator().manual_seed(4)
    pick = torch.randperm(10, generator=g)[:3]
    ref = bits_per_dim(net, schedules.linear(50), to_model_range(held.images[pick]),
                       n_timesteps=5, generator=g)
    torch.testing.assert_close(x0, to_model_range(held.images[pick]))
    assert bpd.total == pytest.approx(ref.total, rel=1e-6)
    rep = elbo_bits_report(net, cfg, held, seed=4, images=3, timesteps=5,
                           figure=tmp_path / "vlb.png")
    assert rep["total"] == pytest.approx(ref.total, rel=1e-6) and rep["images"] == 3
    assert rep["timesteps_evaluated"] == 5 and len(rep["terms"]) == 5
    assert rep["split"] == "test" and (tmp_path / "vlb.png").is_file()
    assert rep["total"] == pytest.approx(rep["prior"] + rep["decoder"] + rep["diffusion"])
    assert "figure" not in elbo_bits_report(net, cfg, held, seed=4, images=3, timesteps=5)
    flow = Config.from_dict({**TINY, "diffusion": {"timesteps": 50, "objective": "flow"},
                             "sample": {}})
    with pytest.raises(ConfigError, match="not defined for objective flow"):
        heldout_elbo(net, flow, held)


# ============================================================================ the command
@pytest.fixture(scope="module")
def heun_run(tmp_path_factory):
    from ddpmlab.cli import main

    out = tmp_path_factory.mktemp("runs") / "heun"
    assert main(["train", "--dataset", "digits", "--out", str(out), "--no-progress",
                 "--device", "cpu", "--max-steps", "2", "--unconditional",
                 "model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
                 "model.attention_resolutions=4", "model.num_heads=2", "model.norm_groups=8",
                 "diffusion.timesteps=50", "train.batch_size=8", "sample.n=4",
                 "sample.sampler=heun", "sample.steps=4", "sample.guide=",
                 "sample.guide_weight=1"]) == 0     # (not the preset's own autoguidance)
    return out


def _sampler_of(run, out_dir, n: int = 3):
    """``draw(name, *flags)``: ``ddpmlab sample RUN -n n`` in fp32 with ``flags``, its images."""
    from ddpmlab.cli import main

    def draw(name: str, *extra: str) -> np.ndarray:
        npz = out_dir / f"{name}.npz"
        assert main(["sample", str(run), "-n", str(n), "--device", "cpu", "--no-progress",
                     "--precision", "fp32", "--out", str(out_dir / f"{name}.png"),
                     "--npz", str(npz), *extra]) == 0
        return np.load(npz)["arr_0"]

    return draw


@pytest.mark.e2e  # over 2 s: trains and samples
def test_sample_churn_flag_reaches_the_sampler(heun_run, tmp_path, capsys):
    from ddpmlab.cli import main

    draw = _sampler_of(heun_run, tmp_path, 4)

    plain, zero, churned = draw("plain"), draw("zero", "--churn", "0"), draw("c", "--churn", "20")
    assert np.array_equal(plain, zero) and not np.array_equal(plain, churned)
    capsys.readouterr()
    assert main(["sample", str(heun_run), "-n", "2", "--device", "cpu", "--no-progress",
                 "--churn", "-1", "--out", str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "churn=-1.0 must be a finite number >= 0" in err and len(err.splitlines()) == 1


# ============================================================================ autoguidance
def _cond_cfg(**sample) -> Config:
    d = {k: dict(v) for k, v in TINY.items()}
    d["model"]["num_classes"] = 3
    d["sample"] = {"sampler": "ddim", "steps": 5, "clip_x0": False, **sample}
    return Config.from_dict(d)


@pytest.fixture(scope="module")
def cond_nets():
    """Two conditional networks with every weight non-zero (a fresh UNet's output layer is
    zero: it predicts eps = 0 whatever its other weights)."""
    torch.manual_seed(1)
    nets = UNet(_cond_cfg().model).eval(), UNet(_cond_cfg().model).eval()
    with torch.no_grad():
        for net in nets:
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
    return nets


def test_autoguidance_and_the_interval_reach_the_sampling_call(cond_nets):
    """A guide identical to the network gives the unguided images at any weight; another
    guide changes them; an empty interval is `guidance 1` (and no autoguidance); the guide runs
    in the call's view (its precision and objective wrapper) and an override of the config's
    weight without a guide is refused."""
    net, other = cond_nets
    y = torch.tensor([0, 1, 2])

    def draw(cfg=None, **kw):
        return sample_images(net, cfg or _cond_cfg(), 3, seed=1, y=y, precision="fp32", **kw)

    plain = draw()
    for w in (0.0, 2.0, 7.5):
        assert torch.equal(draw(guide=net, guide_weight=w), plain)
    guided = draw(guide=other, guide_weight=2.0)
    assert (guided - plain).abs().max() > 1e-3
    assert torch.equal(draw(guide=other, guide_weight=2.0, guidance_interval=(5.0, 1.0)), plain)
    cfg_w = draw(_cond_cfg(guidance=3.0))
    assert (cfg_w - plain).abs().max() > 1e-3
    assert torch.equal(draw(_cond_cfg(guidance=3.0, guidance_interval=[2.0, 2.0])), plain)
    assert torch.equal(draw(_cond_cfg(guidance=3.0), guidance_interval=(0.0, 1e9)), cfg_w)
    call = sampling_call(net, _cond_cfg(guidance_interval=[0.1, 3.0]), guide=other,
                         guide_weight=2.0, precision="fp32")
    kw = call.kwargs()
    assert (kw["guide_weight"], kw["guidance_interval"]) == (2.0, (0.1, 3.0))
    # the guide is seen as the network is (here fp32 ddpm: both as they are)
    assert kw["guide"] is not None and (kw["guide"] is other) == (kw["model"] is net)
    assert sampling_call(net, _cond_cfg(), precision="fp32").kwargs()["guide"] is None
    with pytest.raises(ConfigError, match="sample.guide_weight=2.0 needs sample.guide"):
        sampling_call(net, _cond_cfg(), guide_weight=2.0)
    with pytest.raises(ConfigError, match=r"sample.guidance_interval=\[1.0\] must be \[\]"):
        sampling_call(net, _cond_cfg(), guidance_interval=(1.0,))


@pytest.mark.e2e  # over 1.3 s: trains two runs
def test_sample_guide_flags_load_the_guide_like_the_run(heun_run, tmp_path, capsys):
    """``ddpmlab sample --guide``: the run itself as its guide (the directory, or its checkpoint
    folder) gives the images of no guide at any weight; an empty interval with a guide is
    unguided too; bad inputs are one line each."""
    import json
    import shutil

    from ddpmlab.cli import main
    from ddpmlab.io import load_tensors, save_tensors
    from ddpmlab.layout import RunDir

    draw = _sampler_of(heun_run, tmp_path)

    plain = draw("plain")
    ckpt = RunDir(heun_run).checkpoint_dirs()[-1]
    assert np.array_equal(draw("self", "--guide", str(heun_run), "--guide-weight", "3"), plain)
    assert np.array_equal(draw("ck", "--guide", str(ckpt), "--guide-weight", "0.5"), plain)
    assert np.array_equal(draw("iv", "--guide", str(ckpt), "--guide-weight", "3",
                               "--guidance-interval", "4,1"), plain)
    weaker = tmp_path / "weaker"                      # another network of the same task
    shutil.copytree(heun_run, weaker)
    ema = RunDir(weaker).checkpoint_dirs()[-1] / "ema.safetensors"
    save_tensors(ema, {k: v * 1.5 for k, v in load_tensors(ema).items()})
    assert not np.array_equal(draw("weak", "--guide", str(weaker), "--guide-weight", "3"), plain)
    other = tmp_path / "other"                        # the same network, another schedule
    shutil.copytree(heun_run, other)
    doc = json.loads((other / "config.json").read_text())
    doc["diffusion"]["timesteps"] = 40
    (other / "config.json").write_text(json.dumps(doc))
    for extra, needle in [
        (["--guide", str(tmp_path / "nowhere"), "--guide-weight", "2"],
         "neither a run directory nor one of its checkpoint folders"),
        (["--guide", str(other), "--guide-weight", "2"],
         "its diffusion.timesteps is 40, the run's 50; a guide must model the same task"),
        (["--guide-weight", "2"], "sample.guide_weight=2.0 needs sample.guide"),
        (["--guide", str(heun_run), "--guide-weight", "-1"], "--guide-weight=-1.0 must be"),
        (["--guidance-interval", "1"], "--guidance-interval '1': give LO,HI"),
        (["--guidance-interval=-1,2"], "--guidance-interval '-1,2': give LO,HI"),
    ]:
        capsys.readouterr()
        assert main(["sample", str(heun_run), "-n", "2", "--device", "cpu", "--no-progress",
                     "--out", str(tmp_path / "bad.png"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err


def _train_own_guide(root, guide: str) -> None:
    from ddpmlab.cli import main

    assert main(["train", "--dataset", "digits", "--out", str(root), "--no-progress",
                 "--device", "cpu", "--max-steps", "6", "--unconditional",
                 "model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
                 "model.attention_resolutions=4", "model.num_heads=2", "model.norm_groups=8",
                 "diffusion.timesteps=50", "train.batch_size=8", "train.ckpt_every=100",
                 "train.keep_last=1", "train.precision=fp32", "sample.n=4",
                 "sample.sampler=heun", "sample.steps=4", f"sample.guide={guide}",
                 "sample.guide_weight=2"]) == 0


@pytest.mark.e2e  # over 2 s: trains two runs and samples
def test_own_guide_at_a_fraction_is_kept_by_the_trainer_and_found_by_sampling(tmp_path, capsys):
    """``sample.guide = "@F"``: the trainer keeps its checkpoint at round(F x max_steps) past
    ``train.keep_last`` (a run naming another guide keeps only its newest), loading the run
    resolves the name to that folder, ``sample`` (the config's guide or ``--guide @F``) draws
    exactly what naming the folder draws, and a run without it says so in one line."""
    import json

    from ddpmlab.cli import main
    from ddpmlab.layout import RunDir
    from ddpmlab.runs import _copied_config, load_run

    own, other = tmp_path / "own", tmp_path / "other"
    _train_own_guide(own, "@0.5")
    names = [p.name for p in RunDir(own).checkpoint_dirs()]
    assert names == ["step_00000003", "step_00000006"], names
    assert "step_00000003 kept as the autoguidance guide" in capsys.readouterr().out
    _train_own_guide(other, str(own / "checkpoints" / "step_00000003"))  # the twin: pruned
    assert [p.name for p in RunDir(other).checkpoint_dirs()] == ["step_00000006"]
    _, cfg, _ = load_run(own)
    assert cfg.sample.guide == str(own / "checkpoints" / "step_00000003")
    assert json_guide(own) == "@0.5"                        # config.json keeps the name
    # a run made of its weights (ddpmlab ema) names the folder: it keeps no step 3 itself
    assert json.loads(_copied_config(RunDir(own)))["sample"]["guide"] == cfg.sample.guide
    assert _copied_config(RunDir(other)) == RunDir(other).config.read_text(encoding="utf-8")

    draw = _sampler_of(own, tmp_path)

    by_config = draw("config")
    by_folder = draw("folder", "--guide", str(own / "checkpoints" / "step_00000003"))
    by_name = draw("name", "--guide", "@0.5")
    unguided = draw("plain", "--guide-weight", "1")
    assert np.array_equal(by_config, by_folder) and np.array_equal(by_name, by_folder)
    assert not np.array_equal(by_config, unguided)
    for extra, needle in [
        (["--guide", "@0.2"], "sample.guide=@0.2: the run has no checkpoint at step 1 (20% of "
                              "its 6 steps)"),
        (["--guide", "@1.5"], "sample.guide='@1.5': '@F' names this run's own checkpoint"),
        (["--guide", "@x"], "sample.guide='@x': '@F' names"),
    ]:
        capsys.readouterr()
        assert main(["sample", str(own), "-n", "2", "--device", "cpu", "--no-progress",
                     "--out", str(tmp_path / "bad.png"), *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    # the run's own "@F" guide not on disk (a run stopped before it; here deleted): the run's
    # config samples without autoguidance, said in one line; asked for by --guide, refused
    import shutil

    early = tmp_path / "early"
    shutil.copytree(own, early)
    shutil.rmtree(early / "checkpoints" / "step_00000003")
    with pytest.warns(UserWarning, match="no checkpoint at step 3 .* sampling without auto"):
        assert np.array_equal(_sampler_of(early, tmp_path)("early"), unguided)
    assert main(["sample", str(early), "-n", "2", "--device", "cpu", "--no-progress", "--out",
                 str(tmp_path / "bad.png"), "--guide", "@0.5"]) == 2
    assert "give --guide RUN|CHECKPOINT" in capsys.readouterr().err


@pytest.mark.e2e  # over 2 s: trains a run and samples it four times
def test_guidance_table_rows_without_a_guide_are_not_autoguided(tmp_path):
    """``benchmarks.guidance_table``: a row says all of its guidance. On a run whose config
    names a guide (``@F``, resolved by ``load_run``) a row without ``guide=`` draws what
    ``--guide-weight 1`` draws (it used to be autoguided by the run's own guide, so its "no
    autoguidance" rows measured autoguidance), and ``guide=step_...,gw=2`` what the config's
    own guide draws."""
    import argparse

    from benchmarks.guidance_table import Models, draw

    from ddpmlab import sample_images
    from ddpmlab.runs import default_labels, load_run

    run = tmp_path / "own"
    _train_own_guide(run, "@0.5")
    models = Models(str(run))
    a = argparse.Namespace(n=4, sampler="heun", steps=4, batch=4)
    plain_row, _, _ = draw(models, {}, a)
    guided_row, _, _ = draw(models, {"guide": "step_00000003", "gw": "2"}, a)
    model, cfg, _ = load_run(run)
    y = default_labels(cfg, 4)
    plain = sample_images(model, cfg, n=4, seed=0, y=y, guide_weight=1.0)
    own = sample_images(model, cfg, n=4, seed=0, y=y)
    assert torch.equal(plain_row, plain) and torch.equal(guided_row, own)
    assert not torch.equal(plain, own)
    # no --sampler/--steps: the run's own (the table's old default was DPM-Solver++(2M) SDE 10)
    default = argparse.Namespace(n=4, sampler=None, steps=None, batch=4)
    assert torch.equal(draw(models, {}, default)[0], sample_images(model, cfg, n=4, seed=0, y=y,
                                                                   guide_weight=1.0))


@pytest.mark.e2e  # over 3 s: a run sized by time
def test_own_guide_under_a_time_budget_is_the_sized_runs_step(tmp_path):
    """A time budget sizes max_steps at step 40; the "@F" checkpoint is F of the sized run
    (what ./run.sh's preset relies on), kept past keep_last like any other guide."""
    import json

    from ddpmlab.cli import main
    from ddpmlab.layout import RunDir

    run = tmp_path / "timed"
    assert main(["train", "--dataset", "digits", "--out", str(run), "--no-progress",
                 "--device", "cpu", "--no-samples", "--time-budget", "0.08", "--unconditional",
                 "model.base_channels=8", "model.channel_mult=1", "model.num_res_blocks=1",
                 "model.attention_resolutions=", "model.norm_groups=4",
                 "diffusion.timesteps=50", "train.batch_size=4", "train.ckpt_every=100000",
                 "train.keep_last=1", "train.precision=fp32", "train.warmup_steps=1",
                 "train.watch_copies=0",  # (the recipe's copy watch would fill the budget)
                 "sample.guide=@0.9", "sample.guide_weight=2"]) == 0
    steps = json.loads((run / "config.json").read_text())["train"]["max_steps"]
    assert steps >= 60, steps            # (the guide's step lies past the sizing at step 40)
    names = [p.name for p in RunDir(run).checkpoint_dirs()]
    assert names == [f"step_{round(0.9 * steps):08d}", f"step_{steps:08d}"], (names, steps)


def json_guide(run) -> str:
    import json

    return json.loads((run / "config.json").read_text())["sample"]["guide"]


# ============================================================================ ddpmlab ema
@pytest.mark.e2e  # over 1.3 s: trains, then the ema command
def test_ema_command_writes_a_run_with_the_reconstructed_ema(tmp_path, tiny_cfg, capsys):
    """``ddpmlab ema RUN --sigma-rel S --out NEW``: NEW holds RUN's config and one checkpoint
    whose EMA parameters are the reconstruction (a tracked length: that average), buffers and
    other files the newest checkpoint's; ``sample`` reads it; ``--sweep`` scores each length
    (table in metrics.jsonl, plot); bad inputs are one line each."""
    import json

    from ddpmlab.cli import main
    from ddpmlab.io import load_tensors
    from ddpmlab.layout import RunDir
    from ddpmlab.train import Trainer
    from ddpmlab.train.phema import reconstruct_run

    cfg = tiny_cfg.override({"train.phema": "true", "train.phema_every": "2"})
    Trainer(cfg, tmp_path / "run", progress=False, log=lambda m: None).train()
    src = RunDir(tmp_path / "run")
    ckpt = src.checkpoint_dirs()[-1]
    assert main(["ema", str(src.root), "--sigma-rel", "0.08", "--out", str(tmp_path / "new")]) == 0
    out = capsys.readouterr().out
    new = RunDir(tmp_path / "new")
    written = new.checkpoint_dirs()
    assert [p.name for p in written] == [ckpt.name] and str(written[0]) in out
    assert new.config.read_bytes() == src.config.read_bytes()
    ema, old_ema = (load_tensors(p / "ema.safetensors") for p in (written[0], ckpt))
    want = reconstruct_run(src, 0.08)
    assert ema.keys() == old_ema.keys() and set(want) <= set(ema)   # (+ buffers, if any)
    for k in ema:
        assert torch.equal(ema[k], want[k] if k in want else old_ema[k]), k
    assert any(not torch.equal(ema[k], old_ema[k]) for k in want)
    for name in ("model.safetensors", "optimizer.safetensors", "rng.safetensors"):
        a, b = load_tensors(written[0] / name), load_tensors(ckpt / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    assert json.loads((written[0] / "state.json").read_text())["phema"]["sigma_rel"] == 0.08
    assert main(["sample", str(new.root), "-n", "2", "--device", "cpu", "--no-progress"]) == 0
    # a stored length comes back as the tracked average itself
    assert main(["ema", str(src.root), "--sigma-rel", "0.05", "--out", str(tmp_path / "new"),
                 "--force"]) == 0
    tracked = load_tensors(src.phema_snapshot(6))
    got = load_tensors(new.checkpoint_dirs()[-1] / "ema.safetensors")
    for k in want:
        torch.testing.assert_close(got[k], tracked[f"ema0.{k}"], rtol=1e-4, atol=1e-6)
    # --sweep: rows, the metrics event, the plot
    capsys.readouterr()
    assert main(["ema", str(src.root), "--sweep", "0.05,0.1", "--n", "12", "--device", "cpu",
                 "--no-progress"]) == 0
    table = capsys.readouterr().out
    assert "best FID at sigma_rel" in table and len(table.strip().splitlines()) == 4
    event = [r for r in src.read_metrics() if r.get("event") == "phema_sweep"][-1]
    assert [r["sigma_rel"] for r in event["rows"]] == [0.05, 0.1]
    assert all(math.isfinite(r["fid"]) and r["n"] == 12 for r in event["rows"])
    assert (src.figures / "phema_sweep.png").is_file()
    # bad inputs: one line each
    Trainer(tiny_cfg, tmp_path / "plain", progress=False, log=lambda m: None).train()
    for argv, needle in [
        ([str(tmp_path / "plain"), "--sigma-rel", "0.1", "--out", str(tmp_path / "x")],
         "no post-hoc EMA snapshots"),
        ([str(src.root), "--sigma-rel", "0.5"], "--sigma-rel=0.5 must lie in (0, 0.3003)"),
        ([str(src.root), "--sweep", "0.05,0"], "--sigma-rel=0.0 must lie in (0, 0.3003)"),
        ([str(src.root), "--sweep", "0.05,x"], "--sweep '0.05,x': give numbers"),
        ([str(src.root), "--sigma-rel", "0.1", "--out", str(tmp_path / "new")],
         "already holds a run; use --resume to continue it, --force to replace it"),
        ([str(src.root), "--sigma-rel", "0.1", "--out", str(src.root), "--force"],
         "an input of this command"),
        ([str(src.root)], "ema: give --sigma-rel S"),
    ]:
        capsys.readouterr()
        assert main(["ema", *argv]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- the copy watch
def test_the_copy_watch_logs_each_checkpoint_and_warns_when_copying_rises(tiny_cfg, tmp_path,
                                                                        monkeypatch):
    """train.watch_copies: a memorization event per checkpoint in metrics.jsonl; samples that
    are training images (copies by construction, from the second checkpoint on) raise one
    warning line; fresh noise does not."""
    import json

    from ddpmlab import runs
    from ddpmlab.data import to_model_range

    calls = []
    real = runs.sample_images

    def fake(model, cfg, n, **kw):
        calls.append(n)
        if len(calls) == 1:
            return real(model, cfg, n=n, **kw)          # the model's own samples (noise-like)
        return to_model_range(trainer.data.images[:n])  # copies of training images

    monkeypatch.setattr(runs, "sample_images", fake)
    notes = []
    cfg = tiny_cfg.override({"train.watch_copies": "16", "train.max_steps": "6"})
    trainer = runs.train_run(cfg, tmp_path / "r", progress=False, log=notes.append)
    trainer.train()
    events = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text()
              .splitlines() if '"memorization"' in line]
    assert [e["step"] for e in events] == [3, 6] and calls == [16, 16]
    assert events[1]["share"] == 1.0 and events[0]["share"] < 0.5
    warned = [m for m in notes if "near-copies of training images" in m]
    assert len(warned) == 1 and "at step 6" in warned[0] and "step 3:" in warned[0]


def test_the_copy_watch_is_off_by_default(tiny_cfg, tmp_path):
    from ddpmlab import runs

    trainer = runs.train_run(tiny_cfg.override({"train.max_steps": "3"}), tmp_path / "r",
                             progress=False)
    trainer.train()
    assert '"memorization"' not in (tmp_path / "r" / "metrics.jsonl").read_text()
