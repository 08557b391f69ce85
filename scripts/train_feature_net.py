#!/usr/bin/env python
"""Train the shipped feature network (``ddpmlab.features.FeatureNet``) for one built-in data set.

    PYTHONPATH=src .venv/bin/python scripts/train_feature_net.py --dataset mnist
    PYTHONPATH=src .venv/bin/python scripts/train_feature_net.py --dataset emoji --floor

Trains on the built-in ``train`` split with random shifts of up to +-2 px (+-1 px on the 8x8
``digits``, +-3 px on the 32x32 ``emoji``; the border is filled with the background: -1 on the
grey sets, white +1 on emoji) and, on emoji only, random horizontal flips; AdamW with a one-cycle
learning rate. Then measures the accuracy on the held-out ``test`` split (never seen in
training) and the real-vs-real floor (:func:`real_floor`), and writes
``src/ddpmlab/assets/featnet_<dataset>.safetensors`` with the accuracy, the floor, the data set,
the architecture and the recipe in the safetensors metadata. Deterministic for a given
``--seed`` and thread count. ``--floor`` only measures the floor with the shipped weights.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpmlab import evaluate as E  # noqa: E402
from ddpmlab.config import DataConfig  # noqa: E402
from ddpmlab.data import ImageData, load_dataset, to_uint8  # noqa: E402
from ddpmlab.features import FEATNET_FORMAT, FeatureNet, load_feature_net  # noqa: E402
from ddpmlab.io import atomic_write_bytes  # noqa: E402


class Recipe(NamedTuple):
    arch: str
    epochs: int
    max_shift: int              # px, each direction
    flip: bool = False          # random horizontal flips
    fill: float = -1.0          # what a shift brings in (the background, in [-1, 1])


DEFAULTS = {"mnist": Recipe("featnet28", 20, 2), "fashion-mnist": Recipe("featnet28", 2, 2),
            "digits": Recipe("featnet8", 60, 1),
            "emoji": Recipe("featnet32", 32, 3, flip=True, fill=1.0)}


def shift(x: torch.Tensor, max_shift: int, g: torch.Generator,
          fill: float = -1.0) -> torch.Tensor:
    """Translate each image by an integer (dy, dx) in [-s, s]^2, filling with ``fill``."""
    if max_shift == 0:
        return x
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=fill)
    dy = torch.randint(0, 2 * s + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=g)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None].expand(n, c, h, w + 2 * s)
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :].expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


def augment(x: torch.Tensor, r: Recipe, g: torch.Generator) -> torch.Tensor:
    """The recipe's random flips (half the images, mirrored left-right), then shifts."""
    if r.flip:
        mirror = torch.rand(len(x), generator=g) < 0.5
        x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
    return shift(x, r.max_shift, g, r.fill)


