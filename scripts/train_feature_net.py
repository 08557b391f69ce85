#!/usr/bin/env python
"""Train the shipped feature network (``ddpmlab.features.FeatureNet``) for one built-in data set.

    PYTHONPATH=src .venv/bin/python scripts/train_feature_net.py --dataset mnist

Trains on the built-in ``train`` split with random shifts of up to +-2 px (+-1 px on the 8x8
``digits``; the border is filled with background, -1), AdamW with a one-cycle learning rate,
then measures the accuracy on the held-out ``test`` split (never seen in training) and writes
``src/ddpmlab/assets/featnet_<dataset>.safetensors`` with that accuracy, the data set and the
architecture in the safetensors metadata. Deterministic for a given ``--seed`` and thread count.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from ddpmlab.config import DataConfig  # noqa: E402
from ddpmlab.data import load_dataset  # noqa: E402
from ddpmlab.features import FEATNET_FORMAT, FeatureNet  # noqa: E402
from ddpmlab.io import atomic_write_bytes  # noqa: E402

# data set -> (architecture, epochs, max shift in px)
DEFAULTS = {"mnist": ("featnet28", 20, 2), "fashion-mnist": ("featnet28", 2, 2),
            "digits": ("featnet8", 60, 1)}


def shift(x: torch.Tensor, max_shift: int, g: torch.Generator) -> torch.Tensor:
    """Translate each image by an integer (dy, dx) in [-s, s]^2, filling with -1 (background)."""
    if max_shift == 0:
        return x
    n, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s), value=-1.0)
    dy = torch.randint(0, 2 * s + 1, (n,), generator=g)
    dx = torch.randint(0, 2 * s + 1, (n,), generator=g)
    rows = (torch.arange(h)[None, :] + dy[:, None])[:, None, :, None].expand(n, c, h, w + 2 * s)
    cols = (torch.arange(w)[None, :] + dx[:, None])[:, None, None, :].expand(n, c, h, w)
    return padded.gather(2, rows).gather(3, cols)


@torch.no_grad()
def accuracy(net: FeatureNet, x: torch.Tensor, y: torch.Tensor) -> tuple[int, int]:
    net.eval()
    pred = torch.cat([net(x[i : i + 500]).argmax(1) for i in range(0, len(x), 500)])
    return int((pred == y).sum()), len(y)


def main(argv: list[str] | None = None) -> int:
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
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    arch, epochs, max_shift = DEFAULTS[args.dataset]
    epochs = args.epochs or epochs
    cfg = DataConfig(dataset=args.dataset)
    train, test = load_dataset(cfg, "train"), load_dataset(cfg, "test")
    xtr, ytr = train.to_float(), train.labels
    xte, yte = test.to_float(), test.labels
    print(f"{args.dataset}: {len(xtr)} train, {len(xte)} test images, {arch}, {epochs} epochs",
          flush=True)

    net = FeatureNet(arch, num_classes=train.num_classes)
    steps_per_epoch = (len(xtr) + args.batch_size - 1) // args.batch_size
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, epochs=epochs,
                                                steps_per_epoch=steps_per_epoch)
    g = torch.Generator().manual_seed(args.seed)
    t0 = time.time()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(xtr), generator=g)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(0, len(xtr), args.batch_size):
            idx = order[i : i + args.batch_size]
            if len(idx) < 2:  # BatchNorm needs two samples
                continue
            x, y = shift(xtr[idx], max_shift, g), ytr[idx]
            logits = net(x)
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += len(y)
            correct += int((logits.argmax(1) == y).sum())
            loss_sum += loss.item() * len(y)
        print(f"epoch {epoch + 1:3d}/{epochs}  loss {loss_sum / total:.4f}  "
              f"train acc {correct / total:.4f}  ({time.time() - t0:.0f} s)", flush=True)

    n_ok, n_test = accuracy(net, xte, yte)
    acc = n_ok / n_test
    print(f"held-out accuracy on {args.dataset}:test: {n_ok}/{n_test} = {acc:.4f}", flush=True)

    from safetensors.torch import save

    meta = {
        "format": FEATNET_FORMAT, "dataset": args.dataset, "arch": arch,
        "num_classes": str(train.num_classes), "class_names": json.dumps(train.class_names),
        "accuracy": f"{acc:.4f}", "n_correct": str(n_ok), "n_test": str(n_test),
        "test_split": f"{args.dataset}:test", "n_train": str(len(xtr)),
        "epochs": str(epochs), "seed": str(args.seed), "max_shift_px": str(max_shift),
        "label_smoothing": str(args.label_smoothing), "lr": str(args.lr),
        "batch_size": str(args.batch_size),
        "input": "float32 [N,1,H,W] in [-1,1] = uint8 / 127.5 - 1",
        "features": "128-d penultimate activations (Linear-BatchNorm-ReLU)",
        "trained_by": "scripts/train_feature_net.py", "torch": torch.__version__,
    }
    tensors = {k: v.detach().contiguous() for k, v in net.state_dict().items()}
    out = args.out or ROOT / "src" / "ddpmlab" / "assets" / f"featnet_{args.dataset}.safetensors"
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out, save(tensors, metadata=meta))
    print(f"wrote {out} ({out.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
