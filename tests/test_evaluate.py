"""Tests of ddpmlab.evaluate and ddpmlab.features, each against an independent computation:
closed-form Fréchet distances, brute-force KID and k-NN manifolds, known synthetic overlaps,
exact copies of training digits, the shipped classifier's accuracy, and the Inception weights
path (a tiny stand-in written by the test; a malicious pickle is refused without running)."""

from __future__ import annotations

import io
import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from ddpmlab import evaluate as E
from ddpmlab import features as FT
from ddpmlab.config import DataConfig
from ddpmlab.data import load_dataset, to_model_range
from ddpmlab.errors import DataError
from ddpmlab.viz import save_memorization_figure


@pytest.fixture(scope="module")
def mnist():
    cfg = DataConfig(dataset="mnist")
    return load_dataset(cfg, "train"), load_dataset(cfg, "test")


@pytest.fixture(autouse=True)
def no_user_inception(monkeypatch, tmp_path):
    """Hide any Inception weights of the machine running the tests."""
    monkeypatch.delenv(FT.INCEPTION_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))


def random_spd(d: int, rng: np.random.Generator, rank: int | None = None) -> np.ndarray:
    a = rng.normal(size=(d, rank or d))
    return a @ a.T


# =========================================================================== Fréchet / FID
def test_frechet_diagonal_closed_form():
    rng = np.random.default_rng(0)
    d = 7
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3, size=d), rng.uniform(0.1, 3, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    got = E.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2))
    assert got == pytest.approx(expected, rel=1e-10, abs=1e-12)
    # one variance 0 (singular covariance): still the closed form, no NaN
    s1[0] = 0.0
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert E.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)


def test_frechet_commuting_matrices():
    rng = np.random.default_rng(1)
    d = 6
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))          # shared eigenvectors -> commuting
    a, b = rng.uniform(0.05, 4, size=d), rng.uniform(0.05, 4, size=d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu = rng.normal(size=d)
    expected = 1.5**2 * d + np.sum(a + b - 2 * np.sqrt(a * b))
    got = E.frechet_distance(mu, s1, mu + 1.5, s2)
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_matches_scipy_sqrtm_on_general_matrices():
    linalg = pytest.importorskip("scipy.linalg")
    rng = np.random.default_rng(2)
    for d in (3, 16, 40):
        s1, s2 = random_spd(d, rng), random_spd(d, rng)
        mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
        covmean = linalg.sqrtm(s1 @ s2).real                # pytorch-fid's route
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
        assert E.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-7)


def test_frechet_rank_deficient_is_finite_and_symmetric():
    rng = np.random.default_rng(3)
    d = 30
    s1, s2 = random_spd(d, rng, rank=5), random_spd(d, rng, rank=8)   # N < D in a real run
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    a, b = E.frechet_distance(mu1, s1, mu2, s2), E.frechet_distance(mu2, s2, mu1, s1)
    assert np.isfinite(a) and a > 0
    assert a == pytest.approx(b, rel=1e-6)
    with pytest.raises(ValueError, match="shapes"):
        E.frechet_distance(mu1, s1, mu2[:3], s2)


def test_fid_identical_sets_and_pure_shift():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32))
    assert abs(E.fid(x, x)) < 1e-6
    shift = rng.normal(size=32)
    assert E.fid(x, x + shift) == pytest.approx(float(shift @ shift), rel=1e-6)
    mu, sigma = E.gaussian_stats(x)
    assert np.allclose(sigma, np.cov(x.T)) and np.allclose(mu, x.mean(0))


