"""``emoji``: a real colour data set, offline, from two Debian packages.

* **Which emoji.** Every ``fully-qualified`` line of Unicode's ``emoji-test.txt`` (Debian's
  ``unicode-data``, ``/usr/share/unicode/emoji/emoji-test.txt``; 3,655 in Unicode 15.0) except
  the skin-tone variants (the 1,785 holding a modifier U+1F3FB..U+1F3FF): they are
  near-copies of their yellow base emoji, so keeping them would make People & Body 60% of the
  set and make a model that copies look like one that generalises. 1,870 remain, in the file's
  (CLDR) order, labelled by their Unicode group: the 9 :data:`EMOJI_GROUPS` (Smileys & Emotion
  166, People & Body 363, Animals & Nature 152, Food & Drink 133, Travel & Places 218,
  Activities 85, Objects 261, Symbols 223, Flags 269).
* **Pixels.** Debian's ``fonts-noto-color-emoji`` (``NotoColorEmoji.ttf``, colour bitmaps of
  136x128) drawn by Pillow at size 109 (the font's one bitmap size) with ``embedded_color=True``
  (sequences such as flags and ZWJ families need Pillow's libraqm layout), centred on a
  transparent 136x136 square, composited onto **white**, then resized with the shared
  transform (:func:`~.transforms.resize`: bicubic, antialiased) to 32 px, or to
  ``data.image_size`` when set (any size from 8 to 136).
* **Split.** ``test`` = every 10th emoji in file order (``[::10]``, 187, spread over every
  group the way the file is), ``train`` = the other 1,683, ``all`` = 1,870.
* **Cache.** Rendering takes seconds (measured: 13 s for the 1,870 at 32 px, 14 s at 64 px,
  on 2 shared CPU cores; ~5 s of it drawing, the rest compositing and resizing), so the array is
  kept in ``$XDG_CACHE_HOME/ddpmlab/`` (default ``~/.cache/ddpmlab/``), one ``.npz`` per size
  keyed by a hash of ``emoji-test.txt``, the font file's size and date, the Pillow and torch
  versions and this module's format; it is written atomically (temporary name, fsync,
  rename) and read with ``allow_pickle=False``. A cache that does not read back as the
  expected arrays is rendered again and replaced (one warning). ``$DDPMLAB_EMOJI_FONT`` and
  ``$DDPMLAB_EMOJI_TEST`` point at the two files elsewhere.
"""

from __future__ import annotations

import hashlib
import io
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, DataError
from ..io import atomic_write_bytes

__all__ = ["EMOJI_FONT", "EMOJI_GROUPS", "EMOJI_SIZE", "EMOJI_TEST", "Emoji", "emoji_cache_dir",
           "emoji_list", "load_emoji", "render_emoji"]

EMOJI_FONT = "/usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
EMOJI_TEST = "/usr/share/unicode/emoji/emoji-test.txt"
EMOJI_FONT_ENV = "DDPMLAB_EMOJI_FONT"
EMOJI_TEST_ENV = "DDPMLAB_EMOJI_TEST"
EMOJI_SIZE = 32                         # data.image_size 0 means this
EMOJI_GROUPS: tuple[str, ...] = (
    "Smileys & Emotion", "People & Body", "Animals & Nature", "Food & Drink", "Travel & Places",
    "Activities", "Objects", "Symbols", "Flags",
)
SKIN_TONES = frozenset(range(0x1F3FB, 0x1F400))
TEST_EVERY = 10                         # every 10th emoji (file order) is held out
_FONT_SIZE = 109                        # NotoColorEmoji's bitmap strike (136x128 glyphs)
_CANVAS = 136                           # the square each glyph is centred on
_FORMAT = 1                             # bump when the rendering changes (invalidates caches)
_CHUNK = 128                            # glyphs rendered, then resized, at a time


@dataclass(frozen=True)
class Emoji:
    text: str       # the code points as a string
    name: str       # CLDR short name ("grinning face")
    group: int      # index into EMOJI_GROUPS


def _paths() -> tuple[Path, Path]:
    font = Path(os.environ.get(EMOJI_FONT_ENV) or EMOJI_FONT).expanduser()
    table = Path(os.environ.get(EMOJI_TEST_ENV) or EMOJI_TEST).expanduser()
    if not table.is_file():
        raise DataError(f"data.dataset='emoji' needs {table} from Debian's unicode-data: "
                        f"apt-get install unicode-data (or set ${EMOJI_TEST_ENV})")
    if not font.is_file():
        raise DataError(f"data.dataset='emoji' needs {font} from Debian's "
                        "fonts-noto-color-emoji: apt-get install fonts-noto-color-emoji "
                        f"(or set ${EMOJI_FONT_ENV})")
    return font, table


def emoji_list(path: str | os.PathLike, skin_tones: bool = False) -> list[Emoji]:
    """The fully-qualified emoji of an ``emoji-test.txt``, in file order, with their group;
    without the skin-tone variants unless ``skin_tones``."""
    out: list[Emoji] = []
    group = None
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(f"{path}: cannot read ({e})") from None
    for line in lines:
        if line.startswith("# group:"):
            name = line.split(":", 1)[1].strip()
            group = EMOJI_GROUPS.index(name) if name in EMOJI_GROUPS else None
            continue
        if line.startswith("#") or ";" not in line:
            continue
        points, rest = line.split(";", 1)
        status, _, comment = rest.partition("#")
        if status.strip() != "fully-qualified" or group is None:
            continue
        try:
            cps = [int(c, 16) for c in points.split()]
        except ValueError:
            raise DataError(f"{path}: bad code points {points.strip()[:40]!r}") from None
        if not skin_tones and SKIN_TONES.intersection(cps):
            continue
        # comment: "😀 E1.0 grinning face"
        name = comment.strip().split(" ", 2)[-1] if comment.strip() else ""
        out.append(Emoji("".join(map(chr, cps)), name, group))
    if not out:
        raise DataError(f"{path}: no fully-qualified emoji in the 9 Unicode groups (is it "
                        "Unicode's emoji-test.txt?)")
    return out


