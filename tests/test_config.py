"""Config: strict loading (unknown keys, wrong types, ranges) naming the key and the file."""

import json
import re

import pytest

from ddpmlab.config import PRESETS, Config, load_config, preset_path
from ddpmlab.errors import ConfigError


def test_defaults_are_the_papers():
    c = Config()
    assert c.diffusion.timesteps == 1000
    assert c.diffusion.schedule == "linear"
    assert c.diffusion.prediction == "eps"
    assert c.diffusion.loss_weighting == "uniform"
    assert c.sample.variance == "small"


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load(name):
    cfg = load_config(name)
    assert preset_path(name).is_file()
    assert isinstance(cfg, Config)


def test_cifar_preset_is_the_paper_model():
    m = load_config("cifar10").model
    assert (m.base_channels, m.channel_mult, m.num_res_blocks) == (128, (1, 2, 2, 2), 2)
    assert m.attention_resolutions == (16,) and m.dropout == 0.1


def test_round_trip_json(tmp_path):
    cfg = load_config("mnist")
    p = tmp_path / "c.json"
    p.write_text(cfg.to_json())
    assert Config.from_file(p) == cfg


def test_yaml_and_toml(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text("train:\n  lr: 0.001\nmodel:\n  channel_mult: [1, 2]\n")
    t = tmp_path / "c.toml"
    t.write_text("[train]\nlr = 0.001\n[model]\nchannel_mult = [1, 2]\n")
    a, b = Config.from_file(y), Config.from_file(t)
    assert a == b and a.train.lr == 0.001 and a.model.channel_mult == (1, 2)


def test_conditional_is_a_tri_state_that_reads_yaml_booleans(tmp_path):
    y = tmp_path / "c.yaml"
    for text, want in (("true", "true"), ("false", "false"), ("auto", "auto")):
        y.write_text(f"data:\n  conditional: {text}\n")
        assert Config.from_file(y).data.conditional == want
    assert Config().data.conditional == "false"          # the library default: unconditional
    assert load_config("mnist").data.conditional == "auto"  # the main job: labels if present
    assert Config().override({"data.conditional": "true"}).data.conditional == "true"


def test_int_accepted_for_float():
    assert Config.from_dict({"train": {"lr": 1}}).train.lr == 1.0


@pytest.mark.parametrize("doc, needle", [
    ({"train": {"lr_rate": 1}}, "train.lr_rate"),
    ({"trian": {}}, "trian"),
    ({"train": {"lr": "fast"}}, "train.lr"),
    ({"train": {"batch_size": 1.5}}, "train.batch_size"),
    ({"train": {"batch_size": True}}, "train.batch_size"),
    ({"model": {"channel_mult": 2}}, "model.channel_mult"),
    ({"data": {"hflip": "yes"}}, "data.hflip"),
    ({"diffusion": {"timesteps": 0}}, "diffusion.timesteps"),
    ({"train": {"lr": -1e-3}}, "train.lr"),
    ({"sample": {"steps": 2000}}, "sample.steps"),
    ({"sample": {"sampler": "lms"}}, "sample.sampler"),          # (euler is one now)
    ({"train": {"ema_decay": 1.0}}, "train.ema_decay"),
    ({"model": {"dropout": 1.5}}, "model.dropout"),
    ({"data": {"conditional": "maybe"}}, "data.conditional"),
    ({"data": {"conditional": 1}}, "data.conditional"),
    ({"train": {"phema_every": 0}}, "train.phema_every=0 must be >= 1"),
    ({"train": {"phema_sigma_rels": []}}, "train.phema_sigma_rels=[] must be one or more"),
    ({"train": {"phema_sigma_rels": [0.05, 0.05]}}, "must be one or more distinct"),
    ({"train": {"phema_sigma_rels": [0.05, 0.31]}}, "must each lie in (0, 0.3003)"),
    ({"train": {"phema_sigma_rels": [0.0]}}, "must each lie in (0, 0.3003)"),
    ({"sample": {"guide_weight": -1}}, "sample.guide_weight=-1.0 must be a finite number"),
    ({"sample": {"guide_weight": 2}}, "sample.guide_weight=2.0 needs sample.guide"),
    ({"sample": {"guidance_interval": [1.0]}}, "sample.guidance_interval=[1.0] must be []"),
    ({"sample": {"guidance_interval": [-1.0, 2.0]}}, "sample.guidance_interval=[-1.0, 2.0]"),
    ({"sample": {"guidance_interval": [0.5, 1e400]}}, "sample.guidance_interval=[0.5, inf]"),
])
def test_bad_values_name_key_and_file(tmp_path, doc, needle):
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(doc))
    with pytest.raises(ConfigError) as e:
        Config.from_file(p)
    assert needle in str(e.value) and str(p) in str(e.value)


