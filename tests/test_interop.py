"""diffusers import/export (ddpmlab.interop), checked against diffusers itself (test extra)."""

from __future__ import annotations

import json
import os
import pickle

import pytest
import torch

from ddpmlab import load_run, sample, schedules
from ddpmlab.cli import main
from ddpmlab.interop import export_diffusers, import_diffusers
from ddpmlab.io import save_tensors

diffusers = pytest.importorskip("diffusers")

# google/ddpm-cifar10-32's UNet2DModel configuration (the DDPM paper's CIFAR-10 network)
CIFAR10_32 = dict(sample_size=32, in_channels=3, out_channels=3, layers_per_block=2,
                  block_out_channels=(128, 256, 256, 256),
                  down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D",
                                    "DownBlock2D"),
                  up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
                  attention_head_dim=None, norm_eps=1e-6, norm_num_groups=32, freq_shift=1,
                  flip_sin_to_cos=False, downsample_padding=0, dropout=0.1, act_fn="silu",
                  time_embedding_type="positional", mid_block_scale_factor=1,
                  center_input_sample=False)
TINY = ["--dataset", "digits", "--no-progress", "--device", "cpu", "model.base_channels=16",
        "model.channel_mult=1,2", "model.num_res_blocks=1", "model.attention_resolutions=4",
        "model.num_heads=2", "model.norm_groups=8", "diffusion.timesteps=50",
        "train.batch_size=8", "sample.n=4"]


def _randomize(net: torch.nn.Module, seed: int = 0) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.parameters():   # non-zero everywhere (zero-initialised layers included)
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)


def _pipeline_folder(tmp_path, unet_kwargs, scheduler_kwargs=None, seed=0):
    unet = diffusers.UNet2DModel(**unet_kwargs).eval()
    _randomize(unet, seed)
    sched = diffusers.DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear",
                                    **(scheduler_kwargs or {"variance_type": "fixed_large"}))
    folder = tmp_path / "pipe"
    diffusers.DDPMPipeline(unet=unet, scheduler=sched).save_pretrained(folder)
    return folder, unet


def _same_outputs(ours, theirs, x, t, y=None, atol=2e-4):
    with torch.no_grad():
        a = ours(x, t, y)
        b = theirs(x, t, class_labels=y).sample
    assert a.abs().mean() > 1e-2                        # a non-trivial output
    torch.testing.assert_close(a, b, rtol=1e-3, atol=atol)


@pytest.mark.e2e  # over 2 s: the 35.7M CIFAR-10 network
def test_the_ddpm_papers_cifar10_network_imports_exactly(tmp_path):
    folder, unet = _pipeline_folder(tmp_path, CIFAR10_32)
    import_diffusers(folder, tmp_path / "run")
    model, cfg, ckpt = load_run(tmp_path / "run")
    assert ckpt.name == "step_00000000"
    m = cfg.model
    assert (m.base_channels, m.channel_mult, m.num_res_blocks, m.attention_resolutions,
            m.num_heads, m.norm_eps, m.downsample_pad) == (128, (1, 2, 2, 2), 2, (16,), 1, 1e-6,
                                                           "right")
    assert (cfg.diffusion.timesteps, cfg.diffusion.schedule, cfg.diffusion.prediction,
            cfg.sample.variance) == (1000, "linear", "eps", "large")
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in unet.parameters())
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    _same_outputs(model, unet, x, torch.tensor([3, 870]))


