"""The run layer's one sampling call (:func:`ddpmlab.runs.sampling_call`) and its held-out
ELBO report: a sampler option set in the config, in an override or on the command line reaches
``sample()``; every drawing of a run goes through the same call."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ddpmlab.config import Config
from ddpmlab.errors import ConfigError
from ddpmlab.nn import UNet
from ddpmlab.runs import (
    elbo_bits_report,
    heldout_elbo,
    run_schedule,
    sample_images,
    sampling_call,
)

TINY = {"model": {"in_channels": 1, "image_size": 8, "base_channels": 16,
                  "channel_mult": [1, 2], "num_res_blocks": 1, "attention_resolutions": [4],
                  "num_heads": 2, "norm_groups": 8},
        "diffusion": {"timesteps": 50},
        "sample": {"sampler": "heun", "steps": 4}}


def _cfg(**sample) -> Config:
    d = {k: dict(v) for k, v in TINY.items()}
    d["sample"].update(sample)
    return Config.from_dict(d)


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return UNet(_cfg().model).eval()


def test_the_call_carries_every_setting_of_the_config(net):
    cfg = _cfg(eta=0.5, spacing="uniform", variance="large", clip_x0=False, guidance=2.0,
               churn=3.0, s_tmin=0.1, s_tmax=5.0, s_noise=1.003)
    call = sampling_call(net, cfg, precision="fp32")
    kw = call.kwargs()
    assert (kw["sampler"], kw["steps"], kw["eta"], kw["spacing"], kw["variance"]) == \
        ("heun", 4, 0.5, "uniform", "large")
    assert (kw["clip_x0"], kw["guidance"], kw["prediction"], kw["learn_sigma"]) == \
        (False, 2.0, "eps", False)
    assert kw["options"] == {"churn": 3.0, "s_tmin": 0.1, "s_tmax": 5.0, "s_noise": 1.003}
    assert torch.equal(kw["schedule"].betas, run_schedule(cfg).betas)
    assert call.nfe == 2 * 4 - 1                     # heun: two per step, one for the last
    # overrides win; None keeps the run's; "auto" is the sampler's own spacing; steps 0 = T
    o = sampling_call(net, cfg, sampler="ddim", steps=7, eta=0.0, spacing="auto",
                      guidance=1.0, options={"churn": 0.0}, precision="fp32").kwargs()
    assert (o["sampler"], o["steps"], o["eta"], o["spacing"], o["guidance"]) == \
        ("ddim", 7, 0.0, None, 1.0)
    assert o["options"]["churn"] == 0.0 and o["options"]["s_tmin"] == 0.1
    assert sampling_call(net, _cfg(steps=0), precision="fp32").steps is None
    assert sampling_call(net, _cfg(), precision="fp32").options == \
        {"churn": 0.0, "s_tmin": 0.0, "s_tmax": math.inf, "s_noise": 1.0}


@pytest.mark.parametrize("options, needle", [
    ({"churn": -1.0}, "sample.churn=-1.0 must be a finite number >= 0"),
    ({"s_noise": math.nan}, "sample.s_noise=nan"),
    ({"s_tmin": 2.0, "s_tmax": 1.0}, "sample.s_tmax=1.0 must be >= sample.s_tmin=2.0"),
    ({"chrun": 1.0}, "unknown sampler option(s) 'chrun'; known: churn, s_tmin"),
])
def test_bad_sampler_options_are_refused_by_name(net, options, needle):
    with pytest.raises(ConfigError) as e:
        sampling_call(net, _cfg(), options=options)
    assert needle in str(e.value)
    with pytest.raises(ConfigError, match="steps=51: the run has diffusion.timesteps=50"):
        sampling_call(net, _cfg(), steps=51)


def test_heun_churn_in_the_config_reaches_the_sampler(net):
    """Heun with churn 0 is EDM's deterministic Algorithm 1; churn > 0 adds fresh noise at each
    step (Algorithm 2), so the same seed gives other images, and one x_T two results; an
    S_tmax below every noise level switches the churn off again."""
    plain = sample_images(net, _cfg(), 3, seed=1, precision="fp32")
    again = sample_images(net, _cfg(churn=0.0), 3, seed=1, precision="fp32")
    churned = sample_images(net, _cfg(churn=20.0), 3, seed=1, precision="fp32")
    assert torch.equal(plain, again)
    assert (churned - plain).abs().max() > 1e-3
    off = sample_images(net, _cfg(churn=20.0, s_tmax=1e-6), 3, seed=1, precision="fp32")
    assert torch.equal(off, plain)
    # the same option as an override of the call (what `ddpmlab sample --churn` passes)
    assert torch.equal(sample_images(net, _cfg(), 3, seed=1, precision="fp32",
                                     options={"churn": 20.0}), churned)
    # one starting noise, two churned runs with other generators: they differ
    call = sampling_call(net, _cfg(churn=20.0), precision="fp32")
    x_T = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(3))
    a = call.run(x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(4))
    b = call.run(x_T.shape, x_T=x_T, generator=torch.Generator().manual_seed(5))
    assert (a - b).abs().max() > 1e-3


def test_sample_images_is_the_call_run_per_sample(net):
    """``sample_images`` draws through the call: the same images as ``call.run`` with the
    per-sample generators, in any batch size."""
    from ddpmlab.samplers import per_sample_generators

    cfg = _cfg(sampler="ddim", steps=5, eta=1.0)
    call = sampling_call(net, cfg, precision="fp32")
    ref = call.run((4, 1, 8, 8), generator=per_sample_generators(2, list(range(4))))
    got = sample_images(net, cfg, 4, seed=2, precision="fp32", batch_size=3)
    torch.testing.assert_close(got, ref.float(), rtol=0, atol=0)


class _Held:
    """A held-out split: 10 random 8x8 uint8 images."""

    def __init__(self) -> None:
        g = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (10, 1, 8, 8), generator=g, dtype=torch.uint8)
        self.source = "test"

    def __len__(self) -> int:
        return len(self.images)


def test_the_heldout_elbo_is_bits_per_dim_of_the_seeds_pick(net, tmp_path):
    from ddpmlab import schedules
    from ddpmlab.data import to_model_range
    from ddpmlab.likelihood import bits_per_dim

    cfg, held = _cfg(), _Held()
    x0, bpd = heldout_elbo(net, cfg, held, seed=4, images=3, timesteps=5)
    g = torch.Generator().manual_seed(4)
    pick = torch.randperm(10, generator=g)[:3]
    ref = bits_per_dim(net, schedules.linear(50), to_model_range(held.images[pick]),
                       n_timesteps=5, generator=g)
    torch.testing.assert_close(x0, to_model_range(held.images[pick]))
    assert bpd.total == pytest.approx(ref.total, rel=1e-6)
    rep = elbo_bits_report(net, cfg, held, seed=4, images=3, timesteps=5,
                           figure=tmp_path / "vlb.png")
    assert rep["total"] == pytest.approx(ref.total, rel=1e-6) and rep["images"] == 3
    assert rep["timesteps_evaluated"] == 5 and len(rep["terms"]) == 5
    assert rep["split"] == "test" and (tmp_path / "vlb.png").is_file()
    assert rep["total"] == pytest.approx(rep["prior"] + rep["decoder"] + rep["diffusion"])
    assert "figure" not in elbo_bits_report(net, cfg, held, seed=4, images=3, timesteps=5)
    flow = Config.from_dict({**TINY, "diffusion": {"timesteps": 50, "objective": "flow"},
                             "sample": {}})
    with pytest.raises(ConfigError, match="not defined for objective flow"):
        heldout_elbo(net, flow, held)


# ============================================================================ the command
@pytest.fixture(scope="module")
def heun_run(tmp_path_factory):
    from ddpmlab.cli import main

    out = tmp_path_factory.mktemp("runs") / "heun"
    assert main(["train", "--dataset", "digits", "--out", str(out), "--no-progress",
                 "--device", "cpu", "--max-steps", "2", "--unconditional",
                 "model.base_channels=16", "model.channel_mult=1,2", "model.num_res_blocks=1",
                 "model.attention_resolutions=4", "model.num_heads=2", "model.norm_groups=8",
                 "diffusion.timesteps=50", "train.batch_size=8", "sample.n=4",
                 "sample.sampler=heun", "sample.steps=4"]) == 0
    return out


@pytest.mark.e2e  # over 2 s: trains and samples
def test_sample_churn_flag_reaches_the_sampler(heun_run, tmp_path, capsys):
    from ddpmlab.cli import main

    def draw(name: str, *extra: str) -> np.ndarray:
        npz = tmp_path / f"{name}.npz"
        assert main(["sample", str(heun_run), "-n", "4", "--device", "cpu", "--no-progress",
                     "--precision", "fp32", "--out", str(tmp_path / f"{name}.png"),
                     "--npz", str(npz), *extra]) == 0
        return np.load(npz)["arr_0"]

    plain, zero, churned = draw("plain"), draw("zero", "--churn", "0"), draw("c", "--churn", "20")
    assert np.array_equal(plain, zero) and not np.array_equal(plain, churned)
    capsys.readouterr()
    assert main(["sample", str(heun_run), "-n", "2", "--device", "cpu", "--no-progress",
                 "--churn", "-1", "--out", str(tmp_path / "bad.png")]) == 2
    err = capsys.readouterr().err.strip()
    assert "churn=-1.0 must be a finite number >= 0" in err and len(err.splitlines()) == 1
