"""Tests of ddpmlab.data: built-ins, image folders, .npz, CIFAR-10 (incl. a malicious pickle)."""

from __future__ import annotations

import gzip
import os
import pickle
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ddpmlab import data as D
from ddpmlab.config import DataConfig
from ddpmlab.errors import DataError


def cfg(dataset: str | Path = "mnist", **kw) -> DataConfig:
    return DataConfig(dataset=str(dataset), **kw)


# --------------------------------------------------------------------------- value ranges
def test_to_model_range_and_round_trip():
    u8 = torch.arange(256, dtype=torch.uint8)
    x = D.to_model_range(u8)
    assert x.dtype == torch.float32
    assert x.min().item() == -1.0 and x.max().item() == 1.0
    assert torch.all(x[1:] > x[:-1])
    assert torch.equal(D.to_uint8(x), u8)                      # exact inverse on 0..255
    assert torch.equal(D.to_uint8(x.double()), u8)
    assert torch.equal(D.to_uint8(torch.tensor([-3.0, 5.0])), torch.tensor([0, 255],
                                                                          dtype=torch.uint8))
    with pytest.raises(DataError, match="uint8"):
        D.to_model_range(torch.zeros(2))


# --------------------------------------------------------------------------- built-ins
def test_mnist_splits_shapes_labels():
    train, test, full = (D.load_dataset(cfg(), s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (4500, 500, 5000)
    for d in (train, test, full):
        assert d.images.dtype == torch.uint8 and d.shape == (1, 28, 28)
        assert d.labels.dtype == torch.int64 and d.num_classes == 10
        assert d.class_names == [str(i) for i in range(10)]
    assert torch.bincount(train.labels).tolist() == [450] * 10
    assert torch.bincount(test.labels).tolist() == [50] * 10
    assert int(full.images.max()) == 255 and 0.05 < full.to_float().gt(0).float().mean() < 0.5
    # test = the last 50 digits of each class, in file order (the file is sorted by label)
    for k in range(10):
        idx = torch.nonzero(full.labels == k).flatten()
        assert torch.equal(test.images[test.labels == k], full.images[idx[-50:]])
        assert torch.equal(train.images[train.labels == k], full.images[idx[:-50]])
    assert "mnist:train" in D.describe(train) and "4500" in D.describe(train)


def test_spread_takes_evenly_spaced_images_so_a_sorted_split_gives_every_class_its_share():
    test = D.load_dataset(cfg(), "test")             # sorted by digit, 50 of each
    assert torch.bincount(test.labels[:100], minlength=10).tolist() == [50, 50] + [0] * 8
    some = test.spread(100)
    assert torch.bincount(some.labels).tolist() == [10] * 10
    assert torch.equal(some.images, test.images[::5]) and some.class_names == test.class_names
    assert torch.equal(test.spread(500).images, test.images)
    unlabelled = D.ImageData(test.images[:7], None, [], "x")
    assert unlabelled.spread(3).labels is None
    assert torch.equal(unlabelled.spread(3).images, test.images[[0, 2, 4]])
    for bad in (0, 8, True, 2.0):
        with pytest.raises(DataError, match="cannot spread"):
            unlabelled.spread(bad)


def test_mnist_cached_and_copies():
    D.load_dataset(cfg(), "all")
    t = time.perf_counter()
    a = D.load_dataset(cfg(), "all")
    assert time.perf_counter() - t < 0.5
    a.images.zero_()                                            # mutating a result ...
    assert D.load_dataset(cfg(), "all").images.max() == 255     # ... never touches the cache


def test_mnist_resize_and_rgb():
    d = D.load_dataset(cfg(image_size=32, channels=3), "test")
    assert d.shape == (3, 32, 32) and len(d) == 500
    assert torch.equal(d.images[:, 0], d.images[:, 1]) and torch.equal(d.images[:, 1],
                                                                       d.images[:, 2])


def test_digits():
    train, test, full = (D.load_dataset(cfg("digits"), s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (1617, 180, 1797)
    assert full.shape == (1, 8, 8) and int(full.images.max()) == 255
    assert torch.equal(test.images, full.images[::10])
    assert full.labels[:10].tolist() == list(range(10))
    # first row of sklearn's digits: 0,0,5,13,9,1,0,0 -> rint(v * 255 / 16)
    assert full.images[0, 0, 0].tolist() == [0, 0, 80, 207, 143, 16, 0, 0]


@pytest.mark.e2e  # over 2 s: reads the whole digits set twice
def test_digits_fallback_matches_sklearn(monkeypatch):
    """The direct CSV read equals sklearn.datasets.load_digits (the fallback path)."""
    fast = D._digits_all()
    monkeypatch.setattr("ddpmlab.data.builtins._digits_csv", lambda: None)  # where _digits_all looks
    D._digits_all.cache_clear()
    try:
        slow = D._digits_all()
    finally:
        D._digits_all.cache_clear()
    assert np.array_equal(fast[0], slow[0]) and np.array_equal(fast[1], slow[1])


def test_unknown_dataset_and_split():
    with pytest.raises(DataError, match="no-such-thing"):
        D.load_dataset(cfg("no-such-thing"))
    with pytest.raises(DataError, match="'valid'"):
        D.load_dataset(cfg(), "valid")


# --------------------------------------------------------------------------- fashion-mnist
FASHION_DIR = Path(os.environ.get(D.FASHION_MNIST_ENV) or D.FASHION_MNIST_DIR)


@pytest.mark.skipif(not (FASHION_DIR / "train-images-idx3-ubyte.gz").exists()
                    and not (FASHION_DIR / "train-images-idx3-ubyte").exists(),
                    reason=f"Fashion-MNIST not installed in {FASHION_DIR} "
                           "(apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_installed():
    train, test = D.load_dataset(cfg("fashion-mnist"), "train"), D.load_dataset(
        cfg("fashion-mnist"), "test")
    assert (len(train), len(test)) == (60000, 10000)
    assert train.shape == (1, 28, 28) and train.class_names[0] == "T-shirt/top"
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_fashion_mnist_missing_dir(tmp_path, monkeypatch):
    monkeypatch.setenv(D.FASHION_MNIST_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as e:
        D.load_dataset(cfg("fashion-mnist"))
    assert "nowhere" in str(e.value) and "folder/.npz" in str(e.value)


def _idx(arr: np.ndarray) -> bytes:
    head = bytes([0, 0, 8, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return head + arr.astype(np.uint8).tobytes()


def test_fashion_mnist_idx_parser(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    tr, te = rng.integers(0, 256, (3, 28, 28)), rng.integers(0, 256, (2, 28, 28))
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx(tr)))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(np.array([0, 9, 4]))))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx(te))           # plain, not gzipped
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(_idx(np.array([1, 2])))
    monkeypatch.setenv(D.FASHION_MNIST_ENV, str(tmp_path))
    d = D.load_dataset(cfg("fashion-mnist"), "all")
    assert len(d) == 5 and d.labels.tolist() == [0, 9, 4, 1, 2] and d.num_classes == 10
    assert np.array_equal(d.images[:3, 0].numpy(), tr) and np.array_equal(d.images[3:, 0], te)

    bad = tmp_path / "bad"
    bad.mkdir()
    for f in tmp_path.glob("t10k-*"):
        (bad / f.name).write_bytes(f.read_bytes())
    (bad / "t10k-images-idx3-ubyte").write_bytes(_idx(te)[:-10])         # truncated
    monkeypatch.setenv(D.FASHION_MNIST_ENV, str(bad))
    with pytest.raises(DataError, match="t10k-images-idx3-ubyte"):
        D.load_dataset(cfg("fashion-mnist"), "test")


# --------------------------------------------------------------------------- image folders
def _img(path: Path, size: tuple[int, int], mode: str, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode).save(path)
    return path


def _class_folder(root: Path) -> Path:
    _img(root / "cat" / "a.png", (20, 24), "RGB", 1)
    _img(root / "cat" / "deeper" / "b.JPG", (30, 18), "L", 2)
    _img(root / "dog" / "c.jpeg", (16, 16), "RGB", 3)
    _img(root / "dog" / "d.png", (40, 17), "L", 4)
    return root


@pytest.mark.parametrize("channels", [1, 3])
def test_folder_classes_resize_channels(tmp_path, channels):
    d = D.load_dataset(cfg(_class_folder(tmp_path), image_size=16, channels=channels), "train")
    assert d.images.shape == (4, channels, 16, 16) and d.images.dtype == torch.uint8
    assert d.class_names == ["cat", "dog"] and d.labels.tolist() == [0, 0, 1, 1]
    assert d.num_classes == 2
    # "test" = "all" = "train" without a train/ + test/ layout
    assert torch.equal(D.load_dataset(cfg(tmp_path, image_size=16, channels=channels),
                                      "test").images, d.images)
    # the 16x16 file is untouched by the resize
    c = np.asarray(Image.open(tmp_path / "dog" / "c.jpeg").convert("RGB" if channels == 3
                                                                     else "L"))
    got = d.images[2].permute(1, 2, 0).numpy().squeeze()
    assert np.abs(got.astype(int) - c).max() <= 1


def test_folder_mixed_sizes_are_resized_and_cropped_said_once(tmp_path):
    """data.image_size 0 on mixed sizes: the most common shorter side (ties: the smaller), each
    image resized and centre-cropped to it, one warning naming the sizes and the key."""
    _class_folder(tmp_path)                     # 20x24, 30x18, 16x16, 40x17: sides 20, 18, 16, 17
    _img(tmp_path / "dog" / "e.png", (17, 33), "L", 5)   # 17 now the most common shorter side
    with pytest.warns(UserWarning) as w:
        d = D.load_dataset(cfg(tmp_path, channels=3))
    msgs = [str(x.message) for x in w]
    assert len(msgs) == 1 and "5 image size(s)" in msgs[0] and "resized to 17" in msgs[0]
    assert "data.image_size" in msgs[0]
    assert d.images.shape == (5, 3, 17, 17)
    # exactly what data.image_size=17 gives, with no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(D.load_dataset(cfg(tmp_path, channels=3, image_size=17)).images,
                           d.images)


def test_folder_large_or_non_square_images_come_down_to_at_most_128(tmp_path):
    for i in range(2):
        _img(tmp_path / f"{i}.png", (300, 200), "RGB", i)       # one size, not square
    with pytest.warns(UserWarning, match=r"resized to 128 .*most common shorter side is 200; "
                                         r"at most 128 unless asked"):
        assert D.load_dataset(cfg(tmp_path)).shape == (3, 128, 128)
    for i in range(2):
        _img(tmp_path / f"{i}.png", (150, 150), "RGB", i)       # one square size above 128
    with pytest.warns(UserWarning, match=r"resized to 128"):
        assert D.load_dataset(cfg(tmp_path)).shape == (3, 128, 128)
    for i in range(2):
        _img(tmp_path / f"{i}.png", (64, 64), "RGB", i)         # one square size: native
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert D.load_dataset(cfg(tmp_path)).shape == (3, 64, 64)


def test_folder_unlabelled_native(tmp_path):
    for i in range(3):
        _img(tmp_path / f"{i}.png", (12, 12), "L", i)
    d = D.load_dataset(cfg(tmp_path))
    assert d.labels is None and d.class_names == [] and d.num_classes == 0
    assert d.shape == (1, 12, 12)
    assert "unlabelled" in D.describe(d)


def test_folder_mixed_gray_rgb_trains_as_rgb_said_once(tmp_path):
    _img(tmp_path / "g.png", (8, 8), "L")
    _img(tmp_path / "c.png", (8, 8), "RGB")
    with pytest.warns(UserWarning, match=r"1 grayscale and 1 colour images: all are used as "
                                         r"RGB \(set data.channels=1"):
        d = D.load_dataset(cfg(tmp_path))
    assert d.shape == (3, 8, 8)
    with warnings.catch_warnings():  # what data.channels=3 gives, without a warning
        warnings.simplefilter("error")
        assert torch.equal(D.load_dataset(cfg(tmp_path, channels=3)).images, d.images)
        assert D.load_dataset(cfg(tmp_path, channels=1)).shape == (1, 8, 8)
    g = d.images[sorted(["g", "c"]).index("g")]
    assert torch.equal(g[0], g[1]) and torch.equal(g[1], g[2])   # grey repeated


def test_folder_modes_converted(tmp_path):
    rgba = Image.new("RGBA", (8, 8), (255, 0, 0, 0))               # fully transparent red
    rgba.save(tmp_path / "rgba.png")
    Image.new("P", (8, 8), 3).save(tmp_path / "pal.gif")           # default palette: grey
    Image.new("I;16", (8, 8), 65535).save(tmp_path / "deep.png")
    d = D.load_dataset(cfg(tmp_path, channels=3))
    by_name = dict(zip(["deep", "pal", "rgba"], d.images, strict=True))
    assert by_name["rgba"].eq(255).all()                            # composited onto white
    assert by_name["deep"].eq(255).all()                            # 16-bit scaled to 8


def test_folder_unreadable_files_are_skipped_up_to_a_share_then_refused(tmp_path):
    good = _img(tmp_path / "a00.png", (16, 16), "RGB")
    for i in range(1, 10):
        _img(tmp_path / f"a{i:02d}.png", (16, 16), "RGB", i)
    (tmp_path / "broken.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.warns(UserWarning, match=r"skipped 1 of 11 image files cannot be decoded "
                                         r"\(at most 10% are skipped\): broken.png \("):
        assert len(D.load_dataset(cfg(tmp_path))) == 10
    (tmp_path / "fake.jpg").write_text("not a JPEG")             # 2 of 12: refused
    with pytest.raises(DataError, match=r"2 of 12 image files cannot be decoded, more than 10%: "
                                        r"refused") as e:
        D.load_dataset(cfg(tmp_path))
    assert "broken.png" in str(e.value) and "fake.jpg" in str(e.value)
    for i in range(4):                                           # the list stops at three names
        (tmp_path / f"z{i}.png").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"and 3 more$"):
        D.load_dataset(cfg(tmp_path))


def test_folder_corrupt_png_alone_is_refused(tmp_path):
    good = _img(tmp_path / "good.png", (32, 32), "RGB")
    (tmp_path / "broken.png").write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DataError, match="broken.png"):
        D.load_dataset(cfg(tmp_path))
    (tmp_path / "broken.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match="broken.png"):
        D.load_dataset(cfg(tmp_path))


def test_folder_skips_non_images_with_one_warning(tmp_path):
    _img(tmp_path / "a.png", (8, 8), "L")
    _img(tmp_path / "b.png", (8, 8), "L")
    (tmp_path / "notes.txt").write_text("hello")
    (tmp_path / "labels.csv").write_text("1,2")
    (tmp_path / ".DS_Store").write_bytes(b"\0")                     # hidden: ignored silently
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        d = D.load_dataset(cfg(tmp_path))
    assert len(d) == 2
    msgs = [str(x.message) for x in w]
    assert len(msgs) == 1 and "skipped 2 file(s)" in msgs[0]


def test_folder_empty(tmp_path):
    with pytest.raises(DataError, match="no images") as e:
        D.load_dataset(cfg(tmp_path))
    assert str(tmp_path) in str(e.value)
    (tmp_path / "readme.txt").write_text("x")
    with pytest.warns(UserWarning, match="skipped 1"), pytest.raises(DataError, match="no images"):
        D.load_dataset(cfg(tmp_path))


def test_folder_top_level_and_subfolders_is_ambiguous(tmp_path):
    _img(tmp_path / "loose.png", (8, 8), "L")
    _img(tmp_path / "cls" / "x.png", (8, 8), "L")
    with pytest.raises(DataError, match="loose.png"):
        D.load_dataset(cfg(tmp_path))


def test_folder_train_test_layout(tmp_path):
    _img(tmp_path / "train" / "a" / "1.png", (8, 8), "L")
    _img(tmp_path / "train" / "a" / "2.png", (8, 8), "L")
    _img(tmp_path / "train" / "b" / "3.png", (8, 8), "L")
    _img(tmp_path / "test" / "b" / "4.png", (8, 8), "L")
    with pytest.warns(UserWarning, match=r"1 class folder\(s\) with one image or none \(b\)"):
        sizes = {s: len(D.load_dataset(cfg(tmp_path), s)) for s in ("train", "test", "all")}
    assert sizes == {"train": 3, "test": 1, "all": 4}
    test = D.load_dataset(cfg(tmp_path), "test")
    assert test.class_names == ["a", "b"] and test.labels.tolist() == [1]


# --------------------------------------------------------------------------- a user's folder
# Issue 32: each kind of bad input a user's folder holds, built with Pillow; RELIABILITY.md
# "Your own images" names these tests.
def test_folder_palette_cmyk_16bit_and_transparent_images(tmp_path):
    red = (200, 30, 40)
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg")     # red in CMYK
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, *red] + [0] * 762)
    pal.save(tmp_path / "pal.png")                                              # colour palette
    clear = Image.new("P", (8, 8), 0)
    clear.putpalette([*red, 0, 0, 0] + [0] * 762)
    clear.save(tmp_path / "pal_clear.png", transparency=0)                      # index 0 clear
    Image.new("I;16", (8, 8), 32896).save(tmp_path / "g16.png")                 # 16-bit grey
    Image.new("LA", (8, 8), (0, 0)).save(tmp_path / "la.png")                   # clear grey
    Image.new("RGBA", (8, 8), (*red, 128)).save(tmp_path / "rgba.png")          # half clear
    with pytest.warns(UserWarning, match="2 grayscale and 4 colour"):
        d = D.load_dataset(cfg(tmp_path))
    px = {n: tuple(x[:, 4, 4].tolist()) for n, x in zip(
        ["cmyk", "g16", "la", "pal", "pal_clear", "rgba"], d.images, strict=True)}
    assert px["cmyk"][0] > 200 and px["cmyk"][1] < 40 and px["cmyk"][2] < 40
    assert px["pal"] == red
    assert px["pal_clear"] == (255, 255, 255)                 # transparency onto white
    assert px["la"] == (255, 255, 255)
    assert px["g16"] == (128, 128, 128)                       # 32896 / 257 = 128
    # red at alpha 128 over white: 255 + (c - 255) * 128 / 255 (Pillow's integer compositing)
    assert all(abs(v - (255 + (c - 255) * 128 / 255)) <= 1
               for v, c in zip(px["rgba"], red, strict=True))