def test_old_attention_names_and_a_bare_unet_folder_import(tmp_path):
    kw = dict(CIFAR10_32, block_out_channels=(32, 64), down_block_types=("DownBlock2D",
              "AttnDownBlock2D"), up_block_types=("AttnUpBlock2D", "UpBlock2D"),
              sample_size=16, norm_num_groups=8)
    _, unet = _pipeline_folder(tmp_path, kw)
    state = unet.state_dict()
    old = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
           .replace(".to_out.0.", ".proj_attn."): v for k, v in state.items()}
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "config.json").write_text(json.dumps(dict(unet.config)))
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in old.items()},
              str(bare / "diffusion_pytorch_model.safetensors"))
    import_diffusers(bare, tmp_path / "run")
    model, _, _ = load_run(tmp_path / "run")
    _same_outputs(model, unet, torch.randn(2, 3, 16, 16), torch.tensor([0, 999]))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Tiny trained runs: conditional gray, unconditional gray, unconditional RGB."""
    root = tmp_path_factory.mktemp("interop")
    made = {}
    for name, extra in (("cond1", []), ("uncond1", ["--unconditional"]),
                        ("uncond3", ["--unconditional", "data.channels=3",
                                     "diffusion.schedule=cosine", "diffusion.prediction=v"])):
        opts = [e for e in extra if e.startswith("--")]
        sets = [e for e in extra if not e.startswith("--")]
        assert main(["train", "--out", str(root / name), "--max-steps", "2", *opts, *TINY,
                     *sets]) == 0
        # two steps leave the net near its zero initialisation: give it real weights to compare
        model, _, ckpt = load_run(root / name)
        _randomize(model, 3)
        for f in ("model.safetensors", "ema.safetensors"):
            save_tensors(ckpt / f, model.state_dict())
        made[name] = root / name
    return made


@pytest.mark.e2e  # over 2 s: trains, exports, samples
@pytest.mark.parametrize("name", ["cond1", "uncond1", "uncond3"])
def test_exported_runs_load_in_diffusers_and_agree(runs, tmp_path, name):
    _, cfg, _ = load_run(runs[name])
    out = export_diffusers(runs[name], tmp_path / "exp")
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet").eval()
    exported, _, _ = load_run(runs[name])
    c = cfg.model.in_channels
    x = torch.randn(3, c, 8, 8, generator=torch.Generator().manual_seed(2))
    t = torch.tensor([0, 17, 49])
    y = torch.tensor([1, 5, 10]) if cfg.model.num_classes else None   # 10: the null class
    _same_outputs(exported, unet, x, t, y)
    pipe = diffusers.DDPMPipeline.from_pretrained(out)
    assert pipe.scheduler.config.num_train_timesteps == 50
    assert pipe.scheduler.config.prediction_type == {"eps": "epsilon", "v": "v_prediction"}[
        cfg.diffusion.prediction]
    readme = (out / "README.md").read_text()
    assert ("null" in readme) == bool(cfg.model.num_classes)


@pytest.mark.e2e  # over 1.3 s: a 1000-step chain twice
def test_a_ddpm_chain_through_diffusers_equals_ddpmlabs(runs, tmp_path):
    out = export_diffusers(runs["uncond1"], tmp_path / "exp")
    unet = diffusers.UNet2DModel.from_pretrained(out / "unet").eval()
    sched = diffusers.DDPMScheduler.from_pretrained(out / "scheduler")
    model, cfg, _ = load_run(runs["uncond1"])
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    sched.set_timesteps(cfg.diffusion.timesteps)
    g = torch.Generator().manual_seed(5)
    x = x_T.clone()
    with torch.no_grad():
        for t in sched.timesteps:
            x = sched.step(unet(x, t).sample, t, x, generator=g).prev_sample
    ours = sample(model, schedules.get(cfg.diffusion.schedule, cfg.diffusion.timesteps),
                  x_T=x_T, sampler="ddpm", variance=cfg.sample.variance,
                  prediction=cfg.diffusion.prediction, clip_x0=cfg.sample.clip_x0,
                  generator=torch.Generator().manual_seed(5))
    torch.testing.assert_close(ours, x, rtol=1e-3, atol=1e-3)


def test_import_of_an_export_is_bit_exact(runs, tmp_path):
    for name in runs:
        out = export_diffusers(runs[name], tmp_path / f"exp-{name}")
        import_diffusers(out, tmp_path / f"back-{name}")
        a, ca, _ = load_run(runs[name])
        b, cb, _ = load_run(tmp_path / f"back-{name}")
        assert ca.model == cb.model and ca.diffusion == cb.diffusion, name
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa), name


def test_an_imported_run_samples_and_fine_tunes(runs, tmp_path, capsys):
    out = export_diffusers(runs["cond1"], tmp_path / "exp")
    assert main(["import", str(out), "--out", str(tmp_path / "imp"), "--dataset", "digits"]) == 0
    assert main(["sample", str(tmp_path / "imp"), "--n", "2", "--steps", "3", "--sampler",
                 "ddim", "--out", str(tmp_path / "g.png"), "--no-progress"]) == 0
    assert main(["train", "--resume", str(tmp_path / "imp"), "--max-steps", "1",
                 "--no-progress", "--no-samples", "train.batch_size=8"]) == 0
    assert (tmp_path / "imp" / "checkpoints" / "step_00000001").is_dir()


def test_a_malicious_pickle_runs_no_code(tmp_path, capsys):
    folder, _ = _pipeline_folder(tmp_path, dict(CIFAR10_32, block_out_channels=(32, 64),
                                                down_block_types=("DownBlock2D", "DownBlock2D"),
                                                up_block_types=("UpBlock2D", "UpBlock2D"),
                                                sample_size=8, norm_num_groups=8))
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    (folder / "unet" / "diffusion_pytorch_model.bin").write_bytes(pickle.dumps({"w": Evil()}))
    code = main(["import", str(folder), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "weights-only" in err
    assert not marker.exists() and not (tmp_path / "run").exists()


@pytest.mark.parametrize("key,value", [
    ("_class_name", "UNet2DConditionModel"), ("time_embedding_type", "fourier"),
    ("flip_sin_to_cos", True), ("resnet_time_scale_shift", "scale_shift"),
    ("down_block_types", ["SkipDownBlock2D", "DownBlock2D"]), ("attention_head_dim", 7),
    ("class_embed_type", "timestep"), ("cross_attention_dim", 64)])
def test_unsupported_architectures_stop_with_one_line(tmp_path, capsys, key, value):
    cfg = dict(CIFAR10_32, block_out_channels=[32, 64], down_block_types=["AttnDownBlock2D",
               "DownBlock2D"], up_block_types=["UpBlock2D", "AttnUpBlock2D"], sample_size=8,
               norm_num_groups=8, _class_name="UNet2DModel")
    cfg[key] = value
    (tmp_path / "u").mkdir()
    (tmp_path / "u" / "config.json").write_text(json.dumps(cfg))
    code = main(["import", str(tmp_path / "u"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and key in err and "config.json" in err
    assert not (tmp_path / "run").exists()


def test_export_refuses_what_diffusers_cannot_express_before_writing(tmp_path, capsys):
    run = tmp_path / "odd"
    assert main(["train", "--out", str(run), "--max-steps", "1", "--unconditional",
                 "--no-samples", *TINY, "data.image_size=7", "model.attention_resolutions="]) == 0
    code = main(["export", str(run), "--out", str(tmp_path / "exp")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "model.image_size=7" in err and not (tmp_path / "exp").exists()
