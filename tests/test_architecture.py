"""The architecture, enforced (docs/ARCHITECTURE.md): import rules between layers, one owner per
set of choices, one home for the run directory's file names.

The import rules are read from the source (every ``import`` statement, also those inside
functions), not from what happens to be loaded, and :func:`violations` is also run on made-up
imports that break each rule, so the check itself is shown to fail when it should.
"""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import torch

import ddpmlab

SRC = Path(ddpmlab.__file__).parent

# Layer of each top-level module or package of ddpmlab (docs/ARCHITECTURE.md, "Layers").
LAYER = {
    "errors": 0, "io": 0,
    "schedules": 1, "broadcast": 1, "forward": 1, "parametrization": 1, "reverse": 1,
    "losses": 1, "likelihood": 1, "likelihood_ode": 1, "samplers": 1, "objectives": 1,
    "edit": 1,
    "config": 2, "device": 2, "layout": 2, "session": 2, "outputs": 2, "recipe": 2,
    "nn": 3, "data": 3, "features": 3,
    "train": 4, "evaluate": 4, "viz": 4,
    "runs": 5, "interop": 5, "report": 5, "edit_run": 5, "distill_run": 5,
    "cli": 6,
    "__init__": 7, "__main__": 7,
}
MATH = {name for name, layer in LAYER.items() if layer == 1}
# Same-layer imports allowed between different top-level pieces (all others are forbidden).
SAME_LAYER_OK = {("io", "errors"), ("features", "data"), ("config", "device"), ("layout", "config"),
                 ("session", "layout"), ("session", "config"), ("recipe", "config"),
                 ("interop", "runs"), ("report", "runs"), ("report", "interop"),
                 ("edit_run", "runs"), ("report", "edit_run"), ("distill_run", "runs"),
                 ("__main__", "cli")}
MATH_EXTERNAL = {"torch", "numpy", "tqdm"}      # what math may import besides the stdlib


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__" and len(parts) > 1:
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    p = SRC.parent.joinpath(*name.split("."))
    return p.with_suffix(".py").is_file() or (p / "__init__.py").is_file()


def imports_of(path: Path) -> set[str]:
    """Absolute names of everything ``path`` imports (relative imports resolved)."""
    mod = module_name(path)
    package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:   # `from . import schedules` imports the submodule
                sub = f"{target}.{a.name}"
                out.add(sub if _is_module(sub) else target)
    return out


def piece(name: str) -> str | None:
    """The top-level piece of a ddpmlab module name (``ddpmlab.train.loop`` -> ``train``)."""
    parts = name.split(".")
    if parts[0] != "ddpmlab":
        return None
    return parts[1] if len(parts) > 1 else "__init__"


