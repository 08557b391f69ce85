"""Property-based tests: whatever the bytes or values, only our own error type comes out.

``Config.from_dict`` / ``Config.from_file`` raise :class:`ConfigError` or succeed; the data loaders
(.npz, image folders, CIFAR-10 batches) raise :class:`DataError` or succeed. Anything else (a
KeyError, an OverflowError, a hang building a billion class names) would reach the user as a
traceback.
"""

from __future__ import annotations

import dataclasses
import io
import os
import pickle
import tempfile
import types
import typing
import warnings
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from ddpmlab import data as D
from ddpmlab.config import SECTIONS, Config, DataConfig
from ddpmlab.errors import ConfigError, DataError

# 80 examples per property keeps the file at ~10 s; DDPMLAB_PROP_EXAMPLES=2000 searches harder.
# Every case has a time limit (DDPMLAB_PROP_DEADLINE_MS, 3 s: ~100x a typical case on 2 loaded
# cores): a hostile input that is slow to refuse fails, not only one that raises the wrong type.
# The suite draws the same examples on every run (a bug found at random once failed a CI run on
# a change that had nothing to do with it); DDPMLAB_PROP_RANDOM=1 draws new ones each run, the
# way to search for the next bug, which then becomes an @example here.
SETTINGS = settings(max_examples=int(os.environ.get("DDPMLAB_PROP_EXAMPLES", "80")),
                    deadline=int(os.environ.get("DDPMLAB_PROP_DEADLINE_MS", "3000")),
                    derandomize=os.environ.get("DDPMLAB_PROP_RANDOM", "") != "1",
                    database=None, suppress_health_check=[HealthCheck.too_slow])

# ----------------------------------------------------------------------------- configs
FIELDS = sorted({f.name for cls in SECTIONS.values() for f in dataclasses.fields(cls)})
PAIRS = [(s, f.name) for s, cls in SECTIONS.items() for f in dataclasses.fields(cls)]
scalars = (st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
           | st.sampled_from(["linear", "ddim", "eps", "auto", "cpu", "1,2", "none", 10**400,
                              -(10**400), 2**63, float("inf"), float("nan"), -0.0]))
json_values = st.recursive(scalars, lambda c: st.lists(c, max_size=4)
                           | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=12)
keys = st.sampled_from(FIELDS) | st.text(max_size=10)
section = st.dictionaries(keys, json_values, max_size=6) | json_values
random_documents = st.dictionaries(st.sampled_from(list(SECTIONS)) | st.text(max_size=8), section,
                                   max_size=5) | json_values


def _nest(items):
    doc: dict = {}
    for (sec, name), value in items:
        doc.setdefault(sec, {})[name] = value
    return doc


HUGE = st.sampled_from([10**400, -(10**400), 2**63, -(2**63) - 1])
EDGE_FLOATS = st.sampled_from([float("inf"), float("-inf"), float("nan"), -0.0, 1e308, 5e-324])


def _typed(sec: str, name: str) -> st.SearchStrategy:
    """Values of the field's own type (extremes included): they get past the type checks."""
    typ = typing.get_type_hints(SECTIONS[sec])[name]
    if typing.get_origin(typ) in (typing.Union, types.UnionType):     # "X | None": X, or null
        inner = next(a for a in typing.get_args(typ) if a is not type(None))
        return st.none() | {float: st.floats() | st.integers() | HUGE | EDGE_FLOATS}[inner]
    if typing.get_origin(typ) is tuple:
        return st.lists(st.integers() | HUGE, max_size=4)
    return {int: st.integers() | HUGE, float: st.floats() | st.integers() | HUGE | EDGE_FLOATS,
            bool: st.booleans(), str: st.text(max_size=8)}[typ]


def _nest(items):
    doc: dict = {}
    for (sec, name), value in items:
        doc.setdefault(sec, {})[name] = value
    return doc


# Known section.key pairs, with values of their own type or anything: these get past the key
# checks to the type and range checks.
pair_values = st.sampled_from(PAIRS).flatmap(
    lambda p: st.tuples(st.just(p), _typed(*p) | json_values))
known_key_documents = st.lists(pair_values, max_size=5).map(_nest)
documents = random_documents | known_key_documents


@pytest.mark.e2e  # over 2 s: a property search
@SETTINGS
@given(documents)
@example({"model": {"dropout": 10**400}})          # found by this test: was an OverflowError
@example({"diffusion": {"timesteps": 10**400}})    # found by CI: the size in the message overflowed
def test_from_dict_raises_only_config_error(doc):
    try:
        cfg = Config.from_dict(doc)
    except ConfigError:
        return
    assert isinstance(cfg, Config)


