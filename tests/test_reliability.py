"""Reliability: no lost work, clear errors, nothing executed from a file (see RELIABILITY.md).

Every bad input goes through the real command (``ddpmlab.cli.main``, or a ``python -m ddpmlab``
subprocess where a signal or a SIGKILL is needed) and must give one line on stderr naming the
file, key or value, a non-zero exit, no traceback, and leave the user's files as they were.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import os
import pickle
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmlab.cli import main
from ddpmlab.config import _CHOICES, SECTIONS
from ddpmlab.errors import CheckpointError, DataError
from ddpmlab.train.checkpoint import checkpoint_dirs, latest_checkpoint, load_checkpoint, load_tensors

TINY = ["model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
        "model.attention_resolutions=4", "model.num_heads=2", "model.norm_groups=8",
        "diffusion.timesteps=50", "train.batch_size=8", "train.log_every=1",
        "sample.n=4", "sample.sampler=ddim", "sample.steps=5"]
COMMON = ["--device", "cpu", "--no-progress", "--no-samples"]
WEIGHTS = ("model.safetensors", "ema.safetensors", "optimizer.safetensors", "rng.safetensors")


# ----------------------------------------------------------------------------- helpers
def run_cli(capsys, *argv: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line(code: int, err: str, *needles: str) -> None:
    """Exit 2, exactly one stderr line 'ddpmlab: error: ...' holding every needle."""
    assert code == 2, err
    assert "Traceback" not in err, err
    lines = err.strip("\n").splitlines()
    assert len(lines) == 1 and lines[0].startswith("ddpmlab: error: "), err
    for needle in needles:
        assert str(needle) in lines[0], (needle, err)


def tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file under ``root`` (to prove nothing changed)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def train_args(out: Path, *extra: str, dataset: str = "digits") -> list[str]:
    """``extra`` may mix options and ``section.key=value`` overrides (those must come last)."""
    sets = [e for e in extra if "=" in e and not e.startswith("-")]
    opts = [e for e in extra if e not in sets]
    return ["train", "--dataset", dataset, "--out", str(out), *COMMON, *opts, *TINY, *sets]


def png(path: Path, size=(8, 8), mode="L", seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


class Evil:
    """Unpickling this runs ``touch marker``: proof of code execution if the marker appears."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A tiny finished run: checkpoints at steps 1 and 2."""
    out = tmp_path_factory.mktemp("rel") / "run"
    assert main(train_args(out, "--max-steps", "2", "train.ckpt_every=1")) == 0
    return out


@pytest.fixture
def run(trained, tmp_path) -> Path:
    """A private copy of the tiny run, free to damage."""
    return Path(shutil.copytree(trained, tmp_path / "run"))


# ============================================================================ bad data
def _corrupt_image(d: Path) -> str:
    good = png(d / "a.png")
    (d / "b.png").write_bytes(good.read_bytes()[:40])  # truncated
    return "b.png"


def _fake_image(d: Path) -> str:
    png(d / "a.png")
    (d / "c.jpg").write_text("this is not a JPEG")
    return "c.jpg"


def _empty_folder(d: Path) -> str:
    d.mkdir(parents=True, exist_ok=True)
    return "no images found"


def _npz_dtype(d: Path) -> str:
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "x.npz", images=np.zeros((16, 8, 8, 1), np.float32))
    return "'images' must be uint8"


def _npz_shape(d: Path) -> str:
    d.mkdir(parents=True, exist_ok=True)
    np.savez(d / "x.npz", images=np.zeros((16, 8, 8, 4), np.uint8))
    return "'images' must be NHWC"


def _npz_garbage(d: Path) -> str:
    d.mkdir(parents=True, exist_ok=True)
    (d / "x.npz").write_bytes(b"PK\x03\x04 truncated zip")
    return "not a readable .npz"


def _cifar_garbage(d: Path) -> str:
    d.mkdir(parents=True, exist_ok=True)
    (d / "data_batch_1").write_bytes(b"\x80\x04garbage")
    return "data_batch_1"


# (grey and colour images mixed train as RGB since issue 32: tests/test_data.py)
@pytest.mark.parametrize("make", [_corrupt_image, _fake_image, _empty_folder,
                                  _npz_dtype, _npz_shape, _npz_garbage, _cifar_garbage],
                         ids=lambda f: f.__name__.strip("_"))
def test_bad_data_is_one_line_error(tmp_path, capsys, make):
    data = tmp_path / "data"
    needle = make(data)
    dataset = data / "x.npz" if (data / "x.npz").exists() else data
    before = tree(data)
    code, err = run_cli(capsys, *train_args(tmp_path / "out", "--max-steps", "1",
                                            dataset=str(dataset)))
    assert_one_line(code, err, needle)
    assert tree(data) == before                                     # the data set is untouched
    assert not any((tmp_path / "out").glob("*"))                    # no run was started


@pytest.mark.e2e  # over 2 s: trains
def test_non_image_file_is_skipped_with_a_warning(tmp_path, capsys):
    data = tmp_path / "data"
    for i in range(8):
        png(data / f"{i}.png", seed=i)
    (data / "notes.txt").write_text("my notes")
    with pytest.warns(UserWarning, match=r"skipped 1 file\(s\).*notes.txt"):
        code, err = run_cli(capsys, *train_args(tmp_path / "out", "--max-steps", "1",
                                                dataset=str(data)))
    assert code == 0, err
    assert (data / "notes.txt").read_text() == "my notes"


@pytest.mark.e2e  # over 1.3 s: trains
def test_unlabelled_folder_auto_trains_unconditionally_and_conditional_refuses(tmp_path,
                                                                               capsys):
    import json

    data = tmp_path / "data"
    for i in range(8):
        png(data / f"{i}.png", seed=i)
    # the mnist preset says data.conditional=auto: a folder without class subfolders still trains
    code, err = run_cli(capsys, *train_args(tmp_path / "out", "--max-steps", "1",
                                            dataset=str(data)))
    assert code == 0, err
    cfg = json.loads((tmp_path / "out" / "config.json").read_text())
    assert cfg["data"]["conditional"] == "false" and cfg["model"]["num_classes"] == 0
    code, err = run_cli(capsys, *train_args(tmp_path / "out2", "--max-steps", "1",
                                            "--conditional", dataset=str(data)))
    assert_one_line(code, err, str(data), "needs labels", "--unconditional")
    assert not (tmp_path / "out2").exists() or not any((tmp_path / "out2").iterdir())


# ============================================================================ bad config
@pytest.mark.parametrize("text, extra, needles", [
    ("train:\n  lr_rate: 0.1\n", [], ["train.lr_rate", "cfg.yaml"]),          # unknown key
    ("train:\n  lr: fast\n", [], ["train.lr must be a number", "cfg.yaml"]),  # wrong type
    ("train: [1, 2\n", [], ["cfg.yaml", "not valid YAML"]),                  # not YAML
    ("{}\n", ["train.lr=fast"], ["train.lr must be a number", "'fast'"]),
    ("{}\n", ["train.out_dir=/tmp/x"], ["unknown key 'train.out_dir'"]),
    ("{}\n", ["diffusion.timesteps=0"], ["diffusion.timesteps=0", "must be >= 1"]),
    ("{}\n", ["train.lr=-1"], ["train.lr=-1.0", "must be a finite number > 0"]),
    ("{}\n", ["sample.steps=51", "diffusion.timesteps=50"], ["sample.steps=51", "exceeds"]),
    ("{}\n", ["train.lr=1e999"], ["train.lr=inf"]),
], ids=["unknown-key", "wrong-type", "not-yaml", "override-type", "override-unknown",
        "timesteps-0", "lr-negative", "steps-gt-T", "lr-inf"])
def test_config_errors_name_key_and_file(tmp_path, capsys, text, extra, needles):
    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(text)
    code, err = run_cli(capsys, "train", "--config", cfg, "--out", tmp_path / "out", *COMMON,
                        *extra)
    assert_one_line(code, err, *needles)
    assert not (tmp_path / "out").exists()                          # nothing was started


def test_sample_steps_beyond_T(trained, capsys):
    code, err = run_cli(capsys, "sample", trained, "--steps", "51", "--no-progress")
    assert_one_line(code, err, "--steps=51", "diffusion.timesteps=50")


def test_sample_argument_out_of_range(trained, capsys):
    for argv, needle in ((["--n", "0"], "--n=0"), (["--eta", "-1"], "--eta=-1"),
                         (["--batch-size", "0"], "--batch-size=0")):
        code, err = run_cli(capsys, "sample", trained, *argv, "--no-progress",
                            "--out", trained.parent / "never.png")
        assert_one_line(code, err, needle)
    assert not (trained.parent / "never.png").exists()


@pytest.mark.parametrize("command,argv,needle", [
    ("sample", ["--eta", "nan"], "--eta=nan"), ("sample", ["--guidance", "nan"], "--guidance=nan"),
    ("sample", ["--guidance", "inf"], "--guidance=inf"),
    ("sample", ["--churn", "-1"], "--churn=-1"), ("sample", ["--churn", "nan"], "--churn=nan"),
    ("sample", ["--seed", str(10**14 * 10**6)], "--seed="), ("sample", ["--seed", "-1"], "--seed=-1"),
    ("sample", ["--device", "meta"], "'meta'"),
    ("eval", ["--steps", "0"], "--steps=0"), ("eval", ["--steps", "5000"], "steps=5000"),
    ("figures", ["--chain-steps", "0"], "--chain-steps=0"),
    ("figures", ["--chain-steps", "5000"], "chain_steps=5000"),
    ("figures", ["--seed", str(2**64)], "--seed="),
])
def test_out_of_range_numbers_are_one_line(trained, tmp_path, capsys, command, argv, needle):
    before = tree(trained)
    extra = ["--no-progress"] if command != "figures" else ["--out", str(tmp_path / "f")]
    if command == "sample":
        extra += ["--out", str(tmp_path / "never.png")]
    code, err = run_cli(capsys, command, trained, *argv, *extra)
    assert_one_line(code, err, needle)
    assert tree(trained) == before and not (tmp_path / "never.png").exists()


