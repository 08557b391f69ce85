r"""Sample quality and memorization: FID, KID, precision/recall, nearest training images.

Every metric works on plain arrays (features ``[N, D]`` as float64 NumPy), so each one is tested
on synthetic points against an independent computation; :func:`evaluate_samples` embeds the
images (:mod:`ddpmlab.features` chooses the network) and reports them all in one dict. This
module holds metrics only: the memorization figure is :func:`ddpmlab.viz.save_memorization_figure`,
reading a samples ``.npz`` is :func:`ddpmlab.data.npz.load_samples_npz`, and the table ``ddpmlab
eval`` prints is the CLI's (``format_report``).

* **FID** (Heusel et al. 2017): the Fréchet distance between Gaussians fitted to the two feature
  sets, ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^{1/2})``. The trace of the matrix square root
  is computed as ``sum sqrt(eig(S1^{1/2} S2 S1^{1/2}))`` with symmetric eigen-decompositions
  (the same eigenvalues as ``S1 S2``): no complex parts to discard, and singular or ill-conditioned
  covariances (N <= D) need no ``eps * I`` offset. Tiny negative eigenvalues from round-off are
  clipped to 0, and a result of -1e-12 is reported as 0.
* **KID** (Binkowski et al. 2018): the unbiased MMD^2 with the kernel ``k(x, y) = (x.y / d + 1)^3``,
  averaged over random subsets; unbiased, so its expectation is 0 for equal distributions at any N.
* **Precision / recall** (Kynkäänniemi et al. 2019): a real (fake) manifold is the union of balls
  around each real (fake) point reaching its k-th nearest neighbour; precision is the share of
  fakes inside the real manifold, recall the share of reals inside the fake one (k = 3).
* **Memorization**: for each sample, the distance to its nearest training image divided by the
  typical distance of a *new real* image to its nearest training image (the median over held-out
  images; leave-one-out on the training set when there is no separate held-out split). A real
  image the model never copied has a ratio near 1 (by construction half the held-out images are
  below 1); an exact copy has 0. A sample is flagged as a near-copy below ``threshold = 1/3``.
  Why 1/3: on the built-in MNIST, 4 of the 500 held-out digits fall below it, all "1"s (thin
  strokes: minimum 0.31); every other class stays above 0.5, and on ``digits`` the minimum is
  0.46. A training image with clearly visible Gaussian noise still scores 0.07 (sigma = 4 grey
  levels), 0.13 (8) or 0.26-0.29 (16), so copies are flagged up to noise of about 16-20 grey
  levels while under 1 % of genuinely new images are. ``reference_share`` reports the held-out
  images' own share below the threshold: the false-positive floor for the samples' share. It is
  computed in **pixel space** by default: a near-copy is a pixel notion (in a classifier's
  feature space every well-drawn "7" is a neighbour of every other "7"); a copy shifted by one
  pixel scores about 1.1 and is *not* caught. Float feature arrays are accepted as well.

**How many samples** (``recommended_n``). FID is biased upwards at small N (the covariance is
estimated from N points in D dimensions). For Inception's 2048-d features we follow TTUR /
pytorch-fid: at least 10,000 samples (published numbers use 50,000). For the shipped 128-d
feature networks, 5,000, from a measurement on Fashion-MNIST's 60,000 training images: the FID
between two disjoint *real* sets of N images each falls as about 1/N (N = 500: 2.2, 1,000: 0.94,
2,000: 0.55, 5,000: 0.25, 10,000: 0.13; MNIST gives the same up to its 2 x 2,000), while the
test images blurred by a 3x3 box filter or with Gaussian noise of 25 grey levels score FID 21
and 16. At 5,000 the small-N floor is about 1-2 % of such a visible defect. Below the
recommended N :func:`evaluate_samples` warns (:class:`SmallSampleWarning`) and reports
:func:`real_vs_real_baseline` beside the result: the FID/KID two real sets of the same N already
show, the floor to compare the samples' FID with. The MNIST built-in has only 5,000 digits
(4,500 train), so its reference set is always smaller than that: read its FID next to the
baseline, and prefer KID (unbiased) for comparisons across different N.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .config import DataConfig
from .data import BUILTINS, ImageData, load_dataset
from .errors import DataError
from .features import FeatureExtractor, get_feature_extractor

__all__ = [
    "Memorization",
    "SmallSampleWarning",
    "evaluate_samples",
    "fid",
    "frechet_distance",
    "gaussian_stats",
    "kid",
    "memorization",
    "precision_recall",
    "real_vs_real_baseline",
]

CONFIDENCE = 0.9               # "classified with confidence >= 0.9"
MEMORIZATION_THRESHOLD = 1 / 3
_MAX_PAIR_ELEMENTS = 1 << 24   # distance-matrix chunk: 16M entries (128 MB in float64)


class SmallSampleWarning(UserWarning):
    """:func:`evaluate_samples` scored fewer samples than the feature network's recommended N:
    the FID is biased upwards, and the real-vs-real ``baseline`` beside it says by how much (a
    caller that prints the baseline may ignore this warning by its category)."""


# =========================================================================== FID
def _as_features(x, name: str) -> np.ndarray:
    a = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name}: expected features [N, D], got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ValueError(f"{name}: features contain NaN or Inf")
    return a


def gaussian_stats(feats) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (unbiased, N - 1) of features ``[N, D]``."""
    f = _as_features(feats, "feats")
    if f.shape[0] < 2:
        raise ValueError(f"need at least 2 feature vectors, got {f.shape[0]}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _sym_sqrt(s: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):
    ``|mu1 - mu2|^2 + tr(sigma1) + tr(sigma2) - 2 tr((sigma1 sigma2)^{1/2})``.

    Covariances must be symmetric positive semi-definite (singular is fine); the trace term is
    ``sum_i sqrt(lambda_i)`` over the eigenvalues of ``sigma1^{1/2} sigma2 sigma1^{1/2}``.
    """
    mu1, mu2 = (np.atleast_1d(np.asarray(m, np.float64)) for m in (mu1, mu2))
    s1, s2 = (np.atleast_2d(np.asarray(s, np.float64)) for s in (sigma1, sigma2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu1 {mu1.shape}, sigma1 {s1.shape}, "
                         f"mu2 {mu2.shape}, sigma2 {s2.shape}")
    for name, a in (("mu1", mu1), ("mu2", mu2), ("sigma1", s1), ("sigma2", s2)):
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name} contains NaN or Inf")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2
    r1 = _sym_sqrt(s1)
    m = r1 @ s2 @ r1
    eig = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = float(np.sqrt(np.clip(eig, 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def fid(feats_a, feats_b) -> float:
    """FID between two feature sets ``[N, D]`` and ``[M, D]`` (Gaussian fit to each)."""
    return frechet_distance(*gaussian_stats(feats_a), *gaussian_stats(feats_b))


# =========================================================================== KID
def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, seed: int = 0,
        device: str | torch.device = "cpu") -> tuple[float, float]:
    """Kernel Inception Distance: the unbiased MMD^2 with ``k(x, y) = (x.y / d + 1)^3``.

    For each of ``subsets`` rounds, ``m = min(subset_size, N, M)`` points are drawn without
    replacement from each set and
    ``mean_{i != j} k(a_i, a_j) + mean_{i != j} k(b_i, b_j) - 2 mean_{i, j} k(a_i, b_j)``
    is computed (float64, on ``device``). Returns the mean and the standard deviation (ddof=0,
    as torch-fidelity and clean-fid) over the rounds. Seeded: same inputs, same numbers.
    """
    a, b = _as_features(feats_a, "feats_a"), _as_features(feats_b, "feats_b")
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature dims differ: {a.shape[1]} vs {b.shape[1]}")
    m = min(subset_size, a.shape[0], b.shape[0])
    if m < 2 or subsets < 1:
        raise ValueError(f"KID needs subsets >= 1 and at least 2 points per set (got m={m})")
    rng = np.random.default_rng(seed)
    on_cpu = torch.device(device).type == "cpu"   # NumPy there (less overhead), else torch
    ta, tb = (a, b) if on_cpu else (_tensor(a, torch.float64, device),
                                    _tensor(b, torch.float64, device))
    d, off = a.shape[1], m * (m - 1)

    def k(x, y):  # NumPy arrays and torch tensors alike
        return (x @ y.T / d + 1.0) ** 3

    est = np.empty(subsets)
    for s in range(subsets):
        ia, ib = (rng.choice(n, m, replace=False) for n in (a.shape[0], b.shape[0]))
        if not on_cpu:
            ia, ib = torch.from_numpy(ia).to(ta.device), torch.from_numpy(ib).to(tb.device)
        x, y = ta[ia], tb[ib]
        kxx, kyy = k(x, x), k(y, y)
        est[s] = ((kxx.sum() - kxx.diagonal().sum()) / off + (kyy.sum() - kyy.diagonal().sum())
                  / off - 2.0 * k(x, y).mean()).item()
    return float(est.mean()), float(est.std())


# =========================================================================== distances
def _chunks(n: int, size: int) -> Iterable[slice]:
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


def _tensor(x, dtype: torch.dtype, device) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
    return t.to(device=device, dtype=dtype)


def _row_chunk(m: int) -> int:
    return max(1, min(4096, _MAX_PAIR_ELEMENTS // max(m, 1)))


def _kth_nn_radius(x: torch.Tensor, k: int) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row (self excluded)."""
    n = x.shape[0]
    if not 1 <= k < n:
        raise ValueError(f"k={k} needs 1 <= k < number of points ({n})")
    out = torch.empty(n, dtype=x.dtype, device=x.device)
    for sl in _chunks(n, _row_chunk(n)):
        d = torch.cdist(x[sl], x)
        out[sl] = d.topk(k + 1, dim=1, largest=False).values[:, k]  # [:, 0] is the point itself
    return out


def _covered(points: torch.Tensor, centers: torch.Tensor, radii: torch.Tensor) -> torch.Tensor:
    """For each point: is it inside at least one ball (center_j, radius_j)?"""
    out = torch.empty(points.shape[0], dtype=torch.bool, device=points.device)
    for sl in _chunks(points.shape[0], _row_chunk(centers.shape[0])):
        out[sl] = (torch.cdist(points[sl], centers) <= radii[None, :]).any(1)
    return out


def precision_recall(real, fake, k: int = 3, device: str | torch.device = "cpu"
                     ) -> tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of ``fake`` w.r.t. ``real``.

    Each set's manifold is the union of balls around its points with radius the distance to
    the point's k-th nearest neighbour in the same set. Precision: share of fake points inside
    the real manifold; recall: share of real points inside the fake manifold. Exact, batched
    (distance matrices in chunks of 16M entries), float64.
    """
    r = _tensor(_as_features(real, "real"), torch.float64, device)
    f = _tensor(_as_features(fake, "fake"), torch.float64, device)
    if r.shape[1] != f.shape[1]:
        raise ValueError(f"feature dims differ: {r.shape[1]} vs {f.shape[1]}")
    precision = _covered(f, r, _kth_nn_radius(r, k)).double().mean().item()
    recall = _covered(r, f, _kth_nn_radius(f, k)).double().mean().item()
    return precision, recall


def _flat(x, name: str) -> tuple[torch.Tensor, str]:
    """Images (uint8 -> [0, 1]) or features, flattened to float32 ``[N, D]``."""
    t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    kind = "pixel" if t.dtype == torch.uint8 else "features"
    t = t.reshape(t.shape[0], -1).to(torch.float32)
    if kind == "pixel":
        t = t / 255.0
    if t.shape[0] == 0:
        raise DataError(f"memorization: {name} is empty")
    return t, kind


def _nearest(a: torch.Tensor, b: torch.Tensor, device, exclude: torch.Tensor | None = None
             ) -> tuple[np.ndarray, np.ndarray]:
    """Nearest row of ``b`` for each row of ``a``: (float64 distance, index). ``exclude[i]``:
    an index of ``b`` that row i may not match (leave-one-out), or -1."""
    n, m = a.shape[0], b.shape[0]
    best_d = torch.full((n,), math.inf, dtype=torch.float32)
    best_i = torch.zeros(n, dtype=torch.long)
    col = max(1, min(m, 16384))
    row = max(1, _MAX_PAIR_ELEMENTS // 4 // col)
    for bs in _chunks(m, col):
        bt = b[bs].to(device)
        for rs in _chunks(n, row):
            d = torch.cdist(a[rs].to(device), bt)
            if exclude is not None:
                ex = exclude[rs].to(device) - bs.start
                hit = (ex >= 0) & (ex < d.shape[1])
                d[hit.nonzero().squeeze(1), ex[hit]] = math.inf
            v, i = d.min(1)
            v, i = v.cpu(), i.cpu() + bs.start
            better = v < best_d[rs]
            best_d[rs] = torch.where(better, v, best_d[rs])
            best_i[rs] = torch.where(better, i, best_i[rs])
    # the chunked search uses the fast (matmul) distance; recompute the winners exactly
    exact = (a.double() - b[best_i].double()).norm(dim=1)
    return exact.numpy(), best_i.numpy()


@dataclass
class Memorization:
    """Nearest-training-image statistics; ``ratio = nn_distance / scale``."""

    ratio: np.ndarray             # [N]
    nn_index: np.ndarray          # [N] index into the training set
    nn_distance: np.ndarray       # [N] (pixel space: images scaled to [0, 1])
    scale: float                  # median NN distance of held-out real images to the train set
    scale_source: str             # "held-out (n=...)" or "leave-one-out (n=...)"
    threshold: float
    space: str                    # "pixel" or "features"
    worst: list[tuple[int, int, float]] = field(default_factory=list)  # (sample, train, ratio)
    reference_share: float = math.nan  # share of the held-out (or LOO) images below threshold

    @property
    def n_flagged(self) -> int:
        return int((self.ratio < self.threshold).sum())

    @property
    def share(self) -> float:
        return self.n_flagged / max(1, len(self.ratio))

    def summary(self) -> dict:
        """JSON-ready: share/count of near-copies, ratio quantiles, the worst pairs."""
        q = np.quantile(self.ratio, [0.0, 0.01, 0.5]) if len(self.ratio) else [math.nan] * 3
        return {
            "space": self.space, "threshold": self.threshold, "share": self.share,
            "n_flagged": self.n_flagged, "n": int(len(self.ratio)), "scale": self.scale,
            "scale_source": self.scale_source, "ratio_min": float(q[0]),
            "ratio_p01": float(q[1]), "ratio_median": float(q[2]),
            "reference_share": self.reference_share,
            "worst": [{"sample": i, "train": j, "ratio": r} for i, j, r in self.worst],
        }


def memorization(samples, train, heldout=None, threshold: float = MEMORIZATION_THRESHOLD,
                 top_k: int = 8, max_heldout: int = 1000, seed: int = 0,
                 device: str | torch.device = "cpu") -> Memorization:
    """How close each sample is to its nearest training image, relative to new real images.

    ``samples``, ``train``, ``heldout``: uint8 images ``[N, C, H, W]`` (pixel space, scaled to
    [0, 1]; the default and the intended use) or float features ``[N, D]``. ``scale`` is the
    median distance of up to ``max_heldout`` held-out images to their nearest training image;
    without ``heldout``, of up to ``max_heldout`` training images to their nearest *other*
    training image. A sample with ``ratio < threshold`` (default 1/3; see the module docstring)
    is a near-copy; ``worst`` lists the ``top_k`` smallest ratios. Distances are computed in
    chunks (bounded memory) with ``torch.cdist``, on ``device``.
    """
    s, kind = _flat(samples, "samples")
    t, kind_t = _flat(train, "train")
    if kind != kind_t or s.shape[1] != t.shape[1]:
        raise DataError(f"memorization: samples ({kind}, {s.shape[1]} values each) and train "
                        f"({kind_t}, {t.shape[1]}) are not comparable")
    rng = np.random.default_rng(seed)
    if heldout is not None:
        h, kind_h = _flat(heldout, "heldout")
        if kind_h != kind or h.shape[1] != t.shape[1]:
            raise DataError("memorization: heldout is not comparable with train")
        if h.shape[0] > max_heldout:
            h = h[torch.from_numpy(np.sort(rng.choice(h.shape[0], max_heldout, replace=False)))]
        ref_d, _ = _nearest(h, t, device)
        source = f"held-out (n={h.shape[0]})"
    else:
        if t.shape[0] < 2:
            raise DataError("memorization: leave-one-out needs at least 2 training images")
        idx = np.sort(rng.choice(t.shape[0], min(max_heldout, t.shape[0]), replace=False))
        ref_d, _ = _nearest(t[torch.from_numpy(idx)], t, device, exclude=torch.from_numpy(idx))
        source = f"leave-one-out (n={len(idx)})"
    scale = float(np.median(ref_d))
    if not scale > 0:
        raise DataError("memorization: the typical real-to-train distance is 0 (the held-out "
                        "images are copies of training images)")
    dist, index = _nearest(s, t, device)
    ratio = dist / scale
    order = np.argsort(ratio, kind="stable")[:top_k]
    worst = [(int(i), int(index[i]), float(ratio[i])) for i in order]
    return Memorization(ratio, index, dist, scale, source, float(threshold),
                        "pixel" if kind == "pixel" else "features", worst,
                        float((ref_d / scale < threshold).mean()))


# =========================================================================== baseline
def real_vs_real_baseline(real_feats, n: int, repeats: int = 3, seed: int = 0,
                          kid_subsets: int = 100, kid_subset_size: int = 1000,
                          device: str | torch.device = "cpu") -> dict:
    """FID and KID between two *disjoint* random subsets of the real features, each of
    ``min(n, len(real) // 2)`` points, over ``repeats`` draws: the value a perfect generator
    would get with that many samples (FID's small-N bias). Reported beside a result when N is
    below the recommended count."""
    r = _as_features(real_feats, "real_feats")
    m = min(int(n), r.shape[0] // 2)
    if m < 2:
        raise ValueError(f"need at least 4 real feature vectors, got {r.shape[0]}")
    rng = np.random.default_rng(seed)
    fids, kids = [], []
    for i in range(repeats):
        perm = rng.permutation(r.shape[0])
        a, b = r[perm[:m]], r[perm[m : 2 * m]]
        fids.append(fid(a, b))
        kids.append(kid(a, b, kid_subsets, kid_subset_size, seed=seed + i, device=device)[0])
    return {"n": m, "n_requested": int(n), "repeats": repeats,
            "fid_mean": float(np.mean(fids)), "fid_std": float(np.std(fids)),
            "kid_mean": float(np.mean(kids)), "kid_std": float(np.std(kids))}


# =========================================================================== all together
def _subset(x: torch.Tensor, n_max: int, rng: np.random.Generator) -> torch.Tensor:
    if x.shape[0] <= n_max:
        return x
    return x[torch.from_numpy(np.sort(rng.choice(x.shape[0], n_max, replace=False)))]


def _samples_and_sets(samples_u8, cfg: DataConfig, split: str, heldout_split: str,
                      reference: ImageData | None, heldout: ImageData | None
                      ) -> tuple[torch.Tensor, ImageData, ImageData | None]:
    """The samples (checked: uint8 ``[N, C, H, W]``, N >= 4, the data's C, H, W), the
    reference set and the held-out set of :func:`evaluate_samples` (None when the data have no
    separate held-out split: memorization then uses leave-one-out)."""
    x = torch.as_tensor(np.asarray(samples_u8)) if not isinstance(samples_u8, torch.Tensor) \
        else samples_u8.cpu()
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise DataError(f"samples must be uint8 [N, C, H, W], got {x.dtype} {tuple(x.shape)}")
    if x.shape[0] < 4:
        raise DataError(f"need at least 4 samples to evaluate, got {int(x.shape[0])}")
    ref = reference if reference is not None else load_dataset(cfg, split)
    if tuple(x.shape[1:]) != ref.shape:
        raise DataError(f"samples are {'x'.join(map(str, x.shape[1:]))} but {ref.source} images "
                        f"are {'x'.join(map(str, ref.shape))} (set data.image_size/channels)")
    held: ImageData | None = heldout
    if held is None and heldout_split:
        held = load_dataset(cfg, heldout_split)
    if held is not None and len(held) == len(ref) and torch.equal(held.images, ref.images):
        held = None  # no separate held-out split (a folder or .npz): leave-one-out instead
    return x, ref, held


def evaluate_samples(
    samples_u8,
    data: str | DataConfig,
    *,
    split: str = "train",
    heldout_split: str = "test",
    inception_weights: str | Path | None = None,
    features: str = "auto",
    extractor: FeatureExtractor | None = None,
    reference: ImageData | None = None,
    heldout: ImageData | None = None,
    labels=None,
    kid_subsets: int = 100,
    kid_subset_size: int = 1000,
    pr_k: int = 3,
    pr_max: int = 10_000,
    max_real: int = 50_000,
    memorization_threshold: float = MEMORIZATION_THRESHOLD,
    top_k: int = 8,
    batch_size: int = 256,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> dict:
    """Evaluate generated images against a data set; returns a JSON-ready dict.

    ``samples_u8``: uint8 ``[N, C, H, W]`` (tensor or array), the same C, H, W as the data
    (``data`` is a name/path or the run's ``DataConfig``, so resizing options are honoured).
    The reference set is ``split`` (the images the model learned; up to ``max_real``), the
    held-out set ``heldout_split`` (memorization scale, classifier reference). A caller that
    has already read them passes them as ``reference`` / ``heldout`` (and a built ``extractor``)
    so nothing is read or built twice. ``labels`` (int ``[N]``, optional): the class each
    sample was drawn as (a conditional run's ``y``), for the share read as asked.

    Keys: ``n``, ``n_real``, ``features`` (network, dim), ``fid``, ``kid_mean``, ``kid_std``,
    ``precision``, ``recall`` (k=``pr_k``, on up to ``pr_max`` points per side),
    ``recommended_n``, ``below_recommended``, ``baseline`` (real-vs-real FID/KID at the same N,
    only when below; else None), ``memorization`` (pixel space, :meth:`Memorization.summary`),
    and for the shipped classifiers ``classifier``: ``confident_share`` (share of samples whose
    top softmax probability is >= 0.9), ``class_counts`` (argmax over all samples),
    ``confident_class_counts``, ``class_names``, ``real_confident_share`` (the same share on
    the held-out real images, for scale) and the classifier's held-out ``accuracy``; with
    ``labels`` also ``as_requested`` (share of samples whose argmax is the class asked for) and
    ``as_requested_confident`` (the same, with confidence >= 0.9).
    """
    cfg = data if isinstance(data, DataConfig) else DataConfig(dataset=str(data))
    x, ref, held = _samples_and_sets(samples_u8, cfg, split, heldout_split, reference, heldout)
    n = int(x.shape[0])
    asked = _requested(labels, n)
    name = cfg.dataset.strip().lower()
    ext = extractor or get_feature_extractor(name if name in BUILTINS else ref.shape,
                                             inception_weights, features)
    rng = np.random.default_rng(seed)
    ref_images = _subset(ref.images, max_real, rng)
    real_f = ext(ref_images, batch_size, device)
    fake_f, probs = ext(x, batch_size, device, with_probs=True)

    out: dict = {"n": n, "n_real": int(real_f.shape[0]), "reference": ref.source,
                 "features": {"name": ext.name, "dim": ext.dim, **ext.info}}
    out["fid"] = fid(fake_f, real_f)
    out["kid_mean"], out["kid_std"] = kid(fake_f, real_f, kid_subsets, kid_subset_size, seed,
                                          device)
    pr_real = real_f if len(real_f) <= pr_max else real_f[np.sort(rng.choice(len(real_f), pr_max,
                                                                             replace=False))]
    pr_fake = fake_f[:pr_max]
    out["precision"], out["recall"] = precision_recall(pr_real, pr_fake, pr_k, device)
    out["pr_k"] = pr_k
    out["recommended_n"] = ext.recommended_n
    out["below_recommended"] = n < ext.recommended_n
    out["baseline"] = None
    if n < ext.recommended_n:
        out["baseline"] = real_vs_real_baseline(real_f, n, seed=seed, kid_subsets=kid_subsets,
                                                kid_subset_size=kid_subset_size, device=device)
        b = out["baseline"]
        warnings.warn(
            f"FID from n={n} samples is biased upwards (recommended >= {ext.recommended_n} for "
            f"{ext.name}); two disjoint real sets of n={b['n']} already give FID "
            f"{b['fid_mean']:.3g} +- {b['fid_std']:.2g}: compare against that",
            SmallSampleWarning, stacklevel=2)
    mem = memorization(x, ref.images, None if held is None else held.images,
                       memorization_threshold, top_k, seed=seed, device=device)
    out["memorization"] = mem.summary()
    out["classifier"] = None
    if ext.is_classifier and probs is not None:
        real_images = None if held is None else _subset(held.images, max_real, rng)
        out["classifier"] = _classifier_report(ext, probs, real_images, batch_size, device)
        out["classifier"].update(_as_requested(probs, asked))
    return out


def _requested(labels, n: int) -> np.ndarray | None:
    """``labels`` as int64 ``[n]`` (None stays None); a wrong shape is a :class:`DataError`."""
    if labels is None:
        return None
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"labels must be {n} integers (one per sample), got {y.dtype} "
                        f"{tuple(y.shape)}")
    return y.astype(np.int64)


def _as_requested(probs: np.ndarray, asked: np.ndarray | None) -> dict:
    """The share of samples the classifier reads as the class they were drawn as (and with
    confidence >= 0.9); empty without labels, None where a label is not one of its classes."""
    if asked is None:
        return {}
    if asked.size and (asked.min() < 0 or asked.max() >= probs.shape[1]):
        return {"as_requested": None, "as_requested_confident": None}
    hit = probs.argmax(1) == asked
    return {"as_requested": float(hit.mean()),
            "as_requested_confident": float((hit & (probs.max(1) >= CONFIDENCE)).mean())}


def _classifier_report(ext: FeatureExtractor, probs: np.ndarray,
                       real_images: torch.Tensor | None, batch_size: int,
                       device: str | torch.device) -> dict:
    """The ``classifier`` entry of :func:`evaluate_samples`: how confidently a shipped
    classifier recognises the samples (``probs``), and the same share on ``real_images``."""
    conf, pred = probs.max(1), probs.argmax(1)
    k = len(ext.class_names)
    confident = conf >= CONFIDENCE
    real_share = None
    if real_images is not None:
        _, real_p = ext(real_images, batch_size, device, with_probs=True)
        real_share = float((real_p.max(1) >= CONFIDENCE).mean())
    return {
        "confidence": CONFIDENCE, "confident_share": float(confident.mean()),
        "class_counts": np.bincount(pred, minlength=k).tolist(),
        "confident_class_counts": np.bincount(pred[confident], minlength=k).tolist(),
        "class_names": list(ext.class_names), "real_confident_share": real_share,
        "accuracy": ext.info.get("accuracy"),
    }
