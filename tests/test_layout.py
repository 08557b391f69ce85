"""The run directory's names (ddpmlab.layout): a step's names are written and read strictly,
and every other module asks layout for them (tests/test_architecture.py guards that)."""

from __future__ import annotations

import pytest

from ddpmlab.layout import MAX_STEP, RunDir, default_run_dir, sample_name, step_name, step_of


@pytest.mark.parametrize("step", [0, 3, 99_999_999, 100_000_000, 123_456_789_012, MAX_STEP])
def test_step_names_round_trip(step):
    name = step_name(step)
    assert name.startswith("step_") and len(name) == 5 + max(8, len(str(step)))
    assert step_of(name) == step


@pytest.mark.parametrize("name", [
    "step_99999999999999999999999",      # far beyond MAX_STEP (and int64)
    "step_1000000000000",                # MAX_STEP + 1
    "step_1", "step_0000001",            # fewer than 8 digits
    "step_000000001", "step_0123456789",  # leading zeros step_name never writes
    "step_0000000\u0661",                # a non-ASCII digit (int() would take it)
    "step_+0000001", "step_-0000001", "step_0000_001",
    "step_00000003.png", " step_00000003", "step_00000003\n", "STEP_00000003",
    ".tmp-step_00000003.123", "step_", "",
])
def test_malformed_step_names_name_no_step(name):
    assert step_of(name) is None


@pytest.mark.parametrize("bad", [-1, MAX_STEP + 1, 2.0, True, "3"])
def test_step_name_refuses_what_it_could_not_read_back(bad):
    with pytest.raises(ValueError, match="step="):
        step_name(bad)


def test_checkpoint_folders_and_training_grids_are_listed_strictly(tmp_path):
    run = RunDir(tmp_path)
    for step in (2, 99_999_999, 100_000_000):
        run.checkpoint_dir(step).mkdir(parents=True)
        run.training_grid(step).parent.mkdir(exist_ok=True)
        run.training_grid(step).write_bytes(b"png")
    for junk in ("step_99999999999999999999999", "step_000000001", ".tmp-step_00000004.1"):
        (run.checkpoints / junk).mkdir()
        (run.samples / f"{junk}.png").write_bytes(b"png")
    (run.checkpoints / "step_00000005").write_bytes(b"a file, not a checkpoint folder")
    (run.samples / "step_00000006").mkdir()                     # a folder, not a grid
    # oldest first by step: a sort by name would put step_100000000 before step_99999999
    assert [p.name for p in run.checkpoint_dirs()] == [step_name(s) for s in (2, 99_999_999, 100_000_000)]
    assert run.training_grids() == [(s, run.samples / f"{step_name(s)}.png")
                                    for s in (2, 99_999_999, 100_000_000)]
    assert RunDir(tmp_path / "none").checkpoint_dirs() == []
    assert RunDir(tmp_path / "none").training_grids() == []


def test_the_sample_grid_name():
    assert sample_name("ddim", 5, 0) == "sample_ddim-5_seed0.png"
    assert RunDir("r").sample_grid("heun", 3, 7).as_posix() == "r/samples/sample_heun-3_seed7.png"


def test_default_run_dir_counts_up_past_taken_folders(tmp_path):
    root = tmp_path / "runs"
    assert default_run_dir("digits", root) == root / "digits"
    (root / "digits").mkdir(parents=True)
    assert default_run_dir("digits", root) == root / "digits"   # empty: still free
    (root / "digits" / "config.json").write_text("{}")
    (root / "digits-2").mkdir()
    (root / "digits-2" / "x").write_text("")
    assert default_run_dir("/data/digits.npz", root) == root / "digits-3"
    assert default_run_dir("..", root) == root / "run"


def test_a_crash_leftover_is_put_back_only_under_a_well_formed_name(tmp_path):
    from ddpmlab.train.checkpoint import clean_partial

    run = RunDir(tmp_path)
    run.checkpoints.mkdir()
    good, bad = ".tmp-replaced-step_00000004.12", ".tmp-replaced-step_99999999999999999999999.12"
    (run.checkpoints / good).mkdir()
    (run.checkpoints / bad).mkdir()
    clean_partial(tmp_path)
    assert sorted(p.name for p in run.checkpoints.iterdir()) == ["step_00000004"]
