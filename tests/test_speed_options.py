"""The speed options (bf16 autocast, channels_last, torch.compile) give the plain path's results.

Each network-level check runs on the CPU here and in CI, and on CUDA where a GPU is present
(benchmarks/gpu_check.sh runs this file on a lent GPU machine); the trainer-level check needs
CUDA (bf16 autocast, compile and channels_last together). Compiled CPU training is compared
with eager training in tests/test_train.py.
"""

import math

import pytest
import torch
from torch import nn

from ddpmlab.config import ModelConfig
from ddpmlab.nn import UNet
from ddpmlab.train import Trainer
from ddpmlab.train.checkpoint import latest_checkpoint, load_tensors
from test_device import _FakeMachine  # the governor's fake clock and CPUs

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA GPU")
DEVICES = ["cpu", pytest.param("cuda", marks=needs_cuda)]

CFG = ModelConfig(in_channels=3, image_size=32, base_channels=32, channel_mult=(1, 2, 2),
                  num_res_blocks=1, attention_resolutions=(16,), num_heads=2, num_classes=10)


@pytest.fixture(autouse=True)
def exact_fp32():
    """fp32 references without TF32 (cuDNN allows it for convolutions by default), so that a
    difference measures the option under test, not TF32's 10-bit mantissa."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _net_and_batch(device):
    torch.manual_seed(0)
    net = UNet(CFG)
    # DDPM zero-initialises the output convolution and each ResBlock's last one: the untrained
    # network outputs exact zeros. Random weights everywhere make every path count.
    for p in net.parameters():
        if not p.detach().abs().max() > 0:
            nn.init.normal_(p, std=0.05)
    net = net.to(device).eval()
    x = torch.randn(8, 3, 32, 32, device=device)
    t = torch.randint(0, 1000, (8,), device=device)
    y = torch.randint(0, 11, (8,), device=device)
    ref = net(x, t, y)
    assert ref.abs().mean() > 1e-3  # a real signal to compare against
    return net, x, t, y, ref


def _rel(a, b):
    return float((a.float() - b.float()).norm() / b.float().norm())


@pytest.mark.e2e  # over 2 s: a 32x32 network in two precisions
@pytest.mark.parametrize("device", DEVICES)
@torch.no_grad()
def test_bf16_autocast_matches_fp32(device):
    net, x, t, y, ref = _net_and_batch(device)
    with torch.autocast(device, dtype=torch.bfloat16):
        out = net(x, t, y)
    err = _rel(out, ref)
    # bf16 keeps 8 mantissa bits (0.4% per rounding); over ~20 layers the errors add up
    # like a random walk to a few percent, while a wrong cast (e.g. fp16 overflow) gives O(1)
    assert err < 5e-2, err


@pytest.mark.parametrize("device", DEVICES)
@torch.no_grad()
def test_channels_last_matches_contiguous(device):
    net, x, t, y, ref = _net_and_batch(device)
    net_cl = net.to(memory_format=torch.channels_last)
    out = net_cl(x.contiguous(memory_format=torch.channels_last), t, y)
    err = _rel(out, ref)
    assert err < 1e-4, err  # fp32, only the kernels' summation order differs


@needs_cuda
@torch.no_grad()
def test_compiled_network_matches_eager_on_cuda():
    net, x, t, y, ref = _net_and_batch("cuda")
    out = torch.compile(net)(x, t, y)
    err = _rel(out, ref)
    assert err < 1e-4, err  # fp32, fused kernels change only the summation order


@needs_cuda
def test_trainer_on_cuda_bf16_compile_and_channels_last(tmp_path, tiny_cfg):
    base = tiny_cfg.override({"train.device": "cuda", "train.max_steps": "3"})
    runs = {}
    for name, ov in {"plain": {"train.precision": "fp32"},
                     "fast": {"train.precision": "auto", "train.compile": "true",
                              "train.channels_last": "true"}}.items():
        tr = Trainer(base.override(ov), tmp_path / name, progress=False)
        assert tr.precision == ("fp32" if name == "plain" else "bf16")
        res = tr.train()
        assert res.step == 3 and torch.isfinite(torch.tensor(res.loss))
        if name == "fast":
            assert tr.compiled
        runs[name] = load_tensors(latest_checkpoint(tmp_path / name) / "model.safetensors")
    for k, v in runs["plain"].items():
        # three AdamW steps (lr 1e-3, warm-up 2) from the same start with the same data and
        # noise: Adam moves each weight by at most ~lr per step whatever the gradient's scale,
        # so bf16 gradients leave the weights within a few 1e-3 of the fp32 run
        assert (runs["fast"][k].float() - v.float()).abs().max() < 5e-3, k


def _fused_adamw_available(device) -> bool:
    try:
        torch.optim.AdamW([torch.zeros(1, device=device, requires_grad=True)], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


@pytest.mark.e2e  # over 2 s: two optimizers' steps
@pytest.mark.parametrize("device", DEVICES)
def test_fused_adamw_matches_the_default_loop(device, tiny_cfg):
    """The trainer's optimizer (fused AdamW where this torch has the kernel) takes the same
    steps as the default per-tensor AdamW, weight decay, warm-up-like lr changes and all."""
    from ddpmlab.train.optim import make_optimizer

    if not _fused_adamw_available(device):
        pytest.skip(f"this torch has no fused AdamW on {device}")
    tc = tiny_cfg.override({"train.weight_decay": "0.01"}).train
    torch.manual_seed(0)
    ps = [torch.randn(n, device=device) for n in (3, 1000, 4097)]
    fast = [p.clone().requires_grad_() for p in ps]
    plain = [p.clone().requires_grad_() for p in ps]
    opt_fast = make_optimizer(fast, tc)
    assert opt_fast.defaults["fused"]
    opt_plain = torch.optim.AdamW(plain, lr=tc.lr, betas=(0.9, 0.999),
                                  weight_decay=tc.weight_decay, foreach=False)
    for step in range(20):
        for o in (opt_fast, opt_plain):
            for g in o.param_groups:
                g["lr"] = tc.lr * min(1.0, (step + 1) / 5)
        for a, b in zip(fast, plain, strict=True):
            g = torch.randn_like(a) * 10 ** (step % 3 - 1)   # gradients of changing scale
            a.grad, b.grad = g.clone(), g.clone()
        opt_fast.step()
        opt_plain.step()
    for a, b, p0 in zip(fast, plain, ps, strict=True):
        moved = (b - p0).abs().max()
        assert moved > 2 * tc.lr                            # the steps did something
        assert (a - b).abs().max() < 1e-5 * moved.clamp_min(1.0), (a - b).abs().max()


def test_trainer_uses_the_fused_optimizer_where_available(tmp_path, tiny_cfg):
    tr = Trainer(tiny_cfg, tmp_path / "run", progress=False)
    assert bool(tr.opt.defaults.get("fused")) == _fused_adamw_available("cpu")


# ----------------------------------------------------------------------------- thread governor
@pytest.mark.e2e  # over 2 s: trains and scores
def test_evaluation_networks_are_governed_and_released(tmp_path, tiny_cfg, monkeypatch):
    """`score_run`'s feature, ELBO and ODE networks poll the governor (here a fake machine
    where another process takes one of 2 cores): they run on 1 thread, and after the
    evaluation the hooks are gone and the start's 2 threads are back."""
    from ddpmlab import runs
    from ddpmlab.device import ThreadGovernor
    from ddpmlab.train import Trainer

    Trainer(tiny_cfg.override({"train.max_steps": "2"}), tmp_path / "r", progress=False).train()
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    m = _FakeMachine()
    seen: list[int] = []
    made: list[ThreadGovernor] = []

    def fake(device):
        g = ThreadGovernor(0.0, read_busy=lambda: m.busy, read_own=lambda: m.own,
                           clock=lambda: m.t, cores=2)
        made.append(g)
        return g

    def busy_clock_poll(orig):
        def poll(self):
            m.run(1, ours=1.0, others=1.0)       # the other process runs throughout
            out = orig(self)
            seen.append(torch.get_num_threads())
            return out
        return poll

    hooked: list = []
    orig_hooked = ThreadGovernor.hooked

    def spy_hooked(self, *mods):
        hooked.extend(mods)
        return orig_hooked(self, *mods)

    monkeypatch.setattr(ThreadGovernor, "hooked", spy_hooked)
    monkeypatch.setattr(ThreadGovernor, "for_device", staticmethod(fake))
    monkeypatch.setattr(ThreadGovernor, "poll", busy_clock_poll(ThreadGovernor.poll))
    try:
        out = runs.score_run(tmp_path / "r", runs.ScoreOptions(
            n=8, steps=2, bpd_images=4, bpd_timesteps=3, nll="both", ode_images=2, ode_steps=2),
            progress=False)
        assert math.isfinite(out["fid"]) and "bits_per_dim_ode" in out
        assert len(made) == 2                    # sampling's governor, then the evaluation's
        assert len(seen) > 20 and set(seen[2:]) == {1}, seen[:10]
        assert torch.get_num_threads() == 2
        assert len(hooked) == 2 and all(isinstance(x, nn.Module) for x in hooked)
        assert not any(sub._forward_pre_hooks for x in hooked for sub in x.modules())
    finally:
        torch.set_num_threads(old)