def test_huge_seed_in_a_config_is_one_line(tmp_path, capsys):
    code, err = run_cli(capsys, *train_args(tmp_path / "out", "--max-steps", "1",
                                            f"train.seed={2**70}"))
    assert_one_line(code, err, "train.seed")
    assert not (tmp_path / "out").exists()


def test_eval_samples_that_are_not_an_npz_are_one_line(trained, tmp_path, capsys):
    npy = tmp_path / "s.npy"
    np.save(npy, np.zeros((4, 8, 8, 1), np.uint8))
    good = tmp_path / "s.npz"
    np.savez(good, arr_0=np.zeros((4, 8, 8, 1), np.uint8))
    bad = tmp_path / "bad.npz"
    raw = bytearray(good.read_bytes())
    raw[60:80] = b"\xff" * 20                                   # inside the member: a bad CRC
    bad.write_bytes(bytes(raw))
    for path in (npy, bad):
        code, err = run_cli(capsys, "eval", trained, "--samples", path, "--no-progress",
                            "--bpd-images", "0")
        assert_one_line(code, err, str(path))


def test_nan_weights_are_refused_at_load(run, capsys):
    ckpt = latest_checkpoint(run)
    state = load_tensors(ckpt / "ema.safetensors")
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    from ddpmlab.io import save_tensors

    save_tensors(ckpt / "ema.safetensors", state)
    code, err = run_cli(capsys, "sample", run, "--n", "2", "--no-progress")
    assert_one_line(code, err, "ema.safetensors", name, "NaN")


def test_the_grid_of_a_huge_class_count_stays_small(tmp_path):
    from ddpmlab.config import Config
    from ddpmlab.runs import sample_grid

    cfg = Config.from_dict({"model": {"base_channels": 8, "channel_mult": [1],
                                      "attention_resolutions": [], "num_heads": 1,
                                      "norm_groups": 4, "num_classes": 100_000,
                                      "image_size": 4, "num_res_blocks": 1},
                            "diffusion": {"timesteps": 30},
                            "sample": {"n": 4, "sampler": "ddim", "steps": 2}})
    calls = []

    class Zero(torch.nn.Module):
        def forward(self, x, t, y=None):
            calls.append(x.shape[0])
            return torch.zeros_like(x)

    path = sample_grid(Zero(), cfg, tmp_path / "g.png")
    assert path.is_file() and sum(calls) <= 2 * 10     # one row for each of 10 classes at most


def test_a_yaml_alias_bomb_is_refused_quickly(tmp_path, capsys):
    lines = ['a: &a ["x","x","x","x","x","x","x","x","x"]']
    for i in range(1, 9):
        prev = chr(ord("a") + i - 1)
        lines.append(f"{chr(ord('a') + i)}: &{chr(ord('a') + i)} [" + ",".join([f"*{prev}"] * 9)
                     + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    t0 = time.perf_counter()
    code, err = run_cli(capsys, "train", "--config", bomb, "--out", tmp_path / "out", *COMMON)
    assert time.perf_counter() - t0 < 10
    assert_one_line(code, err, str(bomb), "aliases")
    assert len(err) < 400 and not (tmp_path / "out").exists()


def test_long_bad_values_are_cut_in_the_message(tmp_path, capsys):
    cfg = tmp_path / "long.json"
    cfg.write_text(json.dumps({"train": {"lr": "x" * 100_000}}))
    code, err = run_cli(capsys, "train", "--config", cfg, "--out", tmp_path / "out", *COMMON)
    assert_one_line(code, err, "train.lr", "100000 characters")
    assert len(err) < 400


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_special_files_are_refused_not_read(tmp_path, capsys):
    fifo = tmp_path / "cfg.yaml"
    os.mkfifo(fifo)
    for path in ("/dev/zero", fifo):
        code, err = run_cli(capsys, "train", "--config", path, "--out", tmp_path / "out",
                            *COMMON)
        assert_one_line(code, err, str(path), "not a regular file")
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (2 << 20))
    code, err = run_cli(capsys, "train", "--config", big, "--out", tmp_path / "out", *COMMON)
    assert_one_line(code, err, str(big), "too large")
    data = tmp_path / "imgs"
    for k in range(8):
        png(data / f"{k}.png", seed=k)
    os.mkfifo(data / "blocked.png")   # a FIFO named like an image: skipped, never opened
    with pytest.warns(UserWarning, match="not regular files"):
        code = main(train_args(tmp_path / "run", "--max-steps", "1", dataset=str(data)))
    assert code == 0


@pytest.mark.parametrize("file,content,needle", [
    ("state.json", "[]", "must be a JSON object"), ("state.json", '{"format_version": 1}',
                                                    "no 'step'"),
    ("state.json", '{"format_version": 1, "step": "ten"}', "'step' must be an integer"),
    ("optimizer.json", "[]", "param_groups"),
])
def test_damaged_checkpoint_json_is_one_line(run, capsys, file, content, needle):
    (latest_checkpoint(run) / file).write_text(content)
    code, err = run_cli(capsys, "train", "--resume", run, *COMMON, "--max-steps", "3")
    assert_one_line(code, err, file, needle)


def test_rng_file_with_other_keys_is_one_line(run, capsys):
    from ddpmlab.io import save_tensors

    save_tensors(latest_checkpoint(run) / "rng.safetensors", {"other": torch.zeros(3)})
    code, err = run_cli(capsys, "train", "--resume", run, *COMMON, "--max-steps", "3")
    assert_one_line(code, err, "rng.safetensors", "train_generator")


def test_eval_json_never_replaces_a_file_it_did_not_write(run, tmp_path, capsys):
    before = tree(run)
    for target in (run / "config.json", tmp_path / "notes.json"):
        if not target.exists():
            target.write_text('{"mine": 1}')
        code, err = run_cli(capsys, "eval", run, "--json", target, "--no-progress")
        assert_one_line(code, err, str(target), "refusing to overwrite")
    assert tree(run) == before


# ============================================================================ bad run directories
def test_checkpoint_config_mismatch_names_the_weights_file(run, capsys):
    cfg = json.loads((run / "config.json").read_text())
    cfg["model"]["base_channels"] = 32
    (run / "config.json").write_text(json.dumps(cfg))
    before = tree(run)
    code, err = run_cli(capsys, "sample", run, "--no-progress")
    assert_one_line(code, err, run / "checkpoints" / "step_00000002" / "ema.safetensors",
                    "config.json", "do not match")
    code, err = run_cli(capsys, "train", "--resume", run, *COMMON)
    assert_one_line(code, err, "step_00000002", "do not match")
    assert tree(run) == before


def _no_config(run: Path) -> None:
    (run / "config.json").unlink()


def _no_checkpoints(run: Path) -> None:
    shutil.rmtree(run / "checkpoints")


def _missing_ema(run: Path) -> None:
    (run / "checkpoints" / "step_00000002" / "ema.safetensors").unlink()


def _missing_optimizer(run: Path) -> None:
    (run / "checkpoints" / "step_00000002" / "optimizer.safetensors").unlink()


def _truncated_ema(run: Path) -> None:
    p = run / "checkpoints" / "step_00000002" / "ema.safetensors"
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _truncated_state(run: Path) -> None:
    p = run / "checkpoints" / "step_00000002" / "state.json"
    p.write_text(p.read_text()[:10])


@pytest.mark.parametrize("damage, sample_needle, resume_needle", [
    (_no_config, "no config.json", "no config.json"),
    (_no_checkpoints, "holds no complete checkpoint", "holds no complete checkpoint"),
    (_missing_ema, "ema.safetensors: file not found", "ema.safetensors: missing"),
    (_missing_optimizer, None, "optimizer.safetensors: missing"),
    (_truncated_ema, "ema.safetensors: not a valid safetensors file",
     "ema.safetensors: not a valid safetensors file"),
    (_truncated_state, None, "state.json: not valid JSON"),
], ids=lambda x: x.__name__.strip("_") if callable(x) else None)
def test_damaged_run_directory(run, capsys, damage, sample_needle, resume_needle):
    damage(run)
    before = tree(run)
    if sample_needle:
        code, err = run_cli(capsys, "sample", run, "--no-progress")
        assert_one_line(code, err, sample_needle)
    code, err = run_cli(capsys, "train", "--resume", run, *COMMON)
    assert_one_line(code, err, resume_needle)
    assert tree(run) == before                                      # nothing written or removed


def test_run_argument_is_not_a_run(tmp_path, capsys):
    (tmp_path / "file.txt").write_text("x")
    for path, needle in ((tmp_path / "file.txt", "no such run directory"),
                         (tmp_path, "not a ddpmlab run directory")):
        code, err = run_cli(capsys, "sample", path, "--no-progress")
        assert_one_line(code, err, str(path), needle)