@pytest.mark.parametrize("timesteps, size", [(10**7, "1.5 GiB"), (10**400, "over 1,000,000 GiB")])
def test_too_many_timesteps_says_what_the_schedule_would_take(timesteps, size):
    """The message's size is integer arithmetic: JSON allows 10**400, beyond any float."""
    with pytest.raises(ConfigError, match=f"diffusion.timesteps=.* must be <= 1,000,000 .*{size}"):
        Config.from_dict({"diffusion": {"timesteps": timesteps}})


def test_unparsable_and_missing_files(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        Config.from_file(p)
    with pytest.raises(ConfigError, match="not found"):
        Config.from_file(tmp_path / "nope.yaml")
    q = tmp_path / "c.ini"
    q.write_text("x")
    with pytest.raises(ConfigError, match="unknown config format"):
        Config.from_file(q)


def test_yaml_is_data_only(tmp_path):
    """The safe loader refuses Python object tags instead of running them."""
    p = tmp_path / "evil.yaml"
    p.write_text("train: !!python/object/apply:os.system ['touch pwned']\n")
    with pytest.raises(ConfigError):
        Config.from_file(p)
    assert not (tmp_path / "pwned").exists()


def test_overrides_parse_types():
    c = Config().override({"train.lr": "5e-4", "model.channel_mult": "1,2,4",
                           "data.hflip": "true", "sample.sampler": "ddim"})
    assert c.train.lr == 5e-4 and c.model.channel_mult == (1, 2, 4)
    assert c.data.hflip is True and c.sample.sampler == "ddim"
    with pytest.raises(ConfigError, match="train.nope"):
        Config().override({"train.nope": "1"})
    with pytest.raises(ConfigError, match="train.max_steps"):
        Config().override({"train.max_steps": "many"})


def test_every_preset_is_named_by_train_help_and_has_a_file():
    from ddpmlab.cli import build_parser

    train = build_parser()._subparsers._group_actions[0].choices["train"]
    help_text = next(a.help for a in train._actions if "--config" in a.option_strings)
    for name in PRESETS:
        assert name in re.split(r"[ ,()]+", help_text), name
        assert preset_path(name).is_file(), name


def test_phema_and_guidance_keys_have_their_defaults_and_round_trip():
    cfg = Config()
    assert (cfg.train.phema, cfg.train.phema_sigma_rels, cfg.train.phema_every) == \
        (False, (0.05, 0.10), 100)
    assert (cfg.sample.guide, cfg.sample.guide_weight, cfg.sample.guidance_interval) == \
        ("", 1.0, ())
    set_ = cfg.override({"train.phema": "true", "train.phema_sigma_rels": "0.04,0.2",
                         "sample.guide": "runs/small", "sample.guide_weight": "2",
                         "sample.guidance_interval": "0.3,5"})
    assert set_.train.phema_sigma_rels == (0.04, 0.2)
    assert set_.sample.guidance_interval == (0.3, 5.0)
    assert Config.from_dict(json.loads(set_.to_json())) == set_


def test_the_own_guide_step_is_its_fraction_of_the_runs_or_a_given_length():
    """round(F x max_steps), at least 1; a time budget asks the same of each candidate length
    (train.budget.RunWork); None without an "@F" guide."""
    cfg = Config().override({"train.max_steps": "850", "sample.guide": "@0.6"})
    assert cfg.own_guide_step() == 510
    assert cfg.own_guide_step(1000) == 600 and cfg.own_guide_step(1) == 1
    assert cfg.override({"sample.guide": ""}).own_guide_step(1000) is None
