"""The shipped emoji feature network (``featnet32``, RGB 32x32, the 9 Unicode groups): its
file, its accuracy on the held-out emoji recomputed here (at 32 px and at 64 px resized), the
extractor choosing it, the share read as asked, and ``ddpmlab eval`` on a tiny emoji run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from ddpmlab import evaluate as E
from ddpmlab import features as FT
from ddpmlab.config import DataConfig
from ddpmlab.data import emoji as EM
from ddpmlab.data import load_dataset, resize
from ddpmlab.errors import DataError

ASSET = Path(FT.__file__).parents[1] / "assets" / "featnet_emoji.safetensors"
needs_emoji = pytest.mark.skipif(
    not (Path(EM.EMOJI_FONT).is_file() and Path(EM.EMOJI_TEST).is_file()),
    reason="needs Debian's fonts-noto-color-emoji and unicode-data (scripts/setup.sh)")


def test_the_shipped_emoji_net_file():
    """Format, architecture, classes, recorded accuracy and floor; under 1.5 MB."""
    assert ASSET.stat().st_size < 1_500_000
    net = FT.load_feature_net("emoji")
    m = net.meta
    assert m["format"] == FT.FEATNET_FORMAT and m["dataset"] == "emoji"
    assert m["arch"] == "featnet32" and net.channels == 3 and net.input_size == 32
    assert json.loads(m["class_names"]) == list(EM.EMOJI_GROUPS) and net.num_classes == 9
    assert m["test_split"] == "emoji:test" and int(m["n_test"]) == 187
    assert int(m["n_correct"]) / 187 == pytest.approx(float(m["accuracy"]), abs=5e-5)
    assert float(m["accuracy"]) >= 0.75
    floor = json.loads(m["real_vs_real"])
    assert floor["n_heldout"] == 187 and floor["n_train"] == 1683
    assert 0 < floor["heldout"]["fid"] < 10
    with torch.no_grad():
        f, logits = net.embed(torch.zeros(2, 3, 32, 32))
    assert f.shape == (2, 128) and logits.shape == (2, 9)


@pytest.mark.e2e  # over 2 s on a fresh machine: draws the 1,870 emoji (13 s), once at 64 px
@needs_emoji
def test_the_emoji_net_reads_the_heldout_emoji_at_its_recorded_accuracy():
    """Recomputed here through the extractor (prepare + embed), as ``ddpmlab eval`` reads
    samples: the file's accuracy within one image at 32 px, within 2 points at 64 px (resized
    to 32 by the net's ``prepare``)."""
    ext = FT.get_feature_extractor("emoji")
    recorded = float(ext.info["accuracy"])
    for size, tol in ((0, 1.01 / 187), (64, 0.02)):
        test = load_dataset(DataConfig(dataset="emoji", image_size=size), "test")
        assert len(test) == 187 and test.images.shape[1] == 3
        _, probs = ext(test.images, with_probs=True)
        acc = float((probs.argmax(1) == test.labels.numpy()).mean())
        assert acc == pytest.approx(recorded, abs=tol), size


def test_the_extractor_picks_the_emoji_net_for_an_emoji_config():
    """By name (what ``ddpmlab eval`` passes for a built-in), whatever the image size; grey
    is repeated to RGB, 64 px resized to 32, other channel counts refused in one line."""
    ext = FT.get_feature_extractor(DataConfig(dataset="Emoji").dataset)
    assert ext.name == "featnet:emoji" and ext.dim == 128 and ext.is_classifier
    assert ext.channels == 3 and ext.input_size == 32 and ext.class_names == list(EM.EMOJI_GROUPS)
    assert ext.info["arch"] == "featnet32" and ext.recommended_n == FT.RECOMMENDED_N_FEATNET
    g = torch.Generator().manual_seed(0)
    rgb = torch.randint(0, 256, (4, 3, 32, 32), generator=g, dtype=torch.uint8)
    f32 = ext(rgb)
    assert f32.shape == (4, 128) and f32.dtype == np.float64
    # 64 px is read as the data's own 32-px resize of it (bicubic, antialiased), not refused
    big = torch.randint(0, 256, (4, 3, 64, 64), generator=g, dtype=torch.uint8)
    assert np.array_equal(ext(big), ext(resize(big, 32)))
    grey = rgb[:, :1]
    assert np.allclose(ext(grey), ext(grey.expand(-1, 3, -1, -1)))
    with pytest.raises(DataError, match="takes 3-channel images, got 2"):
        ext(rgb[:, :2])
    assert FT.get_feature_extractor("mnist").channels == 1   # the grey nets stay grey


