"""The run session (ddpmlab.session): one training process's tenure of a run directory."""

from __future__ import annotations

import pytest

from ddpmlab.errors import CheckpointError
from ddpmlab.layout import RunDir
from ddpmlab.session import RunSession, read_resume_config


def _old_run(root):
    run = RunDir(root)
    run.check_new(False)
    run.create('{"old": true}', False)
    (run.checkpoints / "step_00000003").mkdir(parents=True)
    return run


def test_a_new_run_writes_nothing_until_start_then_holds_the_lock(tmp_path):
    run = RunDir(tmp_path / "r")
    with RunSession(run) as s:
        s.check()
        assert not run.config.exists()
        s.start('{"new": true}')
        assert run.config.read_text() == '{"new": true}'
        with pytest.raises(CheckpointError, match="already holds a run"):
            RunSession(run).check()
        with pytest.raises(CheckpointError):  # the lock is held by the first session
            RunSession(run, resume=True).check()
    RunDir(tmp_path / "r").lock("test").release()  # released at the end


def test_force_puts_the_old_run_back_unless_a_checkpoint_committed(tmp_path):
    run = _old_run(tmp_path / "r")
    with RunSession(run, force=True, log=lambda m: None) as s:
        s.check()
        s.start('{"new": true}')
        assert s.replacing and run.config.read_text() == '{"new": true}'
        assert not run.checkpoint_dirs()
    assert run.config.read_text() == '{"old": true}' and run.checkpoint_dirs()

    with RunSession(run, force=True, log=lambda m: None) as s:
        s.check()
        s.start('{"new": true}')
        s.committed()
        assert not s.replacing
    assert run.config.read_text() == '{"new": true}'
    assert not list(run.root.glob(".replaced-*"))


def test_a_broken_copy_that_never_puts_back_fails_the_force_test(tmp_path):
    """The force test above, against a session whose close forgets the replaced run."""

    class Forgetful(RunSession):
        def close(self):
            self._aside = None
            super().close()

    run = _old_run(tmp_path / "r")
    with Forgetful(run, force=True, log=lambda m: None) as s:
        s.check()
        s.start('{"new": true}')
    assert run.config.read_text() != '{"old": true}'


def test_resume_needs_a_run_and_a_complete_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="not a ddpmlab run directory"):
        RunSession(RunDir(tmp_path / "none"), resume=True).check()
    run = RunDir(tmp_path / "r")
    run.check_new(False)
    run.create("{}", False)
    prepared = []
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        RunSession(run, resume=True).check(prepare_resume=lambda: prepared.append(1))
    assert prepared == [1]
    run.lock("test").release()  # a failed check releases the lock


def test_an_inactive_session_does_nothing(tmp_path):
    run = RunDir(tmp_path / "r")
    s = RunSession(run, active=False)
    s.check()
    s.start("{}")
    s.close()
    assert not run.root.exists()


def test_read_resume_config_names_a_folder_without_a_run(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        read_resume_config(tmp_path)
