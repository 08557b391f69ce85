import pytest
import torch

# One thread: the tests' tensors are small, and on a busy machine OpenMP's worker threads
# wait for each other (200x slower per op, measured here). Subprocess tests set
# OMP_NUM_THREADS=1 likewise.
torch.set_num_threads(1)


@pytest.fixture
def tiny_cfg():
    """A seconds-fast config on the built-in 8x8 digits, in fp32 (``auto`` would be bf16 on a
    CPU with native bf16: the exactness checks compare fp32 paths; bf16 tests ask for it)."""
    from ddpmlab.config import Config

    return Config.from_dict({
        "model": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
                  "attention_resolutions": [4], "num_heads": 2, "norm_groups": 8},
        "diffusion": {"timesteps": 50},
        "data": {"dataset": "digits"},
        "train": {"batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "max_steps": 6,
                  "ema_decay": 0.9, "log_every": 2, "ckpt_every": 3, "keep_last": 2,
                  "device": "cpu", "precision": "fp32"},
        "sample": {"n": 4, "sampler": "ddim", "steps": 5},
    })
