"""The speed options (bf16 autocast, channels_last, torch.compile) give the plain path's results.

Each network-level check runs on the CPU here and in CI, and on CUDA where a GPU is present
(benchmarks/gpu_check.sh runs this file on a lent GPU machine); the trainer-level check needs
CUDA (bf16 autocast, compile and channels_last together). Compiled CPU training is compared
with eager training in tests/test_train.py.
"""

import pytest
import torch
from torch import nn

from ddpmlab.config import ModelConfig
from ddpmlab.nn import UNet
from ddpmlab.train import Trainer
from ddpmlab.train.checkpoint import latest_checkpoint, load_tensors

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