def test_resume_cuts_a_partial_metrics_line(run, capsys):
    """A crash mid-write leaves half a JSON line; the resumed run starts on a fresh line."""
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 3, "lo')
    code, err = run_cli(capsys, "train", "--resume", run, *COMMON, "--max-steps", "3")
    assert code == 0, err
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs if "loss" in r] == [1, 2, 3]
    starts = [r for r in recs if r.get("event") == "precision"]
    assert len(starts) == 2 and all(json.loads(line) for line in
                                    (run / "metrics.jsonl").read_text().splitlines())


def test_resuming_a_finished_run_rewrites_nothing(run, capsys):
    before = tree(run / "checkpoints")
    code, err = run_cli(capsys, "train", "--resume", run, *COMMON)
    assert code == 0, err
    assert tree(run / "checkpoints") == before


def test_saving_a_step_again_never_leaves_it_missing(run, monkeypatch):
    """Re-saving step X swaps folders by renames; a failure (or a crash) in between puts the
    old step_X back, and a resume restores one a crash left moved aside."""
    from ddpmlab.train import checkpoint as C

    ckpt = run / "checkpoints" / "step_00000002"
    files = load_checkpoint(ckpt)
    before = tree(ckpt)
    real_rename = os.rename

    def rename(src, dst):
        if Path(src).name.startswith(".tmp-step_"):
            raise OSError(errno.EIO, os.strerror(errno.EIO), str(src))
        return real_rename(src, dst)

    monkeypatch.setattr(C.os, "rename", rename)
    with pytest.raises(CheckpointError, match="previous checkpoints are untouched"):
        C.save_checkpoint(run, 2, files)
    monkeypatch.undo()
    assert tree(ckpt) == before and not list((run / "checkpoints").glob(".tmp-*"))
    os.rename(ckpt, ckpt.with_name(".tmp-replaced-step_00000002.123"))   # a crash in the window
    C.clean_partial(run)
    assert tree(ckpt) == before and not list((run / "checkpoints").glob(".tmp-*"))
    C.save_checkpoint(run, 2, files)                                       # the normal swap
    assert load_checkpoint(ckpt)["state.json"] == files["state.json"]


# ============================================================================ output paths
def test_refuses_an_output_that_holds_another_run(run, capsys):
    before = tree(run)
    code, err = run_cli(capsys, *train_args(run, "--max-steps", "1"))
    assert_one_line(code, err, "already holds a run", "--resume", "--force")
    assert tree(run) == before


def test_force_with_a_bad_input_keeps_the_old_run(run, capsys):
    """--force replaces a run only once the new one is ready to start."""
    before = tree(run)
    code, err = run_cli(capsys, *train_args(run, "--force", dataset=str(run / "nope")))
    assert_one_line(code, err, "nope")
    assert tree(run) == before


def test_refuses_a_users_non_empty_folder(tmp_path, capsys):
    user = tmp_path / "thesis"
    user.mkdir()
    (user / "chapter1.tex").write_text("precious")
    code, err = run_cli(capsys, *train_args(user, "--max-steps", "1"))
    assert_one_line(code, err, str(user), "not empty", "choose another --out")
    assert tree(user) == {"chapter1.tex": hashlib.sha256(b"precious").hexdigest()}
    code, err = run_cli(capsys, *train_args(user, "--max-steps", "1", "--force"))  # no help
    assert_one_line(code, err, str(user), "not empty", "--force replaces only a run")
    assert tree(user) == {"chapter1.tex": hashlib.sha256(b"precious").hexdigest()}


def test_unwritable_train_output(tmp_path, capsys):
    (tmp_path / "afile").write_text("x")
    for out in (tmp_path / "afile" / "run", Path("/proc/ddpmlab-no-such/run"), tmp_path / "afile"):
        code, err = run_cli(capsys, *train_args(out, "--max-steps", "1"))
        assert_one_line(code, err, str(out))
    assert (tmp_path / "afile").read_text() == "x"


def test_unwritable_sample_output_fails_before_sampling(trained, tmp_path, capsys, monkeypatch):
    (tmp_path / "afile").write_text("x")
    import ddpmlab.runs as S

    monkeypatch.setattr(S, "load_run", lambda *a, **k: pytest.fail("sampled before checking"))
    for flag in ("--out", "--npz"):
        out = tmp_path / "afile" / "x"
        code, err = run_cli(capsys, "sample", trained, flag, out, "--no-progress")
        assert_one_line(code, err, str(out), "cannot write there")
    code, err = run_cli(capsys, "sample", trained, "--out", tmp_path, "--no-progress")
    assert_one_line(code, err, str(tmp_path), "is a directory")


def test_sample_does_not_overwrite_a_users_files(trained, tmp_path, capsys):
    """Policy: --out may replace a PNG and --npz a samples .npz (arr_0 only), i.e. what an
    earlier `sample` wrote; any other existing file is refused unless --force."""
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    data = tmp_path / "data.npz"
    np.savez(data, images=np.zeros((2, 8, 8, 1), np.uint8))
    before = tree(tmp_path)
    base = ["sample", trained, "--n", "2", "--steps", "2", "--no-progress"]
    code, err = run_cli(capsys, *base, "--out", notes)
    assert_one_line(code, err, str(notes), "refusing to overwrite", "--force")
    code, err = run_cli(capsys, *base, "--out", tmp_path / "g.png", "--npz", data)
    assert_one_line(code, err, str(data), "refusing to overwrite")
    assert tree(tmp_path) == before
    # our own earlier outputs are replaced without --force
    grid, npz = tmp_path / "g.png", tmp_path / "s.npz"
    assert run_cli(capsys, *base, "--out", grid, "--npz", npz)[0] == 0
    assert run_cli(capsys, *base, "--out", grid, "--npz", npz, "--seed", "1")[0] == 0
    # --force replaces anything
    assert run_cli(capsys, *base, "--out", notes, "--force")[0] == 0
    assert notes.read_bytes().startswith(b"\x89PNG")


def test_default_output_never_leaves_runs(monkeypatch, tmp_path):
    """The run directory comes from --out, else runs/<data set name>: never outside runs/."""
    from ddpmlab.layout import default_run_dir

    monkeypatch.chdir(tmp_path)
    for dataset in ("..", "/data/..", "a/../..", ".", "...", "~/x/..", "digits", "/d/faces.npz"):
        out = default_run_dir(dataset).resolve()
        assert out.parent == (tmp_path / "runs").resolve(), (dataset, out)


def test_config_cannot_choose_a_write_path(tmp_path, capsys, monkeypatch):
    """No config key names a place to write: the free-text fields are data.dataset and
    sample.guide (both read only: the data, the guide run of autoguidance) and train.device;
    the run directory comes from --out alone."""
    free_text = {f"{s}.{f.name}" for s, cls in SECTIONS.items()
                 for f in dataclasses.fields(cls) if f.type in ("str", str)}
    assert free_text - set(_CHOICES) == {"data.dataset", "sample.guide", "train.device"}
    # a config whose data set sits outside the working folder: training writes only into --out
    data = tmp_path / "elsewhere" / "imgs"
    for i in range(8):
        png(data / f"{i}.png", seed=i)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    (work / "cfg.yaml").write_text("data:\n  dataset: ../elsewhere/imgs\n")
    before = tree(tmp_path)
    code, err = run_cli(capsys, "train", "--config", "cfg.yaml", "--out", "out", "--max-steps", "1",
                        *COMMON, *TINY)
    assert code == 0, err
    after = tree(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("work/out/")} == before


# ============================================================================ full disk, OS errors
def test_disk_full_during_a_checkpoint_keeps_the_previous_one(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    real_write = Path.write_bytes
    calls = []

    def write_bytes(self, data):
        if self.parent.name.startswith(".tmp-step_00000004"):
            calls.append(self.name)
            if len(calls) == 2:          # model.safetensors written, then the disk is full
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    code, err = run_cli(capsys, *train_args(out, "--max-steps", "4", "train.ckpt_every=2"))
    assert_one_line(code, err, "No space left on device", "step_00000004",
                    "previous checkpoints are untouched")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    assert load_checkpoint(out / "checkpoints" / "step_00000002")["state.json"]["step"] == 2
    monkeypatch.undo()                   # space freed: the run resumes from step 2
    code, err = run_cli(capsys, "train", "--resume", out, *COMMON)
    assert code == 0, err
    assert latest_checkpoint(out).name == "step_00000004"


def test_os_error_outside_checkpoints_is_one_line(tmp_path, capsys, monkeypatch):
    real_open = open

    def fake_open(file, mode="r", *args, **kwargs):
        if str(file).endswith("metrics.jsonl") and "a" in mode:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(file))
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--max-steps", "2"))
    assert_one_line(code, err, "No space left on device", "metrics.jsonl")


def test_nonfinite_loss_is_one_line(tmp_path, capsys, monkeypatch):
    import ddpmlab.train.loop as L

    real = L.training_losses
    monkeypatch.setattr(L, "training_losses", lambda *a, **k: real(*a, **k) * float("nan"))
    code, err = run_cli(capsys, *train_args(tmp_path / "run", "--max-steps", "3"))
    assert_one_line(code, err, "non-finite loss at step 0", "train.skip_nonfinite")