def test_folder_animated_gif_gives_its_first_frame(tmp_path):
    frames = [Image.new("RGB", (8, 8), c) for c in [(255, 0, 0), (0, 0, 255), (0, 255, 0)]]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:],
                   duration=50, loop=0)
    assert Image.open(tmp_path / "anim.gif").n_frames == 3
    x = D.load_dataset(cfg(tmp_path)).images[0]
    assert x.shape == (3, 8, 8) and tuple(x[:, 4, 4].tolist()) == (255, 0, 0)


def test_folder_exif_orientation_is_applied(tmp_path):
    a = np.zeros((8, 12, 3), np.uint8)                       # 12 wide, 8 high
    a[:, :6] = (255, 0, 0)                                   # left half red, right half black
    exif = Image.Exif()
    exif[0x0112] = 6                                         # "rotate 90 CW to display"
    Image.fromarray(a).save(tmp_path / "turned.png", exif=exif)
    Image.fromarray(a).save(tmp_path / "plain.png")
    d = D.load_dataset(cfg(tmp_path, image_size=8))
    plain, turned = d.images[0], d.images[1]
    # displayed upright the turned image is 8 wide, 12 high, red on top: its centre crop is the
    # middle 8 rows, red above the centre and black below
    assert turned[0, 0, 4] == 255 and turned[0, 7, 4] == 0
    assert plain[0, 4, 0] == 255 and plain[0, 4, 7] == 0    # not turned: red on the left


