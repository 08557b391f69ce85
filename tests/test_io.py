"""ddpmlab.io: atomic writes, the one safetensors reader (nothing is ever unpickled), the bounded
JSON reader and the regular-file reader under it."""

import os
import pickle
import re

import pytest
import torch

from ddpmlab.errors import CheckpointError
from ddpmlab.io import (
    MAX_INT_DIGITS,
    MAX_JSON_DEPTH,
    atomic_write_text,
    load_tensors,
    loads_json,
    read_json,
    read_regular,
    save_tensors,
)


def test_loader_never_unpickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    for name in ("evil.pt", "evil.safetensors"):
        p = tmp_path / name
        p.write_bytes(pickle.dumps({"w": Evil()}))
        with pytest.raises(CheckpointError):
            load_tensors(p)
    assert not (tmp_path / "pwned").exists()


def test_tensors_round_trip_exactly(tmp_path):
    t = {"w": torch.randn(3, 4, generator=torch.Generator().manual_seed(0)),
         "i": torch.arange(5, dtype=torch.int64), "h": torch.ones(2, dtype=torch.bfloat16)}
    save_tensors(tmp_path / "t.safetensors", t)
    back = load_tensors(tmp_path / "t.safetensors")
    assert back.keys() == t.keys()
    assert all(back[k].dtype == t[k].dtype and torch.equal(back[k], t[k]) for k in t)


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "config.json"
    atomic_write_text(path, "old")

    def replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(CheckpointError, match=re.escape(f"{path}: cannot write (No space left on device")):
        atomic_write_text(path, "new")
    monkeypatch.undo()
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
    atomic_write_text(path, "new")
    assert path.read_text() == "new" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize("text, needle", [
    ('{"a": 1, "a": 2}', "duplicate key 'a'"),
    ("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1), "nested deeper than"),
    ("9" * (MAX_INT_DIGITS + 1), "digits"),
    ('{"a": ', "not valid JSON"),
])
def test_the_json_reader_refuses_what_it_cannot_keep_whole(text, needle):
    with pytest.raises(CheckpointError, match=f"^state.json: .*{needle}"):
        loads_json(text, "state.json")
    ok = "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH        # the limits themselves are fine
    assert isinstance(loads_json(ok, "x"), list)
    assert loads_json("9" * MAX_INT_DIGITS, "x") == int("9" * MAX_INT_DIGITS)


def test_the_file_reader_reads_only_regular_files_within_the_limit(tmp_path):
    (tmp_path / "ok.json").write_text('{"step": 3}')
    assert read_json(tmp_path / "ok.json") == {"step": 3}
    (tmp_path / "big.json").write_text(" " * 101)
    (tmp_path / "dir").mkdir()
    (tmp_path / "link.json").symlink_to(tmp_path / "gone.json")
    cases = [("big.json", "101 bytes is too large"), ("dir", "not a regular file"),
             ("link.json", "a link to a missing file"), ("none.json", "file not found")]
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "fifo.json")    # never opened: reading it would block
        cases.append(("fifo.json", "not a regular file"))
    for name, needle in cases:
        with pytest.raises(CheckpointError, match=re.escape(f"{tmp_path / name}: {needle}")):
            read_regular(tmp_path / name, max_bytes=100)