# ============================================================================ nothing executed
@pytest.mark.parametrize("name", ["ema.safetensors", "model.safetensors"])
def test_pickle_disguised_as_safetensors_never_runs(run, tmp_path, capsys, name):
    marker = tmp_path / "PWNED"
    (run / "checkpoints" / "step_00000002" / name).write_bytes(pickle.dumps({"w": Evil(marker)}))
    flags = ["--no-ema"] if name == "model.safetensors" else []
    code, err = run_cli(capsys, "sample", run, *flags, "--no-progress")
    assert_one_line(code, err, name, "not a valid safetensors file")
    code, err = run_cli(capsys, "train", "--resume", run, *COMMON)
    assert_one_line(code, err, name, "not a valid safetensors file")
    assert not marker.exists()


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_pt_files_are_never_unpickled(run, tmp_path, capsys):
    marker = tmp_path / "PWNED"
    evil = pickle.dumps({"w": Evil(marker)})
    ckpt = run / "checkpoints" / "step_00000002"
    (ckpt / "ema.safetensors").unlink()
    (ckpt / "ema.pt").write_bytes(evil)                       # a .pt next to the weights: ignored
    code, err = run_cli(capsys, "sample", run, "--no-progress")
    assert_one_line(code, err, "ema.safetensors: file not found")
    (tmp_path / "w.pt").write_bytes(evil)
    with pytest.raises(CheckpointError, match="refusing to load a .pt file"):
        load_tensors(tmp_path / "w.pt")                       # the checkpoint loader
    from ddpmlab.features import load_weights_file

    with pytest.raises(DataError, match="weights-only loader"):
        load_weights_file(tmp_path / "w.pt")                  # eval --inception-weights
    assert not marker.exists()


# ============================================================================ signals
def _spawn(args: list[str], cwd: Path) -> subprocess.Popen:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, "-m", "ddpmlab", *map(str, args)], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _logged_steps(run: Path) -> int:
    """The training steps logged so far (lines with a loss; events such as ``precision`` are
    not steps)."""
    try:
        lines = (run / "metrics.jsonl").read_text().splitlines()
    except FileNotFoundError:
        return 0
    return sum('"loss"' in line for line in lines)


@pytest.mark.e2e  # ddpmlab processes
def test_sigint_and_sigterm_save_and_exit_cleanly(tmp_path):
    run = tmp_path / "run"
    fresh = ["train", "--dataset", "digits", "--out", run, "--max-steps", "100000", *COMMON,
             *TINY, "train.ckpt_every=100000"]
    resume = ["train", "--resume", run, *COMMON]
    step = 0
    for sig, expected in ((signal.SIGINT, 130), (signal.SIGTERM, 143)):
        p = _spawn(fresh if sig == signal.SIGINT else resume, tmp_path)
        logged = _logged_steps(run)
        deadline = time.monotonic() + 120
        while _logged_steps(run) < logged + 2 and p.poll() is None:   # training for 2+ steps
            assert time.monotonic() < deadline
            time.sleep(0.05)
        p.send_signal(sig)
        _, err = p.communicate(timeout=120)
        assert p.returncode == expected, err
        assert "Traceback" not in err
        ckpt = latest_checkpoint(run)
        step = load_checkpoint(ckpt)["state.json"]["step"]
        assert step > 0 and ckpt.name == f"step_{step:08d}"
        assert f"stopped by {sig.name} at step {step}; checkpoint saved to {ckpt}" in err
        assert f"Resume with: ddpmlab train --resume {run}" in err
    p = _spawn([*resume, "--max-steps", step + 1], tmp_path)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert latest_checkpoint(run).name == f"step_{step + 1:08d}"


# ============================================================================ SIGKILL at random
# 8 kills by default (each costs a process start, ~3 s on 2 cores); the long search, as many as
# asked: DDPMLAB_KILLS=200 (and DDPMLAB_KILL_SEED=S to replay one).
KILLS = int(os.environ.get("DDPMLAB_KILLS", "8"))
KILL_ARGS = ["--dataset", "digits", *COMMON, "--max-steps", "30", *TINY, "train.ckpt_every=1",
             "train.keep_last=2", "train.warmup_steps=3", "model.dropout=0.1", "data.hflip=true"]