@SETTINGS
@given(st.sampled_from([f"{s}.{n}" for s, n in PAIRS]),
       st.text(max_size=12) | st.sampled_from(["1e999", "nan", "-inf", "9" * 400, "1,,2", "[]"]))
def test_override_raises_only_config_error(key, text):
    try:
        Config().override({key: text})
    except ConfigError:
        pass


YAML_ALPHABET = "trainmodelsampl_.:-[]{},#'\"!&*|>?%@` \n\t0123456789eE+"
config_bytes = st.binary(max_size=300) | st.text(YAML_ALPHABET, max_size=200).map(str.encode)


@SETTINGS
@given(config_bytes, st.sampled_from([".yaml", ".yml", ".toml", ".json"]))
def test_from_file_raises_only_config_error(raw, suffix):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / f"c{suffix}"
        p.write_bytes(raw)
        try:
            Config.from_file(p)
        except ConfigError as e:
            assert str(p) in str(e)


# ----------------------------------------------------------------------------- data loaders
def _load(path: Path, split: str = "train"):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return D.load_dataset(DataConfig(dataset=str(path)), split)
        except DataError:
            return None


@SETTINGS
@given(st.binary(max_size=2000))
def test_npz_random_bytes(raw):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.npz"
        p.write_bytes(raw)
        _load(p)


dtypes = st.sampled_from([np.uint8, np.int8, np.int64, np.uint64, np.float32, np.bool_])
arrays = dtypes.flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=5,
                                                                  min_side=0, max_side=4)))
names = st.lists(st.text(max_size=4), max_size=4).map(lambda xs: np.array(xs, dtype=str))
random_members = st.dictionaries(st.sampled_from(["images", "arr_0", "labels", "class_names", "x"]),
                                 arrays | names, max_size=4)
# Valid images with any labels / class names: these get past the image checks to the labels.
label_values = st.lists(st.integers(0, 12) | st.sampled_from([-1, 2**31, 2**40, 2**63 - 1]),
                        min_size=3, max_size=3)
labels = (dtypes.flatmap(lambda dt: hnp.arrays(dt, st.sampled_from([(3,), (2,), (3, 1), ()])))
          | st.tuples(label_values, st.sampled_from([np.int64, np.uint64, np.int32]))
          .map(lambda a: np.array(a[0]).astype(a[1])))
labelled_members = st.fixed_dictionaries(
    {"images": st.just(np.zeros((3, 4, 4, 1), np.uint8)), "labels": labels},
    optional={"class_names": names})
members = random_members | labelled_members


@SETTINGS
@given(members)
@example({"images": np.zeros((3, 4, 4, 1), np.uint8),   # found by this test: a label of 2**64-1
          "labels": np.array([0, 3, 2**64 - 1], np.uint64)})  # built 2**64 class names
def test_npz_random_arrays(content):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "x.npz"
        np.savez(p, **content)
        out = _load(p)
        if out is not None:
            assert out.images.dtype.is_floating_point is False and out.images.ndim == 4


def _encoded(fmt: str) -> bytes:
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


GOOD = {".png": _encoded("PNG"), ".jpg": _encoded("JPEG")}


@st.composite
def image_bytes(draw):
    suffix = draw(st.sampled_from(sorted(GOOD)))
    if draw(st.booleans()):
        return suffix, draw(st.binary(max_size=500))
    raw = bytearray(GOOD[suffix])
    for _ in range(draw(st.integers(1, 6))):      # flip bytes (headers included)
        i = draw(st.integers(0, len(raw) - 1))
        raw[i] = draw(st.integers(0, 255))
    cut = draw(st.integers(1, len(raw)))          # and maybe truncate
    return suffix, bytes(raw[:cut])


@SETTINGS
@given(image_bytes())
def test_image_folder_random_bytes(case):
    suffix, raw = case
    with tempfile.TemporaryDirectory() as d:
        Path(d, "ok.png").write_bytes(GOOD[".png"])
        Path(d, f"x{suffix}").write_bytes(raw)
        _load(Path(d))


batch_values = arrays | st.lists(st.integers(-3, 12), max_size=5) | st.text(max_size=5) \
    | st.just(np.zeros((2, 3072), np.uint8)) | st.integers()
