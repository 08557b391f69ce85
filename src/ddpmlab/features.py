"""Feature networks for FID/KID/precision-recall: a small shipped classifier, or Inception-v3.

Which network embeds the images (:func:`get_feature_extractor`):

* **Built-in data** (``mnist``, ``fashion-mnist``, ``digits``): :class:`FeatureNet`, a small CNN
  classifier trained by ``scripts/train_feature_net.py`` on the built-in ``train`` split, whose
  weights ship in ``ddpmlab/assets/featnet_<dataset>.safetensors`` (held-out accuracy, data set
  and architecture are in the file's metadata). Features are its 128-d penultimate activations
  (after BatchNorm and ReLU, the input of the last linear layer); its softmax gives the
  classifier statistics. Numbers computed with it are comparable only with other ddpmlab
  numbers on the same data set, never with published Inception FIDs.
* **Anything else** (or ``features="inception"``): the FID Inception-v3 of pytorch-fid / TTUR
  (:class:`FIDInceptionV3`, 2048-d pool3 features, input resized to 299x299 bilinearly, grey
  repeated to RGB, range [-1, 1]), built from the user's weights file: ``inception_weights``
  (the CLI's ``--inception-weights``), else ``$DDPMLAB_INCEPTION``, else torch hub's
  ``checkpoints/pt_inception-2015-12-05-6726825d.pth``. Nothing is ever downloaded.

**Weights files are never unpickled.** A ``.safetensors`` file is read by safetensors; a
``.pth``/``.pt``/``.bin`` file (pytorch-fid's weights are one) only through
``torch.load(path, weights_only=True, map_location="cpu")``, torch's restricted unpickler that
rebuilds tensors and containers and refuses any other global (a malicious pickle raises instead
of running code). Anything else is refused.

The architecture of a weights file is recognised from its tensor names and shapes:
:class:`FIDInceptionV3` for pytorch-fid's file (the key names of torchvision's ``Inception3``,
``fc`` with 1008 classes, no ``AuxLogits``), or :class:`TinyInception`, a small stand-in with the
same building blocks that the tests use to exercise the whole path (file -> net -> resize ->
pooled features) without the 91 MB file.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .data import _luma, to_model_range
from .errors import DataError

__all__ = [
    "FID_WEIGHTS_NAME",
    "INCEPTION_ENV",
    "FIDInceptionV3",
    "FeatureExtractor",
    "FeatureNet",
    "InceptionFeatures",
    "TinyInception",
    "available_feature_nets",
    "find_inception_weights",
    "get_feature_extractor",
    "load_feature_net",
    "load_weights_file",
]

INCEPTION_ENV = "DDPMLAB_INCEPTION"
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"
FEATNET_FORMAT = "ddpmlab-featnet-1"

# Below this many samples FID is noticeably biased (upwards) by the covariance estimate; see
# evaluate.py's module docstring for how these were chosen.
RECOMMENDED_N_INCEPTION = 10_000   # TTUR / pytorch-fid's advice for the 2048-d pool3 features
RECOMMENDED_N_FEATNET = 5_000      # 128-d: real-vs-real FID 0.25 there (1-2 % of a mild blur's)


# =========================================================================== the shipped CNN
def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


# name -> (input size, conv widths, pool after each conv?, flattened size)
FEATNET_ARCHS: dict[str, tuple[int, tuple[int, ...], tuple[bool, ...], int]] = {
    # 28 -> conv32 -> pool 14 -> conv64 -> pool 7 -> conv128 -> pool 3 -> 1152
    "featnet28": (28, (32, 64, 128), (True, True, True), 128 * 3 * 3),
    # 8 -> conv32 -> conv64 -> pool 4 -> conv128 -> pool 2 -> 512
    "featnet8": (8, (32, 64, 128), (False, True, True), 128 * 2 * 2),
}


class FeatureNet(nn.Module):
    """A small CNN classifier for 1xSxS grey images in [-1, 1] (``to_model_range``).

    ``featnet28`` (28x28: MNIST, Fashion-MNIST): conv32-pool-conv64-pool-conv128-pool-fc128-fc10;
    ``featnet8`` (8x8 digits): conv32-conv64-pool-conv128-pool-fc128-fc10. Every conv is 3x3 with
    BatchNorm and ReLU; ``fc128`` is Linear-BatchNorm-ReLU. :meth:`features` returns those 128
    activations ``[N, 128]``; :meth:`forward` the logits ``[N, num_classes]``.
    """

    feature_dim = 128

    def __init__(self, arch: str = "featnet28", num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        if arch not in FEATNET_ARCHS:
            raise DataError(f"unknown feature-net architecture {arch!r} "
                            f"(known: {', '.join(FEATNET_ARCHS)})")
        size, widths, pools, flat = FEATNET_ARCHS[arch]
        self.arch, self.input_size, self.num_classes = arch, size, num_classes
        layers: list[nn.Module] = []
        cin = 1
        for w, pool in zip(widths, pools, strict=True):
            layers += _conv(cin, w)
            if pool:
                layers.append(nn.MaxPool2d(2))
            cin = w
        self.body = nn.Sequential(*layers)
        self.fc = nn.Sequential(nn.Flatten(), nn.Linear(flat, self.feature_dim, bias=False),
                                nn.BatchNorm1d(self.feature_dim), nn.ReLU())
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 1, S, S]`` in [-1, 1] -> penultimate activations ``[N, 128]``."""
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 1, S, S]`` in [-1, 1] -> logits ``[N, num_classes]``."""
        return self.head(self.dropout(self.features(x)))


def _assets() -> importlib.resources.abc.Traversable:
    return importlib.resources.files("ddpmlab") / "assets"


def available_feature_nets() -> list[str]:
    """The data sets with a shipped feature network (``featnet_<name>.safetensors``)."""
    try:
        names = [p.name for p in _assets().iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(n[len("featnet_"):-len(".safetensors")] for n in names
                  if n.startswith("featnet_") and n.endswith(".safetensors"))


def load_feature_net(dataset: str) -> FeatureNet:
    """The shipped classifier for a built-in data set, in eval mode on the CPU.

    ``net.meta`` holds the file's metadata (``accuracy``, ``n_test``, ``dataset``, ``arch``,
    ``class_names`` ...). An unknown name raises :class:`DataError` listing the available ones.
    """
    key = dataset.strip().lower()
    available = available_feature_nets()
    if key not in available:
        raise DataError(f"no shipped feature network for {dataset!r} "
                        f"(available: {', '.join(available) or 'none'})")
    raw = (_assets() / f"featnet_{key}.safetensors").read_bytes()
    tensors, meta = _parse_safetensors(raw, f"featnet_{key}.safetensors")
    if meta.get("format") != FEATNET_FORMAT:
        raise DataError(f"featnet_{key}.safetensors: not a {FEATNET_FORMAT} file")
    net = FeatureNet(meta["arch"], num_classes=int(meta["num_classes"]))
    net.load_state_dict(tensors, strict=True)
    net.meta = meta  # type: ignore[attr-defined]
    return net.eval()


# =========================================================================== weights files
def _parse_safetensors(raw: bytes, name: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    from safetensors.torch import load

    try:
        (n,) = struct.unpack("<Q", raw[:8])
        header = json.loads(raw[8 : 8 + n])
        tensors = load(raw)
    except Exception as e:  # safetensors raises its own SafetensorError
        raise DataError(f"{name}: not a valid safetensors file ({e})") from None
    return tensors, dict(header.get("__metadata__") or {})


def load_weights_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A flat ``name -> tensor`` mapping from ``.safetensors``, or from ``.pth``/``.pt``/``.bin``
    through torch's weights-only loader (never a plain unpickle); anything else is refused."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: weights file not found")
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        return _parse_safetensors(path.read_bytes(), str(path))[0]
    if suffix not in (".pth", ".pt", ".bin"):
        raise DataError(f"{path}: unsupported weights file {suffix or '(no suffix)'!r}; use "
                        ".safetensors, or a torch .pth (read with weights_only=True)")
    try:
        obj = torch.load(path, weights_only=True, map_location="cpu")
    except Exception as e:  # UnpicklingError for forbidden globals, RuntimeError for junk
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise DataError(f"{path}: refused by torch's weights-only loader, which never runs code "
                        f"from a file ({type(e).__name__}: {first[:200]}); convert it to "
                        ".safetensors with a tool you trust") from None
    if not isinstance(obj, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
        raise DataError(f"{path}: expected a state dict (names -> tensors), "
                        f"got {type(obj).__name__}")
    return obj


# =========================================================================== Inception-v3
class BasicConv2d(nn.Module):
    """Conv (no bias) + BatchNorm(eps=1e-3) + ReLU, as torchvision's Inception3."""

    def __init__(self, cin: int, cout: int, kernel_size, stride=1, padding=0):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel_size, stride=stride, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(cout, eps=0.001)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg3(x: torch.Tensor) -> torch.Tensor:
    # TensorFlow's average pool (the FID network's) ignores the zero padding.
    return F.avg_pool2d(x, 3, stride=1, padding=1, count_include_pad=False)


