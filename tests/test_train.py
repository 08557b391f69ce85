"""Training: the seed's step, EMA, checkpoints, exact resume, accumulation, errors."""

import json
import os

import pytest
import torch

from ddpmlab import load_run, schedules
from ddpmlab.config import Config
from ddpmlab.errors import CheckpointError, ConfigError
from ddpmlab.nn import UNet
from ddpmlab.train import Trainer, ema_decay_at, ema_update, training_loss
from ddpmlab.train.checkpoint import (
    checkpoint_dirs,
    latest_checkpoint,
    load_tensors,
    optimizer_from_tensors,
    optimizer_to_tensors,
)
from ddpmlab.train.optim import lr_at


def _tensors(path):
    return load_tensors(path)


def _same_files(a, b):
    for name in ("model.safetensors", "ema.safetensors", "optimizer.safetensors",
                 "rng.safetensors"):
        ta, tb = _tensors(a / name), _tensors(b / name)
        assert ta.keys() == tb.keys()
        for k in ta:
            assert torch.equal(ta[k], tb[k]), f"{name}:{k} differs"


def test_training_loss_is_the_seed_step():
    """training_loss == MSE(model(q_sample(x0, t, eps), t), eps), computed by hand."""
    sched = schedules.linear(100)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 2, generator=g) * 2 - 1
    t = torch.tensor([0, 5, 50, 99])
    eps = torch.randn(4, 2, generator=g)
    model = lambda x, tt: 0.5 * x  # noqa: E731
    ab = sched.alpha_bar[t].float()[:, None]
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    want = ((0.5 * x_t - eps) ** 2).mean()
    got = training_loss(model, sched, x0, t, eps)
    assert torch.allclose(got, want, atol=1e-6)


@pytest.mark.e2e  # over 2 s: trains
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(tiny_cfg):
    torch.manual_seed(0)
    net = UNet(tiny_cfg.model.__class__(**{**tiny_cfg.model.__dict__, "in_channels": 1,
                                           "image_size": 8}))
    sched = schedules.linear(50)
    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(16, 1, 8, 8, generator=g) * 2 - 1
    t = torch.randint(0, 50, (16,), generator=g)
    eps = torch.randn(16, 1, 8, 8, generator=g)
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    first = None
    for _ in range(40):
        loss = training_loss(net, sched, x0, t, eps)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_ema_update_and_warmup():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    ea = {k: v.clone() for k, v in a.state_dict().items()}
    ema_update(a, b, 0.9)
    for k, v in a.state_dict().items():
        assert torch.allclose(v, 0.9 * ea[k] + 0.1 * b.state_dict()[k])
    assert ema_decay_at(0.999, 0) == pytest.approx(0.1)
    assert ema_decay_at(0.999, 90) == pytest.approx(0.91)
    assert ema_decay_at(0.999, 10**6) == 0.999
    assert ema_decay_at(0.999, 0, warmup=False) == 0.999
    with pytest.raises(ValueError):
        ema_update(a, torch.nn.Linear(3, 3, bias=False), 0.5)


def test_lr_warmup_and_cosine():
    tc = Config().override({"train.lr": "1e-3", "train.warmup_steps": "10",
                            "train.max_steps": "110", "train.lr_decay": "cosine"}).train
    assert lr_at(0, tc) == pytest.approx(1e-4)
    assert lr_at(9, tc) == pytest.approx(1e-3)
    assert lr_at(60, tc) == pytest.approx(0.5e-3)
    assert lr_at(110, tc) == pytest.approx(0.0, abs=1e-12)


def test_optimizer_state_round_trip():
    net = torch.nn.Linear(4, 3)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    net(torch.randn(2, 4)).sum().backward()
    opt.step()
    tensors, meta = optimizer_to_tensors(opt)
    json.dumps(meta)  # the non-tensor part is plain JSON
    opt2 = torch.optim.AdamW(net.parameters(), lr=1e-3)
    optimizer_from_tensors(opt2, tensors, meta)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        for k, v in s1["state"][pid].items():
            assert torch.equal(torch.as_tensor(v), torch.as_tensor(s2["state"][pid][k]))


