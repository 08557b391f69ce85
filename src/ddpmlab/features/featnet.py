"""The shipped feature networks: a small CNN classifier per built-in data set.

:class:`FeatureNet` is trained by ``scripts/train_feature_net.py`` on the built-in ``train``
split; its weights ship in ``ddpmlab/assets/featnet_<dataset>.safetensors`` (held-out accuracy,
data set and architecture are in the file's metadata). Features are its 128-d penultimate
activations (after BatchNorm and ReLU, the input of the last linear layer); its softmax gives the
classifier statistics. Numbers computed with it are comparable only with other ddpmlab numbers
on the same data set, never with published Inception FIDs. The grey nets (``featnet28``,
``featnet8``) read MNIST, Fashion-MNIST and digits; the colour one (``featnet32``) reads the
``emoji`` data set's 9 Unicode groups.
"""

from __future__ import annotations

import importlib.resources

import torch
from torch import nn

from ..data import _luma, resize, to_model_range
from ..errors import DataError
from .weights import _parse_safetensors

__all__ = ["FEATNET_ARCHS", "FEATNET_FORMAT", "FeatureNet", "available_feature_nets",
           "load_feature_net"]

FEATNET_FORMAT = "ddpmlab-featnet-1"


def _conv(cin: int, cout: int) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]


# name -> (input channels, input size, conv widths, pool after each conv?, flattened size)
FEATNET_ARCHS: dict[str, tuple[int, int, tuple[int, ...], tuple[bool, ...], int]] = {
    # 1x28 -> conv32 -> pool 14 -> conv64 -> pool 7 -> conv128 -> pool 3 -> 1152
    "featnet28": (1, 28, (32, 64, 128), (True, True, True), 128 * 3 * 3),
    # 1x8 -> conv32 -> conv64 -> pool 4 -> conv128 -> pool 2 -> 512
    "featnet8": (1, 8, (32, 64, 128), (False, True, True), 128 * 2 * 2),
    # 3x32 -> conv32 -> pool 16 -> conv64 -> pool 8 -> conv128 -> pool 4 -> conv128 -> pool 2
    # -> 512 (a fourth conv rather than a 2048-wide fc: 1.2 MB of weights instead of 1.4)
    "featnet32": (3, 32, (32, 64, 128, 128), (True, True, True, True), 128 * 2 * 2),
}


class FeatureNet(nn.Module):
    """A small CNN classifier for CxSxS images in [-1, 1] (``to_model_range``).

    ``featnet28`` (1x28x28: MNIST, Fashion-MNIST): conv32-pool-conv64-pool-conv128-pool-fc128-fc10;
    ``featnet8`` (1x8x8 digits): conv32-conv64-pool-conv128-pool-fc128-fc10; ``featnet32``
    (3x32x32 RGB: emoji): conv32-pool-conv64-pool-conv128-pool-conv128-pool-fc128-fc9. Every conv
    is 3x3 with BatchNorm and ReLU; ``fc128`` is Linear-BatchNorm-ReLU. :meth:`features` returns those 128
    activations ``[N, 128]``; :meth:`forward` the logits ``[N, num_classes]``.

    As every feature network, it has :meth:`prepare` (uint8 images -> its input) and
    :meth:`embed` (its input -> features and logits), which :class:`FeatureExtractor` calls.
    ``name`` (``featnet:<dataset>`` once loaded by :func:`load_feature_net`) appears in errors.
    """

    feature_dim = 128

    def __init__(self, arch: str = "featnet28", num_classes: int = 10, dropout: float = 0.3):
        super().__init__()
        if arch not in FEATNET_ARCHS:
            raise DataError(f"unknown feature-net architecture {arch!r} "
                            f"(known: {', '.join(FEATNET_ARCHS)})")
        channels, size, widths, pools, flat = FEATNET_ARCHS[arch]
        self.arch, self.input_size, self.num_classes = arch, size, num_classes
        self.channels = channels  # 1: grey input, 3: RGB
        self.name = f"featnet:{arch}"
        layers: list[nn.Module] = []
        cin = self.channels
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
        """``[N, C, S, S]`` in [-1, 1] -> penultimate activations ``[N, 128]``."""
        return self.fc(self.body(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[N, C, S, S]`` in [-1, 1] -> logits ``[N, num_classes]``."""
        return self.head(self.dropout(self.features(x)))

    def prepare(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` -> float ``[N, channels, S, S]`` in [-1, 1], whatever the run's
        ``data.image_size`` and ``data.channels``: for a grey net, colour becomes grey (ITU-R 601
        luma); for the RGB net (``featnet32``), grey is repeated into three planes (a grey emoji
        run is then read by a net trained on colour: its accuracy drops, FID still compares like
        with like); any other size is resized to the input size ``S`` with the data's own
        transform (:func:`ddpmlab.data.resize`: bicubic, antialiased, on uint8), so a built-in
        stored at another size still uses its own classifier. A 64-px emoji run is read at 32 px
        this way: the held-out emoji drawn at 64 and resized score 146/187 against 147/187
        drawn at 32 (a bilinear resize gave 137)."""
        c = u8.shape[1]
        if c == 3 and self.channels == 1:
            u8 = torch.from_numpy(_luma(u8.cpu().numpy()))
        elif c == 1 and self.channels == 3:
            u8 = u8.expand(-1, 3, -1, -1)
        elif c != self.channels:
            raise DataError(f"{self.name} takes {self.channels}-channel images, got {c}")
        return to_model_range(resize(u8.cpu(), self.input_size))

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`prepare`'s output -> (features ``[N, 128]``, logits ``[N, num_classes]``),
        without dropout whatever the mode."""
        f = self.features(x)
        return f, self.head(f)


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
    ``class_names`` ...); ``net.name`` is ``featnet:<dataset>``. An unknown name raises
    :class:`DataError` listing the available ones.
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
    net.name = f"featnet:{key}"
    return net.eval()