@torch.no_grad()
def accuracy(net: FeatureNet, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    net.eval()
    pred = torch.cat([net(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return int((pred == y).sum()), len(y)


def train(net: FeatureNet, data: ImageData, r: Recipe, args: argparse.Namespace) -> None:
    """AdamW + one-cycle over ``r.epochs`` epochs of augmented batches, printing each epoch."""
    xtr, ytr = data.to_float(), data.labels
    steps_per_epoch = (len(xtr) + args.batch_size - 1) // args.batch_size
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=r.epochs,
                                                steps_per_epoch=steps_per_epoch)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for epoch in range(r.epochs):
        net.train()
        order = torch.randperm(len(xtr), generator=g)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xtr), args.batch_size):
            idx = order[i : i + args.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x, y = augment(xtr[idx], r, g), ytr[idx]
            logits = net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.item() * len(y)
        print(f"epoch {epoch + 1:3d}/{r.epochs}  loss {loss_sum / total:.4f}  "
              f"train acc {correct / total:.4f}  ({time.time() - t0:.0f} s)", flush=True)


@torch.no_grad()
def embed(net: FeatureNet, u8: torch.Tensor) -> np.ndarray:
    """uint8 images -> float64 features, as ``ddpmlab eval`` computes them."""
    net.eval()
    return torch.cat([net.embed(net.prepare(u8[i : i + 500]))[0]
                      for i in range(0, len(u8), 500)]).double().numpy()


def real_floor(net: FeatureNet, train: ImageData, test: ImageData, seed: int = 0,
               repeats: int = 10) -> dict:
    """What a perfect generator scores in this feature space, from real images only.

    ``heldout``: the n_test held-out images scored as ``ddpmlab eval`` scores n_test samples
    (FID/KID/precision/recall against the whole train split): the floor for that N.
    ``train_subset``: the same with n_test train images drawn out of the train split against the
    rest (``repeats`` draws, mean and std). ``baseline_*``: :func:`ddpmlab.evaluate.
    real_vs_real_baseline` (two disjoint train subsets of N each, 3 draws), what ``ddpmlab eval``
    prints beside a FID from fewer samples than recommended, at N = n_test and half the split.
    """
    ftr, fte = embed(net, train.images), embed(net, test.images)
    n = len(fte)
    precision, recall = E.precision_recall(ftr, fte)
    out = {"n_heldout": n, "n_train": len(ftr), "heldout": {
        "fid": E.fid(fte, ftr), "kid": E.kid(fte, ftr, seed=seed)[0], "precision": precision,
        "recall": recall}}
    rng = np.random.default_rng(seed)
    fids, kids = [], []
    for i in range(repeats):
        perm = rng.permutation(len(ftr))
        a, b = ftr[perm[:n]], ftr[perm[n:]]
        fids.append(E.fid(a, b))
        kids.append(E.kid(a, b, seed=seed + i)[0])
    out["train_subset"] = {"repeats": repeats, "fid_mean": float(np.mean(fids)),
                           "fid_std": float(np.std(fids)), "kid_mean": float(np.mean(kids)),
                           "kid_std": float(np.std(kids))}
    for m in (n, len(ftr) // 2):
        out[f"baseline_{m}"] = E.real_vs_real_baseline(ftr, m, seed=seed)
    return out


def defects(net: FeatureNet, train: ImageData, test: ImageData, seed: int = 0) -> dict:
    """For scale: the held-out images blurred (3x3 box) or with Gaussian noise of 25 grey
    levels, scored against the train split (FID)."""
    ftr = embed(net, train.images)
    x = test.to_float()
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    g = torch.Generator().manual_seed(seed)
    noisy = (x + torch.randn(x.shape, generator=g) * (25 / 127.5)).clamp(-1, 1)
    return {name: E.fid(embed(net, to_uint8(v)), ftr) for name, v in
            (("blur3x3", blur), ("noise25", noisy))}


def print_floor(name: str, fl: dict) -> None:
    h, t = fl["heldout"], fl["train_subset"]
    print(f"real-vs-real floor on {name} (features: featnet:{name}):\n"
          f"  held-out {fl['n_heldout']} vs train {fl['n_train']}: FID {h['fid']:.3f}  KID "
          f"{h['kid']:.5f}  precision {h['precision']:.3f}  recall {h['recall']:.3f}\n"
          f"  train subset {fl['n_heldout']} vs the other {fl['n_train'] - fl['n_heldout']} "
          f"({t['repeats']} draws): FID {t['fid_mean']:.3f} +- {t['fid_std']:.3f}  KID "
          f"{t['kid_mean']:.5f} +- {t['kid_std']:.5f}", flush=True)
    for k, b in fl.items():
        if k.startswith("baseline_"):
            print(f"  two disjoint train subsets of {b['n']} (eval's baseline, {b['repeats']} "
                  f"draws): FID {b['fid_mean']:.3f} +- {b['fid_std']:.3f}  KID "
                  f"{b['kid_mean']:.5f} +- {b['kid_std']:.5f}", flush=True)


def save(net: FeatureNet, args: argparse.Namespace, r: Recipe, train: ImageData,
         acc: tuple[int, int], floor: dict) -> Path:
    """The weights and the metadata (format, accuracy, recipe, floor) as safetensors."""
    from safetensors.torch import save as st_save

    n_ok, n_test = acc
    meta = {
        "format": FEATNET_FORMAT, "dataset": args.dataset, "arch": r.arch,
        "num_classes": str(train.num_classes), "class_names": json.dumps(train.class_names),
        "accuracy": f"{n_ok / n_test:.4f}", "n_correct": str(n_ok), "n_test": str(n_test),
        "test_split": f"{args.dataset}:test", "n_train": str(len(train)),
        "epochs": str(r.epochs), "seed": str(args.seed), "max_shift_px": str(r.max_shift),
        "hflip": str(r.flip), "label_smoothing": str(args.label_smoothing), "lr": str(args.lr),
        "batch_size": str(args.batch_size), "threads": str(args.threads),
        "input": f"float32 [N,{net.channels},H,W] in [-1,1] = uint8 / 127.5 - 1",
        "features": "128-d penultimate activations (Linear-BatchNorm-ReLU)",
        "real_vs_real": json.dumps(floor, sort_keys=True),
        "trained_by": "scripts/train_feature_net.py", "torch": torch.__version__,
    }
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    out = args.out or ROOT / "src" / "ddpmlab" / "assets" / f"featnet_{args.dataset}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, st_save(tensors, metadata=meta))
    return out


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", required=True, choices=sorted(DEFAULTS))
    p.add_argument("--epochs", type=int, default=None, help="default: per data set")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=3e-3, help="peak one-cycle learning rate")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="keep 0: the softmax confidence (>= 0.9) is reported as a metric")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--floor", action="store_true",
                   help="train nothing: measure the real-vs-real floor with the shipped net")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    r = DEFAULTS[args.dataset]
    r = r._replace(epochs=args.epochs or r.epochs)
    cfg = DataConfig(dataset=args.dataset)
    train_set, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    if args.floor:
        net = load_feature_net(args.dataset)
        print_floor(args.dataset, real_floor(net, train_set, test, args.seed))
        print("  for scale, held-out images scored against the train split: " + ", ".join(
            f"{k} FID {v:.3f}" for k, v in defects(net, train_set, test, args.seed).items()))
        return 0
    print(f"{args.dataset}: {len(train_set)} train, {len(test)} test images, {r.arch}, "
          f"{r.epochs} epochs", flush=True)
    net = FeatureNet(r.arch, num_classes=train_set.num_classes)
    train(net, train_set, r, args)
    n_ok, n_test = accuracy(net, test.to_float(), test.labels)
    print(f"held-out accuracy on {args.dataset}:test: {n_ok}/{n_test} = {n_ok / n_test:.4f}",
          flush=True)
    floor = real_floor(net, train_set, test, args.seed)
    print_floor(args.dataset, floor)
    out = save(net, args, r, train_set, (n_ok, n_test), floor)
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
