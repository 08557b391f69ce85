"""Images -> features: :class:`FeatureExtractor`, and :func:`get_feature_extractor`, which picks
the network.

Which network embeds the images (:func:`get_feature_extractor`):

* **Built-in data** (``mnist``, ``fashion-mnist``, ``digits``, ``emoji``): :class:`FeatureNet`, a
  small CNN classifier (grey; RGB 32x32 for ``emoji``, whose 9 classes are the Unicode groups)
  trained by ``scripts/train_feature_net.py`` on the built-in ``train`` split, whose
  weights ship in ``ddpmlab/assets/featnet_<dataset>.safetensors`` (held-out accuracy, data set
  and architecture are in the file's metadata). Features are its 128-d penultimate activations
  (after BatchNorm and ReLU, the input of the last linear layer); its softmax gives the
  classifier statistics. Numbers computed with it are comparable only with other ddpmlab
  numbers on the same data set, never with published Inception FIDs.
* **Anything else** (or ``features="inception"``): the FID Inception-v3 of pytorch-fid / TTUR
  (:class:`FIDInceptionV3`, 2048-d pool3 features, input resized to 299x299 bilinearly, grey
  repeated to RGB, range [-1, 1]), built from the user's weights file: ``inception_weights``
  (the CLI's ``--inception-weights``), else ``$DDPMLAB_INCEPTION``, else torch hub's
  ``checkpoints/pt_inception-2015-12-05-6726825d.pth``. Nothing is ever downloaded, and the file
  is never unpickled (see :mod:`ddpmlab.features.weights`).

Every network exposes the same two methods (:class:`Embedder`), so the extractor never asks
which one it has: ``prepare(u8)`` (uint8 ``[N, C, H, W]`` -> the float tensor the net takes) and
``embed(x)`` (-> features ``[N, D]`` and logits ``[N, K]``, or None for a non-classifier).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from ..errors import DataError
from .featnet import available_feature_nets, load_feature_net
from .inception import FID_WEIGHTS_NAME, INCEPTION_ENV, InceptionFeatures, find_inception_weights

__all__ = ["RECOMMENDED_N_FEATNET", "RECOMMENDED_N_INCEPTION", "Embedder", "FeatureExtractor",
           "get_feature_extractor"]

# Below this many samples FID is noticeably biased (upwards) by the covariance estimate; see
# evaluate.py's module docstring for how these were chosen.
RECOMMENDED_N_INCEPTION = 10_000   # TTUR / pytorch-fid's advice for the 2048-d pool3 features
RECOMMENDED_N_FEATNET = 5_000      # 128-d: real-vs-real FID 0.25 there (1-2 % of a mild blur's)


class Embedder(Protocol):
    """What :class:`FeatureExtractor` needs of a network (:class:`FeatureNet`,
    :class:`InceptionFeatures`)."""

    def prepare(self, u8: torch.Tensor) -> torch.Tensor:
        """uint8 ``[N, C, H, W]`` (on the CPU) -> the float tensor the network takes."""
        ...

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`prepare`'s output -> (features ``[N, D]``, logits ``[N, K]`` or None)."""
        ...


@dataclass
class FeatureExtractor:
    """Images -> float64 features (and, for the shipped classifiers, softmax probabilities).

    Call it on uint8 ``[N, C, H, W]``; each batch goes through ``net.prepare`` then
    ``net.embed`` (:class:`Embedder`). For a :class:`FeatureNet`, colour is converted to grey
    (ITU-R 601 luma) for the grey nets and grey repeated to RGB for the emoji net, and other
    sizes are resized to its input size (bicubic, antialiased: the data's own
    :func:`~ddpmlab.data.resize`), so a built-in stored at
    another ``data.image_size`` (a 64-px emoji run: 64 -> 32) still uses its own classifier;
    Inception repeats grey to RGB and resizes to 299 as pytorch-fid does.
    """

    name: str                     # "featnet:mnist", "fid-inception-v3", "tiny-inception"
    net: nn.Module                # an Embedder: FeatureNet or InceptionFeatures
    dim: int
    recommended_n: int            # below this many samples FID is noticeably biased
    input_size: int
    channels: int                 # what the net takes (1: grey, 3: RGB)
    class_names: list[str] = field(default_factory=list)   # non-empty: a classifier
    info: dict = field(default_factory=dict)

    @property
    def is_classifier(self) -> bool:
        return bool(self.class_names)

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
            x = net.prepare(u8[i : i + batch_size]).to(device)
            f, logits = net.embed(x)
            if with_probs and logits is not None:
                probs.append(torch.softmax(logits, 1).double().cpu())
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

    ``dataset_name_or_shape``: a built-in name (``mnist``, ``fashion-mnist``, ``digits``,
    ``emoji``), any other data-set name/path, or a ``(C, H, W)`` shape. ``features``:
    ``"auto"`` (the shipped net for a built-in with one, else Inception), ``"inception"``, or a
    built-in name to force that shipped net (e.g. ``"mnist"`` for a folder of 28x28 digits).
    Inception weights are looked up by :func:`find_inception_weights`; when none is found,
    :class:`DataError` says what to pass.
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
            recommended_n=RECOMMENDED_N_FEATNET, input_size=net.input_size, channels=net.channels,
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
        input_size=inc.input_size, channels=inc.channels, info={"weights": str(path)})