def test_folder_hidden_files_and_folders_are_ignored(tmp_path):
    _img(tmp_path / "cat" / "a.png", (8, 8), "RGB")
    _img(tmp_path / "dog" / "b.png", (8, 8), "RGB")
    _img(tmp_path / "dog" / "c.png", (8, 8), "RGB")
    (tmp_path / "cat" / "._a.png").write_bytes(b"\0\5\x16\x07AppleDouble")   # macOS metadata
    (tmp_path / ".DS_Store").write_bytes(b"\0")
    _img(tmp_path / ".ipynb_checkpoints" / "x.png", (8, 8), "RGB")           # no class
    _img(tmp_path / "dog" / ".thumbs" / "y.png", (8, 8), "RGB")
    with pytest.warns(UserWarning) as w:                   # the only warning: cat's one image
        d = D.load_dataset(cfg(tmp_path))
    assert [str(x.message).split(": ", 1)[1] for x in w] == [
        "1 class folder(s) with one image or none (cat): a conditional model can at best copy "
        "that image"]
    assert len(d) == 3 and d.class_names == ["cat", "dog"] and d.labels.tolist() == [0, 1, 1]


def test_emoji_draws_the_first_n_and_caches_them(tmp_path, monkeypatch):
    """--dataset emoji on its first 30 glyphs: colour, 9 groups, the held-out split, the
    cache written once and reused, a damaged cache drawn again."""
    from ddpmlab.data import emoji as E

    if not (Path(E.EMOJI_FONT).is_file() and Path(E.EMOJI_TEST).is_file()):
        pytest.skip("needs Debian's fonts-noto-color-emoji and unicode-data (scripts/setup.sh)")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(E, "_MEMORY", {})
    entries = E.emoji_list(E.EMOJI_TEST)
    assert len(entries) == 1870 and len(E.emoji_list(E.EMOJI_TEST, skin_tones=True)) == 3655
    assert [sum(e.group == g for e in entries) for g in range(9)] == \
        [166, 363, 152, 133, 218, 85, 261, 223, 269]
    assert entries[0].name == "grinning face" and entries[-1].group == 8   # a flag
    images, labels, groups = E.load_emoji("all", 0, limit=30)
    assert images.shape == (30, 3, 32, 32) and images.dtype == np.uint8 and len(groups) == 9
    assert labels.tolist() == [0] * 30                        # the file starts with smileys
    assert images[:, :, 0, 0].min() == 255                    # white around each glyph
    assert (images[:, 0].astype(int) - images[:, 2]).mean() > 30   # yellow faces: R > B
    (cache,) = (tmp_path / "ddpmlab").glob("emoji-32px-30-*.npz")
    stamp = cache.stat().st_mtime_ns
    monkeypatch.setattr(E, "_MEMORY", {})
    monkeypatch.setattr(E, "render_emoji", lambda *a: pytest.fail("drawn again"))
    again, _, _ = E.load_emoji("all", 0, limit=30)            # read back, not drawn
    assert np.array_equal(again, images) and cache.stat().st_mtime_ns == stamp
    test, _, _ = E.load_emoji("test", 0, limit=30)
    train, _, _ = E.load_emoji("train", 0, limit=30)
    assert np.array_equal(test, images[::10]) and len(train) == 27
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(E, "_MEMORY", {})
    cache.write_bytes(cache.read_bytes()[:100])               # damaged: drawn again, replaced
    with pytest.warns(UserWarning, match="unreadable emoji cache"):
        redrawn, _, _ = E.load_emoji("all", 0, limit=30)
    assert np.array_equal(redrawn, images) and cache.stat().st_size > 1000


