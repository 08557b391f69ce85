"""Tests of ddpmlab.distill_run (``ddpmlab distill``) on a tiny conditional teacher trained once
for the module: the student's config and plan, progressive and consistency students that
``sample`` (and ``export``) read with K network evaluations per image, a resume after an
interruption mid-stage and at a stage boundary giving the uninterrupted run's weights, a time
budget split over the stages, and every bad input one line that writes nothing."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import signal
from pathlib import Path

import pytest
import torch

from ddpmlab import distill_run
from ddpmlab.cli import main
from ddpmlab.config import Config
from ddpmlab.io import load_tensors

TINY = ["model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
        "model.attention_resolutions=4", "model.num_heads=2", "model.norm_groups=8",
        "diffusion.timesteps=50", "train.batch_size=8", "train.log_every=1",
        "train.precision=fp32", "sample.n=4", "sample.sampler=ddim", "sample.steps=8",
        "sample.guidance=2"]
FAST = ["--iterations", "2", "--batch-size", "4", "--device", "cpu", "--no-progress"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """A conditional v-prediction run (the mnist preset's) on the 8x8 digits, T = 50, sampled
    with 8 DDIM steps at guidance 2."""
    out = tmp_path_factory.mktemp("distill") / "teacher"
    assert main(["train", "--dataset", "digits", "--conditional", "--max-steps", "2", "--out",
                 str(out), "--no-progress", "--no-samples", "--device", "cpu", *TINY]) == 0
    return out


def _variant(teacher: Path, dest: Path, **diffusion) -> Path:
    """A copy of the teacher run whose config.json has other diffusion.* values (the weights
    load: the network does not know its objective)."""
    shutil.copytree(teacher, dest)
    cfg = json.loads((dest / "config.json").read_text())
    cfg["diffusion"].update(diffusion)
    (dest / "config.json").write_text(json.dumps(cfg))
    return dest


def _final(run: Path) -> Path:
    return sorted((run / "checkpoints").glob("step_*"))[-1]


# =========================================================================== the plan
def test_the_students_config_per_teacher(teacher):
    cfg = Config.from_file(teacher / "config.json")
    eps = cfg.replace(diffusion=cfg.diffusion.__class__(**{**cfg.diffusion.__dict__,
                                                           "prediction": "eps"}))
    for c, want in ((cfg, "v"), (eps, "v")):      # v stays v; an eps head is read as v
        s = distill_run.student_config(c, "progressive", 2)
        assert (s.diffusion.prediction, s.diffusion.objective) == (want, "ddpm")
        assert (s.sample.sampler, s.sample.steps, s.sample.spacing, s.sample.eta,
                s.sample.guidance) == ("ddim", 2, "trailing", 0.0, 1.0)
        assert s.model == c.model
    c = distill_run.student_config(cfg, "consistency", 1)
    assert (c.diffusion.objective, c.diffusion.timesteps, c.model.learn_sigma) == \
        ("consistency", 50, False)
    assert (c.sample.sampler, c.sample.steps, c.sample.guidance) == ("consistency", 1, 1.0)


def test_the_stages_halve_from_the_teachers_steps(teacher):
    cfg = Config.from_file(teacher / "config.json")
    assert distill_run.plan_stages("progressive", 2, cfg) == [4, 2]     # teacher: 8 steps
    assert distill_run.plan_stages("progressive", 4, cfg) == [4]
    main_job = cfg.override({"diffusion.timesteps": 1000, "sample.steps": 20})
    assert distill_run.plan_stages("progressive", 4, main_job) == [8, 4]  # 16 of its 20 steps
    all_t = cfg.override({"diffusion.timesteps": 1000, "sample.steps": 0})
    assert distill_run.plan_stages("progressive", 128, all_t) == [256, 128]  # 512 of 1000
    assert distill_run.plan_stages("consistency", 3, cfg) == [3]


def test_an_edm_teacher_starts_a_consistency_student_from_its_weights(teacher, tmp_path):
    edm = _variant(teacher, tmp_path / "edm", objective="edm", prediction="eps")
    cfg = Config.from_file(edm / "config.json")
    req = distill_run.DistillRequest(teacher=edm, method="consistency", to=1)
    plan = distill_run.make_plan(req, distill_run.RunDir(edm), cfg)
    assert plan.init == "teacher"
    t = distill_run.load_teacher(edm, "cpu")
    job = distill_run.Distillation(plan, distill_run.RunDir(tmp_path / "x"), None, t,
                                   distill_run.student_config(cfg, "consistency", 1), None,
                                   torch.device("cpu"), False, print)
    job.begin()
    for a, b in zip(job.student.state_dict().values(), t.net.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    ddpm = distill_run.make_plan(distill_run.DistillRequest(teacher=teacher, method="consistency",
                                                            to=1), distill_run.RunDir(teacher),
                                 Config.from_file(teacher / "config.json"))
    assert ddpm.init == "fresh"


# =========================================================================== end to end
def _counted(run: Path) -> int:
    """Network evaluations per image of the run's own sampling call, counted."""
    from ddpmlab.runs import load_run, sampling_call

    model, cfg, _ = load_run(run)
    call = sampling_call(model, cfg)
    calls = []

    def counting(x, t, y=None):
        calls.append(len(x))
        return call.model(x, t) if y is None else call.model(x, t, y)

    call.with_model(counting).run((3, 1, 8, 8), y=torch.tensor([0, 1, 2]),
                                  generator=torch.Generator().manual_seed(0))
    assert set(calls) == {3}          # one batch per evaluation: guidance 1, no second half
    return len(calls)


@pytest.mark.e2e
def test_progressive_to_two_steps_is_a_run_sampled_in_two_evaluations(teacher, tmp_path,
                                                                     capsys):
    new = tmp_path / "pd2"
    assert main(["distill", str(teacher), "--method", "progressive", "--to", "2", "--out",
                 str(new), *FAST]) == 0
    assert "2 step(s) = 2 network evaluation(s)" in capsys.readouterr().out
    cfg = Config.from_file(new / "config.json")
    assert (cfg.diffusion.prediction, cfg.sample.sampler, cfg.sample.steps,
            cfg.sample.spacing, cfg.sample.guidance) == ("v", "ddim", 2, "trailing", 1.0)
    plan = json.loads((new / "distill.json").read_text())
    digest = hashlib.sha256((_final(teacher) / "ema.safetensors").read_bytes()).hexdigest()
    assert plan["teacher"]["sha256"] == digest and plan["teacher"]["run"] == str(teacher)
    assert (plan["stages"], plan["completed_stages"], plan["guidance"]) == ([4, 2], 2, 2.0)
    ckpt = _final(new)
    state = json.loads((ckpt / "state.json").read_text())
    assert state["step"] == 4 and state["distill"]["stage"] == 1
    assert {"model.safetensors", "ema.safetensors", "teacher.safetensors"} <= \
        {p.name for p in ckpt.iterdir()}
    lines = [json.loads(v) for v in (new / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [1, 2, 3, 4]
    lr = Config.from_file(teacher / "config.json").train.lr      # falling to 0 in each stage
    assert [r["lr"] for r in lines if "loss" in r] == [lr, lr / 2, lr, lr / 2]
    assert plan["lr_schedule"] == "linear"
    assert _counted(new) == 2
    assert main(["sample", str(new), "--n", "4", "--device", "cpu", "--no-progress"]) == 0
    assert "ddim, 2 steps = 2 network evaluations each" in capsys.readouterr().out
    assert main(["export", str(new), "--out", str(tmp_path / "hf")]) == 0
    # a resume checks the teacher's weights against the recorded digest
    plan["teacher"]["sha256"] = "0" * 64
    (new / "distill.json").write_text(json.dumps(plan))
    capsys.readouterr()
    assert main(["distill", "--resume", str(new), "--device", "cpu"]) == 2
    assert "not the teacher this distillation started from" in capsys.readouterr().err
    (new / "distill.json").write_text("{}")
    assert main(["distill", "--resume", str(new), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "distill.json: not as ddpmlab distill writes it" in err and "\n" not in err


@pytest.mark.e2e
def test_consistency_to_one_step_samples(teacher, tmp_path, capsys):
    src = tmp_path / "t"
    shutil.copytree(teacher, src)
    assert main(["distill", str(src), "--method", "consistency", "--to", "1", *FAST]) == 0
    new = tmp_path / "t-consistency1"            # (the default: beside the teacher)
    cfg = Config.from_file(new / "config.json")
    assert (cfg.diffusion.objective, cfg.sample.sampler, cfg.sample.steps) == \
        ("consistency", "consistency", 1)
    assert json.loads((new / "distill.json").read_text())["init"] == "fresh"
    ckpt = _final(new)
    model, ema = (load_tensors(ckpt / n) for n in ("model.safetensors", "ema.safetensors"))
    assert any(not torch.equal(model[k], ema[k]) for k in model)    # ema: the EMA target
    assert _counted(new) == 1
    capsys.readouterr()
    assert main(["sample", str(new), "--n", "4", "--device", "cpu", "--no-progress"]) == 0
    assert "consistency, 1 steps = 1 network evaluations each" in capsys.readouterr().out
    # --force replaces the run there (and only a run: see the bad inputs)
    assert main(["distill", str(src), "--method", "consistency", "--to", "2", "--force",
                 "--out", str(new), *FAST]) == 0
    assert Config.from_file(new / "config.json").sample.steps == 2
    assert not (new / "samples").exists() or not any((new / "samples").iterdir())


def _interrupt_at(monkeypatch, n: int) -> None:
    """SIGINT during the n-th iteration of the next distillation (as a user's Ctrl-C)."""
    real = distill_run.progressive_stage
    seen = [0]

    def stage(*args, callback, **kw):
        def cb(i, loss):
            seen[0] += 1
            if seen[0] == n:
                signal.raise_signal(signal.SIGINT)
            return callback(i, loss)

        return real(*args, callback=cb, **kw)

    monkeypatch.setattr(distill_run, "progressive_stage", stage)


@pytest.mark.e2e
@pytest.mark.parametrize("at", [1, 2])            # mid-stage 1; the end of stage 1
def test_a_resumed_distillation_ends_with_the_uninterrupted_weights(teacher, tmp_path, at,
                                                                    monkeypatch, capsys):
    args = [str(teacher), "--method", "progressive", "--to", "2", "--ckpt-every", "1", *FAST]
    assert main(["distill", *args, "--out", str(tmp_path / "whole")]) == 0
    _interrupt_at(monkeypatch, at)
    part = tmp_path / "part"
    assert main(["distill", *args, "--out", str(part)]) == 130
    assert "Resume with: ddpmlab distill --resume" in capsys.readouterr().err
    assert json.loads((_final(part) / "state.json").read_text())["step"] == at
    monkeypatch.undo()
    assert main(["distill", "--resume", str(part), "--no-progress", "--device", "cpu"]) == 0
    assert f"resumed {part} at iteration {at}" in capsys.readouterr().out
    for name in ("model.safetensors", "ema.safetensors"):
        a, b = (load_tensors(_final(r) / name) for r in (tmp_path / "whole", part))
        assert all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((part / "distill.json").read_text())["completed_stages"] == 2
    assert main(["distill", "--resume", str(part), "--no-progress", "--device", "cpu"]) == 0


def test_the_iterations_per_stage_fill_the_budget():
    """The most N whose time, stage 1 at its speed (``done`` of its iterations done) and every
    later stage at its own, fits in what stage 1's speed alone fills: checked against a search
    over N; an even split by stage 1's speed (the rule before) leaves a cheaper later stage's
    time unused and fails."""
    def best(fit, first, later, stages, done):      # the independent count: try every N
        left = (fit - done) * first
        return max(n for n in range(done, 4 * fit)
                   if (n - done) * first + (stages - 1) * n * later <= left + 1e-9)

    for fit, first, later, stages, done in [(3032, 0.51, 0.38, 2, 40), (1000, 1.0, 1.0, 2, 40),
                                            (5000, 0.5, 0.3, 4, 40), (100, 0.2, 0.1, 3, 40)]:
        got = distill_run.iterations_per_stage(fit, first, later, stages, done)
        assert got == best(fit, first, later, stages, done), (fit, first, later, stages)
    assert distill_run.iterations_per_stage(1000, 1.0, 1.0, 2, 40) == 500   # equal speeds
    assert distill_run.iterations_per_stage(3032, 0.51, 0.38, 2, 40) > 3032 // 2 + 150
    assert distill_run.iterations_per_stage(50, 1.0, 1.0, 4, 40) == 40      # never below done


@pytest.mark.e2e
def test_a_time_budget_is_split_over_the_stages_and_recorded(teacher, tmp_path, capsys,
                                                             monkeypatch):
    """The budget sizes the stages once iterations 5-40 are timed, with the later stages'
    saving (the guided teacher's second pass; pinned here so that the count is known): the
    plan's iterations are :func:`iterations_per_stage`'s, capped by ``--iterations``."""
    calls = []
    real = distill_run.iterations_per_stage

    def spy(fit, first, later, stages, done):
        calls.append((fit, first, later, stages, done))
        return real(fit, first, later, stages, done)

    monkeypatch.setattr(distill_run, "iterations_per_stage", spy)
    monkeypatch.setattr(distill_run.Distillation, "_later_saving_s", lambda self: 1e-4)
    new = tmp_path / "budget"
    assert main(["distill", str(teacher), "--method", "progressive", "--to", "2", "--out",
                 str(new), "--time-budget", "0.01", "--iterations", "60", "--batch-size", "2",
                 "--device", "cpu", "--no-progress"]) == 0
    plan = json.loads((new / "distill.json").read_text())
    assert len(calls) == 1
    fit, first, later, stages, done = calls[0]
    assert stages == 2 and done == 40 and later == pytest.approx(max(first - 1e-4, first / 4))
    assert plan["iterations"] == min(60, real(*calls[0]))
    assert plan["time_budget_min"] == 0 and 40 <= plan["iterations"] <= 60
    out = capsys.readouterr().out
    assert f"--iterations {plan['iterations']} repeats" in out and "later stages" in out
    assert json.loads((_final(new) / "state.json").read_text())["step"] == 2 * plan["iterations"]
    events = [json.loads(v) for v in (new / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "time_budget" for r in events)


def test_only_a_guided_first_teacher_makes_later_stages_cheaper(teacher, tmp_path):
    """No saving is timed where every stage costs the same: one stage, an unguided teacher,
    consistency (the network is never called: a model that raises would say so)."""
    cfg = Config.from_file(teacher / "config.json")
    for method, stages, w in [("progressive", [4], 2.0), ("progressive", [4, 2], 1.0),
                              ("consistency", [1], 2.0)]:
        plan = distill_run.Plan(method=method, to=stages[-1], stages=stages, iterations=4,
                                time_budget_min=1.0, lr=1e-3, batch_size=2, ckpt_every=4,
                                seed=0, guidance=w, init="teacher",
                                teacher={"run": "t", "checkpoint": "c", "sha256": "s"})
        d = distill_run.Distillation(plan, None, None, None, cfg, None, torch.device("cpu"),
                                     False, print)
        assert d._later_saving_s() == 0.0


def test_the_learning_rate_schedule_of_a_plan(tmp_path):
    """Linear: lr (1 - j / N) for the iteration after j of a stage's N, from lr at each
    stage's start; constant: lr; a distill.json written before the schedule existed reads as
    the constant rate it ran with."""
    plan = distill_run.Plan(method="progressive", to=2, stages=[4, 2], iterations=4,
                            time_budget_min=0.0, lr=1e-3, batch_size=8, ckpt_every=4, seed=0,
                            guidance=2.0, init="teacher",
                            teacher={"run": "t", "checkpoint": "c", "sha256": "s"},
                            lr_schedule="linear")
    assert [plan.lr_at(s) for s in range(8)] == pytest.approx(
        [1e-3, 7.5e-4, 5e-4, 2.5e-4] * 2, abs=0, rel=1e-15)
    assert distill_run.Plan(**{**dataclasses.asdict(plan), "lr_schedule": "constant"}).lr_at(3) \
        == 1e-3
    old = json.loads(plan.to_json())
    del old["lr_schedule"]
    path = tmp_path / "distill.json"
    path.write_text(json.dumps(old))
    assert distill_run.Plan.read(path).lr_schedule == "constant"
    path.write_text(json.dumps({**old, "lr_schedule": "cosine"}))
    with pytest.raises(distill_run.CheckpointError, match="not as ddpmlab distill writes it"):
        distill_run.Plan.read(path)
    assert distill_run.DEFAULT_LR_SCHEDULE == {"progressive": "linear",
                                               "consistency": "constant"}


# =========================================================================== bad inputs
@pytest.fixture(scope="module")
def variants(teacher, tmp_path_factory):
    root = tmp_path_factory.mktemp("variants")
    bare = root / "bare"
    bare.mkdir()
    shutil.copy(teacher / "config.json", bare / "config.json")
    busy = root / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    return {"cm": _variant(teacher, root / "cm", objective="consistency", prediction="eps"),
            "flow": _variant(teacher, root / "flow", objective="flow", prediction="eps"),
            "bare": bare, "busy": busy}


BAD = {   # case: (the teacher, the arguments after it ("@name": a prepared folder), the line)
    "not a power of two": ("teacher", ["--method", "progressive", "--to", "3"], "--to 3"),
    "more than the teacher's": ("teacher", ["--method", "progressive", "--to", "8"], "--to 8"),
    "--to 0": ("teacher", ["--method", "consistency", "--to", "0"], "--to 0"),
    "no method": ("teacher", ["--to", "2"], "--method None"),
    "a consistency teacher": ("cm", ["--method", "progressive", "--to", "2"],
                              "diffusion.objective=consistency"),
    "a consistency teacher (consistency)": ("cm", ["--method", "consistency", "--to", "1"],
                                            "no ODE teacher"),
    "levels below sigma 80": ("flow", ["--method", "consistency", "--to", "1"],
                              "below the consistency student's 80"),
    "no checkpoint": ("bare", ["--method", "progressive", "--to", "2"],
                      "holds no complete checkpoint"),
    "--iterations 0": ("teacher", ["--method", "progressive", "--to", "2", "--iterations", "0"],
                       "--iterations=0"),
    "--lr -1": ("teacher", ["--method", "progressive", "--to", "2", "--lr", "-1"], "--lr=-1"),
    "--lr-schedule cosine": ("teacher", ["--method", "progressive", "--to", "2",
                                         "--lr-schedule", "cosine"], "--lr-schedule=cosine"),
    "--out a folder of other files": ("teacher", ["--method", "progressive", "--to", "2",
                                                  "--out", "@busy"], "holds no ddpmlab run"),
    "--out a run, no --force": ("teacher", ["--method", "progressive", "--to", "2", "--out",
                                            "@cm"], "already holds a run"),
    "--out the teacher": ("teacher", ["--method", "progressive", "--to", "2", "--out",
                                      "@teacher"], "an input of this command"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_bad_input_is_one_line_and_writes_nothing(case, teacher, variants, tmp_path,
                                                       capsys):
    name, args, needle = BAD[case]
    paths = {**variants, "teacher": teacher}
    src = paths[name]
    args = [str(paths[a[1:]]) if a.startswith("@") else a for a in args]
    out = [] if "--out" in args else ["--out", str(tmp_path / "new")]
    before = sorted(p.name for p in src.iterdir())
    assert main(["distill", str(src), *args, *out, "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ddpmlab: error:") and "\n" not in err and needle in err, err
    assert not (tmp_path / "new").exists()
    assert sorted(p.name for p in src.iterdir()) == before
    assert sorted(p.name for p in variants["busy"].iterdir()) == ["notes.txt"]


def test_a_student_too_large_for_the_memory_is_one_line(teacher, tmp_path, monkeypatch, capsys):
    import ddpmlab.device

    monkeypatch.setattr(ddpmlab.device, "available_memory", lambda device="cpu": 1000)
    assert main(["distill", str(teacher), "--method", "progressive", "--to", "2", "--out",
                 str(tmp_path / "new"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "distilling this model" in err and "\n" not in err
    assert not (tmp_path / "new").exists()


def test_resume_takes_no_new_plan_and_needs_a_distilled_run(teacher, capsys):
    assert main(["distill", "--resume", str(teacher), "--to", "2"]) == 2
    assert "drop --to" in capsys.readouterr().err
    assert main(["distill", "--resume", str(teacher), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert "not a distilled run (no distill.json)" in err and "\n" not in err
    assert main(["distill", "--method", "progressive", "--to", "2"]) == 2
    assert "give the teacher run" in capsys.readouterr().err


@pytest.mark.e2e
def test_distillation_follows_the_free_cores_and_flushes_denormals(teacher, tmp_path,
                                                                  monkeypatch, capsys):
    """As training does: on a (fake) machine where another process takes one of 2 cores the
    iterations run on 1 thread, one line says so, the start's 2 threads are back at the end;
    denormals are flushed during the iterations only."""
    from ddpmlab import device as D
    from ddpmlab.train import distill as TD

    clock = {"t": 0.0, "busy": 0.0, "own": 0.0}

    def fake(device):
        return D.ThreadGovernor(0.0, read_busy=lambda: clock["busy"],
                                read_own=lambda: clock["own"], clock=lambda: clock["t"],
                                cores=2)

    def busy_poll(orig):
        def poll(self):
            clock["t"] += 1
            clock["own"] += 1
            clock["busy"] += 2                     # the other process takes the other core
            return orig(self)
        return poll

    seen: list[tuple[int, bool]] = []
    orig_losses = TD.progressive_losses

    def spy(*a, **k):
        tiny = torch.tensor([1e-39], dtype=torch.float32)        # a denormal float32
        seen.append((torch.get_num_threads(), bool((tiny * 1.0) == 0)))
        return orig_losses(*a, **k)

    monkeypatch.setattr(D.ThreadGovernor, "for_device", staticmethod(fake))
    monkeypatch.setattr(D.ThreadGovernor, "poll", busy_poll(D.ThreadGovernor.poll))
    monkeypatch.setattr(TD, "progressive_losses", spy)
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert main(["distill", str(teacher), "--method", "progressive", "--to", "4", "--out",
                     str(tmp_path / "pd"),
                     "--iterations", "4", "--batch-size", "4", "--device", "cpu"]) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)
    assert seen and seen[-1] == (1, True), seen
    said = capsys.readouterr()
    assert "distilling on 1 thread" in said.out + said.err
    tiny = torch.tensor([1e-39], dtype=torch.float32)
    assert bool((tiny * 1.0) != 0)                 # flushing ends with the distillation