# =========================================================================== precision: auto
@pytest.mark.parametrize("feature", ["AVX512-BF16", None])
def test_the_trainer_uses_and_records_the_resolved_precision(monkeypatch, tmp_path, tiny_cfg,
                                                             feature):
    """auto trains in bf16 autocast where the CPU has native bf16 (the step's forward pass
    really runs in bf16) and in fp32 elsewhere; the run's metrics say which and why."""
    import json

    from ddpmlab import device as D

    monkeypatch.setattr(D, "native_bf16_cpu", lambda: feature)
    tr = Trainer(tiny_cfg.override({"train.max_steps": "2", "train.precision": "auto"}),
                 tmp_path / "run", progress=False)
    want = "bf16" if feature else "fp32"
    assert tr.precision == want
    seen = []
    hook = tr.model.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    tr.train()
    hook.remove()
    assert seen and set(seen) == {torch.bfloat16 if feature else torch.float32}
    events = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    rec = next(e for e in events if e.get("event") == "precision")
    assert (rec["setting"], rec["precision"]) == ("auto", want)
    assert rec["reason"] == D.precision_reason("auto", torch.device("cpu"))


@pytest.mark.parametrize("setting", ["auto", "fp16"])
def test_sampling_follows_the_same_precision_rule(monkeypatch, tmp_path, tiny_cfg, setting):
    """sample_images runs the network in the run's precision resolved as training resolves
    it (a CUDA-only fp16 run samples on a CPU by the auto rule), returns float32, and a bf16
    draw stays close to the fp32 draw of the same noise; fp32 asked for is exactly fp32."""
    from ddpmlab import device as D
    from ddpmlab.runs import load_run, sample_images

    monkeypatch.setattr(D, "native_bf16_cpu", lambda: "AVX512-BF16")
    Trainer(tiny_cfg.override({"train.max_steps": "1", "train.precision": "fp32"}),
            tmp_path / "run", progress=False).train()
    model, cfg, _ = load_run(tmp_path / "run")
    cfg = cfg.override({"train.precision": setting, "sample.clip_x0": "false"})
    seen = []
    model.register_forward_hook(lambda m, i, out: seen.append(out.dtype))
    x16 = sample_images(model, cfg, n=3, sampler="ddim", steps=4)
    assert set(seen) == {torch.bfloat16} and x16.dtype == torch.float32
    seen.clear()
    x32 = sample_images(model, cfg, n=3, sampler="ddim", steps=4, precision="fp32")
    assert set(seen) == {torch.float32}
    err = (x16 - x32).abs().max().item()
    assert 0 < err < 0.1, err  # bf16's 8-bit mantissa: close, not equal
