"""Class-conditional training and classifier-free guidance (the tutorial's "many classes")."""

import numpy as np
import pytest
import torch

from ddpmlab import schedules
from ddpmlab.cli import main
from ddpmlab.objectives import DDPM
from ddpmlab.samplers import classifier_free_guidance
from ddpmlab.train import draw
from test_cli import TINY


def test_label_dropout_rate():
    """Labels are dropped to the null class with probability p_uncond."""
    g = torch.Generator().manual_seed(0)
    drops = torch.cat([draw(g, 4096, (1,), DDPM(10), torch.device("cpu"), p_uncond=0.1).drop
                       for _ in range(10)])
    n = drops.numel()
    rate = drops.float().mean().item()
    # Binomial(n, 0.1): 5 standard errors is far beyond chance.
    assert abs(rate - 0.1) < 5 * (0.1 * 0.9 / n) ** 0.5
    assert not draw(g, 1000, (1,), DDPM(10), torch.device("cpu"), p_uncond=0.0).drop.any()
    assert draw(g, 1000, (1,), DDPM(10), torch.device("cpu"), p_uncond=1.0).drop.all()


@pytest.mark.e2e  # over 2 s: trains
def test_dropped_labels_reach_the_model_as_null(tmp_path, tiny_cfg):
    from ddpmlab.train import Trainer

    cfg = tiny_cfg.override({"data.conditional": "true", "data.p_uncond": "1.0",
                             "train.max_steps": "1"})
    tr = Trainer(cfg, tmp_path / "r", progress=False)
    seen = []
    orig = tr.model.forward

    def spy(x, t, y=None):
        seen.append(y.clone())
        return orig(x, t, y)

    tr.model.forward = spy
    tr.train()
    assert seen and all((y == 10).all() for y in seen)  # null class index = num_classes


def test_guidance_arithmetic_by_hand():
    """eps = eps_u + w (eps_c - eps_u) with eps_u from the null class."""
    def model(x, t, y=None):
        yy = torch.full((x.shape[0],), 5) if y is None else y
        return x * 0 + yy[:, None].float()  # "eps" = the label itself

    x = torch.zeros(3, 2)
    t = torch.zeros(3, dtype=torch.long)
    y = torch.tensor([1, 2, 3])
    for w in (0.0, 1.0, 2.5):
        batched = classifier_free_guidance(model, y, w, null_class=5)(x, t)
        two_call = classifier_free_guidance(model, y, w)(x, t)
        want = 5 + w * (y[:, None].float() - 5)
        assert torch.allclose(batched, want.expand(3, 2)) and torch.allclose(two_call, batched)
    with pytest.raises(ValueError):
        classifier_free_guidance(model, y, -1.0)


def test_guided_sampler_moves_towards_the_class():
    """Exact eps of two 1-D classes (N(-1, .1^2), N(+1, .1^2)): w=1 gives the class, w=0 both."""
    sched = schedules.linear(200)
    centers = torch.tensor([-1.0, 1.0])

    def model(x, t, y=None):
        ab = sched.alpha_bar.to(x)[t][:, None]
        var = ab * 0.01 + 1 - ab
        if y is None or (y == 2).all():  # null: the 50/50 mixture
            logp = -(x - ab.sqrt() * centers) ** 2 / (2 * var)
            r = torch.softmax(logp, 1)
            mean = ab.sqrt() * (r * centers).sum(1, keepdim=True)
        else:
            mean = ab.sqrt() * centers[y][:, None]
        return (1 - ab).sqrt() * (x - mean) / var

    from ddpmlab import sample

    g = torch.Generator().manual_seed(0)
    y = torch.ones(400, dtype=torch.long)
    cond = sample(model, sched, (400, 1), "ddim", steps=50, y=y, guidance=1.0, null_class=2,
                  generator=g)
    uncond = sample(model, sched, (400, 1), "ddim", steps=50, y=y, guidance=0.0, null_class=2,
                    generator=g)
    assert (cond > 0).float().mean() > 0.99
    assert 0.35 < (uncond > 0).float().mean() < 0.65


def test_cli_conditional_train_then_sample_class(tmp_path):
    run = tmp_path / "cond"
    assert main(["train", "--dataset", "digits", "--conditional", "--max-steps", "3",
                 "--out", str(run), "--no-progress", "--device", "cpu", *TINY]) == 0
    npz = tmp_path / "s.npz"
    assert main(["sample", str(run), "--class", "3", "--guidance", "2", "--n", "4",
                 "--steps", "3", "--npz", str(npz), "--out", str(tmp_path / "g.png"),
                 "--no-progress"]) == 0
    f = np.load(npz)
    assert f["arr_0"].shape == (4, 8, 8, 1) and (f["labels"] == 3).all()
    assert main(["sample", str(run), "--class", "all", "--n", "20", "--steps", "2",
                 "--npz", str(npz), "--out", str(tmp_path / "all.png"), "--no-progress"]) == 0
    assert sorted(set(np.load(npz)["labels"].tolist())) == list(range(10))
    assert main(["sample", str(run), "--class", "12"]) == 2