def test_emoji_without_the_debian_packages_names_them(tmp_path, monkeypatch):
    monkeypatch.setenv("DDPMLAB_EMOJI_TEST", str(tmp_path / "none.txt"))
    with pytest.raises(DataError, match="apt-get install unicode-data"):
        D.load_dataset(cfg("emoji"))
    (tmp_path / "t.txt").write_text("# group: Smileys & Emotion\n1F600 ; fully-qualified # x\n")
    monkeypatch.setenv("DDPMLAB_EMOJI_TEST", str(tmp_path / "t.txt"))
    monkeypatch.setenv("DDPMLAB_EMOJI_FONT", str(tmp_path / "none.ttf"))
    with pytest.raises(DataError, match="apt-get install fonts-noto-color-emoji"):
        D.load_dataset(cfg("emoji"))
    with pytest.raises(DataError, match="8 to 136 px"):
        D.load_dataset(cfg("emoji", image_size=200))


# --------------------------------------------------------------------------- .npz
def test_npz_good(tmp_path):
    rng = np.random.default_rng(0)
    nhwc = rng.integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    np.savez(tmp_path / "c.npz", images=nhwc, labels=np.array([0, 2, 1, 2, 0]))
    d = D.load_dataset(cfg(tmp_path / "c.npz"))
    assert d.shape == (3, 6, 6) and d.num_classes == 3 and d.labels.dtype == torch.int64
    assert np.array_equal(d.images.permute(0, 2, 3, 1).numpy(), nhwc)
    np.savez(tmp_path / "g.npz", nhwc[..., 0])                          # arr_0, NHW
    g = D.load_dataset(cfg(tmp_path / "g.npz", image_size=4, channels=3))
    assert g.images.shape == (5, 3, 4, 4) and g.labels is None
    np.savez(tmp_path / "n.npz", images=nhwc[..., :1], labels=np.array([0, 1, 0, 1, 1]),
             class_names=np.array(["off", "on"]))
    assert D.load_dataset(cfg(tmp_path / "n.npz")).class_names == ["off", "on"]