batches = st.dictionaries(st.sampled_from([b"data", b"labels", "data", "labels", b"batch_label"]),
                          batch_values, max_size=4) | batch_values


@SETTINGS
@given(batches, st.integers(2, 5))
def test_cifar_python_batch_random_content(batch, protocol):
    with tempfile.TemporaryDirectory() as d:
        Path(d, "data_batch_1").write_bytes(pickle.dumps(batch, protocol=protocol))
        _load(Path(d))


@SETTINGS
@given(st.binary(max_size=800), st.sampled_from(["data_batch_1", "data_batch_1.bin"]))
def test_cifar_batch_random_bytes(raw, name):
    with tempfile.TemporaryDirectory() as d:
        Path(d, name).write_bytes(raw)
        _load(Path(d))


@pytest.mark.parametrize("label", [2**40, 2**63 + 5])
def test_npz_huge_label_is_refused_quickly(tmp_path, label):
    """A label value sets the class count; a huge one must not build a billion class names."""
    p = tmp_path / "x.npz"
    np.savez(p, images=np.zeros((2, 4, 4, 1), np.uint8), labels=np.array([0, label], np.uint64))
    with pytest.raises(DataError, match="labels"):
        D.load_dataset(DataConfig(dataset=str(p)))


# ----------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def checkpoint_dir(tmp_path_factory) -> Path:
    """One real checkpoint folder of a tiny model (what every case below damages a copy of)."""
    import torch

    from ddpmlab.train.checkpoint import optimizer_to_tensors, save_checkpoint

    net = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    t, meta = optimizer_to_tensors(opt)
    run = tmp_path_factory.mktemp("ckpt")
    return save_checkpoint(run, 1, {
        "model.safetensors": net.state_dict(), "ema.safetensors": net.state_dict(),
        "optimizer.safetensors": t, "optimizer.json": meta,
        "rng.safetensors": {"train_generator": torch.Generator().get_state(),
                            "torch_cpu": torch.get_rng_state()},
        "state.json": {"format_version": 1, "step": 1, "skipped_steps": 0}})


def _load_damaged(ckpt: Path, name: str, raw: bytes) -> None:
    """Copy ``ckpt``, replace ``name`` by ``raw``, read it as ``--resume`` does (the files, then
    the optimizer state into an optimizer of the same model): CheckpointError or success."""
    import shutil

    import torch

    from ddpmlab.errors import CheckpointError
    from ddpmlab.train.checkpoint import load_checkpoint, optimizer_from_tensors

    with tempfile.TemporaryDirectory() as d:
        copy = Path(shutil.copytree(ckpt, Path(d) / ckpt.name))
        (copy / name).write_bytes(raw)
        try:
            files = load_checkpoint(copy)
            net = torch.nn.Linear(3, 2)
            net.load_state_dict(files["model.safetensors"])
            optimizer_from_tensors(torch.optim.AdamW(net.parameters()),
                                   files["optimizer.safetensors"], files["optimizer.json"])
            # what the trainer reads next (Trainer._load_latest)
            torch.Generator().set_state(files["rng.safetensors"]["train_generator"])
            int(files["state.json"]["step"]), int(files["state.json"].get("skipped_steps", 0))
        except CheckpointError:
            pass
        except RuntimeError as e:  # load_state_dict's own "size mismatch" / "missing keys"
            assert "state_dict" in str(e), e


CHECKPOINT_FILES = ["model.safetensors", "ema.safetensors", "optimizer.safetensors",
                    "optimizer.json", "rng.safetensors", "state.json"]


@pytest.mark.e2e  # over 2 s: a property search
@SETTINGS
@given(st.binary(max_size=600), st.sampled_from(CHECKPOINT_FILES))
def test_checkpoint_random_bytes(checkpoint_dir, raw, name):
    _load_damaged(checkpoint_dir, name, raw)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4), max_leaves=12)
state_docs = st.fixed_dictionaries({}, optional={
    "format_version": st.sampled_from([1, 2, "1", None]), "step": json_values,
    "skipped_steps": json_values}) | json_values
opt_docs = st.fixed_dictionaries({}, optional={
    "param_groups": json_values | st.just([{"lr": 1e-3, "params": [0, 1]}]),
    "scalars": json_values | st.just({"0": {"step": 1}})}) | json_values