# =========================================================================== KID
def brute_force_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with (x.y/d + 1)^3, written as explicit sums over pairs."""
    d, m = x.shape[1], x.shape[0]
    k = lambda u, v: (float(np.dot(u, v)) / d + 1.0) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    return xx + yy - 2 * xy


def test_kid_matches_brute_force_mmd():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(25, 4)), rng.normal(0.3, 1.2, size=(25, 4))
    mean, std = E.kid(x, y, subsets=3, subset_size=25)   # whole sets: every subset is the same
    assert mean == pytest.approx(brute_force_mmd2(x, y), rel=1e-10)
    assert std == pytest.approx(0.0, abs=1e-12)


def test_kid_unbiased_for_equal_distributions_and_positive_for_shifted():
    rng = np.random.default_rng(6)
    same, shifted = [], []
    for _ in range(60):                                   # independent draws -> independent values
        x, y = rng.normal(size=(100, 8)), rng.normal(size=(100, 8))
        same.append(E.kid(x, y, subsets=1, subset_size=100)[0])
        shifted.append(E.kid(x, y + 0.5, subsets=1, subset_size=100)[0])
    same, shifted = np.array(same), np.array(shifted)
    se = same.std(ddof=1) / np.sqrt(len(same))
    assert abs(same.mean()) < 3 * se                     # expectation 0: unbiased
    se_s = shifted.std(ddof=1) / np.sqrt(len(shifted))
    assert shifted.mean() > 10 * se_s and shifted.mean() > 20 * abs(same.mean())
    # the biased V-statistic would be clearly positive here: the diagonal matters
    x, y = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    kxx = (x @ x.T / 8 + 1) ** 3
    kyy = (y @ y.T / 8 + 1) ** 3
    biased = kxx.mean() + kyy.mean() - 2 * ((x @ y.T / 8 + 1) ** 3).mean()
    assert biased > 5 * se


def test_kid_subsets_are_seeded():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(300, 5)), rng.normal(size=(200, 5))
    assert E.kid(x, y, 10, 50, seed=1) == E.kid(x, y, 10, 50, seed=1)
    assert E.kid(x, y, 10, 50, seed=1) != E.kid(x, y, 10, 50, seed=2)


# =========================================================================== precision / recall
def brute_force_pr(real: np.ndarray, fake: np.ndarray, k: int) -> tuple[float, float]:
    def radii(a):
        d = np.linalg.norm(a[:, None] - a[None], axis=-1)
        return np.sort(d, axis=1)[:, k]                  # column 0 is the point itself

    def covered(p, c, r):
        d = np.linalg.norm(p[:, None] - c[None], axis=-1)
        return (d <= r[None]).any(1).mean()

    return covered(fake, real, radii(real)), covered(real, fake, radii(fake))


def test_precision_recall_matches_brute_force():
    rng = np.random.default_rng(8)
    real, fake = rng.normal(size=(120, 3)), rng.normal(0.5, 0.7, size=(90, 3))
    for k in (1, 3, 5):
        assert E.precision_recall(real, fake, k) == pytest.approx(brute_force_pr(real, fake, k))


def test_precision_recall_known_overlaps():
    rng = np.random.default_rng(9)
    real = rng.uniform(size=(2000, 2))
    assert E.precision_recall(real, real.copy(), 3) == (1.0, 1.0)
    far = rng.uniform(size=(2000, 2)) + 10.0
    assert E.precision_recall(real, far, 3) == (0.0, 0.0)
    half = rng.uniform(size=(1000, 2)) * np.array([0.5, 1.0])     # covers x < 0.5 only
    p, r = E.precision_recall(real, half, 3)
    assert p > 0.97
    assert 0.45 < r < 0.6


# =========================================================================== memorization
def test_memorization_flags_copies_not_heldout(mnist):
    train, test = mnist
    copies = [3, 1000, 2222, 4499]
    heldout = [0, 120, 160, 230, 270, 330, 380, 440, 490]   # one of each class except "1"
    noisy = train.images[[17]].float() + 6 * torch.randn(1, 1, 28, 28,
                                                         generator=torch.Generator().manual_seed(0))
    samples = torch.cat([train.images[copies], noisy.round().clamp(0, 255).to(torch.uint8),
                         test.images[heldout]])
    m = E.memorization(samples, train.images, test.images, top_k=5)
    flagged = m.ratio < m.threshold
    assert flagged[:5].all() and not flagged[5:].any()
    assert m.n_flagged == 5 and m.share == pytest.approx(5 / len(samples))
    assert list(m.nn_index[:5]) == copies + [17]
    assert np.all(m.ratio[:4] == 0.0)                         # exact copies: distance exactly 0
    assert {w[0] for w in m.worst} == {0, 1, 2, 3, 4}
    # distances against a brute-force search (pixels scaled to [0, 1])
    flat_t = train.images.reshape(len(train), -1).double() / 255
    for i in (4, 7):
        d = (flat_t - samples[i].reshape(-1).double() / 255).norm(dim=1)
        assert m.nn_distance[i] == pytest.approx(d.min().item(), rel=1e-6)  # float32 pixels
        assert m.nn_index[i] == int(d.argmin())
    # the scale is the median held-out nearest-neighbour distance
    dists = torch.cdist(test.images.reshape(len(test), -1).double() / 255, flat_t).min(1).values
    assert m.scale == pytest.approx(float(np.median(dists.numpy())), rel=1e-6)
    s = m.summary()
    assert s["space"] == "pixel" and s["n_flagged"] == 5 and 0 <= s["reference_share"] < 0.02


def test_memorization_leave_one_out_and_features():
    rng = np.random.default_rng(10)
    train = rng.normal(size=(300, 16))
    samples = np.concatenate([train[:3], rng.normal(size=(20, 16))])
    m = E.memorization(samples, train)                        # float features, no held-out
    assert m.space == "features" and m.scale_source.startswith("leave-one-out")
    assert (m.ratio[:3] < 1e-6).all() and (m.ratio[3:] > m.threshold).all()
    with pytest.raises(DataError, match="comparable"):
        E.memorization(samples[:, :8], train)


def test_memorization_figure(tmp_path, mnist):
    train, _ = mnist
    samples = train.images[[5, 6, 7]]
    m = E.memorization(samples, train.images, top_k=3)
    path = save_memorization_figure(samples, train.images, m, tmp_path / "mem.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[1] >= 3 * 56
    save_memorization_figure(samples, train.images, [(0, 5)], tmp_path / "one.png")
    with pytest.raises(DataError, match="no pairs"):
        save_memorization_figure(samples, train.images, [], tmp_path / "none.png")


def test_evaluate_holds_metrics_only():
    """The figure is viz's, the samples .npz reader data's, the printed table the CLI's."""
    for name in ("save_memorization_figure", "load_samples_npz", "format_report"):
        assert not hasattr(E, name), name


