"""Every ``ddpmlab`` command that README.md shows is parsed by the real parser (its flags and
``section.key=value`` overrides cannot drift from the code), and each one is either run here
with tiny settings (:data:`RUN_TINY`) or listed in :data:`NOT_RUN` with the reason. A command
added to the README without a place in one of the two fails :func:`test_every_readme_command_has_a_place`.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from ddpmlab.cli import build_parser, main

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_commands() -> list[str]:
    """The ``ddpmlab ...`` commands of README.md's shell blocks: continuation lines joined,
    comments cut, ``torchrun ... -m ddpmlab`` reduced to what ``ddpmlab`` parses."""
    blocks = re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", README.read_text("utf-8"),
                        re.S)
    out = []
    for block in blocks:
        for line in block.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if "ddpmlab" not in words:
                continue
            out.append(" ".join(words[words.index("ddpmlab"):]))
    return out


def _argv(command: str) -> list[str]:
    """The words after ``ddpmlab``; a syntax line's ``[--opt VALUE]`` taken as given."""
    return [w.strip("[]") for w in command.split()[1:] if w.strip("[]")]


# Run here (tiny): README command -> the extra flags that make it quick.
RUN_TINY = {
    "ddpmlab sample runs/mnist --class all --n 80": ["--n", "6"],
    "ddpmlab sample runs/mnist --class 7 --guidance 3": ["--n", "2"],
    "ddpmlab sample runs/mnist --class none": ["--n", "2"],
    "ddpmlab sample runs/mnist --guidance 3 --guidance-interval 0.3,5": ["--n", "2"],
    "ddpmlab sample runs/my_photos --n 64": ["--n", "2"],   # (on an unconditional run)
}

# Not run here, each with the reason (and where the same path is tested).
_MINUTES = "trains the preset for minutes (the tiny training path: tests/test_train.py)"
NOT_RUN = {
    "ddpmlab train --dataset ~/my_photos": "a folder of the user's photos; folders: "
                                            "tests/test_data.py",
    "ddpmlab train --config my.yaml train.lr=5e-4 model.channel_mult=1,2,2 "
    "diffusion.schedule=cosine": "the user's my.yaml; overrides checked below",
    "ddpmlab train --out runs/mnist": _MINUTES,
    "ddpmlab train --unconditional --out runs/mnist-u": _MINUTES,
    "ddpmlab train --out runs/mnist train.phema=true": _MINUTES,
    "ddpmlab ema runs/mnist --sweep 0.03,0.05,0.08,0.12,0.18 --n 1000":
        "scores 1000 samples per length (tests/test_train.py's post-hoc EMA tests)",
    "ddpmlab ema runs/mnist --sigma-rel 0.08 --out runs/mnist-ema0.08":
        "needs a phema run (tests/test_train.py)",
    "ddpmlab sample runs/mnist-ema0.08 --class all": "the ema run above",
    "ddpmlab sample runs/mnist --guide runs/mnist/checkpoints/step_00000500 --guide-weight 2":
        "needs the main job's step-500 checkpoint (autoguidance: tests/test_samplers.py)",
    "ddpmlab sample runs/mnist --sampler dpmpp_2m_sde --steps 10 --guidance 2 --guide "
    "runs/mnist/checkpoints/step_00000500 --guide-weight 2":
        "the main job's step-500 checkpoint (BENCHMARKS.md §12 measured it; autoguidance with "
        "CFG: tests/test_samplers.py)",
    "ddpmlab train --out runs/mnist sample.guide=@0.6 sample.guide_weight=2": _MINUTES + "; "
        "the kept guide: tests/test_runs.py",
    "ddpmlab sample runs/mnist --guide @0.6 --guide-weight 2":
        "the run above (a tiny run's own guide: tests/test_runs.py)",
    "ddpmlab sample runs/mnist --guide runs/mnist-small --guide-weight 1.5 --guidance 1.5":
        "needs a second, smaller run (autoguidance: tests/test_samplers.py)",
    "ddpmlab eval runs/mnist --n 1000": "FID on 1000 samples (eval: tests/test_report.py, "
                                         "tests/test_evaluate.py)",
    "ddpmlab train --out runs/hybrid model.learn_sigma=true diffusion.loss=hybrid": _MINUTES,
    "ddpmlab train --config mnist-flow --out runs/flow": _MINUTES,
    "ddpmlab train --config mnist-edm --out runs/edm": _MINUTES,
    "ddpmlab export RUN --format diffusers --out DIR [--no-ema]": "syntax (tests/test_interop.py)",
    "ddpmlab import SRC --out RUN [--dataset PATH]": "syntax (tests/test_interop.py)",
    "ddpmlab import ddpm-cifar10-32 --out runs/ddpm-cifar10 --dataset ./cifar-10-batches-py":
        "the downloaded google/ddpm-cifar10-32 (import: tests/test_interop.py)",
    "ddpmlab sample runs/ddpm-cifar10 --n 50000 --sampler ddpm --npz ddpm1000.npz "
    "--device cuda": "50,000 samples on a GPU",
    "ddpmlab sample runs/ddpm-cifar10 --n 50000 --sampler ddim --steps 100 --npz ddim100.npz "
    "--device cuda": "50,000 samples on a GPU",
    "ddpmlab sample runs/ddpm-cifar10 --n 50000 --sampler dpm_solver --steps 20 --npz "
    "dpm20.npz --device cuda": "50,000 samples on a GPU",
    "ddpmlab eval runs/ddpm-cifar10 --samples ddpm1000.npz --inception-weights "
    "pt_inception-2015-12-05-6726825d.pth": "the Inception weights file, 50,000 samples",
    "ddpmlab eval runs/ddpm-cifar10 --samples ddim100.npz --inception-weights "
    "pt_inception-2015-12-05-6726825d.pth --bpd-images 10000 --bpd-timesteps 1000":
        "the Inception weights file, 50,000 samples",
    "ddpmlab train --config cifar10 --dataset /data/cifar-10-batches-py":
        "CIFAR-10 for hours, also under torchrun on GPUs (the CIFAR loader: tests/test_data.py; "
        "DDP: tests/test_distributed.py)",
    "ddpmlab sample runs/cifar10 --n 50000 --npz samples.npz": "torchrun on 4 GPUs",
    **dict.fromkeys((
        "ddpmlab edit runs/mnist inpaint --held-out 8 --mask right --sampler ddpm --steps 250 "
        "--jump-length 10 --jump-n-sample 10",
        "ddpmlab edit runs/mnist inpaint --input my_half_digit.png --target-class auto "
        "--jump-length 10 --jump-n-sample 5",
        "ddpmlab edit runs/mnist img2img --input my_digit.png --strength 0.5",
        "ddpmlab edit runs/mnist invert --held-out 8 --sampler dpm_solver --steps 50",
        "ddpmlab edit runs/mnist interpolate --held-out 4",
        "ddpmlab edit runs/mnist translate --held-out 4 --target-class all --npz translated.npz"),
        "the main job's run (every operation end to end on a tiny run: tests/test_edit_run.py)"),
    **dict.fromkeys((
        "ddpmlab distill runs/mnist --method progressive --to 4 --out runs/mnist-pd4 "
        "--time-budget 30",
        "ddpmlab sample runs/mnist-pd4 --class all",
        "ddpmlab distill runs/mnist --method consistency --to 1 --out runs/mnist-cd1 "
        "--iterations 2000",
        "ddpmlab distill --resume runs/mnist-pd4"),
        "30 minutes of distillation of the main job's run (both methods, sample and resume end "
        "to end on a tiny run: tests/test_distill_run.py)"),
}