def _weights(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    ckpt = latest_checkpoint(run)
    return {name: load_tensors(ckpt / name) for name in WEIGHTS}


def _check_consistent(run: Path) -> int:
    """After a kill: every step_ folder loads completely; returns the newest step (0: none)."""
    if (run / "config.json").exists():
        json.loads((run / "config.json").read_text())
    steps = []
    for ckpt in checkpoint_dirs(run):
        state = load_checkpoint(ckpt)["state.json"]
        assert ckpt.name == f"step_{state['step']:08d}"
        steps.append(state["step"])
    lines = (run / "metrics.jsonl").read_text().split("\n") if (run / "metrics.jsonl").exists() \
        else []
    for line in lines[:-1]:                       # only a last, unterminated line may be cut
        json.loads(line)
    return max(steps, default=0)


@pytest.mark.e2e
def test_sigkill_at_random_moments_loses_nothing(tmp_path):
    """SIGKILL a tiny training run at random moments (startup, steps, checkpoint writes), then
    resume: every checkpoint on disk is always complete, and the resumed runs end with exactly
    the weights, EMA, optimizer and RNG state of an uninterrupted run. ``KILLS`` kills (8; a
    longer search: ``DDPMLAB_KILLS=N``), each with its own seeded moment and kind."""
    seed = int(os.environ.get("DDPMLAB_KILL_SEED", time.time_ns() % 2**31))
    rng = random.Random(seed)
    print(f"SIGKILL test seed {seed} (rerun with DDPMLAB_KILL_SEED={seed})")  # shown on failure
    t_start = time.monotonic()
    # The uninterrupted reference trains beside the first kills (it needs only the second core).
    ref = _spawn(["train", "--out", tmp_path / "reference", *KILL_ARGS], tmp_path)
    reference = None
    # Which kills wait for training to begin: three in four (in a random order), the rest strike
    # anywhere, start-up included; so at least half are always after training began.
    plan = [True] * (KILLS - KILLS // 4) + [False] * (KILLS // 4)
    rng.shuffle(plan)

    kills = in_training = mid_save = finished = 0
    try:
        run = tmp_path / "k0"
        while True:
            resumable = run.exists() and latest_checkpoint(run) is not None
            args = ["train", "--resume", run, *COMMON] if resumable else \
                ["train", "--out", run, "--force", *KILL_ARGS]
            p = _spawn(args, tmp_path)
            t0 = time.monotonic()
            if kills >= KILLS:                                        # let the last run finish
                _, err = p.communicate(timeout=300)
                assert p.returncode == 0, err
            else:
                start_lines = _logged_steps(run)
                training = plan[kills]
                if not training:                                      # anywhere, startup included
                    kill_at = t0 + rng.uniform(0.2, 3.0)
                else:                                                 # once a step is logged
                    while p.poll() is None and _logged_steps(run) <= start_lines:
                        time.sleep(0.02)
                    kill_at = time.monotonic() + rng.uniform(0.0, 0.8)
                while p.poll() is None and time.monotonic() < kill_at:
                    time.sleep(0.01)
                if p.poll() is None:
                    p.kill()                                          # SIGKILL
                _, err = p.communicate()
                if p.returncode == -signal.SIGKILL:
                    kills += 1
                    in_training += training or _logged_steps(run) > start_lines
                    mid_save += any(run.glob("checkpoints/.tmp-step_*"))
                    _check_consistent(run)
                    continue
                assert p.returncode == 0, f"seed {seed}: {err}"     # it finished before the kill
            # the run reached max_steps: it must equal the uninterrupted one, bit for bit
            _check_consistent(run)
            if reference is None:
                _, err = ref.communicate(timeout=300)
                assert ref.returncode == 0, err
                reference = _weights(tmp_path / "reference")
            got = _weights(run)
            for name, tensors in reference.items():
                assert got[name].keys() == tensors.keys()
                for k, v in tensors.items():
                    assert torch.equal(got[name][k], v), f"seed {seed}: {run.name} {name}:{k} differs"
            finished += 1
            if kills >= KILLS:
                break
            run = tmp_path / f"k{finished}"
    finally:                                                      # a failure leaves no process
        if ref.poll() is None:
            ref.kill()
            ref.communicate()
    seconds = time.monotonic() - t_start
    print(f"\nSIGKILL test (seed {seed}): {kills} kills ({in_training} after training began, "
          f"{mid_save} inside a checkpoint write), {finished} run(s) completed and equal to the "
          f"reference, {seconds:.0f} s")
    assert kills >= KILLS and finished >= 1 and in_training >= KILLS // 2


# ============================================================================ round two (issue 20)
def _without_lock(t: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in t.items() if not k.startswith(".ddpmlab.lock")}


def _wait_training(p: subprocess.Popen, run: Path, steps: int = 2) -> None:
    deadline = time.monotonic() + 120
    while _logged_steps(run) < steps:
        assert p.poll() is None, p.communicate()[1]
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.e2e  # a ddpmlab process
def test_a_run_directory_is_locked_while_it_trains(tmp_path, capsys):
    """Two trainings into one --out (the second with --force, or --resume) cannot both run:
    the second is refused with one line naming the owner, and the run stays loadable."""
    run = tmp_path / "race"
    p = _spawn(["train", "--dataset", "digits", "--out", run, "--max-steps", "100000", *COMMON,
                *TINY, "train.ckpt_every=2"], tmp_path)
    try:
        _wait_training(p, run)
        code, err = run_cli(capsys, *train_args(run, "--max-steps", "3", "--force",
                                                "model.base_channels=8"))
        assert_one_line(code, err, str(run), "in use by ddpmlab train", f"PID {p.pid}")
        code, err = run_cli(capsys, *train_args(run, "--max-steps", "3"))
        assert_one_line(code, err, str(run), "already holds a run")
        code, err = run_cli(capsys, "train", "--resume", run, *COMMON)
        assert_one_line(code, err, str(run), "in use by ddpmlab train", f"PID {p.pid}")
        assert json.loads((run / "config.json").read_text())["model"]["base_channels"] == 16
    finally:
        p.send_signal(signal.SIGINT)
        _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert not (run / ".ddpmlab.lock.json").exists()      # released on exit
    assert main(["sample", str(run), "--n", "2", "--steps", "2", "--no-progress",
                 "--out", str(tmp_path / "g.png")]) == 0


@pytest.mark.e2e  # a ddpmlab process
def test_a_stale_lock_of_a_killed_process_is_reported_and_taken(tmp_path, capsys):
    run = tmp_path / "run"
    p = _spawn(["train", "--dataset", "digits", "--out", run, "--max-steps", "100000", *COMMON,
                *TINY, "train.ckpt_every=1"], tmp_path)
    _wait_training(p, run)
    p.kill()
    p.communicate(timeout=60)
    assert (run / ".ddpmlab.lock.json").exists()  # what a SIGKILL leaves
    step = load_checkpoint(latest_checkpoint(run))["state.json"]["step"]
    # Two more steps (not 1000: with ckpt_every=1 each one writes a checkpoint) are enough to
    # show the lock was taken and the run trained on from where the killed process left it.
    code = main(["train", "--resume", str(run), *COMMON, "--max-steps", str(step + 2)])
    out = capsys.readouterr().out
    assert code == 0
    assert f"the previous ddpmlab train (PID {p.pid}" in out and "ended without releasing" in out
    assert f"trained 2 steps (step {step} -> {step + 2})" in out  # a resumed run counts what it trained
    assert latest_checkpoint(run).name == f"step_{step + 2:08d}"
    assert not (run / ".ddpmlab.lock.json").exists()  # and released it on exit


def test_force_keeps_the_old_run_until_the_new_one_has_a_checkpoint(run, capsys):
    """--force moves the old run aside by renames; a new run that fails before its first
    checkpoint (a NaN at step 1 here) puts it back, and the message says none was written."""
    before = tree(run)
    code, err = run_cli(capsys, *train_args(run, "--force", "--max-steps", "5", "train.lr=1e6",
                                            "train.warmup_steps=0"))
    assert_one_line(code, err, "non-finite", "no checkpoint was written",
                    "the run that --force replaced is put back")
    assert "intact" not in err
    assert _without_lock(tree(run)) == _without_lock(before)
    # a new run that reaches a checkpoint replaces it for good, leaving nothing aside
    assert main(train_args(run, "--force", "--max-steps", "1")) == 0
    assert [p.name for p in run.iterdir() if p.name.startswith(".replaced-")] == []
    assert [p.name for p in checkpoint_dirs(run)] == ["step_00000001"]


def test_force_with_a_symlinked_checkpoints_folder_never_deletes_through_it(run, tmp_path):
    """The old run's checkpoints/ is a link to a folder elsewhere: --force moves the link,
    never deletes what it points to, and the new run's only checkpoint is kept."""
    elsewhere = Path(shutil.move(str(run / "checkpoints"), str(tmp_path / "elsewhere")))
    (run / "checkpoints").symlink_to(elsewhere)
    kept = tree(elsewhere)
    assert main(train_args(run, "--force", "--max-steps", "1", "train.keep_last=1")) == 0
    assert not (run / "checkpoints").is_symlink()
    assert [p.name for p in checkpoint_dirs(run)] == ["step_00000001"]
    assert tree(elsewhere) == kept
    # resuming a run whose checkpoints/ is a link is refused with one line
    shutil.rmtree(run / "checkpoints")
    (run / "checkpoints").symlink_to(elsewhere)
    code = main(["train", "--resume", str(run), *COMMON])
    assert code == 2


def test_force_that_cannot_delete_the_old_run_says_so(run, monkeypatch, capsys):
    """An undeletable file in the old run: the new run is complete and loads; one warning names
    the folder left behind (deletes are never silently partial)."""
    from ddpmlab import layout

    monkeypatch.setattr(layout, "remove_tree", lambda p: f"{p}/x: Permission denied")
    assert main(train_args(run, "--force", "--max-steps", "1")) == 0
    out = capsys.readouterr().out
    assert "could not delete the replaced run in" in out and "delete it by hand" in out
    assert [p.name for p in checkpoint_dirs(run)] == ["step_00000001"]
    assert main(["sample", str(run), "--n", "2", "--steps", "2", "--no-progress",
                 "--out", str(run / "g.png")]) == 0


def test_a_force_killed_before_its_first_checkpoint_is_undone_on_the_next_start(run, capsys):
    """What a SIGKILL between moving the old run aside and the first checkpoint leaves (the
    old run in .replaced-PID, a new config): the next command under the lock puts it back."""
    from ddpmlab.layout import RunDir

    before = tree(run)
    rd = RunDir(run)
    rd.set_aside()
    (run / "config.json").write_text((rd.root / f".replaced-{os.getpid()}" / "config.json")
                                     .read_text().replace('"base_channels": 16',
                                                          '"base_channels": 8'))  # the new run
    code = main(["train", "--resume", str(run), *COMMON])
    out = capsys.readouterr().out
    assert "put back the run that an interrupted --force had moved aside" in out
    assert code == 0
    assert all(before[k] == v for k, v in tree(run).items() if k in before and
               not k.startswith(("metrics", "checkpoints")))


@pytest.mark.e2e  # over 2 s: samples and draws figures
def test_outputs_replace_only_files_ddpmlab_wrote(trained, tmp_path, capsys):
    """`np.savez(path, array)` writes the same members as a samples file: only the mark that
    ddpmlab puts in what it writes (a PNG text chunk, a `ddpmlab` npz member) allows
    replacing a file without --force; figures --out follows the same rule."""
    theirs_npz = tmp_path / "results.npz"
    np.savez(theirs_npz, np.random.rand(10, 3))
    theirs_png = png(tmp_path / "photo.png")
    before = tree(tmp_path)
    base = ["sample", trained, "--n", "2", "--steps", "2", "--no-progress"]
    code, err = run_cli(capsys, *base, "--out", tmp_path / "g.png", "--npz", theirs_npz)
    assert_one_line(code, err, str(theirs_npz), "refusing to overwrite")
    code, err = run_cli(capsys, *base, "--out", theirs_png)
    assert_one_line(code, err, str(theirs_png), "refusing to overwrite")
    figs = tmp_path / "figs"
    png(figs / "loss.png")
    before_figs = tree(figs)
    code, err = run_cli(capsys, "figures", trained, "--out", figs, "--chain-steps", "2",
                        "--device", "cpu")
    assert_one_line(code, err, str(figs / "loss.png"), "refusing to overwrite", "--force")
    assert tree(figs) == before_figs
    assert {k: v for k, v in tree(tmp_path).items() if not k.startswith("figs")} == before
    # what ddpmlab wrote is replaced; its outputs carry the mark
    grid, npz = tmp_path / "g.png", tmp_path / "s.npz"
    for seed in ("0", "1"):
        assert run_cli(capsys, *base, "--out", grid, "--npz", npz, "--seed", seed)[0] == 0
    from ddpmlab.io import is_our_npz, is_our_png

    assert is_our_png(grid) and is_our_npz(npz) and not is_our_png(theirs_png)
    with np.load(npz) as z:   # readers of arr_0 see the usual layout
        assert z["arr_0"].shape[0] == 2 and z["arr_0"].dtype == np.uint8
    assert run_cli(capsys, "figures", trained, "--out", figs, "--chain-steps", "2", "--device",
                   "cpu", "--force")[0] == 0
    assert is_our_png(figs / "loss.png") and is_our_png(figs / "schedule.png")


def _shared_tuple_key(depth: int) -> bytes:
    """A dict keyed by t_depth, t_{k+1} = (t_k, t_k) through the memo: ~8 bytes a level,
    2**depth work to hash."""
    out = bytearray(b"\x80\x02}q\x00K\x01q\x01")
    for k in range(1, depth + 1):
        out += b"h" + bytes([k]) + b"h" + bytes([k]) + b"\x86q" + bytes([k + 1])
    return bytes(out + b"K\x00s.")


def _shared_list(depth: int) -> bytes:
    """{b'data': uint8 [1, 3072], b'labels': L_depth}, L_{k+1} = [L_k, L_k] (2**depth ints)."""
    data = pickle.dumps(np.zeros((1, 3072), np.uint8), protocol=2)[2:-1]  # no PROTO / STOP
    out = bytearray(b"\x80\x02}q\x00(C\x04data" + data + b"C\x06labels")
    out += b"K\x01q\x010"  # memo 1: the int 1 (then POP); memo 100 + k: L_k
    for k in range(1, depth + 1):
        prev = 1 if k == 1 else 99 + k
        out += b"]q" + bytes([100 + k]) + b"(h" + bytes([prev]) + b"h" + bytes([prev]) + b"e"
        if k < depth:
            out += b"0"  # POP: only L_depth stays on the stack
    return bytes(out + b"u.")


@pytest.mark.parametrize("case", ["shared_tuple_key", "shared_label_lists", "meta_names",
                                  "opcode_limit", "too_big"])
def test_the_cifar_unpickler_is_bounded(tmp_path, case, monkeypatch):
    """Hostile CIFAR-10 pickles of a few hundred bytes (plus one image) that used to hang (a
    shared nested tuple as a dict key, shared nested label lists) or blow up (class names):
    refused or replaced, each in well under a second; the size and opcode limits hold."""
    from ddpmlab.data import cifar
    from ddpmlab.data.cifar import load_cifar

    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    good = {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    (d / "data_batch_1").write_bytes(pickle.dumps(good, protocol=2))
    if case == "shared_tuple_key":
        (d / "data_batch_1").write_bytes(_shared_tuple_key(60))
        match = "dict key of type tuple"
    elif case == "shared_label_lists":
        (d / "data_batch_1").write_bytes(_shared_list(60))
        match = "b'labels' must be 1 integers"
    elif case == "meta_names":
        names = [b"x" * 10**6]  # and a DAG of lists would have been str()-ed
        (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=2))
        t0 = time.monotonic()
        with pytest.warns(UserWarning, match="not used for class names"):
            _, _, classes = load_cifar(d, "py", "train")
        assert classes == list(cifar.CIFAR10_CLASSES) and time.monotonic() - t0 < 5
        return
    elif case == "opcode_limit":
        monkeypatch.setattr(cifar, "MAX_OPCODES", 10)
        match = "refusing a pickle this large"
    else:
        monkeypatch.setattr(cifar, "MAX_PICKLE_BYTES", 100)
        match = "is more than a CIFAR-10 file holds"
    t0 = time.monotonic()
    with pytest.raises(DataError, match=match) as e:
        load_cifar(d, "py", "train")
    assert str(d / "data_batch_1") in str(e.value)
    assert time.monotonic() - t0 < 5


def test_the_cifar_unpickler_still_reads_real_batches(tmp_path):
    """Protocols 2 (the released files) to 5, labels as a list or an array, names from meta."""
    from ddpmlab.data.cifar import load_cifar

    rng = np.random.default_rng(0)
    d = tmp_path / "c"
    d.mkdir()
    data = rng.integers(0, 256, (20, 3072), dtype=np.uint8)
    for proto, labels in ((2, list(range(10)) * 2), (5, np.arange(20) % 10)):
        (d / "data_batch_1").write_bytes(pickle.dumps(
            {b"batch_label": b"x", b"data": data, b"labels": labels,
             b"filenames": [b"f%d.png" % i for i in range(20)]}, protocol=proto))
        names = [f"c{k}".encode() for k in range(10)]
        (d / "batches.meta").write_bytes(pickle.dumps({b"label_names": names}, protocol=proto))
        x, y, classes = load_cifar(d, "py", "train")
        assert np.array_equal(x.reshape(20, 3072), data)
        assert y.tolist() == [k % 10 for k in range(20)] and classes[3] == "c3"


@pytest.mark.e2e  # ddpmlab processes
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signals_during_start_up_are_one_line(trained, tmp_path, sig, code):
    """A signal while torch is still being imported (the first ~second of any command). The
    shell sees 130 / 143 either way (Python may report a caught SIGINT as death by SIGINT)."""
    p = _spawn(["sample", trained, "--n", "2", "--steps", "2", "--no-progress", "--out",
                tmp_path / "g.png"], tmp_path)
    maps = Path(f"/proc/{p.pid}/maps")
    deadline = time.monotonic() + 60
    while "libtorch" not in maps.read_text():   # torch's libraries are being loaded
        assert p.poll() is None and time.monotonic() < deadline
        time.sleep(0.01)
    p.send_signal(sig)
    _, err = p.communicate(timeout=60)
    assert p.returncode in (code, -sig), err
    assert ("interrupted" if sig == signal.SIGINT else "stopped by SIGTERM") in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_sigterm_during_the_final_save_waits_for_it(tmp_path, monkeypatch, capsys):
    """The final checkpoint is written even when SIGTERM arrives while it is being saved, and
    the command says it was stopped (exit 143), the checkpoint named."""
    from ddpmlab.train import loop

    real = loop.Trainer.save

    def save_and_get_killed(self):
        if self.step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(self)

    monkeypatch.setattr(loop.Trainer, "save", save_and_get_killed)
    run = tmp_path / "run"
    code, err = run_cli(capsys, *train_args(run, "--max-steps", "3", "train.ckpt_every=100"))
    assert code == 143, err
    assert "stopped by SIGTERM at step 3" in err and "step_00000003" in err
    assert latest_checkpoint(run).name == "step_00000003"


@pytest.mark.parametrize("override", [
    "model.base_channels=100000", "model.base_channels=1000000000",
    "diffusion.timesteps=1000000000", "data.image_size=50000"])
def test_sizes_that_cannot_be_allocated_are_one_line(tmp_path, capsys, override):
    code, err = run_cli(capsys, *train_args(tmp_path / "r", "--max-steps", "1", override))
    assert_one_line(code, err, override.split("=")[0] if "timesteps" in override
                    or "1000000000" in override else "GiB")


def test_a_sample_count_that_cannot_be_allocated_is_one_line(trained, tmp_path, capsys):
    code, err = run_cli(capsys, "sample", trained, "--n", str(10**12), "--no-progress",
                        "--out", tmp_path / "g.png")
    assert_one_line(code, err, "1,000,000,000,000 samples", "GiB")


# ============================================================================ outputs: only ours
# One rule (ddpmlab.outputs): a command replaces or removes only what ddpmlab wrote and marked
# as its own, after the replacement is complete, never an input, a run, HOME, the current
# folder, a parent of any of them, or a folder holding anything else.
def _dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def _targets(run: Path, tmp_path: Path, monkeypatch) -> dict[str, tuple[str, Path]]:
    """name -> (the --out given, the folder whose files must stay as they are)."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("secret")
    monkeypatch.setenv("HOME", str(home))
    here = tmp_path / "here"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    return {"run": (str(run), run), "parent": (str(run.parent), run.parent),
            "home": (str(home), home), "cwd": (".", here), "empty": ("", here),
            "home-parent": (str(home.parent), home)}


@pytest.mark.parametrize("target", ["run", "parent", "home", "cwd", "empty", "home-parent"])
def test_export_force_never_removes_what_it_did_not_write(run, tmp_path, capsys, monkeypatch,
                                                           target):
    out, keep = _targets(run, tmp_path, monkeypatch)[target]
    before, run_before = tree(keep), tree(run)
    code, err = run_cli(capsys, "export", run, "--out", out, "--force")
    assert_one_line(code, err)
    assert tree(keep) == before and tree(run) == run_before


@pytest.mark.parametrize("target", ["run", "parent", "home", "cwd", "empty"])
def test_report_never_replaces_what_it_did_not_write(run, tmp_path, capsys, monkeypatch, target):
    out, keep = _targets(run, tmp_path, monkeypatch)[target]
    before, run_before = tree(keep), tree(run)
    code, err = run_cli(capsys, "report", run, "--out", out, "--no-progress")
    assert_one_line(code, err)
    assert tree(keep) == before and tree(run) == run_before


def test_report_never_empties_a_folder_that_holds_an_old_index(run, tmp_path, capsys):
    """The issue's reproducer: pub/ holds an earlier report's index.html, the reported run
    and a user's page; the report must not delete them (it used to empty pub/)."""
    from ddpmlab.report.page import GENERATOR

    pub = tmp_path / "pub"
    pub.mkdir()
    (pub / "index.html").write_text(f"<meta name=generator content='{GENERATOR}'>")
    shutil.copytree(run, pub / "myrun")
    (pub / "post.html").write_text("x")
    before = tree(pub)
    code, err = run_cli(capsys, "report", pub / "myrun", "--out", pub, "--no-progress")
    assert_one_line(code, err, str(pub))
    assert tree(pub) == before


@pytest.fixture
def pipeline(trained, tmp_path) -> Path:
    from ddpmlab.interop import export_diffusers

    return export_diffusers(trained, tmp_path / "pipe")


@pytest.mark.parametrize("target", ["source", "source-parent", "home", "cwd", "empty"])
def test_import_never_writes_over_its_source_home_or_cwd(pipeline, tmp_path, capsys,
                                                          monkeypatch, target):
    outs = _targets(tmp_path / "x", tmp_path, monkeypatch)
    outs.update({"source": (str(pipeline), pipeline), "source-parent": (str(tmp_path),
                                                                        tmp_path)})
    out, keep = outs[target]
    before, src_before = tree(keep), tree(pipeline)
    code, err = run_cli(capsys, "import", pipeline, "--out", out, "--force")
    assert_one_line(code, err)
    assert tree(keep) == before and tree(pipeline) == src_before


def test_export_replaces_only_its_own_marked_export(run, tmp_path, capsys):
    out = tmp_path / "exp"
    assert run_cli(capsys, "export", run, "--out", out)[0] == 0
    assert (out / ".ddpmlab-output.json").is_file()
    code, err = run_cli(capsys, "export", run, "--out", out)       # no --force: refused
    assert_one_line(code, err, "--force")
    assert run_cli(capsys, "export", run, "--out", out, "--force")[0] == 0   # ours: replaced
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp", "run"]   # nothing left aside
    (out / "unet" / "notes.txt").write_text("mine")                 # a user's file inside
    before = tree(out)
    code, err = run_cli(capsys, "export", run, "--out", out, "--force")
    assert_one_line(code, err, "notes.txt")
    assert tree(out) == before
    (out / "unet" / "notes.txt").unlink()
    (out / ".ddpmlab-output.json").unlink()     # an export written before marks existed
    assert run_cli(capsys, "export", run, "--out", out, "--force")[0] == 0
    assert (out / ".ddpmlab-output.json").is_file()


def test_a_killed_export_or_import_is_finished_by_the_next_command(run, pipeline, tmp_path,
                                                                   capsys):
    """What a SIGKILL leaves at each moment of the swap: the next command on the same --out
    puts the complete output in place (or the old one back) and removes the staging folder;
    a folder of the same name that is not marked as ours is never touched."""
    from ddpmlab.outputs import commit, recover, staging

    out = tmp_path / "exp"
    assert run_cli(capsys, "export", run, "--out", out)[0] == 0
    old = tree(out)
    pid = _dead_pid()
    # killed between "old renamed aside" and "new renamed in": out is missing
    os.rename(out, tmp_path / f".old-exp.{pid}")
    (tmp_path / f".tmp-exp.{pid}").mkdir()
    (tmp_path / f".tmp-exp.{pid}" / ".ddpmlab-output.json").write_text(
        json.dumps({"software": "ddpmlab", "kind": "export", "complete": False, "files": []}))
    foreign = tmp_path / f".tmp-exp.{_dead_pid()}"      # a user's folder of that shape
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    notes = recover(out, "export")
    assert tree(out) == old and any("put back" in n for n in notes)
    assert not (tmp_path / f".tmp-exp.{pid}").exists() and (foreign / "notes.txt").exists()
    # killed after the new one was complete but before the swap: the new one wins
    tmp = staging(out, "export")
    (tmp / "README.md").write_text("new")
    os.rename(out, tmp_path / f".old-exp.{os.getpid()}")
    commit(tmp, tmp_path / "elsewhere", "export")      # (complete the mark, then move it back)
    os.rename(tmp_path / "elsewhere", tmp_path / f".tmp-exp.{pid}")
    os.rename(tmp_path / f".old-exp.{os.getpid()}", tmp_path / f".old-exp.{pid}")
    recover(out, "export")
    assert (out / "README.md").read_text() == "new" and not (tmp_path / f".old-exp.{pid}").exists()
    # a killed import left its staging folder: the next import goes on
    imp = tmp_path / "imp"
    tmp = staging(imp, "import")
    os.rename(tmp, tmp_path / f".tmp-imp.{pid}")
    assert run_cli(capsys, "import", pipeline, "--out", imp)[0] == 0
    assert not (tmp_path / f".tmp-imp.{pid}").exists()
    assert not (imp / ".ddpmlab-output.json").exists()


@pytest.mark.e2e  # over 1.3 s: builds reports
def test_a_killed_report_leaves_nothing_for_good(run, tmp_path):
    """A report killed while drawing leaves RUN/.tmp-report.PID/ (marked): the next report on
    the same --out removes it (it used to stay for good)."""
    from ddpmlab.outputs import staging
    from ddpmlab.report import ReportPlan, write_report

    pid = _dead_pid()
    tmp = staging(run / "report", "report")
    (tmp / "img").mkdir()
    os.rename(tmp, run / f".tmp-report.{pid}")
    plan = ReportPlan(forward_images=2, forward_frames=3, chain_samples=2, chain_frames=3,
                      bpd_images=2, bpd_timesteps=2, checkpoint_samples=2, grid_per_class=2,
                      grid_unconditional=2, guidance=(1.0,), nfe=(2,), nfe_samplers=("ddim",),
                      nearest=2, max_checkpoints=1, max_training_grids=1)
    with pytest.warns(UserWarning, match="interrupted"):
        index = write_report(run, progress=False, plan=plan)
    assert index.is_file() and not (run / f".tmp-report.{pid}").exists()
    assert sorted(p.name for p in run.iterdir() if p.name.startswith(".tmp")) == []
    (run / "report" / "notes.txt").write_text("mine")     # a user's file: never replaced
    with pytest.raises(CheckpointError, match="notes.txt"):
        write_report(run, progress=False, plan=plan)
    assert (run / "report" / "notes.txt").read_text() == "mine"


def test_sample_eval_figures_never_replace_a_folder_or_a_users_file(run, tmp_path, capsys,
                                                                     monkeypatch):
    """Their outputs are files, replaced only when they carry ddpmlab's mark (io.py): a
    folder given as a file path (HOME, the current folder, the run) is refused, and a user's
    file with a figure's name in HOME is never overwritten; all before any work. (``''`` is
    no path there: ``--out ''`` means the default file in the run.)"""
    targets = _targets(run, tmp_path, monkeypatch)
    home = targets["home"][1]
    for name in ("run", "home", "cwd"):
        out, keep = targets[name]
        before = tree(keep)
        for argv in (["sample", run, "--out", out], ["sample", run, "--npz", out],
                     ["eval", run, "--json", out]):
            code, err = run_cli(capsys, *argv, "--no-progress", "--force")
            assert_one_line(code, err)
        assert tree(keep) == before
    png(home / "schedule.png")             # a user's picture with a figure's name
    before = tree(home)
    code, err = run_cli(capsys, "figures", run, "--out", home)
    assert_one_line(code, err, "schedule.png")
    assert tree(home) == before


# ============================================================================ strict checkpoint names
def test_a_stray_checkpoint_name_is_reported_never_used_or_deleted(run, capsys):
    """A copy named checkpoints/step_99999999999999999999999 used to be resumed from, made
    keep_last delete the real newest checkpoint, and was what sample used."""
    real = latest_checkpoint(run)
    stray = run / "checkpoints" / ("step_" + "9" * 23)
    shutil.copytree(real, stray)
    odd = run / "checkpoints" / "step_3"            # too few digits: not ours either
    shutil.copytree(real, odd)
    with pytest.warns(UserWarning, match="not a checkpoint name"):
        assert latest_checkpoint(run) == real
    code = main(["sample", str(run), "--n", "1", "--steps", "1", "--no-progress", "--out",
                 str(run / "g.png")])
    assert code == 0 and real.name in capsys.readouterr().out
    with pytest.warns(UserWarning, match="not a checkpoint name"):
        assert main(["train", "--resume", str(run), "--max-steps", "4", *COMMON,
                     "train.ckpt_every=1"]) == 0
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    kept = "step_00000002"        # (the preset's autoguidance guide, sample.guide=@0.6 of 4)
    assert names == sorted([kept, "step_00000003", "step_00000004", stray.name, odd.name]), names
    assert stray.is_dir() and odd.is_dir()           # reported, never deleted


# ============================================================================ hostile diffusers folders
def _edit_json(path: Path, **changes) -> None:
    doc = json.loads(path.read_text())
    doc.update(changes)
    path.write_text(json.dumps(doc))


@pytest.mark.parametrize("file,key,value", [
    ("unet", "layers_per_block", 10**9),              # used to hang building the network
    ("unet", "block_out_channels", [100000, 200000]),  # allocator tracebacks
    ("unet", "num_class_embeds", 10**9),
    ("unet", "block_out_channels", [0, 0]),           # ZeroDivisionError
    ("unet", "attention_head_dim", 0),
    ("unet", "layers_per_block", "1"),                # a number written as a string
    ("unet", "sample_size", "8"),
    ("unet", "norm_num_groups", 0),
    ("unet", "block_out_channels", [65536, 65536]),   # builds (meta), more than the file holds
    ("scheduler", "prediction_type", []),             # unhashable: TypeError
    ("scheduler", "beta_start", "x"),
    ("scheduler", "num_train_timesteps", "1000"),
    ("scheduler", "clip_sample", "no"),
    ("scheduler", "num_train_timesteps", 10),         # the linear schedule's betas pass 1
])
def test_hostile_import_configs_are_one_line_and_quick(pipeline, tmp_path, capsys, file, key,
                                                        value):
    path = pipeline / file / ("config.json" if file == "unet" else "scheduler_config.json")
    if key == "num_train_timesteps" and value == 10:
        _edit_json(path, beta_start=1e-4 * 100, beta_end=0.02 * 100)
    _edit_json(path, **{key: value})
    start = time.monotonic()
    code, err = run_cli(capsys, "import", pipeline, "--out", tmp_path / "imp")
    assert_one_line(code, err, key if key != "num_train_timesteps" or value != 10 else "beta")
    assert time.monotonic() - start < 20 and not (tmp_path / "imp").exists()


@pytest.mark.parametrize("text,needle", [
    ("[" * 100000 + "]" * 100000, "nested"),                       # RecursionError
    ('{"sample_size": ' + "9" * 5000 + "}", "digits"),           # int() over 4,300 digits
    ('{"sample_size": 8, "sample_size": 16}', "duplicate key 'sample_size'"),
    (" " * (2 << 20), "too large"),
])
def test_hostile_import_json_is_one_line(pipeline, tmp_path, capsys, text, needle):
    (pipeline / "unet" / "config.json").write_text(text)
    code, err = run_cli(capsys, "import", pipeline, "--out", tmp_path / "imp")
    assert_one_line(code, err, "config.json", needle)


@pytest.mark.parametrize("kind", ["fifo", "dangling"])
def test_a_scheduler_config_that_cannot_be_read_is_refused_not_defaulted(pipeline, tmp_path,
                                                                          capsys, kind):
    """It used to be replaced by the default scheduler silently (a v-prediction model
    imported as eps: wrong samples, exit 0)."""
    path = pipeline / "scheduler" / "scheduler_config.json"
    path.unlink()
    os.mkfifo(path) if kind == "fifo" else path.symlink_to(tmp_path / "missing.json")
    code, err = run_cli(capsys, "import", pipeline, "--out", tmp_path / "imp")
    assert_one_line(code, err, "scheduler_config.json")
    assert not (tmp_path / "imp").exists()


def test_nan_weights_are_refused_at_import(pipeline, tmp_path, capsys):
    from ddpmlab.io import load_tensors, save_tensors

    weights = pipeline / "unet" / "diffusion_pytorch_model.safetensors"
    state = load_tensors(weights)
    name = sorted(state)[0]
    state[name] = torch.full_like(state[name], float("nan"))
    save_tensors(weights, state)
    code, err = run_cli(capsys, "import", pipeline, "--out", tmp_path / "imp")
    assert_one_line(code, err, "NaN")
    assert not (tmp_path / "imp").exists()


@pytest.mark.parametrize("text", ['{"train": {"lr": 1e-3, "lr": 1}}', "train:\n  lr: 1\n  lr: 2\n"])
def test_duplicate_keys_in_a_config_are_one_line(tmp_path, capsys, text):
    cfg = tmp_path / ("c.json" if text.startswith("{") else "c.yaml")
    cfg.write_text(text)
    code, err = run_cli(capsys, *train_args(tmp_path / "r", "--config", str(cfg)))
    assert_one_line(code, err, str(cfg), "duplicate key 'lr'")


def test_hostile_metrics_lines_are_skipped(run):
    """A deeply nested line (RecursionError) or one with a 5,000-digit integer is skipped like
    any broken line; the others are read."""
    from ddpmlab.layout import RunDir

    n = len(RunDir(run).read_metrics())
    with open(run / "metrics.jsonl", "a") as f:
        f.write("[" * 100000 + "]" * 100000 + "\n" + '{"step": ' + "9" * 5000 + "}\n")
    assert len(RunDir(run).read_metrics()) == n


# ============================================================================ signals at start-up
@pytest.mark.e2e
@pytest.mark.parametrize("command", ["sample", "report"])
def test_sigterm_at_any_moment_of_start_up_is_never_lost(trained, tmp_path, command):
    """SIGTERM 0.2-0.6 s after the command starts (while numpy and torch load) used to be lost
    now and then (exit 0, the whole command run) or a traceback inside numpy's import: it is
    held while they load and acted on once they are in. (Before Python itself runs the
    command's first line, the kernel's default action ends it: -15, nothing written.)"""
    argv = {"sample": ["sample", trained, "--n", "2", "--steps", "2", "--no-progress",
                       "--out", tmp_path / "g.png"],
            "report": ["report", trained, "--out", tmp_path / "rep", "--no-progress"]}[command]
    for delay in (0.2, 0.3, 0.35, 0.4, 0.6):
        p = _spawn(argv, tmp_path)
        time.sleep(delay)
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=120)
        assert p.returncode in (143, -signal.SIGTERM), (delay, p.returncode, err)
        assert "Traceback" not in err and len(err.strip().splitlines()) <= 1, (delay, err)
        assert p.returncode != 143 or "stopped by SIGTERM" in err, (delay, err)
        assert not (tmp_path / "g.png").exists() and not (tmp_path / "rep").exists(), delay


# ======================================================================= hostile run files, numbers, paths
TINY_PLAN = dict(forward_images=2, forward_frames=3, chain_samples=2, chain_frames=3,
                 bpd_images=2, bpd_timesteps=2, checkpoint_samples=2, grid_per_class=2,
                 grid_unconditional=2, guidance=(1.0,), nfe=(2,), nfe_samplers=("ddim",),
                 nearest=2, max_checkpoints=1, max_training_grids=1)


@pytest.mark.e2e  # over 1.3 s: builds a report
def test_the_report_leaves_out_a_hostile_eval_json_and_metrics_lines(run):
    """{"fid": 1} in eval.json used to be KeyError: 'kid_mean'; a metrics line with
    "step": 1e300 an OverflowError; a deeply nested line a RecursionError."""
    from ddpmlab.report import ReportPlan, write_report

    (run / "eval.json").write_text('{"fid": 1}')
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 1e300, "loss": 0.5}\n{"step": Infinity, "loss": 0.5}\n'
                + "[" * 100000 + "]" * 100000 + "\n")
    with pytest.warns(UserWarning, match="'kid_mean' is not a number; the report leaves it out"):
        index = write_report(run, progress=False, plan=ReportPlan(**TINY_PLAN))
    assert index.is_file()


