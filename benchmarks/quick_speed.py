"""Training-step speed of ddpmlab UNet configs at 1x28x28 (for sizing the main job).

python benchmarks/quick_speed.py [batch]
"""

import sys

import torch

from common import count_flops, time_it
from ddpmlab import schedules
from ddpmlab.config import ModelConfig
from ddpmlab.nn import UNet
from ddpmlab.train import training_loss

B = int(sys.argv[1]) if len(sys.argv) > 1 else 64
configs = {
    "b32 (1,2,2) r1": ModelConfig(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=1),
    "b32 (1,2,2) r2": ModelConfig(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2),
    "b48 (1,2,2) r1": ModelConfig(base_channels=48, channel_mult=(1, 2, 2), num_res_blocks=1),
    "b64 (1,2,2) r1": ModelConfig(base_channels=64, channel_mult=(1, 2, 2), num_res_blocks=1,
                                  attention_resolutions=(7,)),
    "b32 (1,2,4) r1": ModelConfig(base_channels=32, channel_mult=(1, 2, 4), num_res_blocks=1),
    "b32 (1,2,2) r2 cl": ModelConfig(base_channels=32, channel_mult=(1, 2, 2), num_res_blocks=2),
}
sched = schedules.linear(1000)
for name, cfg in configs.items():
    torch.manual_seed(0)
    net = UNet(cfg)
    cl = name.endswith("cl")
    if cl:
        net = net.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x0 = torch.randn(B, 1, 28, 28)
    if cl:
        x0 = x0.contiguous(memory_format=torch.channels_last)
    t = torch.randint(0, 1000, (B,))
    eps = torch.randn_like(x0)

    def step():
        loss = training_loss(net, sched, x0, t, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    flops = count_flops(step)
    s = time_it(step, warmup=2, reps=5)
    params = sum(p.numel() for p in net.parameters())
    print(f"{name:>20}: {params / 1e6:5.2f}M params, {s * 1000:7.1f} ms/step, "
          f"{B / s:6.1f} img/s, {flops / s / 1e9:6.1f} GFLOP/s ({flops / B / 1e6:.0f} MFLOP/img)",
          flush=True)