@pytest.mark.e2e  # over 1.3 s: a property search
@SETTINGS
@given(state_docs, opt_docs)
def test_checkpoint_random_json(checkpoint_dir, state, opt):
    import json

    _load_damaged(checkpoint_dir, "state.json", json.dumps(state).encode())
    _load_damaged(checkpoint_dir, "optimizer.json", json.dumps(opt).encode())


# ----------------------------------------------------------------------------- diffusers import
# Every foreign config the import reads (unet/config.json, scheduler/scheduler_config.json),
# with random types, sizes and nesting in place of its values, as whole documents or as bytes:
# one DDPMLabError (a line naming the file) or a run, never another exception, each in time.
@pytest.fixture(scope="module")
def diffusers_folder(tmp_path_factory):
    """A tiny diffusers pipeline folder written by ddpmlab's own exporter's functions."""
    import json

    from ddpmlab.config import DiffusionConfig, ModelConfig
    from ddpmlab.interop.diffusers import (
        WEIGHTS,
        model_config_to_diffusers,
        scheduler_config,
        to_diffusers_state,
    )
    from ddpmlab.io import save_tensors
    from ddpmlab.nn import UNet

    m = ModelConfig(base_channels=8, channel_mult=(1, 2), num_res_blocks=1, image_size=8,
                    attention_resolutions=(4,), num_heads=1, norm_groups=4, num_classes=2)
    net = UNet(m)
    root = tmp_path_factory.mktemp("diffusers") / "pipe"
    (root / "unet").mkdir(parents=True)
    (root / "scheduler").mkdir()
    ucfg = model_config_to_diffusers(m, net)
    scfg = scheduler_config(Config(model=m, diffusion=DiffusionConfig(timesteps=50)))
    (root / "unet" / "config.json").write_text(json.dumps(ucfg))
    (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scfg))
    save_tensors(root / "unet" / f"{WEIGHTS}.safetensors",
                 to_diffusers_state(net.state_dict(), net))
    from ddpmlab.interop import import_diffusers

    import_diffusers(root, root.parent / "warm-up")   # (the first import's one-off costs)
    return root, {"unet/config.json": ucfg, "scheduler/scheduler_config.json": scfg}


foreign_values = st.recursive(
    scalars | st.sampled_from([0, -1, 1, 2**31, 10**9, "8", "epsilon", [0, 0], [100000, 200000],
                               "DownBlock2D", "AttnDownBlock2D"]),
    lambda c: st.lists(c, max_size=5) | st.dictionaries(st.text(max_size=6), c, max_size=4),
    max_leaves=12)


@st.composite
def foreign_configs(draw):
    """(file, its new bytes): one to three of its keys given random values, a random key
    added, the whole document random, deep nesting, or random bytes."""
    import json

    name = draw(st.sampled_from(["unet/config.json", "scheduler/scheduler_config.json"]))
    kind = draw(st.sampled_from(["values", "values", "values", "document", "nested", "bytes"]))
    if kind == "bytes":
        return name, draw(st.binary(max_size=300))
    if kind == "nested":
        depth = draw(st.integers(50, 5000))
        return name, ("[" * depth + "]" * depth).encode()
    if kind == "document":
        return name, json.dumps(draw(foreign_values)).encode()
    return name, None   # filled in by the test from the real config (keys drawn there)


@pytest.mark.e2e  # over 2 s: a property search
@SETTINGS
@given(foreign_configs(), st.data())
@example(("unet/config.json", b'{"layers_per_block": 1000000000}'), None)
@example(("unet/config.json", b'{"a": 1, "a": 2}'), None)
@example(("scheduler/scheduler_config.json", b'{"num_train_timesteps": ' + b"9" * 5000 + b"}"),
         None)
def test_diffusers_import_raises_only_ddpmlab_errors(diffusers_folder, case, data):
    import json
    import shutil

    from ddpmlab.errors import DDPMLabError
    from ddpmlab.interop.diffusers import _read_import  # (everything import reads and checks)

    root, configs = diffusers_folder
    name, raw = case
    if raw is None:
        doc = dict(configs[name])
        for key in data.draw(st.lists(st.sampled_from(sorted(doc)) | st.text(max_size=8),
                                      min_size=1, max_size=3)):
            doc[key] = data.draw(foreign_values)
        raw = json.dumps(doc).encode()
    with tempfile.TemporaryDirectory() as d:
        src = Path(shutil.copytree(root, Path(d) / "pipe"))
        (src / name).write_bytes(raw)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                _read_import(src, "")
            except DDPMLabError as e:
                assert len(str(e).splitlines()) == 1 and str(src) in str(e), e