def test_every_readme_command_parses_with_the_real_parser():
    """Flags, choices and argument counts: argparse exits (SystemExit) on any drift; a train
    command's overrides are applied to its preset (unknown keys or bad values are errors)."""
    from ddpmlab.cli import _overrides
    from ddpmlab.config import PRESETS, load_config

    commands = readme_commands()
    assert len(commands) >= 20, commands
    parser = build_parser()
    for command in commands:
        args = parser.parse_args(_argv(command))
        if args.command == "train" and args.set:
            preset = args.config if args.config in PRESETS else "mnist"
            load_config(preset).override(_overrides(args.set))


def test_every_readme_command_has_a_place():
    commands = set(readme_commands())
    unplaced = sorted(c for c in commands if c not in RUN_TINY and c not in NOT_RUN)
    assert unplaced == [], f"README commands neither run by a test nor listed with a reason: " \
                           f"{unplaced}"
    assert all(reason for reason in NOT_RUN.values())
    stale = sorted(c for c in [*RUN_TINY, *NOT_RUN] if c not in commands)
    assert stale == [], f"listed here but no longer in README.md: {stale}"


TINY = ["model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
        "model.attention_resolutions=4", "model.num_heads=2", "model.norm_groups=8",
        "diffusion.timesteps=50", "train.batch_size=8", "sample.n=4", "sample.steps=3"]


@pytest.mark.e2e
def test_the_readme_sampling_commands_run(tmp_path, monkeypatch, capsys):
    """The README's sampling commands, verbatim but for fewer images, on tiny runs named as
    the README names them (runs/mnist: conditional; runs/my_photos: unconditional)."""
    monkeypatch.chdir(tmp_path)
    for out, extra in (("runs/mnist", []), ("runs/my_photos", ["--unconditional"])):
        assert main(["train", "--dataset", "digits", "--out", out, "--max-steps", "1",
                     "--no-progress", "--no-samples", "--device", "cpu", *extra, *TINY]) == 0
    readme = set(readme_commands())
    for command, quick in RUN_TINY.items():
        assert command in readme, command
        argv = _argv(command)
        for flag, value in zip(quick[::2], quick[1::2], strict=True):
            if flag in argv:
                argv[argv.index(flag) + 1] = value
            else:
                argv += [flag, value]
        assert main([*argv, "--no-progress", "--device", "cpu"]) == 0, command
        assert "samples" in capsys.readouterr().out
