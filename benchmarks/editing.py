"""Editing with a trained run (issue 33's targets): inpainting held-out images with the right half
masked (RePaint against plain replacement at equal network evaluations), inversion then
regeneration (PSNR), class translation (DDIB), and each operation's time per image. The
``--images`` held-out images are evenly spaced over the split (``ImageData.spread``: MNIST's
held-out split is sorted by digit, so its first 100 are 50 zeros and 50 ones; the spread is
10 of each digit).

The project's classifier of the run's data set (``ddpmlab.features.load_feature_net``) reads
the real held-out images, the masked inputs alone (the half to generate set to grey), and each
inpainting result, drawn without a class (a conditional run's null class: what the classifier
reads comes from the kept half); "as original" is the share it reads as the original image's class. The seam
is the mean absolute step between the two columns on either side of the mask's edge, relative
to the same step in the real images (1: as smooth as real images).

python -m benchmarks.editing RUN [--images 100] [--steps 50] [--jump 10,10] [--inv-steps 50]
    [--per-class 10] [--batch-size 64] [--translate-guidance 1,2,3] [--inpaint-class none]
    [--only inpainting,inversion,translation,kept-half] [--out-md FILE] [--out-json FILE]

RePaint walks the ancestral sampler (ddpm) over --steps levels with jumps of j levels traversed
r times (--jump j,r); replacement gets as many ddpm steps as RePaint's network evaluations
(capped at T). Writes benchmarks/results/editing/editing.{md,json} unless told otherwise.
"""

from __future__ import annotations

import argparse
import time

import torch

from benchmarks.harness import log, machine, result_path, write_json, write_text