def render_emoji(entries: list[Emoji], size: int, font_path: str | os.PathLike) -> np.ndarray:
    """uint8 ``[N, 3, size, size]``: each emoji drawn in colour, composited onto white and
    resized with the shared transform."""
    import torch
    from PIL import Image, ImageDraw, ImageFont, features

    from .transforms import resize

    if not features.check("raqm"):
        raise DataError("data.dataset='emoji' needs Pillow with libraqm (complex text layout) "
                        "to draw flags and joined emoji; install a Pillow wheel from PyPI")
    try:
        font = ImageFont.truetype(str(font_path), _FONT_SIZE)
    except OSError as e:
        raise DataError(f"{font_path}: cannot load the emoji font ({e})") from None
    out = np.empty((len(entries), 3, size, size), dtype=np.uint8)
    white = Image.new("RGBA", (_CANVAS, _CANVAS), (255, 255, 255, 255))
    for i in range(0, len(entries), _CHUNK):
        part = entries[i : i + _CHUNK]
        big = np.empty((len(part), _CANVAS, _CANVAS, 3), dtype=np.uint8)
        for j, e in enumerate(part):
            glyph = Image.new("RGBA", (_CANVAS, _CANVAS), (255, 255, 255, 0))
            ImageDraw.Draw(glyph).text((_CANVAS / 2, _CANVAS / 2), e.text, font=font,
                                       embedded_color=True, anchor="mm")
            big[j] = np.asarray(Image.alpha_composite(white, glyph).convert("RGB"))
        x = torch.from_numpy(big).permute(0, 3, 1, 2)
        out[i : i + len(part)] = resize(x, size).numpy()
    return out


def emoji_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ddpmlab`` (default ``~/.cache/ddpmlab``)."""
    root = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(root).expanduser() / "ddpmlab"


def _cache_key(font: Path, table: Path, size: int, count: int) -> str:
    import PIL
    import torch

    h = hashlib.sha256()
    h.update(table.read_bytes())
    st = font.stat()
    h.update(f"{st.st_size}:{st.st_mtime_ns}:{PIL.__version__}:{torch.__version__}:"
             f"{_FORMAT}:{size}:{count}".encode())
    return h.hexdigest()[:16]


def _read_cache(path: Path, n: int, size: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The cached (images, labels), or None when absent; a damaged file warns and is None."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as f:
            images, labels = f["images"], f["labels"]
        if images.dtype != np.uint8 or images.shape != (n, 3, size, size) \
                or labels.dtype != np.int64 or labels.shape != (n,) \
                or (n and (labels.min() < 0 or labels.max() >= len(EMOJI_GROUPS))):
            raise ValueError(f"arrays {images.dtype} {images.shape}, {labels.dtype} "
                             f"{labels.shape}")
        return images, labels
    except Exception as e:  # a truncated zip, a wrong key, bad arrays: render again
        warnings.warn(f"{path}: unreadable emoji cache ({type(e).__name__}: {str(e)[:80]}); "
                      "rendering again", stacklevel=4)
        return None


_MEMORY: dict[tuple[str, int, int], tuple[np.ndarray, np.ndarray]] = {}


def _emoji_all(size: int, limit: int | None) -> tuple[np.ndarray, np.ndarray]:
    """All emoji (the first ``limit``) at ``size`` px: from memory, the cache, or rendered."""
    font, table = _paths()
    entries = emoji_list(table)[:limit]
    key = _cache_key(font, table, size, len(entries))
    if (key, size, len(entries)) in _MEMORY:
        return _MEMORY[(key, size, len(entries))]
    path = emoji_cache_dir() / f"emoji-{size}px-{len(entries)}-{key}.npz"
    got = _read_cache(path, len(entries), size)
    if got is None:
        images = render_emoji(entries, size, font)
        labels = np.array([e.group for e in entries], dtype=np.int64)
        buf = io.BytesIO()
        np.savez(buf, images=images, labels=labels)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(path, buf.getvalue())
        except (OSError, CheckpointError) as e:   # a read-only home: keep going uncached
            warnings.warn(f"{path}: cannot cache the rendered emoji ({e})", stacklevel=3)
        got = images, labels
    for a in got:
        a.flags.writeable = False
    _MEMORY[(key, size, len(entries))] = got
    return got


def load_emoji(split: str, size: int = 0, limit: int | None = None
               ) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(images uint8 [N, 3, size, size], labels int64 [N], the 9 group names) of ``split``;
    ``size`` 0 is :data:`EMOJI_SIZE`; ``limit`` keeps the first emoji only (tests)."""
    size = size or EMOJI_SIZE
    if not 8 <= size <= _CANVAS:
        raise DataError(f"data.image_size={size}: the emoji data set is drawn at 8 to "
                        f"{_CANVAS} px (0: {EMOJI_SIZE})")
    images, labels = _emoji_all(size, limit)
    if split == "all":
        return images, labels, list(EMOJI_GROUPS)
    test = np.zeros(len(labels), dtype=bool)
    test[::TEST_EVERY] = True
    keep = test if split == "test" else ~test
    return images[keep], labels[keep], list(EMOJI_GROUPS)