# =========================================================================== shipped feature nets
def test_shipped_feature_net_accuracy(mnist):
    _, test = mnist
    net = FT.load_feature_net("mnist")
    assert net.meta["dataset"] == "mnist" and net.meta["test_split"] == "mnist:test"
    reported = float(net.meta["accuracy"])
    assert reported >= 0.985
    with torch.no_grad():
        pred = net(to_model_range(test.images)).argmax(1)
    acc = (pred == test.labels).double().mean().item()
    assert acc == pytest.approx(reported, abs=1.5e-3)
    assert net.features(to_model_range(test.images[:4])).shape == (4, 128)
    for path in (Path(FT.__file__).parents[1] / "assets").glob("featnet_*.safetensors"):
        assert path.stat().st_size < 2_000_000


def test_all_shipped_nets_meet_their_targets():
    targets = {"mnist": 0.985, "fashion-mnist": 0.90, "digits": 0.95, "emoji": 0.75}
    assert set(FT.available_feature_nets()) == set(targets)
    for name, target in targets.items():
        net = FT.load_feature_net(name)
        assert net.meta["dataset"] == name and float(net.meta["accuracy"]) >= target
        assert int(net.meta["n_correct"]) / int(net.meta["n_test"]) == pytest.approx(
            float(net.meta["accuracy"]), abs=5e-5)


def test_evaluate_samples_on_digits_with_the_8x8_net():
    test = load_dataset(DataConfig(dataset="digits"), "test")
    with pytest.warns(E.SmallSampleWarning, match="biased upwards"):  # (its own category:
        out = E.evaluate_samples(test.images[:60], "digits", kid_subsets=5, max_real=600)
    assert issubclass(E.SmallSampleWarning, UserWarning)  # score_run ignores it alone)
    assert out["features"]["name"] == "featnet:digits" and out["features"]["arch"] == "featnet8"
    assert out["memorization"]["n_flagged"] == 0
    assert out["classifier"]["confident_share"] > 0.9