def _classifier(cfg):
    """The shipped classifier of the run's data set (logits of model-range images), or None."""
    from ddpmlab.features import available_feature_nets, load_feature_net

    name = cfg.data.dataset.strip().lower()
    if name not in available_feature_nets():
        return None
    net = load_feature_net(name).eval()

    def read(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.cat([net(x[i:i + 256].float().cpu()).argmax(1)
                              for i in range(0, len(x), 256)])
    return read


def _timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _seam(x: torch.Tensor, edge: int) -> float:
    return float((x[..., edge] - x[..., edge - 1]).abs().mean())


def _inpainting(model, cfg, x, y, read, a) -> dict:
    from ddpmlab.edit import inpaint_nfe
    from ddpmlab.edit_run import EditSettings, masked, read_mask, run_edit
    from ddpmlab.runs import sampling_call

    size = cfg.model.image_size
    mask = read_mask("right", size)
    j, r = a.jump
    nfe = inpaint_nfe(a.steps, j, r, "ddpm")
    T = cfg.diffusion.timesteps
    rows = {}
    plan = []
    kinds = {"both": {"none", "given"}}.get(a.inpaint_class, set(a.inpaint_class.split(",")))
    if "none" in kinds:
        plan += [("repaint", a.steps, (j, r), None), ("replacement", min(nfe, T), (1, 1), None)]
    if "given" in kinds and y is not None:  # told the digit: conditional, at the run's guidance
        plan += [("repaint, given the class", a.steps, (j, r), y),
                 ("replacement, given the class", min(nfe, T), (1, 1), y)]
    if "read" in kinds and cfg.model.num_classes:   # the class read from the kept half by the
        from ddpmlab.edit_run import CLASS_DRAWS, read_classes  # (the run's own network)

        call = sampling_call(model, cfg, "cpu", sampler="ddpm", steps=a.steps)
        read_y, dt = _timed(lambda: read_classes(call, mask, x, cfg.model.num_classes))
        rows["class read from the kept half"] = {
            "draws": CLASS_DRAWS, "nfe": CLASS_DRAWS * cfg.model.num_classes,
            "s_per_image": dt / len(x),
            "as_original": None if y is None else float((read_y == y).float().mean())}
        log(f"classes read: {rows['class read from the kept half']}")
        plan += [("repaint, the class read", a.steps, (j, r), read_y)]
    for name, steps, jr, label in plan:
        call = sampling_call(model, cfg, "cpu", sampler="ddpm", steps=steps)
        s = EditSettings("inpaint", mask=mask, jump_length=jr[0], jump_n_sample=jr[1])
        res, dt = _timed(lambda call=call, s=s, label=label: run_edit(  # (no label: the kept
            call, s, x, label, batch_size=a.batch_size))                # half decides)
        out = res.columns[2]
        rows[name] = {"steps": steps, "jump": list(jr), "nfe": inpaint_nfe(steps, *jr, "ddpm"),
                      "s_per_image": dt / len(x),
                      "seam_vs_real": _seam(out, size - size // 2) / _seam(x, size - size // 2)}
        if read is not None and y is not None:
            rows[name]["as_original"] = float((read(out) == y).float().mean())
        log(f"inpaint {name}: {rows[name]}")
    if read is not None and y is not None:
        rows["real"] = {"as_original": float((read(x) == y).float().mean())}
        rows["masked_input"] = {"as_original": float((read(masked(x, mask)) == y).float().mean())}
    return rows


def _inversion(model, cfg, x, a) -> dict:
    from ddpmlab.edit_run import EditSettings, psnr, run_edit
    from ddpmlab.runs import sampling_call

    rows = {}
    for sampler in ("ddim", "dpm_solver"):
        call = sampling_call(model, cfg, "cpu", sampler=sampler, steps=a.inv_steps, guidance=1.0)
        res, dt = _timed(lambda call=call: run_edit(call, EditSettings("invert"), x, None,
                                                    batch_size=a.batch_size))
        p = psnr(res.columns[0], res.columns[2])
        rows[sampler] = {"steps": a.inv_steps, "psnr_mean": float(p.mean()),
                         "psnr_min": float(p.min()), "s_per_image": dt / len(x)}
        log(f"invert {sampler}: {rows[sampler]}")
    return rows


def _translation(model, cfg, held, read, a) -> dict | None:
    from ddpmlab.data import to_model_range
    from ddpmlab.edit_run import EditSettings, run_edit
    from ddpmlab.runs import sampling_call

    C = cfg.model.num_classes
    if C == 0 or held.labels is None:
        return None
    pick = torch.cat([torch.nonzero(held.labels == k).squeeze(1)[:a.per_class] for k in range(C)])
    x, y = to_model_range(held.images[pick]), held.labels[pick]
    rows = {}
    for w in a.translate_guidance:    # (the regeneration's weight; the inversion is unguided)
        call = sampling_call(model, cfg, "cpu", sampler="ddim", steps=a.inv_steps, guidance=w)
        s = EditSettings("translate", targets=tuple(range(C)))
        res, dt = _timed(lambda call=call, s=s: run_edit(call, s, x, y, batch_size=a.batch_size))
        out = {"guidance": w, "images": len(x), "classes": C, "s_per_image": dt / len(x)}
        if read is not None:
            hits = [float((read(res.columns[1 + k]) == k).float().mean()) for k in range(C)]
            out.update(as_target=sum(hits) / C, as_target_per_class=hits)
        log(f"translate: {out}")
        rows[f"w={w:g}"] = out
    return rows


def _kept_half(cfg, held, some) -> dict:
    """How often the kept left half alone names the class: classifiers trained on the training
    images' left halves (nearest neighbours, logistic regression, a 256-unit MLP; sklearn),
    reading the benchmark's images and the whole held-out split: what a class read from the kept
    pixels can reach at best, about."""
    import numpy as np
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.neural_network import MLPClassifier

    from ddpmlab.data import load_dataset
    from ddpmlab.edit_run import read_mask

    train = load_dataset(cfg.data, "train")
    if train.labels is None or held.labels is None:
        return {}
    kept = read_mask("right", cfg.model.image_size)[0, 0, 0] == 0     # the kept columns

    def left(d):
        return d.images[..., kept].flatten(1).numpy().astype(np.float32) / 255

    out = {}
    for name, clf in (("knn1", KNeighborsClassifier(1)), ("knn5", KNeighborsClassifier(5)),
                      ("logistic", LogisticRegression(max_iter=2000, C=0.1)),
                      ("mlp", MLPClassifier((256,), max_iter=300, alpha=1e-3, random_state=0))):
        clf.fit(left(train), train.labels.numpy())
        out[name] = {"these": float((clf.predict(left(some)) == some.labels.numpy()).mean()),
                     "held_out": float((clf.predict(left(held)) == held.labels.numpy()).mean())}
        log(f"kept half, {name}: {out[name]}")
    return out


def _f(v) -> str:
    return "" if v is None else f"{v:.3f}"


def _markdown(doc: dict) -> str:
    lines = [f"# Editing: {doc['run']}", "", f"machine: {doc['machine'].get('cpu')}, "
             f"{doc['machine'].get('threads')} threads; {doc['images']} held-out images", "",
             "| inpainting (right half) | steps | j, r | NFE | as original | seam vs real | "
             "s/image |", "|---|---|---|---|---|---|---|"]
    for name, r in doc["inpainting"].items():
        jump = ", ".join(map(str, r.get("jump", [])))
        lines.append(f"| {name} | {r.get('steps', '')} | {jump} | {r.get('nfe', '')} | "
                     f"{_f(r.get('as_original'))} | {_f(r.get('seam_vs_real'))} | "
                     f"{_f(r.get('s_per_image'))} |")
    lines += ["", "| inversion | steps | PSNR mean | PSNR min | s/image |", "|---|---|---|---|---|"]
    for name, r in doc["inversion"].items():
        lines.append(f"| {name} | {r['steps']} | {r['psnr_mean']:.2f} | {r['psnr_min']:.2f} | "
                     f"{r['s_per_image']:.3f} |")
    if doc.get("kept_half"):
        lines += ["", "| the kept left half alone, read by | these images | all held-out |",
                  "|---|---|---|"]
        lines += [f"| {k} | {_f(r['these'])} | {_f(r['held_out'])} |"
                  for k, r in doc["kept_half"].items()]
    for t in (doc["translation"] or {}).values():
        lines += ["", f"translation (regeneration guidance {t['guidance']:g}): {t['images']} "
                      f"images x {t['classes']} classes, as target {_f(t.get('as_target'))}, "
                      f"{t['s_per_image']:.3f} s/image (all classes)"]
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.editing",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--steps", type=int, default=50, help="RePaint's ddpm levels")
    p.add_argument("--jump", default="10,10", help="RePaint's j,r")
    p.add_argument("--inv-steps", type=int, default=50)
    p.add_argument("--per-class", type=int, default=10, help="translation sources per class")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--translate-guidance", default="1",
                   help="the regeneration's guidance weights, e.g. 1,2,3")
    p.add_argument("--inpaint-class", default="none",
                   help="comma list of: none (inpaint with the null class), given (each "
                        "image's own class, at the run's guidance), read (the class read from "
                        "the kept half by the run's network, ddpmlab edit --target-class auto); "
                        "both = none,given")
    p.add_argument("--only", default="inpainting,inversion,translation",
                   help="comma list of: inpainting, inversion, translation, kept-half (how "
                        "often classifiers trained on left halves name the class)")
    p.add_argument("--out-md", default=str(result_path("editing", "editing.md")))
    p.add_argument("--out-json", default=str(result_path("editing", "editing.json")))
    a = p.parse_args()
    a.jump = tuple(int(v) for v in a.jump.split(","))
    a.translate_guidance = [float(v) for v in a.translate_guidance.split(",")]
    only = set(a.only.split(","))

    from ddpmlab.data import load_dataset, to_model_range
    from ddpmlab.runs import load_run

    model, cfg, ckpt = load_run(a.run)
    held = load_dataset(cfg.data, "test")
    some = held.spread(a.images)      # (MNIST's held-out split is sorted by digit)
    x, y = to_model_range(some.images), some.labels
    read = _classifier(cfg)
    doc = {"run": a.run, "checkpoint": str(ckpt), "machine": machine(), "images": len(x),
           "inpainting": _inpainting(model, cfg, x, y, read, a) if "inpainting" in only else {},
           "inversion": _inversion(model, cfg, x, a) if "inversion" in only else {},
           "translation": _translation(model, cfg, held, read, a) if "translation" in only
           else None,
           "kept_half": _kept_half(cfg, held, some) if "kept-half" in only else {}}
    write_json(a.out_json, doc)
    write_text(a.out_md, _markdown(doc))


if __name__ == "__main__":
    main()