@pytest.mark.parametrize("argv,needle", [
    (["train", "--dataset", "digits", "--max-steps", "1", "diffusion.timesteps=20"],
     "diffusion.timesteps=20 with diffusion.schedule=linear"),
    (["train", "--dataset", "digits", "--max-steps", "1", "sample.guidance=1e308"],
     "sample.guidance=1e+308 must be at most 10,000"),
    (["sample", "RUN", "--guidance", "1e308"], "--guidance=1e+308"),
])
def test_numbers_that_break_the_math_are_one_line(trained, tmp_path, capsys, argv, needle):
    """T <= 20 with the linear schedule was a traceback; --guidance 1e308 wrote all-zero
    images with exit 0."""
    argv = [str(trained) if a == "RUN" else a for a in argv]
    if argv[0] == "train":
        argv = [*argv[:1], "--out", str(tmp_path / "r"), *COMMON, *argv[1:]]
    else:
        argv += ["--out", str(tmp_path / "g.png"), "--no-progress"]
    code, err = run_cli(capsys, *argv)
    assert_one_line(code, err, needle)
    assert not (tmp_path / "r").exists() and not (tmp_path / "g.png").exists()


@pytest.mark.e2e
def test_paths_that_are_not_utf8_are_written_and_shown(run, tmp_path):
    """A folder named with bytes that are not UTF-8 (b'\\xff'): export failed with a
    UnicodeEncodeError writing its README and printing the name (stdout strict UTF-8), the
    report in matplotlib's title; now the name is escaped (backslashreplace) in text."""
    odd = bytes(tmp_path) + b"/r\xff"
    shutil.copytree(run, os.fsdecode(odd))
    env = dict(os.environ, PYTHONIOENCODING="utf-8", OMP_NUM_THREADS="1")
    for argv in ([b"export", odd, b"--out", bytes(tmp_path) + b"/e\xff"],
                 [b"import", bytes(tmp_path) + b"/e\xff", b"--out", bytes(tmp_path) + b"/i\xff"],
                 [b"report", odd, b"--no-progress"]):
        p = subprocess.run([sys.executable.encode(), b"-m", b"ddpmlab", *argv], env=env,
                           capture_output=True, timeout=600)
        assert p.returncode == 0 and b"Traceback" not in p.stderr, (argv, p.stderr[-2000:])
        assert b"\\udcff" in p.stdout, (argv, p.stdout)
    readme = Path(os.fsdecode(bytes(tmp_path) + b"/e\xff")) / "README.md"
    assert "\\udcff" in readme.read_text(encoding="utf-8")