def source_imports() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(SRC.rglob("*.py"))}


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import in ``{module: imported names}`` that breaks a rule, as readable lines."""
    bad = []
    for mod, targets in graph.items():
        src = piece(mod)
        if src is None:
            continue
        if src not in LAYER:
            bad.append(f"{mod}: not in the layer table (add it to docs/ARCHITECTURE.md and here)")
            continue
        for tgt in sorted(targets):
            dst = piece(tgt)
            if dst is None:
                top = tgt.split(".")[0]
                if src in MATH and top not in MATH_EXTERNAL and top not in sys.stdlib_module_names:
                    bad.append(f"{mod} -> {tgt}: math imports only torch, numpy and the stdlib")
                continue
            if dst == "__init__" or dst == src:
                if dst == "__init__" and src != "__init__":
                    bad.append(f"{mod} -> {tgt}: nothing imports the package's public API")
                continue
            if dst == "cli" and src != "__main__":
                bad.append(f"{mod} -> {tgt}: nothing imports the CLI")
            elif dst not in LAYER:
                bad.append(f"{mod} -> {tgt}: not in the layer table")
            elif LAYER[dst] > LAYER[src]:
                bad.append(f"{mod} -> {tgt}: layer {LAYER[src]} imports layer {LAYER[dst]}")
            elif LAYER[dst] == LAYER[src] and (src, dst) not in SAME_LAYER_OK \
                    and not (src in MATH and dst in MATH):
                bad.append(f"{mod} -> {tgt}: siblings of layer {LAYER[src]} import each other")
            elif src == "nn" and dst in MATH:
                bad.append(f"{mod} -> {tgt}: the network imports no diffusion math")
    return bad


def test_the_source_keeps_the_import_rules():
    graph = source_imports()
    assert "ddpmlab.train.loop" in graph and "ddpmlab.runs" in graph
    assert violations(graph) == []


@pytest.mark.parametrize("graph,why", [
    ({"ddpmlab.viz": {"ddpmlab.train.checkpoint"}}, "siblings"),
    ({"ddpmlab.train.loop": {"ddpmlab.viz"}}, "siblings"),
    ({"ddpmlab.evaluate": {"ddpmlab.runs"}}, "layer 4 imports layer 5"),
    ({"ddpmlab.samplers.ddim": {"ddpmlab.config"}}, "layer 1 imports layer 2"),
    ({"ddpmlab.forward": {"PIL.Image"}}, "math imports only"),
    ({"ddpmlab.nn.unet": {"ddpmlab.forward"}}, "no diffusion math"),
    ({"ddpmlab.runs": {"ddpmlab.cli"}}, "nothing imports the CLI"),
    ({"ddpmlab.train.loop": {"ddpmlab"}}, "public API"),
    ({"ddpmlab.newthing": {"torch"}}, "not in the layer table"),
])
def test_the_rule_check_catches_each_kind_of_break(graph, why):
    found = violations(graph)
    assert len(found) == 1 and why in found[0], found


def test_imports_inside_functions_are_read(tmp_path):
    # the trainer once imported viz inside a method; such imports count like any other
    text = "def f():\n    from ..viz import save_grid\n    import ddpmlab.evaluate\n"
    path = SRC / "train" / "_probe_not_a_module.py"
    try:
        path.write_text(text)
        found = imports_of(path)
    finally:
        path.unlink()
    assert {"ddpmlab.viz", "ddpmlab.evaluate"} <= found


# ---------------------------------------------------------------------------- registries
def test_config_and_cli_choices_are_the_registries():
    from ddpmlab import losses, parametrization, reverse, samplers, schedules
    from ddpmlab.cli import build_parser
    from ddpmlab.config import _CHOICES
    from ddpmlab.device import PRECISIONS

    assert set(_CHOICES["sample.sampler"]) == set(samplers.SAMPLERS)
    assert set(_CHOICES["diffusion.schedule"]) == set(schedules.SCHEDULES)
    assert set(_CHOICES["diffusion.prediction"]) == set(parametrization.PREDICTIONS)
    assert set(_CHOICES["diffusion.loss_weighting"]) == set(losses.WEIGHTINGS)
    assert set(_CHOICES["diffusion.loss"]) == set(losses.LOSSES)
    from ddpmlab import objectives

    assert set(_CHOICES["diffusion.objective"]) == set(objectives.OBJECTIVES)
    assert set(_CHOICES["diffusion.flow_t"]) == set(objectives.FLOW_TIMES)
    assert set(_CHOICES["sample.variance"]) == set(reverse.VARIANCES)
    assert set(_CHOICES["train.precision"]) == set(PRECISIONS)
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for command in ("sample", "eval"):
        opt = next(a for a in sub[command]._actions if a.dest == "sampler")
        assert list(opt.choices) == list(samplers.SAMPLERS), command
    from ddpmlab.likelihood_ode import NLLS

    nll = next(a for a in sub["eval"]._actions if a.dest == "nll")
    assert list(nll.choices) == list(NLLS) and nll.default == "elbo"
    precision = next(a for a in sub["sample"]._actions if a.dest == "precision")
    assert list(precision.choices) == list(PRECISIONS)
    # the presets are the packaged config files, and --config / --dataset name every choice
    from ddpmlab.config import PRESETS, preset_path
    from ddpmlab.data import BUILTINS

    files = {p.stem for p in preset_path("mnist").parent.glob("*.yaml")}
    assert set(PRESETS) == files and all(preset_path(n).is_file() for n in PRESETS)
    train = {a.dest: a for a in sub["train"]._actions}
    assert all(name in train["config"].help for name in PRESETS)
    assert train["dataset"].help.startswith(" | ".join(BUILTINS) + " |")


def test_every_registered_sampler_is_described_and_runs():
    from ddpmlab import samplers, schedules

    sched = schedules.linear(50)
    for name, step in samplers.SAMPLERS.items():
        assert step.info.order >= 1 and step.info.nfe_per_step >= 1 and step.info.about, name
        x = samplers.sample(lambda x, t: torch.zeros_like(x), sched, shape=(3, 2), sampler=name,
                            steps=5, generator=torch.Generator().manual_seed(0))
        assert x.shape == (3, 2) and torch.isfinite(x).all(), name


def test_the_run_layout_has_one_home():
    # the run directory's names are written in ddpmlab.layout alone: no other module's code
    # (prose aside) spells one
    found = {p.relative_to(SRC).as_posix(): layout_literals(p.read_text(encoding="utf-8"))
             for p in SRC.rglob("*.py")}
    bad = {k: [v for v in vs if v not in _LAYOUT_HOMES.get(k, ())] for k, vs in found.items()
           if k != "layout.py"}
    assert {k: vs for k, vs in bad.items() if vs} == {}
    assert len(found["layout.py"]) >= 6, "the guard no longer sees the names where they live"


# A run's files (config.json, metrics.jsonl), a step's names (checkpoints/step_XXXXXXXX,
# samples/step_XXXXXXXX.png, their globs and patterns), sample_*.png, and joins onto a run's
# folders: only ddpmlab.layout writes them.
_LAYOUT_TEXT = re.compile(r"(?<![A-Za-z])(step|sample)_(?![a-z])|metrics\.jsonl|^config\.json$")
_LAYOUT_FOLDERS = ("samples", "checkpoints")
_LAYOUT_HOMES = {  # what another module may spell, and why
    "features/inception.py": ("/ 'checkpoints'",),      # torch.hub's own folder, not a run's
    "interop/diffusers.py": ("config.json",),            # diffusers' unet/config.json
}


def layout_literals(source: str) -> list[str]:
    """The run-layout names in the code of ``source``: string constants (also the pieces of an
    f-string) that are ``config.json``, hold ``metrics.jsonl``, or hold ``step_`` / ``sample_``
    followed by no lowercase word (``step_{n:08d}``, ``step_*.png``, ``(step_\\d{8,})``; a key
    like ``step_label`` is not a name), and ``/ "samples"`` or ``/ "checkpoints"`` path joins.
    Docstrings and comments are prose and do not count."""
    tree = ast.parse(source)
    prose = {id(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and id(node) not in prose and _LAYOUT_TEXT.search(node.value):
            out.append(node.value)
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div) \
                and isinstance(node.right, ast.Constant) and node.right.value in _LAYOUT_FOLDERS:
            out.append(f"/ {node.right.value!r}")
    return out


@pytest.mark.parametrize("source", [
    'final = root / f"step_{step:08d}"',
    'grids = sorted(run.samples.glob("step_*.png"))',
    'm = re.match(r"^\\.tmp-replaced-(step_\\d{8,})\\.\\d+$", name)',
    'out = run_dir / "samples" / name',
    'name = f"sample_{tag}_seed{seed}.png"',
    'ckpt = root / "checkpoints"',
    'tmp = root / (".tmp-step_" + str(step))',
    'cfg = run / "config.json"',
    'log = open(os.path.join(run, "metrics.jsonl"), "a")',
])
def test_the_layout_guard_catches_each_kind_of_name(source):
    assert layout_literals(source), source


def test_the_layout_guard_lets_prose_and_other_keys_pass():
    source = ('def f():\n    """Writes RUN/samples/step_00000001.png, RUN/metrics.jsonl."""\n'
              '    return text("step_label"), cfg["sample_every"], x / "figures"  # step_*\n'
              'MSG = "--resume takes the run\'s own config.json"\n')
    assert layout_literals(source) == []


# ----------------------------------------------------------------------------- function size
MAX_FUNCTION_LINES = 80          # a function you can read in one screen (docstring not counted)
LONG_ALLOWED = {"cli.py:build_parser"}  # the argument parser: one declaration per flag


def long_functions(source: str, name: str, limit: int = MAX_FUNCTION_LINES) -> list[str]:
    """``file:function (N lines)`` for each function of ``source`` longer than ``limit``."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            first = node.body[0]
            if (isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                    and isinstance(first.value.value, str)):
                n -= first.end_lineno - first.lineno + 1
            if n > limit and f"{name}:{node.name}" not in LONG_ALLOWED:
                out.append(f"{name}:{node.name} ({n} lines)")
    return out


def test_no_function_in_the_source_is_longer_than_a_screen():
    found = [f for p in sorted(SRC.rglob("*.py"))
             for f in long_functions(p.read_text(encoding="utf-8"), p.relative_to(SRC).as_posix())]
    assert found == []


def test_the_function_size_check_fails_on_a_long_function():
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    assert long_functions(f'def f():\n    """doc\n    lines"""\n{body}\n', "m.py") == [
        f"m.py:f ({MAX_FUNCTION_LINES + 2} lines)"]
    assert long_functions("def f():\n    return 1\n", "m.py") == []