def test_optimizer_state_resumes_with_this_process_kernel(tiny_cfg):
    """A checkpoint written by the default per-tensor AdamW (older ddpmlab on the CPU) resumes
    into the trainer's fused one, and the other way round: the kernel choice is not restored
    from the file, the moments and step count are, and both continue with the same update."""
    from ddpmlab.train.optim import make_optimizer

    tc = tiny_cfg.train
    torch.manual_seed(0)
    w0 = torch.randn(257)
    grads = [torch.randn(257) for _ in range(6)]

    def run(first, second):
        w = w0.clone().requires_grad_()
        opt = first([w])
        for g in grads[:3]:
            w.grad = g.clone()
            opt.step()
        tensors, meta = optimizer_to_tensors(opt)
        opt2 = second([w])
        optimizer_from_tensors(opt2, tensors, meta)
        for k in ("fused", "foreach"):
            assert opt2.param_groups[0].get(k) == second([w.detach().clone().requires_grad_()]) \
                .param_groups[0].get(k)
        for g in grads[3:]:
            w.grad = g.clone()
            opt2.step()
        return w.detach()

    def plain(ps):
        return torch.optim.AdamW(ps, lr=tc.lr, weight_decay=tc.weight_decay, foreach=False)

    def fast(ps):
        return make_optimizer(ps, tc)

    ref = run(plain, plain)
    for first, second in ((plain, fast), (fast, plain)):
        assert (run(first, second) - ref).abs().max() < 1e-6


def test_save_load_gives_identical_outputs(tmp_path, tiny_cfg):
    tr = Trainer(tiny_cfg, tmp_path / "run", progress=False)
    tr.train()
    model, cfg, ckpt = load_run(tmp_path / "run", use_ema=True)
    raw, _, _ = load_run(tmp_path / "run", use_ema=False)
    x = torch.randn(3, 1, 8, 8)
    t = torch.tensor([0, 10, 49])
    with torch.no_grad():
        assert torch.equal(model(x, t), tr.ema(x, t))
        assert torch.equal(raw(x, t), tr.model.eval()(x, t))
    assert cfg == tr.cfg and ckpt.name == "step_00000006"
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_00000003",
                                                                   "step_00000006"]
    lines = [json.loads(s) for s in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines if "loss" in r] == [2, 4, 6]
    # an older checkpoint by name: its own weights, not the newest's
    older = checkpoint_dirs(tmp_path / "run")[0]
    old_model, _, old_ckpt = load_run(tmp_path / "run", checkpoint=older)
    assert old_ckpt == older
    want = _tensors(older / "ema.safetensors")
    for k, v in old_model.state_dict().items():
        assert torch.equal(v, want[k]), k
    with pytest.raises(CheckpointError, match="step_00000099"):
        load_run(tmp_path / "run", checkpoint=tmp_path / "run" / "checkpoints" / "step_00000099")


@pytest.mark.e2e  # over 2 s: trains twice
def test_resume_equals_uninterrupted(tmp_path, tiny_cfg):
    """On CPU a resumed run ends with exactly the weights of an uninterrupted one."""
    cfg = tiny_cfg.override({"data.hflip": "true", "model.dropout": "0.1"})
    Trainer(cfg, tmp_path / "a", progress=False).train()
    short = cfg.override({"train.max_steps": "4"})
    Trainer(short, tmp_path / "b", progress=False).train()
    Trainer(cfg, tmp_path / "b", resume=True, progress=False).train()
    _same_files(latest_checkpoint(tmp_path / "a"), latest_checkpoint(tmp_path / "b"))


def test_grad_accumulation_matches_one_batch(tmp_path, tiny_cfg):
    Trainer(tiny_cfg, tmp_path / "a", progress=False).train()
    Trainer(tiny_cfg.override({"train.grad_accum": "2"}), tmp_path / "b", progress=False).train()
    a = _tensors(latest_checkpoint(tmp_path / "a") / "model.safetensors")
    b = _tensors(latest_checkpoint(tmp_path / "b") / "model.safetensors")
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-5), k


def test_conditional_training_uses_labels(tmp_path, tiny_cfg):
    cfg = tiny_cfg.override({"data.conditional": "true"})
    tr = Trainer(cfg, tmp_path / "c", progress=False)
    assert tr.cfg.model.num_classes == 10 and tr.model.class_embed is not None
    tr.train()