class _Branches(nn.Module):
    """Submodules named ``prefix_1, prefix_2, ...`` applied in order; the last step may be a
    pair (``..._2a``/``..._2b``) applied to the same input and concatenated (InceptionE)."""

    def chain(self, x: torch.Tensor, *names: str | tuple[str, ...]) -> torch.Tensor:
        for name in names:
            if isinstance(name, tuple):
                return torch.cat([getattr(self, n)(x) for n in name], 1)
            x = getattr(self, name)(x)
        return x


class FIDInceptionA(_Branches):
    def __init__(self, cin: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(cin, 64, 1)
        self.branch5x5_1 = BasicConv2d(cin, 48, 1)
        self.branch5x5_2 = BasicConv2d(48, 64, 5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, padding=1)
        self.branch_pool = BasicConv2d(cin, pool_features, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1x1(x), self.chain(x, "branch5x5_1", "branch5x5_2"),
                          self.chain(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                          self.branch_pool(_avg3(x))], 1)


class InceptionB(_Branches):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(cin, 384, 3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(cin, 64, 1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, 3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch3x3(x),
                          self.chain(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                          F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionC(_Branches):
    def __init__(self, cin: int, c7: int):
        super().__init__()
        h, v = dict(kernel_size=(1, 7), padding=(0, 3)), dict(kernel_size=(7, 1), padding=(3, 0))
        self.branch1x1 = BasicConv2d(cin, 192, 1)
        self.branch7x7_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7_2 = BasicConv2d(c7, c7, **h)
        self.branch7x7_3 = BasicConv2d(c7, 192, **v)
        self.branch7x7dbl_1 = BasicConv2d(cin, c7, 1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, **v)
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, **h)
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, **v)
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, **h)
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dbl = [f"branch7x7dbl_{i}" for i in range(1, 6)]
        return torch.cat([self.branch1x1(x),
                          self.chain(x, "branch7x7_1", "branch7x7_2", "branch7x7_3"),
                          self.chain(x, *dbl), self.branch_pool(_avg3(x))], 1)


class InceptionD(_Branches):
    def __init__(self, cin: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(cin, 192, 1)
        self.branch3x3_2 = BasicConv2d(192, 320, 3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(cin, 192, 1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, (1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, (7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, 3, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b7 = [f"branch7x7x3_{i}" for i in range(1, 5)]
        return torch.cat([self.chain(x, "branch3x3_1", "branch3x3_2"), self.chain(x, *b7),
                          F.max_pool2d(x, 3, stride=2)], 1)


class FIDInceptionE(_Branches):
    """``pool="avg"`` is pytorch-fid's FIDInceptionE_1 (Mixed_7b), ``"max"`` its FIDInceptionE_2
    (Mixed_7c: the TF graph uses max pooling there)."""

    def __init__(self, cin: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(cin, 320, 1)
        self.branch3x3_1 = BasicConv2d(cin, 384, 1)
        self.branch3x3_2a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(cin, 448, 1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, 3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, (1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, (3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(cin, 192, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = _avg3(x) if self.pool == "avg" else F.max_pool2d(x, 3, stride=1, padding=1)
        return torch.cat([
            self.branch1x1(x),
            self.chain(x, "branch3x3_1", ("branch3x3_2a", "branch3x3_2b")),
            self.chain(x, "branch3x3dbl_1", "branch3x3dbl_2",
                       ("branch3x3dbl_3a", "branch3x3dbl_3b")),
            self.branch_pool(pooled)], 1)


class FIDInceptionV3(nn.Module):
    """The Inception-v3 graph that TTUR's FID uses, as pytorch-fid's ``fid_inception_v3()``:
    torchvision's ``Inception3`` (1008 classes, no aux head) with the FID patches (avg pools
    without the padding, max pool in Mixed_7c). Module names match that state dict.
    :meth:`features`: ``[N, 3, 299, 299]`` in [-1, 1] -> pool3 ``[N, 2048]``."""

    input_size = 299
    feature_dim = 2048

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, 3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, 3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, 3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, 1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, 3)
        self.Mixed_5b = FIDInceptionA(192, 32)
        self.Mixed_5c = FIDInceptionA(256, 64)
        self.Mixed_5d = FIDInceptionA(288, 64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, 128)
        self.Mixed_6c = FIDInceptionC(768, 160)
        self.Mixed_6d = FIDInceptionC(768, 160)
        self.Mixed_6e = FIDInceptionC(768, 192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, "avg")
        self.Mixed_7c = FIDInceptionE(2048, "max")
        self.fc = nn.Linear(2048, 1008)  # the file's classifier; unused by FID

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, 3, stride=2)
        x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), 3, stride=2)
        for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e", "7a", "7b", "7c"):
            x = getattr(self, f"Mixed_{name}")(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class TinyInception(nn.Module):
    """A few-thousand-parameter stand-in for :class:`FIDInceptionV3` built from the same blocks
    (a stem, one FID Inception-A block, global average pooling): ``[N, 3, 16, 16]`` -> ``[N, 16]``
    features. Only for tests and demos of the weights-file path; its numbers mean nothing."""

    input_size = 16
    feature_dim = 16

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 8, 3, stride=2)
        self.Mixed_5b = nn.Sequential(FIDInceptionA(8, 8), BasicConv2d(64 + 64 + 96 + 8, 16, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.Mixed_5b(self.Conv2d_1a_3x3(x)), 1).flatten(1)


INCEPTION_ARCHS: dict[str, type[nn.Module]] = {
    "fid-inception-v3": FIDInceptionV3,
    "tiny-inception": TinyInception,
}


def _relevant(key: str) -> bool:
    return not key.endswith("num_batches_tracked") and not key.startswith("AuxLogits.")


@functools.cache
def _expected_shapes(arch: str) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation
        net = INCEPTION_ARCHS[arch]()
    return {k: tuple(v.shape) for k, v in net.state_dict().items() if _relevant(k)}


class InceptionFeatures(nn.Module):
    """An Inception network read from a weights file, with pytorch-fid's input handling:
    uint8 or [-1, 1] float images of any size; grey is repeated to RGB, then the batch is
    resized bilinearly (``align_corners=False``) to the network's input size."""

    def __init__(self, net: nn.Module, arch: str, source: str = ""):
        super().__init__()
        self.net, self.arch, self.source = net.eval(), arch, source
        self.input_size: int = net.input_size
        self.feature_dim: int = net.feature_dim

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> InceptionFeatures:
        """Recognise the architecture from the tensor names, build it, load the weights."""
        sd = {k: v for k, v in load_weights_file(path).items() if _relevant(k)}
        for arch, ctor in INCEPTION_ARCHS.items():
            expected = _expected_shapes(arch)
            if set(expected) != set(sd):
                continue
            bad = [k for k, s in expected.items() if tuple(sd[k].shape) != s]
            if bad:
                raise DataError(f"{path}: {arch} weights with wrong shapes, e.g. {bad[0]}: "
                                f"{tuple(sd[bad[0]].shape)} instead of {expected[bad[0]]}")
            with torch.device("meta"):  # no initialisation: every tensor is loaded below
                net = ctor()
            net = net.to_empty(device="cpu")
            full = {k: torch.zeros((), dtype=torch.long) for k in net.state_dict()
                    if k.endswith("num_batches_tracked")}
            full.update({k: v.to(torch.float32) for k, v in sd.items()})
            net.load_state_dict(full, strict=True)
            return cls(net, arch, str(path))
        want = set(_expected_shapes("fid-inception-v3"))
        missing, extra = sorted(want - set(sd)), sorted(set(sd) - want)
        raise DataError(f"{path}: not the FID Inception-v3 weights (pytorch-fid's "
                        f"{FID_WEIGHTS_NAME}): {len(missing)} tensors missing "
                        f"(e.g. {missing[:2]}), {len(extra)} unexpected (e.g. {extra[:2]})")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, 1|3, H, W]`` uint8, or float in [-1, 1] -> ``[N, feature_dim]``."""
        if x.dtype == torch.uint8:
            x = to_model_range(x)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        elif x.shape[1] != 3:
            raise DataError(f"Inception features need 1 or 3 channels, got {x.shape[1]}")
        s = self.input_size
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        return self.net.features(x)


def find_inception_weights(path: str | os.PathLike | None = None) -> Path | None:
    """The weights file to use: ``path``, else ``$DDPMLAB_INCEPTION``, else
    ``<torch hub>/checkpoints/pt_inception-2015-12-05-6726825d.pth`` (``~/.cache/torch/hub``
    unless ``$TORCH_HOME`` says otherwise); None when none is given or found. A path given
    explicitly (argument or variable) that does not exist is an error, not a fallback."""
    env = os.environ.get(INCEPTION_ENV)
    for given, what in ((path, "inception_weights"), (env, f"${INCEPTION_ENV}")):
        if given:
            p = Path(given).expanduser()
            if not p.is_file():
                raise DataError(f"{what}={str(given)!r}: no such file")
            return p
    candidates = [Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_NAME,
                  Path("~/.cache/torch/hub/checkpoints").expanduser() / FID_WEIGHTS_NAME]
    return next((c for c in candidates if c.is_file()), None)


# =========================================================================== the extractor
@dataclass
class FeatureExtractor:
    """Images -> float64 features (and, for the shipped classifiers, softmax probabilities).

    Call it on uint8 ``[N, C, H, W]``. For a :class:`FeatureNet`, colour is converted to grey
    (ITU-R 601 luma) and other sizes are resized bilinearly (antialiased) to its input size, so a
    built-in stored at another ``data.image_size`` still uses its own classifier; Inception
    repeats grey to RGB and resizes to 299 as pytorch-fid does.
    """

    name: str                     # "featnet:mnist", "fid-inception-v3", "tiny-inception"
    net: nn.Module                # FeatureNet or InceptionFeatures
    dim: int
    recommended_n: int            # below this many samples FID is noticeably biased
    input_size: int
    channels: int                 # what the net takes (1: grey, 3: RGB)
    class_names: list[str] = field(default_factory=list)   # non-empty: a classifier
    info: dict = field(default_factory=dict)

    @property
    def is_classifier(self) -> bool:
        return bool(self.class_names)

    def _prepare(self, u8: torch.Tensor) -> torch.Tensor:
        if isinstance(self.net, InceptionFeatures):
            return to_model_range(u8)  # the wrapper converts channels and size itself
        if u8.shape[1] == 3 and self.channels == 1:
            u8 = torch.from_numpy(_luma(u8.cpu().numpy()))
        elif u8.shape[1] != self.channels:
            raise DataError(f"{self.name} takes {self.channels}-channel images, "
                            f"got {u8.shape[1]}")
        x = to_model_range(u8)
        s = self.input_size
        if tuple(x.shape[-2:]) != (s, s):
            x = F.interpolate(x, size=(s, s), mode="bilinear", align_corners=False,
                              antialias=True)
        return x

    @torch.no_grad()
    def __call__(self, images: torch.Tensor | np.ndarray, batch_size: int = 256,
                 device: str | torch.device = "cpu", with_probs: bool = False):
        """uint8 ``[N, C, H, W]`` -> features ``[N, dim]`` (float64 numpy); with
        ``with_probs`` also the softmax ``[N, classes]`` (None for a non-classifier)."""
        u8 = torch.as_tensor(images)
        if u8.dtype != torch.uint8 or u8.ndim != 4:
            raise DataError(f"feature extraction needs uint8 [N, C, H, W] images, got "
                            f"{u8.dtype} {tuple(u8.shape)}")
        net = self.net.to(device).eval()
        feats, probs = [], []
        for i in range(0, u8.shape[0], batch_size):
            x = self._prepare(u8[i : i + batch_size]).to(device)
            if isinstance(net, FeatureNet):
                f = net.features(x)
                if with_probs:
                    probs.append(torch.softmax(net.head(f), 1).double().cpu())
            else:
                f = net(x)
            feats.append(f.double().cpu())
        dim = self.dim
        out = torch.cat(feats).numpy() if feats else np.zeros((0, dim))
        if not with_probs:
            return out
        return out, (torch.cat(probs).numpy() if probs else None)


def get_feature_extractor(dataset_name_or_shape: str | tuple[int, ...],
                          inception_weights: str | os.PathLike | None = None,
                          features: str = "auto") -> FeatureExtractor:
    """Pick the feature network for a data set.

    ``dataset_name_or_shape``: a built-in name (``mnist``, ``fashion-mnist``, ``digits``), any
    other data-set name/path, or a ``(C, H, W)`` shape. ``features``: ``"auto"`` (the shipped
    net for a built-in with one, else Inception), ``"inception"``, or a built-in name to force
    that shipped net (e.g. ``"mnist"`` for a folder of 28x28 digits). Inception weights are looked
    up by :func:`find_inception_weights`; when none is found, :class:`DataError` says what to pass.
    """
    name = dataset_name_or_shape.strip().lower() if isinstance(dataset_name_or_shape, str) \
        else None
    shipped = available_feature_nets()
    net_name = None
    if features == "auto":
        net_name = name if name in shipped else None
    elif features != "inception":
        if features.lower() not in shipped:
            raise DataError(f"features={features!r}: use 'auto', 'inception' or a shipped "
                            f"feature network ({', '.join(shipped)})")
        net_name = features.lower()
    if net_name is not None:
        net = load_feature_net(net_name)
        meta = net.meta  # type: ignore[attr-defined]
        return FeatureExtractor(
            name=f"featnet:{net_name}", net=net, dim=net.feature_dim,
            recommended_n=RECOMMENDED_N_FEATNET, input_size=net.input_size, channels=1,
            class_names=json.loads(meta.get("class_names", "[]")),
            info={k: meta[k] for k in ("accuracy", "n_test", "arch", "dataset") if k in meta})
    path = find_inception_weights(inception_weights)
    if path is None:
        what = (f"data set {dataset_name_or_shape!r}" if name is not None
                else f"images of shape {tuple(dataset_name_or_shape)}")
        raise DataError(
            f"no feature network for {what}: ddpmlab ships classifiers only for "
            f"{', '.join(shipped) or 'no data set'}; anything else needs the FID Inception-v3 "
            f"weights (pytorch-fid's {FID_WEIGHTS_NAME}, or a .safetensors conversion of it). "
            f"Pass --inception-weights PATH (inception_weights=...), set ${INCEPTION_ENV}, or "
            f"put the file in ~/.cache/torch/hub/checkpoints/ (it is never downloaded)")
    inc = InceptionFeatures.from_file(path)
    return FeatureExtractor(
        name=inc.arch, net=inc, dim=inc.feature_dim,
        recommended_n=RECOMMENDED_N_INCEPTION if inc.arch == "fid-inception-v3" else 1_000,
        input_size=inc.input_size, channels=3, info={"weights": str(path)})