@pytest.mark.parametrize("case, needle", [
    ("float", "'images' must be uint8"),
    ("rank", "'images' must be NHWC"),
    ("channels", "'images' must be NHWC"),
    ("labels", "'labels' must have shape"),
    ("float_labels", "'labels' must be integers"),
    ("missing", "no key 'images'"),
    ("object", "key 'images'"),
    ("random", "not a readable .npz"),
])
def test_npz_bad(tmp_path, case, needle):
    p = tmp_path / f"{case}.npz"
    u8 = np.zeros((4, 5, 5, 3), np.uint8)
    if case == "float":
        np.savez(p, images=u8.astype(np.float32))
    elif case == "rank":
        np.savez(p, images=np.zeros((4, 5), np.uint8))
    elif case == "channels":
        np.savez(p, images=np.zeros((4, 5, 5, 4), np.uint8))
    elif case == "labels":
        np.savez(p, images=u8, labels=np.arange(3))
    elif case == "float_labels":
        np.savez(p, images=u8, labels=np.zeros(4))
    elif case == "missing":
        np.savez(p, pictures=u8)
    elif case == "object":
        np.savez(p, images=np.array([{"a": 1}], dtype=object))
    else:
        p.write_bytes(np.random.default_rng(0).bytes(300))
    with pytest.raises(DataError, match=needle) as e:
        D.load_dataset(cfg(p))
    assert p.name in str(e.value)