def test_unknown_feature_net_lists_available():
    with pytest.raises(DataError, match="available: .*mnist"):
        FT.load_feature_net("cifar10")


def test_extractor_choice_without_inception_weights():
    ext = FT.get_feature_extractor("mnist")
    assert ext.name == "featnet:mnist" and ext.dim == 128 and ext.is_classifier
    with pytest.raises(DataError, match="--inception-weights"):
        FT.get_feature_extractor((3, 32, 32))
    with pytest.raises(DataError, match=FT.INCEPTION_ENV):
        FT.get_feature_extractor("/data/faces")
    with pytest.raises(DataError, match="no such file"):
        FT.get_feature_extractor((3, 32, 32), inception_weights="/nonexistent/w.safetensors")


# =========================================================================== Inception path
def tiny_weights(tmp_path: Path, suffix: str = ".safetensors") -> tuple[Path, FT.TinyInception]:
    torch.manual_seed(0)
    net = FT.TinyInception().eval()
    with torch.no_grad():
        for mod in net.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):   # non-trivial running statistics
                mod.running_mean.uniform_(-0.1, 0.1)
                mod.running_var.uniform_(0.5, 1.5)
    path = tmp_path / f"tiny{suffix}"
    sd = {k: v.contiguous() for k, v in net.state_dict().items()}
    if suffix == ".safetensors":
        from safetensors.torch import save_file
        save_file(sd, str(path))
    else:
        torch.save(sd, path)
    return path, net


def test_inception_path_with_tiny_stand_in(tmp_path, monkeypatch):
    path, ref_net = tiny_weights(tmp_path)
    ext = FT.get_feature_extractor((1, 20, 20), inception_weights=path)
    assert ext.name == "tiny-inception" and ext.dim == 16 and not ext.is_classifier
    u8 = torch.randint(0, 256, (5, 1, 20, 20), dtype=torch.uint8,
                       generator=torch.Generator().manual_seed(1))
    got = ext(u8, batch_size=2)
    # independent: [-1, 1], grey -> RGB, bilinear resize to 16, the original network
    x = F.interpolate(to_model_range(u8).repeat(1, 3, 1, 1), size=(16, 16), mode="bilinear",
                      align_corners=False)
    with torch.no_grad():
        want = ref_net.features(x).double().numpy()
    assert got.dtype == np.float64 and got.shape == (5, 16)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # found through $DDPMLAB_INCEPTION too, and a torch .pth (weights-only loader) gives the same
    pth, _ = tiny_weights(tmp_path, ".pth")
    monkeypatch.setenv(FT.INCEPTION_ENV, str(pth))
    ext2 = FT.get_feature_extractor("/some/folder")
    np.testing.assert_allclose(ext2(u8), want, rtol=1e-5, atol=1e-6)


