"""Checkpoints: safetensors + JSON, written atomically, never unpickled.

A run's checkpoints (where they sit in the run directory is :mod:`ddpmlab.layout`'s)::

    checkpoints/step_00001000/     one complete checkpoint per folder, the newest K kept:
        model.safetensors          network weights
        ema.safetensors            EMA weights (what sampling uses by default)
        optimizer.safetensors      optimizer tensors (Adam moments), + optimizer.json (hyper-params)
        rng.safetensors            RNG states (training noise generator, torch's global CPU RNG)
        state.json                 step, counters, format version
        loss_history.safetensors   only with diffusion.loss=vlb: the importance sampler's
                                   per-t loss history (:class:`ddpmlab.losses.LossHistory`)
        teacher.safetensors        only in a progressive distillation past its first stage:
                                   the weights of the stage's teacher (the previous student)

A checkpoint folder is written under a temporary name (``.tmp-step_...``), every file fsynced,
then renamed in one ``os.rename``: a crash at any moment leaves either the old set of
checkpoints or the new one, never a half-written folder under a ``step_`` name. Old folders are
likewise renamed to a ``.tmp-`` name before they are deleted (never a half-deleted ``step_``
folder); a resume removes such leftovers (:func:`clean_partial`). Loading reads
only ``.safetensors`` and ``.json`` files; anything else (a ``.pt`` pickle) is refused.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Collection
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..io import fsync_dir, load_tensors, read_json, save_tensors
from ..layout import STEP_PREFIX, RunDir, remove_tree, step_name, step_of

FORMAT_VERSION = 1
CHECKPOINT_FILES = ("model.safetensors", "ema.safetensors", "optimizer.safetensors",
                    "optimizer.json", "rng.safetensors", "state.json")
LOSS_HISTORY = "loss_history.safetensors"
TEACHER_WEIGHTS = "teacher.safetensors"   # a distillation's current stage teacher (ddpmlab distill)
OPTIONAL_FILES = (LOSS_HISTORY, TEACHER_WEIGHTS)   # read when present


# ----------------------------------------------------------------------------- optimizer
def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    """Split an optimizer state dict into safetensors-able tensors and JSON hyper-parameters."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for k, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{pid}.{k}"] = v
            else:
                scalars.setdefault(str(pid), {})[k] = v
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


_IMPLEMENTATION_KEYS = ("fused", "foreach", "capturable", "differentiable")


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor],
                           meta: dict) -> None:
    state: dict[int, dict[str, Any]] = {}
    try:
        for key, v in tensors.items():
            pid, _, k = key.partition(".")
            state.setdefault(int(pid), {})[k] = v
        for pid, sc in meta.get("scalars", {}).items():
            state.setdefault(int(pid), {}).update(sc)
    except (ValueError, TypeError, AttributeError) as e:
        raise CheckpointError(f"optimizer state has a malformed entry ({e})") from None
    # Which kernel runs the update (fused, foreach, ...) is this process's choice, not part of
    # the optimization state: a run saved on a GPU, or by an older ddpmlab, resumes with the
    # implementation chosen here (the same update).
    groups = meta["param_groups"]
    if isinstance(groups, list) and len(groups) == len(opt.param_groups):
        pairs = zip(groups, opt.param_groups, strict=True)
        groups = [{**g, **{k: cur[k] for k in _IMPLEMENTATION_KEYS if k in cur}}
                  if isinstance(g, dict) else g for g, cur in pairs]
    try:
        opt.load_state_dict({"state": state, "param_groups": groups})
    except (KeyError, ValueError, RuntimeError, TypeError, IndexError) as e:
        raise CheckpointError(f"optimizer state does not match the model ({e})") from None


# ----------------------------------------------------------------------------- checkpoints
def checkpoint_dirs(run_dir: str | os.PathLike) -> list[Path]:
    """Complete checkpoint folders, oldest first."""
    return RunDir(run_dir).checkpoint_dirs()


def stray_checkpoints(run_dir: str | os.PathLike) -> list[Path]:
    """Entries of ``checkpoints/`` named like a step but not as ddpmlab names one
    (:func:`ddpmlab.layout.step_of`: ``step_99999999999999999999999``, ``step_1``, a copy):
    never resumed from, sampled or counted by ``keep_last``, and never deleted."""
    root = RunDir(run_dir).checkpoints
    if not root.is_dir():
        return []
    return sorted(p for p in root.iterdir()
                  if p.name.startswith(STEP_PREFIX) and step_of(p.name) is None)


def latest_checkpoint(run_dir: str | os.PathLike) -> Path | None:
    """The newest complete checkpoint (strictly named); strays are reported, left alone."""
    for stray in stray_checkpoints(run_dir)[:3]:
        warnings.warn(f"{stray}: not a checkpoint name ddpmlab writes (its steps have 8 to "
                      "12 digits); ignored and left as it is", stacklevel=2)
    dirs = checkpoint_dirs(run_dir)
    return dirs[-1] if dirs else None