@pytest.mark.parametrize("size", [0, 5, 8, 16])
@pytest.mark.parametrize("channels", [0, 1, 3])
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_folder_and_npz_give_the_same_pixels(tmp_path, mode, channels, size):
    """The same images as a folder of PNGs and as an .npz: identical uint8 tensors (one transform
    path for both), for any data.image_size and data.channels."""
    rng = np.random.default_rng(7)
    shape = (9, 13, 3) if mode == "RGB" else (9, 13)                # 13x9 (WxH): odd, non-square
    arrays = [rng.integers(0, 256, shape, dtype=np.uint8) for _ in range(4)]
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, a in enumerate(arrays):
        Image.fromarray(a, mode).save(folder / f"{i}.png")
    np.savez(tmp_path / "imgs.npz", images=np.stack(arrays))
    with warnings.catch_warnings(record=True) as w:   # size 0: non-square, so both come to 9
        warnings.simplefilter("always")
        a = D.load_dataset(cfg(folder, image_size=size, channels=channels))
        b = D.load_dataset(cfg(tmp_path / "imgs.npz", image_size=size, channels=channels))
    assert [str(x.message).split(": ", 1)[1] for x in w] == \
        (2 * ["1 image size(s) (13x9 WxH): every image's shorter side is resized to 9 and the "
              "centre 9x9 cropped (the most common shorter side); set data.image_size to "
              "choose"] if size == 0 else [])
    c = channels or (3 if mode == "RGB" else 1)
    assert a.images.shape == b.images.shape == (4, c, size or 9, size or 9)
    assert torch.equal(a.images, b.images)