def test_refuses_existing_run_and_bad_resume(tmp_path, tiny_cfg):
    Trainer(tiny_cfg.override({"train.max_steps": "1"}), tmp_path / "r", progress=False).train()
    with pytest.raises(CheckpointError, match="already holds a run"):
        Trainer(tiny_cfg, tmp_path / "r", progress=False)
    with pytest.raises(CheckpointError, match="not a ddpmlab run"):
        Trainer(tiny_cfg, tmp_path / "empty", resume=True, progress=False)
    other = tiny_cfg.override({"model.base_channels": "8"})
    with pytest.raises(CheckpointError, match="model.base_channels"):
        Trainer(other, tmp_path / "r", resume=True, progress=False)
    (tmp_path / "userdir").mkdir()
    (tmp_path / "userdir" / "thesis.txt").write_text("precious")
    with pytest.raises(CheckpointError, match="not empty"):
        Trainer(tiny_cfg, tmp_path / "userdir", progress=False)
    assert (tmp_path / "userdir" / "thesis.txt").read_text() == "precious"
    with pytest.raises(ConfigError, match="batch_size"):
        Trainer(tiny_cfg.override({"train.batch_size": "4096"}), tmp_path / "big",
                progress=False)


def test_partial_checkpoint_is_ignored(tmp_path, tiny_cfg):
    Trainer(tiny_cfg.override({"train.max_steps": "3"}), tmp_path / "r", progress=False).train()
    junk = tmp_path / "r" / "checkpoints" / ".tmp-step_00000009.123"
    junk.mkdir()
    (junk / "model.safetensors").write_bytes(b"half")
    assert latest_checkpoint(tmp_path / "r").name == "step_00000003"
    tr = Trainer(tiny_cfg, tmp_path / "r", resume=True, progress=False)
    assert tr.step == 3 and not junk.exists()


def test_nonfinite_loss_stops_and_keeps_checkpoint(tmp_path, tiny_cfg):
    from ddpmlab.train import TrainingError

    tr = Trainer(tiny_cfg.override({"train.max_steps": "3"}), tmp_path / "r", progress=False)
    tr.train()
    before = _tensors(latest_checkpoint(tmp_path / "r") / "model.safetensors")
    tr2 = Trainer(tiny_cfg, tmp_path / "r", resume=True, progress=False)
    with torch.no_grad():
        tr2.model.conv_in.weight.fill_(float("nan"))
    with pytest.raises(TrainingError, match="step 3"):
        tr2.train()
    after = _tensors(latest_checkpoint(tmp_path / "r") / "model.safetensors")
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_skip_nonfinite_counts(tmp_path, tiny_cfg):
    cfg = tiny_cfg.override({"train.skip_nonfinite": "true", "train.max_steps": "2"})
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    with torch.no_grad():
        tr.model.conv_in.weight.fill_(float("inf"))
    res = tr.train()
    assert res.skipped_steps == 2 and res.step == 2


# ============================================================================ speed options
def _final_weights(cfg, out):
    tr = Trainer(cfg, out, progress=False)
    tr.train()
    return tr, _tensors(latest_checkpoint(out) / "model.safetensors")


def test_channels_last_training_equals_the_plain_path(tmp_path, tiny_cfg):
    cfg = tiny_cfg.override({"train.max_steps": "3"})
    _, plain = _final_weights(cfg, tmp_path / "plain")
    _, cl = _final_weights(cfg.override({"train.channels_last": "true"}), tmp_path / "cl")
    for k in plain:
        assert torch.allclose(plain[k], cl[k], atol=1e-5), k


def test_compile_that_fails_at_its_first_call_falls_back_to_eager(tmp_path, tiny_cfg,
                                                                   monkeypatch):
    """torch.compile fails lazily (at the first call) where no compiler works: the trainer
    must notice, say so, and train exactly as without it."""
    cfg = tiny_cfg.override({"train.max_steps": "3"})
    _, plain = _final_weights(cfg, tmp_path / "plain")

    class Broken(torch.nn.Module):
        def forward(self, *a, **k):
            raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", lambda model, **kw: Broken())
    msgs = []
    tr = Trainer(cfg.override({"train.compile": "true"}), tmp_path / "c", progress=False,
                 log=msgs.append)
    tr.train()
    assert not tr.compiled and any("no C++ compiler found" in m for m in msgs)
    fell_back = _tensors(latest_checkpoint(tmp_path / "c") / "model.safetensors")
    for k in plain:
        assert torch.equal(plain[k], fell_back[k]), k


