"""The FID Inception-v3 (and a tiny stand-in), built from a user's weights file.

The FID Inception-v3 of pytorch-fid / TTUR (:class:`FIDInceptionV3`, 2048-d pool3 features,
input resized to 299x299 bilinearly, grey repeated to RGB, range [-1, 1]) is built from the
user's weights file: ``inception_weights`` (the CLI's ``--inception-weights``), else
``$DDPMLAB_INCEPTION``, else torch hub's ``checkpoints/pt_inception-2015-12-05-6726825d.pth``
(:func:`find_inception_weights`). Nothing is ever downloaded, and the file is never unpickled
(:func:`~ddpmlab.features.weights.load_weights_file`).

The architecture of a weights file is recognised from its tensor names and shapes:
:class:`FIDInceptionV3` for pytorch-fid's file (the key names of torchvision's ``Inception3``,
``fc`` with 1008 classes, no ``AuxLogits``), or :class:`TinyInception`, a small stand-in with the
same building blocks that the tests use to exercise the whole path (file -> net -> resize ->
pooled features) without the 91 MB file.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..data import to_model_range
from ..errors import DataError
from .weights import load_weights_file

__all__ = ["FID_WEIGHTS_NAME", "INCEPTION_ARCHS", "INCEPTION_ENV", "FIDInceptionV3",
           "InceptionFeatures", "TinyInception", "find_inception_weights"]

INCEPTION_ENV = "DDPMLAB_INCEPTION"
FID_WEIGHTS_NAME = "pt_inception-2015-12-05-6726825d.pth"


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
    resized bilinearly (``align_corners=False``) to the network's input size.

    As every feature network, it has :meth:`prepare` (uint8 images -> its input) and
    :meth:`embed` (its input -> features, and None: it is no classifier)."""

    channels = 3  # RGB input (grey is repeated)

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

    def prepare(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, 1|3, H, W]`` -> float in [-1, 1]; :meth:`forward` converts channels and
        size itself."""
        return to_model_range(u8)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, None]:
        """:meth:`prepare`'s output -> (features ``[N, feature_dim]``, None)."""
        return self(x), None


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