# --------------------------------------------------------------------------- CIFAR-10
def _cifar_arrays(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3072), dtype=np.uint8), rng.integers(0, 10, n).tolist()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_python_batches(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    parts = {"data_batch_1": _cifar_arrays(3, 1), "data_batch_2": _cifar_arrays(2, 2),
             "test_batch": _cifar_arrays(4, 3)}
    for name, (x, y) in parts.items():
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": b"x", b"data": x, b"labels": y}, f, protocol=protocol)
    names = [f"c{i}".encode() for i in range(10)]
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": names, b"num_vis": 3072}, f, protocol=protocol)
    train = D.load_dataset(cfg(tmp_path), "train")                  # the parent folder works
    test = D.load_dataset(cfg(folder), "test")
    assert train.images.shape == (5, 3, 32, 32) and len(test) == 4
    assert train.labels.tolist() == parts["data_batch_1"][1] + parts["data_batch_2"][1]
    assert np.array_equal(train.images[0].numpy().reshape(-1), parts["data_batch_1"][0][0])
    assert train.class_names == [f"c{i}" for i in range(10)]
    assert len(D.load_dataset(cfg(folder, channels=1, image_size=16), "all")) == 9


def test_cifar_binary_batches(tmp_path):
    x, y = _cifar_arrays(3, 0)
    rec = np.concatenate([np.array(y, np.uint8)[:, None], x], axis=1)
    (tmp_path / "data_batch_1.bin").write_bytes(rec.tobytes())
    (tmp_path / "test_batch.bin").write_bytes(rec[:2].tobytes())
    train = D.load_dataset(cfg(tmp_path), "train")
    assert train.labels.tolist() == y and train.class_names == list(D.CIFAR10_CLASSES)
    assert np.array_equal(train.images.numpy().reshape(3, -1), x)
    assert len(D.load_dataset(cfg(tmp_path), "all")) == 5
    (tmp_path / "test_batch.bin").write_bytes(rec[:2].tobytes()[:-7])
    with pytest.raises(DataError, match="test_batch.bin"):
        D.load_dataset(cfg(tmp_path), "test")


class _Evil:
    def __init__(self, marker: Path, how: str):
        self.marker, self.how = marker, how

    def __reduce__(self):
        if self.how == "system":
            return (os.system, (f"touch {self.marker}",))
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize("how", ["system", "open"])
def test_cifar_malicious_pickle_is_refused(tmp_path, how):
    marker = tmp_path / "PWNED"
    x, y = _cifar_arrays(2, 0)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": x, b"labels": y, b"x": _Evil(marker, how)}, f)
    with pytest.raises(DataError, match="data_batch_1") as e:
        D.load_dataset(cfg(tmp_path))
    assert "refusing to unpickle" in str(e.value)
    assert not marker.exists()


def test_cifar_corrupt_pickle(tmp_path):
    (tmp_path / "data_batch_1").write_bytes(b"\x80\x04garbage")
    with pytest.raises(DataError, match="data_batch_1"):
        D.load_dataset(cfg(tmp_path))
    with pytest.raises(DataError, match="test_batch"):
        D.load_dataset(cfg(tmp_path), "test")