@pytest.mark.skipif(os.environ.get("DDPMLAB_TEST_COMPILE") != "1",
                    reason="runs the real inductor compiler (minutes on 2 CPU cores); "
                           "DDPMLAB_TEST_COMPILE=1 runs it")
def test_compiled_training_equals_the_plain_path(tmp_path, tiny_cfg):
    """The real thing: inductor on this CPU (skipped where torch.compile cannot build)."""
    cfg = tiny_cfg.override({"train.max_steps": "2"})
    _, plain = _final_weights(cfg, tmp_path / "plain")
    tr, comp = _final_weights(cfg.override({"train.compile": "true"}), tmp_path / "comp")
    if not tr.compiled:
        pytest.skip("torch.compile does not work on this machine")
    for k in plain:
        assert torch.allclose(plain[k], comp[k], atol=1e-4, rtol=1e-4), k


# ----------------------------------------------------------------------------- time budget
def test_steps_within_counts_the_steps_that_fit():
    from ddpmlab.train.budget import steps_within

    # 60 s budget, 20 s gone at step 40, 0.5 s per step: 0.95 x 40 s = 38 s hold 76 more steps
    assert steps_within(60.0, 20.0, 40, 0.5, 10_000) == 116
    assert steps_within(60.0, 20.0, 40, 0.5, 100) == 100       # the cap
    assert steps_within(60.0, 70.0, 40, 0.5, 10_000) == 40     # over budget: stop where it is
    assert steps_within(60.0, 59.6, 40, 0.5, 10_000) == 40     # not one whole step left


def _budget_cfg(tiny_cfg, **train):
    return tiny_cfg.override({"train.max_steps": "200", "train.ckpt_every": "1000",
                              "train.log_every": "10", "train.time_budget_min": "0.02",
                              **{f"train.{k}": str(v) for k, v in train.items()}})


@pytest.mark.e2e  # over 2 s: trains twice
def test_a_time_budget_sets_max_steps_and_max_steps_repeats_the_run(tiny_cfg, tmp_path,
                                                                    monkeypatch):
    """A budget of 4.8 s: steps 5-40 are timed, a checkpoint at step 40 times the work besides
    them, max_steps is chosen (> 40, < the cap) and written to config.json with the budget
    resolved to 0 and the recipe's guidance for that length; a new run with that max_steps (no
    budget, no checkpoint at step 40) ends with bit-identical weights, optimizer state and RNG
    states."""
    cfg = _budget_cfg(tiny_cfg, lr_decay="cosine", warmup_steps=40, time_budget_min=0.08,
                      max_steps=1000).override(
        {"data.recipe": "sample.guidance,sample.sampler,sample.steps"})
    monkeypatch.setattr("ddpmlab.recipe.GUIDANCE_BY_LENGTH_DATA", ("digits",))  # (as MNIST)
    logged = []
    tr = Trainer(cfg, tmp_path / "budget", progress=False, log=logged.append)
    res = tr.train()
    stored = json.loads((tmp_path / "budget" / "config.json").read_text())["train"]
    n = stored["max_steps"]
    assert 40 < n < 1000 and res.step == n and stored["time_budget_min"] == 0
    events = [json.loads(line) for line in (tmp_path / "budget" / "metrics.jsonl").read_text()
              .splitlines() if '"time_budget"' in line]
    assert len(events) == 1 and events[0]["max_steps"] == n and events[0]["timed_steps"] == [5, 40]
    assert any(f"max_steps {n}" in m and f"--max-steps {n}" in m for m in logged)
    # the checkpoint at step 40 timed the work besides the steps (the last step's is planned)
    assert events[0]["checkpoint_s"] > 0 and events[0]["work_s"] == events[0]["checkpoint_s"]
    assert (tmp_path / "budget" / "checkpoints" / "step_00000040").is_dir()
    # the recipe's guidance and sampler waited for the length (ddpmlab.recipe.after_sizing)
    from ddpmlab.recipe import guidance_for, sampler_for

    stored = json.loads((tmp_path / "budget" / "config.json").read_text())
    w, why = guidance_for(n)
    sampler, steps, why_sampler = sampler_for(n)
    assert stored["data"]["recipe"] == [] and stored["sample"]["guidance"] == w
    assert (stored["sample"]["sampler"], stored["sample"]["steps"]) == (sampler, steps)
    assert f"ddpmlab: recipe: {why}; {why_sampler}" in logged
    again = Trainer(cfg.override({"train.max_steps": str(n), "train.time_budget_min": "0"}),
                    tmp_path / "steps", progress=False, log=lambda m: None).train()
    assert again.step == n
    _same_files(res.checkpoint, again.checkpoint)