def save_checkpoint(run_dir: str | os.PathLike, step: int, files: dict[str, Any],
                    keep_last: int = 2, keep: Collection[int] = ()) -> Path:
    """Write one checkpoint folder atomically; ``files`` maps file names to tensor dicts
    (``*.safetensors``) or JSON-able objects (``*.json``). Old folders beyond ``keep_last``
    are removed only after the new one is in place, except the steps in ``keep`` (the
    autoguidance guide ``sample.guide = "@F"`` names)."""
    root = RunDir(run_dir).checkpoints
    final = root / step_name(step)
    tmp = root / f".tmp-{final.name}.{os.getpid()}"
    aside: Path | None = None
    try:
        root.mkdir(parents=True, exist_ok=True)
        if os.path.lexists(tmp) and (err := remove_tree(tmp)):
            raise OSError(err)
        tmp.mkdir()
        for name, content in files.items():
            if name.endswith(".safetensors"):
                save_tensors(tmp / name, content, fsync=False)
            else:
                (tmp / name).write_text(json.dumps(content, indent=1), encoding="utf-8")
            with open(tmp / name, "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(tmp)
        if final.exists():  # the same step saved again: swap by renames, never delete in place
            aside = root / f".tmp-replaced-{final.name}.{os.getpid()}"
            os.rename(final, aside)
        os.rename(tmp, final)
        fsync_dir(root)
    except OSError as e:
        remove_tree(tmp)  # (a temporary folder: whatever stays is cleaned on resume)
        if aside is not None and aside.exists() and not final.exists():
            os.rename(aside, final)
        raise CheckpointError(f"{final}: cannot write checkpoint ({e.strerror or e}); "
                              "the previous checkpoints are untouched") from None
    if aside is not None:
        _warn_left(remove_tree(aside))
    for old in checkpoint_dirs(run_dir)[:-keep_last]:
        if step_of(old.name) not in keep:
            _discard(old)
    return final


def _discard(ckpt_dir: Path) -> None:
    """Rename a checkpoint folder to a ``.tmp-`` name, then delete it: a crash part-way through
    leaves a temporary folder (cleaned on resume), never a partial ``step_`` folder."""
    aside = ckpt_dir.with_name(f".tmp-del-{ckpt_dir.name}.{os.getpid()}")
    try:
        os.rename(ckpt_dir, aside)
    except OSError:
        aside = ckpt_dir
    _warn_left(remove_tree(aside))


def _warn_left(err: str | None) -> None:
    if err is not None:
        warnings.warn(f"could not delete an old checkpoint ({err}); the new one is complete, "
                      "delete the rest by hand", stacklevel=3)


def clean_partial(run_dir: str | os.PathLike) -> None:
    """Remove temporary folders a crash left behind (never a complete checkpoint).

    A ``.tmp-replaced-step_X`` folder is a complete checkpoint moved aside while step X was
    saved again; if a crash came before the new ``step_X`` was in place, it is put back."""
    root = RunDir(run_dir).checkpoints
    if root.is_dir():
        for p in sorted(root.glob(".tmp-*")):
            m = re.match(r"^\.tmp-replaced-(.+)\.\d+$", p.name)   # (step_of: a step's name)
            if (m and step_of(m.group(1)) is not None and p.is_dir()
                    and not (root / m.group(1)).exists()):
                try:
                    os.rename(p, root / m.group(1))
                    continue
                except OSError:
                    pass
            _warn_left(remove_tree(p))


def load_checkpoint(ckpt_dir: str | os.PathLike) -> dict[str, Any]:
    """Read every file of a checkpoint folder (tensors and JSON); errors name the file."""
    ckpt_dir = Path(ckpt_dir)
    out: dict[str, Any] = {}
    for name in CHECKPOINT_FILES:
        path = ckpt_dir / name
        if not path.exists():
            raise CheckpointError(f"{path}: missing (the checkpoint folder is incomplete)")
        out[name] = load_tensors(path) if name.endswith(".safetensors") else read_json(path)
    for name in OPTIONAL_FILES:
        if (ckpt_dir / name).exists():
            out[name] = load_tensors(ckpt_dir / name)
    _check_json(ckpt_dir, out)
    return out


_RNG_KEYS = {"train_generator", "torch_cpu"}


def _check_json(ckpt_dir: Path, files: dict[str, Any]) -> None:
    """The JSON and RNG files of a checkpoint have the layout the trainer reads; anything else
    (a hand-edited or damaged file) is one error naming the file."""
    state, opt, rng = files["state.json"], files["optimizer.json"], files["rng.safetensors"]
    where = ckpt_dir / "state.json"
    if not isinstance(state, dict):
        raise CheckpointError(f"{where}: must be a JSON object, got {type(state).__name__}")
    if state.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{where}: unknown checkpoint format version")
    if "step" not in state:
        raise CheckpointError(f"{where}: no 'step'")
    for key in ("step", "skipped_steps"):
        v = state.get(key, 0)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise CheckpointError(f"{where}: {key!r} must be an integer >= 0, got {v!r}")
    if not isinstance(opt, dict) or not isinstance(opt.get("param_groups"), list) \
            or not isinstance(opt.get("scalars", {}), dict):
        raise CheckpointError(f"{ckpt_dir / 'optimizer.json'}: must be an object with a "
                              "'param_groups' list")
    if not _RNG_KEYS <= set(rng) or not set(rng) <= _RNG_KEYS | {"torch_cuda"}:
        raise CheckpointError(f"{ckpt_dir / 'rng.safetensors'}: holds {sorted(rng)}, expected "
                              f"{sorted(_RNG_KEYS)} (and torch_cuda)")