class Payload:
    """Unpickling this creates a file: proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_malicious_pickle_is_refused_without_running(tmp_path):
    live = tmp_path / "live_marker"
    pickle.loads(pickle.dumps(Payload(live)))            # the payload is real ...
    assert live.exists()
    for i, write in enumerate([
        lambda p, m: torch.save({"conv.weight": Payload(m)}, p),        # zip format
        lambda p, m: p.write_bytes(pickle.dumps(Payload(m))),          # legacy raw pickle
    ]):
        marker = tmp_path / f"marker_{i}"
        evil = tmp_path / f"evil_{i}.pth"
        write(evil, marker)
        with pytest.raises(DataError, match="refused"), warnings.catch_warnings():
            warnings.simplefilter("ignore")              # torch: "pickle protocol 4" notice
            FT.get_feature_extractor((3, 32, 32), inception_weights=evil)
        assert not marker.exists()                       # ... but never ran here
    other = tmp_path / "weights.pkl"
    other.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(DataError, match="unsupported"):
        FT.load_weights_file(other)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 32)
    with pytest.raises(DataError, match="safetensors"):
        FT.load_weights_file(junk)


def test_wrong_weights_are_named(tmp_path):
    from safetensors.torch import save_file
    path = tmp_path / "other.safetensors"
    save_file({"layer.weight": torch.zeros(3, 3)}, str(path))
    with pytest.raises(DataError, match="not the FID Inception-v3 weights"):
        FT.InceptionFeatures.from_file(path)


def test_fid_inception_architecture(tmp_path):
    with torch.device("meta"):                         # shapes only: instant, no memory
        net = FT.FIDInceptionV3()
    # torchvision's inception_v3 has 27,161,264 parameters; less the aux head (3,326,696) and the
    # 1000-class fc (2,049,000), plus the FID file's 1008-class fc (2,065,392):
    assert sum(p.numel() for p in net.parameters()) == 23_850_960
    shapes = {k: tuple(v.shape) for k, v in net.state_dict().items()}
    assert shapes["Conv2d_1a_3x3.conv.weight"] == (32, 3, 3, 3)
    assert shapes["Mixed_6e.branch7x7dbl_5.conv.weight"] == (192, 192, 1, 7)
    assert shapes["Mixed_7c.branch3x3dbl_3b.conv.weight"] == (384, 384, 3, 1)
    assert shapes["Mixed_5b.branch_pool.bn.running_var"] == (32,)
    assert shapes["fc.weight"] == (1008, 2048)
    # pytorch-fid's file layout (no num_batches_tracked) is recognised, loads and runs
    sd = {k: torch.full(s, 1.0 if k.endswith("running_var") else 0.01)
          for k, s in shapes.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "fid_inception.safetensors"
    from safetensors.torch import save_file
    save_file(sd, str(path))
    del sd
    ext = FT.get_feature_extractor((1, 28, 28), inception_weights=path)
    assert ext.name == "fid-inception-v3" and ext.dim == 2048 and ext.recommended_n == 10_000
    f = ext(torch.full((1, 1, 28, 28), 200, dtype=torch.uint8))
    assert f.shape == (1, 2048) and np.all(np.isfinite(f)) and np.all(f >= 0) and f.max() > 0


# =========================================================================== end to end
@pytest.mark.e2e  # over 2 s: the MNIST features of 4,500 digits
def test_evaluate_samples_on_mnist(mnist):
    train, test = mnist
    samples = torch.cat([train.images[:40], test.images[::10]])   # 40 copies + 50 new digits
    with pytest.warns(UserWarning, match="biased upwards"):
        out = E.evaluate_samples(samples, "mnist", kid_subsets=20, max_real=1500)
    assert out["n"] == 90 and out["n_real"] == 1500
    assert out["features"]["name"] == "featnet:mnist"
    assert out["below_recommended"] and out["baseline"]["n"] == 90
    assert out["fid"] > 0 and np.isfinite(out["kid_mean"])
    assert 0 <= out["precision"] <= 1 and 0 <= out["recall"] <= 1
    mem = out["memorization"]
    assert mem["n_flagged"] == 40 and mem["space"] == "pixel"
    c = out["classifier"]
    assert sum(c["class_counts"]) == 90 and len(c["class_names"]) == 10
    assert c["confident_share"] > 0.9 and c["real_confident_share"] > 0.9
    with pytest.raises(DataError, match="28x28"):
        E.evaluate_samples(torch.zeros(8, 1, 32, 32, dtype=torch.uint8), "mnist")


def test_evaluate_samples_on_a_folder_with_tiny_inception(tmp_path):
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, size=(120, 3, 12, 12), dtype=np.uint8)
    buf = io.BytesIO()
    np.savez(buf, images=images.transpose(0, 2, 3, 1))        # .npz files hold NHWC
    data = tmp_path / "set.npz"
    data.write_bytes(buf.getvalue())
    weights, _ = tiny_weights(tmp_path)
    samples = np.concatenate([images[:10], rng.integers(0, 256, size=(30, 3, 12, 12),
                                                         dtype=np.uint8)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        out = E.evaluate_samples(samples, str(data), inception_weights=weights, kid_subsets=5)
    assert out["features"]["name"] == "tiny-inception" and out["classifier"] is None
    assert out["memorization"]["scale_source"].startswith("leave-one-out")
    assert out["memorization"]["n_flagged"] == 10
    assert os.path.basename(out["features"]["weights"]) == "tiny.safetensors"