@pytest.mark.e2e  # over 2 s: trains 40 steps
def test_a_time_budget_shorter_than_its_timed_steps_stops_at_step_40(tiny_cfg, tmp_path):
    cfg = _budget_cfg(tiny_cfg, time_budget_min=1e-6)
    res = Trainer(cfg, tmp_path / "r", progress=False, log=lambda m: None).train()
    assert res.step == 40
    assert json.loads((tmp_path / "r" / "config.json").read_text())["train"]["max_steps"] == 40


@pytest.mark.e2e  # over 2 s: trains 40 steps
def test_the_timed_checkpoint_and_grid_are_not_repeated_at_step_40(tiny_cfg, tmp_path):
    """The work timed at step 40 (a checkpoint and, with train.sample_every, a grid) is that
    step's own when it is due anyway: each happens once."""
    from ddpmlab.train.events import Listener

    seen = []

    class Seen(Listener):
        def checkpoint(self, step, path):
            seen.append(("checkpoint", step))

        def samples(self, step, path):
            seen.append(("grid", step))

    cfg = _budget_cfg(tiny_cfg, time_budget_min=1e-6, ckpt_every=20, sample_every=20)
    res = Trainer(cfg, tmp_path / "r", progress=False, log=lambda m: None,
                  on_sample=lambda tr, step: tmp_path / f"grid_{step}.png",
                  listeners=(lambda tr: Seen(),)).train()
    assert res.step == 40
    assert seen == [("grid", 20), ("checkpoint", 20), ("checkpoint", 40), ("grid", 40)]


@pytest.mark.e2e  # over 2 s: trains
def test_a_time_budget_that_cannot_time_its_steps_says_so(tiny_cfg, tmp_path, monkeypatch):
    """... and the recipe's guidance, which waited for the budget, is decided by max_steps
    (config.json then names no key left to choose)."""
    logged = []
    cfg = _budget_cfg(tiny_cfg, max_steps=30).override({"data.recipe": "sample.guidance"})
    monkeypatch.setattr("ddpmlab.recipe.GUIDANCE_BY_LENGTH_DATA", ("digits",))  # (as MNIST)
    res = Trainer(cfg, tmp_path / "r", progress=False, log=logged.append).train()
    assert res.step == 30
    assert any("not applied" in m and "training to step 30" in m for m in logged)
    assert "ddpmlab: recipe: guidance 2 (30 steps < 2,000)" in logged
    stored = json.loads((tmp_path / "r" / "config.json").read_text())
    assert stored["data"]["recipe"] == [] and stored["sample"]["guidance"] == 2.0


def test_a_time_budget_with_a_decaying_lr_inside_the_timed_steps_is_refused(tiny_cfg):
    with pytest.raises(ConfigError, match=r"train.time_budget_min=0.02 with "
                       r"train.lr_decay=cosine needs train.warmup_steps >= 40"):
        _budget_cfg(tiny_cfg, lr_decay="cosine", warmup_steps=10)


# ----------------------------------------------------------------------------- the loop's parts
def _fake_clock(budget, slow=(), extra=0.0):
    """Mark steps 5-40 of ``budget`` at 0.5 s each (20 s at step 40), the steps in ``slow``
    taking ``extra`` seconds more; returns the sizing."""
    now, out = 2.5, None
    for step in range(5, 41):
        if step > 5:
            now += 0.5 + (extra if step in slow else 0.0)
        out = budget.mark(step, now, 0.0)
        assert (out is None) == (step < 40)
    return out