@pytest.mark.parametrize("command", ["sample", "eval"])
def test_an_unwritable_run_fails_before_any_work(run, capsys, monkeypatch, command):
    """sample (its default grid in RUN/samples) and eval (RUN/figures, RUN/eval.json) used to
    fail only after all the work on a run they cannot write to. Here the folder is a file
    (as root, a read-only mode does not stop writes): the same check, before any sampling."""
    from ddpmlab import runs

    def no_work(*a, **k):
        raise AssertionError("sampled before checking the outputs")

    monkeypatch.setattr(runs, "sample_images_sharded", no_work)
    monkeypatch.setattr(runs, "sample_images", no_work)
    folder = run / ("samples" if command == "sample" else "figures")
    shutil.rmtree(folder, ignore_errors=True)
    folder.write_text("not a folder")
    argv = ["sample", run, "--n", "2"] if command == "sample" else ["eval", run, "--n", "8"]
    code, err = run_cli(capsys, *argv, "--no-progress")
    assert_one_line(code, err, "cannot write there")


@pytest.mark.parametrize("where", ["parent", "home", "cwd", "empty"])
def test_train_force_never_writes_into_a_folder_of_other_files(run, tmp_path, capsys,
                                                               monkeypatch, where):
    """train --force replaces a run, never a folder that holds other files: the parent of a
    run, HOME, the current folder, or '' (issue 34): one line, every file unchanged."""
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id").write_text("secret")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.chdir(home)
    out = {"parent": run.parent, "home": home, "cwd": Path("."), "empty": ""}[where]
    target = Path(out).resolve()
    before = tree(target)
    code, err = run_cli(capsys, *train_args(out, "--max-steps", "1", "--force"))
    if where == "empty":
        assert_one_line(code, err, "--out '' names no folder")
    else:
        assert_one_line(code, err, "holds no ddpmlab run", "--force replaces only a run")
    assert tree(target) == before and not (target / "config.json").exists()


def test_train_force_still_replaces_a_run(run, capsys):
    code, _ = run_cli(capsys, *train_args(run, "--max-steps", "1", "--force"))
    assert code == 0 and [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000001"]
