"""Feature networks for FID/KID/precision-recall: a small shipped classifier, or Inception-v3.

:func:`get_feature_extractor` picks the network for a data set and :class:`FeatureExtractor`
embeds uint8 images with it (:mod:`.extractor`, whose docstring says which network is used
when). The shipped classifiers are in :mod:`.featnet`, the FID Inception-v3 and the recognition
of a weights file's architecture in :mod:`.inception`, and the reading of weights files, which
are never unpickled, in :mod:`.weights`.
"""

from .extractor import (
    RECOMMENDED_N_FEATNET,
    RECOMMENDED_N_INCEPTION,
    Embedder,
    FeatureExtractor,
    get_feature_extractor,
)
from .featnet import (
    FEATNET_ARCHS,
    FEATNET_FORMAT,
    FeatureNet,
    available_feature_nets,
    load_feature_net,
)
from .inception import (
    FID_WEIGHTS_NAME,
    INCEPTION_ARCHS,
    INCEPTION_ENV,
    FIDInceptionV3,
    InceptionFeatures,
    TinyInception,
    find_inception_weights,
)
from .weights import load_weights_file

__all__ = [
    "FEATNET_ARCHS",
    "FEATNET_FORMAT",
    "FID_WEIGHTS_NAME",
    "INCEPTION_ARCHS",
    "INCEPTION_ENV",
    "RECOMMENDED_N_FEATNET",
    "RECOMMENDED_N_INCEPTION",
    "Embedder",
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