def test_time_budget_sizes_from_the_timed_steps_with_a_fake_clock():
    """TimeBudget alone: steps 5-40 at 0.5 s each, 20 s in, a 1-minute budget: 95% of the 40 s
    left fit 76 more steps; the sizing is reported once, at step 40."""
    from ddpmlab.train.budget import TimeBudget

    b = TimeBudget(1.0, 10_000, step=0)
    assert b.active and b.skipped is None
    sizing = _fake_clock(b)
    assert sizing is not None and sizing.max_steps == 40 + 76 and sizing.cap == 10_000
    assert sizing.steps_per_s == pytest.approx(2.0) and not b.active
    assert b.mark(40, 21.0, 0.0) is None
    assert "max_steps 116" in sizing.message and sizing.record["timed_steps"] == [5, 40]
    resumed = TimeBudget(1.0, 10_000, step=7)
    assert not resumed.active and "stopped before its steps were timed" in resumed.skipped
    assert TimeBudget(0.0, 10_000, step=0).skipped is None


def test_a_few_disturbed_timed_steps_do_not_shrink_the_run():
    """Four seconds of other work during steps 5-40 (two steps 2 s slower) leave the estimate
    at 0.5 s a step (the median): only the seconds they took are lost, 8 steps of the 76. The
    mean of the window would say 0.61 s a step (a broken twin: it sizes 13 steps fewer)."""
    import statistics

    from ddpmlab.train.budget import TimeBudget, steps_within

    sizing = _fake_clock(TimeBudget(1.0, 10_000, step=0), slow=(12, 30), extra=2.0)
    assert sizing.steps_per_s == pytest.approx(2.0) and sizing.elapsed_s == pytest.approx(24.0)
    assert sizing.max_steps == 40 + 68                      # 0.95 x 36 s / 0.5 s
    times = [0.5 + (2.0 if k in (12, 30) else 0.0) for k in range(6, 41)]
    mean = statistics.fmean(times)
    assert steps_within(60.0, 24.0, 40, mean, 10_000) == 40 + 55 == sizing.max_steps - 13


def test_run_work_counts_each_checkpoint_a_run_writes():
    """Checkpoints after the timed step 40 of a run of n steps, every 500 steps, at the guide's
    step (60%) and at the last step, each counted once; grids every 200 steps."""
    from ddpmlab.train.budget import RunWork

    work = RunWork(10.0, 500, lambda n: round(0.6 * n), grid_s=1.0, sample_every=200)
    assert work.checkpoints(40, 1000) == 3                  # 500, 600 (the guide), 1000
    assert work.checkpoints(40, 900) == 3                   # 500, 540, 900
    assert work.checkpoints(40, 500) == 2                   # 300 (the guide), 500 (the last)
    assert work.checkpoints(40, 40) == 0                    # (the timed one is done)
    assert RunWork(1.0, 500, lambda n: None).checkpoints(40, 1000) == 2
    assert work.grids(40, 1000) == 5 and work.grids(40, 199) == 0
    assert work.seconds(40, 1000) == pytest.approx(3 * 10.0 + 5 * 1.0)


def test_a_time_budget_leaves_room_for_the_checkpoints_it_will_write():
    """The 64 px emoji run's case: steps of 2.8 s and a copy watch of 74 s at each checkpoint
    (every 500 steps, the guide at 60%, the last). Sized with that work, the steps plus the
    checkpoints fit in 95% of what is left; sized without it (the old sizing) they do not."""
    from ddpmlab.train.budget import RunWork, Sizing, steps_within

    budget_s, elapsed, per = 39 * 60.0, 190.0, 2.8
    work = RunWork(74.0, 500, lambda n: round(0.6 * n))
    plain = Sizing(steps_within(budget_s, elapsed, 40, per, 5000), 5000, 39.0, 1 / per, 113.0)
    sized = plain.with_work(work, elapsed)
    left = 0.95 * (budget_s - elapsed)

    def cost(n):
        return (n - 40) * per + work.seconds(40, n)

    assert cost(sized.max_steps) <= left < cost(sized.max_steps + 1)
    assert cost(plain.max_steps) > left                     # the old sizing overruns
    assert sized.work_s == pytest.approx(3 * 74.0) and sized.record["checkpoint_s"] == 74.0
    assert sized.record["checkpoints"] == 3 and sized.record["work_s"] == sized.work_s
    assert "(median of steps 5-40) and checkpoints of 74.0 s (3 planned) -> max_steps " \
        f"{sized.max_steps};" in sized.message


def test_epoch_seeds_stay_in_range_for_every_allowed_seed_and_keep_old_values():
    from ddpmlab.train.order import epoch_permutation, epoch_seed

    assert epoch_seed(0, 0) == 1 and epoch_seed(1234, 5) == 1234 * 1_000_003 + 6  # unchanged
    for seed in (10**14, 2**62, 2**63 - 1):
        s = epoch_seed(seed, 10**6)
        assert 0 <= s < 2**63
        assert len(epoch_permutation(seed, 3, 10)) == 10