def test_the_share_read_as_asked():
    """``evaluate_samples(labels=...)``: the share whose argmax is the class asked for, checked
    against the net's own argmax on digits (no font needed); wrong labels read as 0 %, labels
    the classifier does not have as None, a wrong count in one line."""
    test = load_dataset(DataConfig(dataset="digits"), "test")
    x, y = test.images[:60], test.labels[:60]
    kw = {"kid_subsets": 5, "max_real": 600}
    with pytest.warns(E.SmallSampleWarning):
        out = E.evaluate_samples(x, "digits", labels=y, **kw)
    ext = FT.get_feature_extractor("digits")
    _, probs = ext(x, with_probs=True)
    hit = probs.argmax(1) == y.numpy()
    c = out["classifier"]
    assert c["as_requested"] == pytest.approx(hit.mean()) and c["as_requested"] > 0.9
    assert c["as_requested_confident"] == pytest.approx((hit & (probs.max(1) >= 0.9)).mean())
    with pytest.warns(E.SmallSampleWarning):
        wrong = E.evaluate_samples(x, "digits", labels=(y + 1) % 10, **kw)["classifier"]
    assert wrong["as_requested"] < 0.1
    with pytest.warns(E.SmallSampleWarning):
        assert E.evaluate_samples(x, "digits", labels=y + 10, **kw)["classifier"][
            "as_requested"] is None
        assert "as_requested" not in E.evaluate_samples(x, "digits", **kw)["classifier"]
    with pytest.raises(DataError, match="labels must be 60 integers"):
        E.evaluate_samples(x, "digits", labels=y[:59], **kw)


@pytest.mark.e2e  # over 2 s: the held-out emoji through the whole evaluation
@needs_emoji
def test_real_heldout_emoji_read_as_their_group_at_the_nets_accuracy():
    """The 187 held-out emoji as 'samples' asked for their own group: the share read as asked
    is the net's held-out accuracy, and their FID against the train split is the floor the file
    records (the same features, the same reference)."""
    test = load_dataset(DataConfig(dataset="emoji"), "test")
    with pytest.warns(E.SmallSampleWarning):
        out = E.evaluate_samples(test.images, "emoji", labels=test.labels, kid_subsets=10)
    net = FT.load_feature_net("emoji")
    assert out["features"]["name"] == "featnet:emoji" and out["n_real"] == 1683
    assert out["classifier"]["as_requested"] == pytest.approx(
        float(net.meta["accuracy"]), abs=1.01 / 187)
    floor = json.loads(net.meta["real_vs_real"])["heldout"]
    assert out["fid"] == pytest.approx(floor["fid"], rel=1e-3)
    assert out["precision"] == pytest.approx(floor["precision"], abs=0.02)


TINY_EMOJI = {
    "model": {"base_channels": 16, "channel_mult": [1, 2], "num_res_blocks": 1,
              "attention_resolutions": [16], "num_heads": 2, "norm_groups": 8},
    "diffusion": {"timesteps": 50},
    "data": {"dataset": "emoji"},
    "train": {"batch_size": 8, "lr": 1e-3, "warmup_steps": 2, "max_steps": 3,
              "ema_decay": 0.9, "log_every": 1, "ckpt_every": 3, "keep_last": 1,
              "device": "cpu", "precision": "fp32"},
    "sample": {"n": 4, "sampler": "ddim", "steps": 2},
}


@pytest.mark.e2e  # over 2 s: trains 3 steps on emoji, samples, scores through the CLI
@needs_emoji
def test_ddpmlab_eval_on_a_tiny_emoji_run(tmp_path, capsys):
    from ddpmlab.cli import main
    from ddpmlab.config import Config
    from ddpmlab.train import Trainer

    run = tmp_path / "emoji-run"
    Trainer(Config.from_dict(TINY_EMOJI), run, progress=False).train()
    assert main(["eval", str(run), "--n", "18", "--steps", "2", "--bpd-images", "0",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "featnet:emoji (128-d)" in printed and "real-vs-real at n=18" in printed
    out = json.loads((run / "eval.json").read_text())
    assert out["features"]["name"] == "featnet:emoji" and out["features"]["arch"] == "featnet32"
    assert out["n"] == 18 and out["n_real"] == 1683
    for key in ("fid", "kid_mean", "precision", "recall"):
        assert math.isfinite(out[key]), key
    assert out["fid"] > out["baseline"]["fid_mean"]   # 3 training steps: noise, not emoji
    c = out["classifier"]
    assert c["class_names"] == list(EM.EMOJI_GROUPS) and sum(c["class_counts"]) == 18
    assert c["accuracy"] == FT.load_feature_net("emoji").meta["accuracy"]
    assert 0.2 < c["real_confident_share"] < 1


@pytest.mark.e2e  # over 2 s: trains 3 steps on emoji, samples, scores through the CLI
@needs_emoji
def test_ddpmlab_eval_reads_a_conditional_emoji_run_as_asked(tmp_path, capsys):
    from ddpmlab.cli import main
    from ddpmlab.config import Config
    from ddpmlab.train import Trainer

    cfg = {**TINY_EMOJI, "data": {"dataset": "emoji", "conditional": "true"}}
    run = tmp_path / "emoji-cond"
    Trainer(Config.from_dict(cfg), run, progress=False).train()
    assert main(["eval", str(run), "--n", "18", "--steps", "2", "--bpd-images", "0",
                 "--no-progress"]) == 0
    assert "read as asked" in capsys.readouterr().out
    c = json.loads((run / "eval.json").read_text())["classifier"]
    hits = c["as_requested"] * 18   # groups 0..8 asked for twice each (default_labels)
    assert hits == pytest.approx(round(hits)) and 0 <= hits <= 18
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["event"] == "eval" and last["as_requested"] == c["as_requested"]
