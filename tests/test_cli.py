"""End to end through the CLI: train -> sample, and clear one-line errors."""

import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ddpmlab.cli import main

TINY = ["model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
        "model.attention_resolutions=4", "model.num_heads=2", "model.norm_groups=8",
        "diffusion.timesteps=50", "train.batch_size=8", "train.log_every=1",
        "sample.n=4", "sample.sampler=ddim", "sample.steps=5"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "run"
    code = main(["train", "--dataset", "digits", "--max-steps", "3", "--out", str(out),
                 "--no-progress", "--device", "cpu", *TINY])
    assert code == 0
    return out


@pytest.fixture(scope="module")
def uncond_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "uncond"
    code = main(["train", "--dataset", "digits", "--max-steps", "2", "--out", str(out),
                 "--unconditional", "--no-progress", "--device", "cpu", *TINY])
    assert code == 0
    return out


def test_train_writes_a_run(run_dir):
    for name in ("config.json", "metrics.jsonl", "samples.png"):
        assert (run_dir / name).is_file(), name
    assert (run_dir / "checkpoints" / "step_00000003" / "ema.safetensors").is_file()


def test_default_preset_is_conditional_with_one_row_per_class(run_dir, uncond_run):
    import json

    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["data"]["conditional"] == "true" and cfg["model"]["num_classes"] == 10
    # sample.n = 4 < 10 classes: one sample per class, one row each (10 rows of 1 image of
    # 8x8 pixels, scale 2, 2-pixel padding)
    w, h = Image.open(run_dir / "samples.png").size
    assert h > 5 * w
    ucfg = json.loads((uncond_run / "config.json").read_text())
    assert ucfg["data"]["conditional"] == "false" and ucfg["model"]["num_classes"] == 0
    assert main(["train", "--conditional", "--unconditional", "--out", "/tmp/x"]) == 2


@pytest.mark.e2e  # over 2 s: trains
def test_the_preset_is_sized_by_time_and_max_steps_turns_that_off(run_dir, tmp_path, capsys):
    """The mnist preset has a time budget; --max-steps N trains exactly N steps (config.json:
    no budget), a budget with max_steps as its cap times steps 5-40 and says what it chose."""
    import json

    from ddpmlab.config import load_config

    assert load_config("mnist").train.time_budget_min > 0
    assert json.loads((run_dir / "config.json").read_text())["train"]["time_budget_min"] == 0
    out = tmp_path / "budget"
    assert main(["train", "--dataset", "digits", "--out", str(out), "--no-progress",
                 "--no-samples", "--device", "cpu", "--time-budget", "5", *TINY,
                 "train.max_steps=41", "train.log_every=50"]) == 0
    said = capsys.readouterr().out
    assert "time budget 5 min:" in said and "max_steps 41 (the max_steps cap: ~" in said
    assert "of the 5 min; train.max_steps=N allows more)" in said   # (it uses seconds of 5 min)
    stored = json.loads((out / "config.json").read_text())["train"]
    assert (stored["max_steps"], stored["time_budget_min"]) == (41, 0)


def test_sample_defaults_to_a_balanced_mix_of_classes(run_dir, tmp_path):
    npz = tmp_path / "s.npz"
    assert main(["sample", str(run_dir), "--n", "13", "--steps", "2", "--npz", str(npz),
                 "--out", str(tmp_path / "g.png"), "--no-progress"]) == 0
    assert np.load(npz)["labels"].tolist() == [k % 10 for k in range(13)]
    npz2 = tmp_path / "u.npz"
    assert main(["sample", str(run_dir), "--n", "3", "--steps", "2", "--class", "none",
                 "--npz", str(npz2), "--out", str(tmp_path / "u.png"), "--no-progress"]) == 0
    assert "labels" not in np.load(npz2)


def test_sample_writes_png_and_npz(run_dir, tmp_path, capsys):
    out, npz = tmp_path / "g.png", tmp_path / "s.npz"
    code = main(["sample", "--run", str(run_dir), "--n", "6", "--sampler", "dpm_solver",
                 "--steps", "4", "--out", str(out), "--npz", str(npz), "--batch-size", "4",
                 "--no-progress"])
    assert code == 0
    Image.open(out).verify()
    arr = np.load(npz)["arr_0"]
    assert arr.shape == (6, 8, 8, 1) and arr.dtype == np.uint8
    # sample k depends on (seed, k) only: batch size 4 vs 6 gives the same images
    npz2 = tmp_path / "s2.npz"
    main(["sample", "--run", str(run_dir), "--n", "6", "--sampler", "dpm_solver", "--steps", "4",
          "--out", str(tmp_path / "g2.png"), "--npz", str(npz2), "--batch-size", "6",
          "--no-progress"])
    assert np.array_equal(arr, np.load(npz2)["arr_0"])


@pytest.mark.parametrize("argv, needle", [
    (["sample", "--run", "/nonexistent/run"], "/nonexistent/run"),
    (["train", "--config", "/nonexistent.yaml"], "nonexistent.yaml"),
    (["train", "train.bogus=1"], "train.bogus"),
    (["train", "--dataset", "/nonexistent/folder"], "/nonexistent/folder"),
])
def test_errors_are_one_line(argv, needle, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err and err.count("\n") == 1


def test_sample_argument_errors(run_dir, uncond_run, capsys):
    assert main(["sample", "--run", str(run_dir), "--steps", "51"]) == 2
    assert "--steps=51" in capsys.readouterr().err
    assert main(["sample", "--run", str(run_dir), "--class", "10"]) == 2
    assert "0..9" in capsys.readouterr().err
    for cls in ("3", "none"):
        assert main(["sample", "--run", str(uncond_run), "--class", cls]) == 2
        assert "unconditional" in capsys.readouterr().err
    assert main(["sample", "--run", str(run_dir), "--n", "0"]) == 2


@pytest.mark.e2e  # a process
def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "ddpmlab", "--help"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and "train" in r.stdout and "sample" in r.stdout


@pytest.mark.e2e  # over 2 s: samples and scores a run
def test_eval_reports_every_metric(run_dir, tmp_path, capsys):
    import json

    out = tmp_path / "eval.json"
    code = main(["eval", str(run_dir), "--n", "40", "--sampler", "ddim", "--steps", "3",
                 "--bpd-images", "8", "--bpd-timesteps", "5", "--json", str(out),
                 "--no-progress"])
    assert code == 0
    text = capsys.readouterr().out
    for word in ("FID", "KID", "precision", "memorization", "bits/dim", "classifier"):
        assert word in text, word
    r = json.loads(out.read_text())
    assert r["n"] == 40 and r["baseline"] is not None  # below the recommended N: baseline given
    assert r["bits_per_dim"]["timesteps_evaluated"] == 5 and r["bits_per_dim"]["total"] > 0
    assert (run_dir / "figures" / "vlb.png").is_file()
    events = [json.loads(s) for s in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert events[-1]["event"] == "eval" and "fid" in events[-1]


@pytest.mark.e2e  # over 1.3 s: scores samples
def test_eval_scores_an_npz(run_dir, tmp_path, capsys):
    npz = tmp_path / "s.npz"
    main(["sample", str(run_dir), "--n", "12", "--steps", "2", "--npz", str(npz),
          "--out", str(tmp_path / "g.png"), "--no-progress"])
    assert main(["eval", str(run_dir), "--samples", str(npz), "--bpd-images", "0",
                 "--no-progress"]) == 0
    assert "12" in capsys.readouterr().out
    bad = tmp_path / "bad.npz"
    np.savez(bad, arr_0=np.zeros((3, 8, 8, 1), np.float32))
    assert main(["eval", str(run_dir), "--samples", str(bad)]) == 2
    assert "bad.npz" in capsys.readouterr().err


@pytest.mark.e2e  # over 2 s: draws every figure of a run
@pytest.mark.parametrize("which, grid", [("run_dir", "samples_by_class.png"),
                                         ("uncond_run", "samples.png")])
def test_figures_command(which, grid, request, tmp_path):
    run = request.getfixturevalue(which)
    out = tmp_path / "fig"
    assert main(["figures", str(run), "--out", str(out), "--chain-steps", "5"]) == 0
    for name in ("noising_strip.png", "denoising_chain.png", "schedule.png", "loss.png", grid):
        Image.open(out / name).verify()


def _mallopt_available() -> bool:
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt  # noqa: B018 - the lookup is the check
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


@pytest.mark.e2e  # a process
@pytest.mark.parametrize("setting", ["", "default"])
def test_allocator_tuning_is_the_commands_own_and_can_be_turned_off(setting):
    code = "from ddpmlab.cli import tune_allocator; print(tune_allocator())"
    env = {**os.environ, "DDPMLAB_MALLOC": setting}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                       env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(setting == "" and _mallopt_available())


@pytest.mark.e2e  # two ddpmlab processes
def test_allocator_tuning_leaves_samples_unchanged(run_dir, tmp_path):
    """`ddpmlab sample` as a command (allocator tuned) and with DDPMLAB_MALLOC=default draw
    byte-identical samples: the setting changes where memory comes from, nothing else."""
    outs = []
    for setting in ("", "default"):
        npz = tmp_path / f"s{setting or 'tuned'}.npz"
        r = subprocess.run([sys.executable, "-m", "ddpmlab", "sample", str(run_dir), "-n", "6",
                            "--npz", str(npz), "--out", str(npz.with_suffix(".png")),
                            "--no-progress"], capture_output=True, text=True, timeout=300,
                           env={**os.environ, "DDPMLAB_MALLOC": setting})
        assert r.returncode == 0, r.stderr
        outs.append(npz.read_bytes())
    assert outs[0] == outs[1]


def test_samplers_command_lists_every_registered_sampler(capsys):
    from ddpmlab import SAMPLERS

    assert main(["samplers"]) == 0
    rows = capsys.readouterr().out.splitlines()
    assert [r.split()[0] for r in rows[1:]] == list(SAMPLERS)
    heun = next(r for r in rows if r.startswith("heun"))
    assert "2n - 1" in heun and "karras" in heun


@pytest.mark.parametrize("sampler,steps,nfe", [("heun", 3, 5), ("unipc", 3, 3),
                                               ("euler_ancestral", 2, 2)])
def test_sample_with_any_registered_sampler(run_dir, tmp_path, capsys, sampler, steps, nfe):
    out = tmp_path / "g.png"
    assert main(["sample", str(run_dir), "--n", "2", "--sampler", sampler, "--steps",
                 str(steps), "--out", str(out), "--no-progress"]) == 0
    assert f"{steps} steps = {nfe} network evaluations" in capsys.readouterr().out
    assert out.is_file()


def test_max_steps_lifts_the_presets_time_limit_and_says_so(run_dir, capsys):
    """The fixture's run asked for --max-steps 3 with the mnist preset (time limit 8 min):
    the limit is off in the run's config, and a new run prints why at the start."""
    import json

    assert json.loads((run_dir / "config.json").read_text())["train"]["time_limit_min"] == 0
    out = run_dir.parent / "again"
    assert main(["train", "--dataset", "digits", "--max-steps", "1", "--out", str(out),
                 "--no-progress", "--device", "cpu", "--no-samples", *TINY]) == 0
    said = capsys.readouterr().out
    assert "the preset's time limit (train.time_limit_min=8) is now off" in said


def test_the_class_label_policy_of_sample():
    """--class: none given = a balanced mix, 'none' = the null class, 'all' = one row per class,
    a list = cycled; an unconditional run refuses a class (one line naming the run)."""
    import torch

    from ddpmlab.config import Config, ModelConfig
    from ddpmlab.errors import ConfigError
    from ddpmlab.runs import class_labels

    cond, uncond = Config(model=ModelConfig(num_classes=3)), Config()
    y, nrow = class_labels(cond, 5, None)
    assert y.tolist() == [0, 1, 2, 0, 1] and nrow is None
    assert class_labels(uncond, 5, None) == (None, None)
    assert class_labels(cond, 5, "none") == (None, None)
    y, nrow = class_labels(cond, 7, "all")
    assert y.tolist() == [0, 0, 1, 1, 2, 2] and nrow == 2
    assert class_labels(cond, 2, "all")[0].tolist() == [0, 1, 2]     # at least one per class
    y, nrow = class_labels(cond, 5, "2,0")
    assert torch.equal(y, torch.tensor([2, 0, 2, 0, 2])) and nrow is None
    for text, needle in (("3", "0..2"), ("x", "a class number"), (",", "0..2")):
        with pytest.raises(ConfigError, match=needle):
            class_labels(cond, 4, text)
    for text in ("1", "none"):
        with pytest.raises(ConfigError, match="runs/u.*unconditional"):
            class_labels(uncond, 4, text, "runs/u")


def test_one_device_choice_for_every_process():
    """Under torchrun (world > 1) CUDA means the process's own GPU; otherwise the device asked
    for. Training and sampling call this one function."""
    import inspect

    import torch

    from ddpmlab import runs
    from ddpmlab.device import process_device
    from ddpmlab.train import loop

    assert process_device(torch.device("cuda", 0), 4, 3) == torch.device("cuda", 3)
    assert process_device(torch.device("cuda", 1), 1, 0) == torch.device("cuda", 1)
    assert process_device(torch.device("cpu"), 4, 3) == torch.device("cpu")
    for module in (runs, loop):   # (no second copy of the rule)
        text = inspect.getsource(module)
        assert "process_device(" in text and 'torch.device("cuda", ' not in text, module


def test_sample_writes_its_default_grid_where_layout_names_it(run_dir, capsys):
    from ddpmlab.layout import RunDir

    assert main(["sample", str(run_dir), "--n", "2", "--steps", "2", "--seed", "3",
                 "--no-progress"]) == 0
    grid = RunDir(run_dir).sample_grid("ddim", 2, 3)
    assert grid.is_file() and str(grid) in capsys.readouterr().out


def test_eval_silences_only_the_small_sample_warning(run_dir, tmp_path, monkeypatch):
    """score_run ignores evaluate's SmallSampleWarning (the baseline is printed beside the FID)
    and nothing else: another warning of the evaluation still reaches the user."""
    import warnings

    from ddpmlab import runs

    real = runs.evaluate_samples

    def noisy(*args, **kwargs):
        warnings.warn("an unrelated problem", RuntimeWarning, stacklevel=1)
        return real(*args, **kwargs)

    monkeypatch.setattr(runs, "evaluate_samples", noisy)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        assert main(["eval", str(run_dir), "--n", "12", "--steps", "2", "--bpd-images", "0",
                     "--json", str(tmp_path / "e.json"), "--no-progress"]) == 0
    kinds = [(w.category.__name__, str(w.message)) for w in seen]
    assert ("RuntimeWarning", "an unrelated problem") in kinds
    assert not any(k == "SmallSampleWarning" for k, _ in kinds), kinds



@pytest.mark.e2e  # a subprocess: pytest itself captures warnings
def test_a_warning_is_one_plain_line(run_dir, tmp_path):
    """A warning during a command reads ``ddpmlab: warning: ...`` on one line (not Python's
    ``file:line: UserWarning`` and the source line)."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    shutil.copytree(run / "checkpoints" / "step_00000003",
                    run / "checkpoints" / "step_99999999999999999999999")
    p = subprocess.run([sys.executable, "-m", "ddpmlab", "sample", str(run), "--n", "2",
                        "--out", str(tmp_path / "g.png"), "--no-progress"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stderr.splitlines() if "step_99999999999999999999999" in line]
    assert len(lines) == 1 and lines[0].startswith("ddpmlab: warning: "), p.stderr
    assert "UserWarning" not in p.stderr and "runs.py" not in p.stderr