def test_a_seed_above_2_62_trains(tiny_cfg, tmp_path):
    """--seed 100000000000000 used to stop with 'Overflow when unpacking long long' in the
    data order (issue 34)."""
    cfg = tiny_cfg.override({"train.max_steps": "2", "train.seed": str(2**63 - 1)})
    assert Trainer(cfg, tmp_path / "r", progress=False).train().step == 2


def test_progress_to_a_file_prints_plain_lines_not_a_redrawn_bar():
    """On a file or pipe the bar is one plain line every PLAIN_INTERVAL_S seconds (and one at
    the end), never tqdm's carriage-return redraws."""
    import io

    from ddpmlab.train.events import ProgressBar

    out = io.StringIO()
    bar = ProgressBar(True, print, stream=out, interval_s=3600.0)
    bar.start(0, 100, {})
    for step in range(1, 51):
        bar.step(step)
    bar.log({"loss": 0.25})
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue()
    assert lines[0].startswith("training: step 50/100") and "loss 0.2500" in lines[0]
    often = io.StringIO()
    bar = ProgressBar(True, print, stream=often, interval_s=0.0)
    bar.start(0, 10, {})
    for step in range(1, 11):
        bar.step(step)
    bar.close()
    assert len(often.getvalue().splitlines()) == 11  # every step, then the closing line


def test_a_training_run_to_a_pipe_writes_a_few_lines(tiny_cfg, tmp_path, capfd):
    Trainer(tiny_cfg, tmp_path / "r", progress=True, log=lambda m: None).train()
    err = capfd.readouterr().err
    assert "\r" not in err and len(err.splitlines()) <= 2 and "training: step 6/6" in err


def test_tensorboard_logs_scalars_and_sample_grids_that_read_back(tiny_cfg, tmp_path):
    """train.tensorboard: the loss, lr and grad norm of every log record and each sample grid
    are in RUN/tensorboard's event file (read back with TensorBoard's own reader)."""
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from ddpmlab.runs import train_run

    cfg = tiny_cfg.override({"train.tensorboard": "true", "train.sample_every": "3"})
    train_run(cfg, tmp_path / "r", progress=False).train()
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"),
                           size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    losses = acc.Scalars("train/loss")
    assert [e.step for e in losses] == [2, 4, 6]
    metrics = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text()
               .splitlines() if '"loss"' in line]
    assert [e.value for e in losses] == pytest.approx([m["loss"] for m in metrics], rel=1e-6)
    assert {"train/lr", "train/grad_norm"} <= set(acc.Tags()["scalars"])
    images = acc.Images("samples")
    assert [e.step for e in images] == [3, 6] and images[0].width > 0


def test_tensorboard_without_the_package_is_one_line(tiny_cfg, tmp_path, monkeypatch):
    from ddpmlab.errors import ConfigError
    from ddpmlab.train import events

    monkeypatch.setattr(events, "tensorboard_available", lambda: False)
    with pytest.raises(ConfigError, match="train.tensorboard=true needs the tensorboard package"):
        Trainer(tiny_cfg.override({"train.tensorboard": "true"}), tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "config.json").exists()


def test_a_run_length_the_user_asks_for_is_not_cut_by_the_presets_time_limit():
    """Issue 34: the mnist preset's train.time_limit_min 8 silently cut --time-budget 30 and
    --max-steps 5000 (both suggested by the README) at 8 minutes."""
    from ddpmlab.config import load_config
    from ddpmlab.train.budget import UNCAPPED, respect_run_length

    preset = load_config("mnist")
    assert preset.train.time_limit_min == 8 and preset.train.time_budget_min == 7
    cfg, note = respect_run_length(preset.override({"train.time_budget_min": "30"}),
                                   {"train.time_budget_min"})
    assert cfg.train.time_limit_min == 31 and "is now 31 min" in note
    # ... nor by the preset's step cap (5,000: 16 minutes on a bf16 machine)
    assert preset.train.max_steps == 5000 and cfg.train.max_steps == UNCAPPED
    assert note.splitlines()[0] == ("ddpmlab: the preset's max_steps cap (5,000) is lifted: "
                                    "--time-budget 30 sizes the run (--max-steps N, or "
                                    "train.max_steps=N with the budget, caps it)")
    cfg, note = respect_run_length(preset.override({"train.time_budget_min": "30",
                                                    "train.max_steps": "9000"}),
                                   {"train.time_budget_min", "train.max_steps"})
    assert cfg.train.max_steps == 9000 and "cap" not in note    # a cap the user gave stays
    cfg, note = respect_run_length(
        preset.override({"train.max_steps": "5000", "train.time_budget_min": "0"}),
        {"train.max_steps", "train.time_budget_min"})
    assert cfg.train.time_limit_min == 0 and "is now off" in note and "--max-steps 5000" in note
    asked = {"train.time_budget_min", "train.time_limit_min"}  # a limit the user gave stays
    cfg, note = respect_run_length(preset.override({"train.time_budget_min": "30",
                                                    "train.time_limit_min": "8"}), asked)
    assert cfg.train.time_limit_min == 8 and "time limit" not in note
    cfg, note = respect_run_length(preset.override({"train.time_budget_min": "5"}),
                                   {"train.time_budget_min"})  # inside the limit: unchanged
    assert cfg.train.time_limit_min == 8 and "time limit" not in note
    assert respect_run_length(preset.override({"train.max_steps": "900"}),
                              {"train.max_steps"}) == (preset.override({"train.max_steps": "900"}),
                                                       None)   # (the preset's budget, capped)
    assert respect_run_length(preset, set()) == (preset, None)  # ./run.sh as it is


def test_phema_in_a_run_writes_snapshots_reconstructs_and_resumes(tmp_path, tiny_cfg):
    """``train.phema``: the Trainer's listener writes a snapshot every ``phema_every`` steps and
    at each checkpoint, says the storage cost once; the reconstruction at a tracked sigma_rel
    is that tracked average; a resumed run continues the averages exactly."""
    from ddpmlab.io import load_tensors
    from ddpmlab.layout import RunDir
    from ddpmlab.train.phema import reconstruct_run, run_snapshots

    cfg = tiny_cfg.override({"train.phema": "true", "train.phema_every": "2",
                             "train.phema_sigma_rels": "0.05,0.12"})
    lines: list[str] = []
    Trainer(cfg, tmp_path / "a", progress=False, log=lines.append).train()
    said = [s for s in lines if s.startswith("post-hoc EMA")]
    assert len(said) == 1 and "sigma_rel 0.05, 0.12" in said[0] and "3 snapshots" in said[0]
    assert [s for s, _, _ in run_snapshots(tmp_path / "a")] == [2, 3, 4, 6]  # every 2 + ckpt 3
    last = load_tensors(RunDir(tmp_path / "a").phema_snapshot(6))
    for k, sigma in enumerate((0.05, 0.12)):
        got = reconstruct_run(tmp_path / "a", sigma)
        want = {n[len(f"ema{k}."):]: v for n, v in last.items() if n.startswith(f"ema{k}.")}
        assert got.keys() == want.keys()
        for n in want:
            torch.testing.assert_close(got[n], want[n], rtol=1e-4, atol=1e-6)
    # the averages differ from each other and from the live weights (they are averages)
    live = load_tensors(latest_checkpoint(tmp_path / "a") / "model.safetensors")
    name = next(n for n in live if n.endswith("weight") and live[n].ndim == 4)
    assert not torch.equal(last[f"ema0.{name}"], live[name])
    assert not torch.equal(last[f"ema0.{name}"], last[f"ema1.{name}"])
    # stopped at step 4 and resumed: the step-6 snapshot equals the uninterrupted run's
    Trainer(cfg.override({"train.max_steps": "4"}), tmp_path / "b", progress=False,
            log=lambda m: None).train()
    Trainer(cfg, tmp_path / "b", resume=True, progress=False, log=lambda m: None).train()
    resumed = load_tensors(RunDir(tmp_path / "b").phema_snapshot(6))
    assert resumed.keys() == last.keys()
    for n in last:
        assert torch.equal(resumed[n], last[n]), n
    # off (the default): no snapshots
    Trainer(tiny_cfg, tmp_path / "c", progress=False, log=lambda m: None).train()
    assert not RunDir(tmp_path / "c").phema.exists()
