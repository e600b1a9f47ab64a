"""The atomic-write helper: exclusive temp names, links never followed, nothing left on error."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from textloop.errors import OutputError
from textloop.fileio import (
    atomic_dir,
    atomic_file,
    atomic_path,
    check_output_path,
    write_bytes_atomic,
    write_text_atomic,
)


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_a_planted_link_at_any_temp_name_is_never_followed(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out" / "preds.jsonl"
    out.parent.mkdir()
    # the names a fixed-temp writer would use, all pointing at the victim
    for name in ("preds.jsonl.tmp", ".preds.jsonl.tmp", "preds.tmp.jsonl"):
        (out.parent / name).symlink_to(victim)
    write_text_atomic(out, "new\n")
    assert out.read_text() == "new\n"
    assert victim.read_text() == "precious"
    assert _names(out.parent) == {
        "preds.jsonl",
        "preds.jsonl.tmp",
        ".preds.jsonl.tmp",
        "preds.tmp.jsonl",
    }


def test_an_output_that_is_a_link_is_replaced_not_written_through(tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out.txt"
    out.symlink_to(victim)
    write_bytes_atomic(out, b"new")
    assert not out.is_symlink() and out.read_bytes() == b"new"
    assert victim.read_text() == "precious"


def test_an_error_leaves_the_old_output_and_no_temp(tmp_path):
    out = tmp_path / "data.jsonl"
    out.write_text("old")
    with pytest.raises(RuntimeError), atomic_file(out) as f:
        f.write("half")
        raise RuntimeError("disk full")
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    folder = tmp_path / "ckpt"
    folder.mkdir()
    (folder / "a").write_text("old")
    with pytest.raises(RuntimeError), atomic_dir(folder) as tmp:
        (tmp / "a").write_text("half")
        raise RuntimeError("disk full")
    assert out.read_text() == "old" and (folder / "a").read_text() == "old"
    assert _names(tmp_path) == {"data.jsonl", "ckpt"}


def test_a_folder_is_swapped_in_whole_with_ordinary_permissions(tmp_path):
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "stale").write_text("x")
    with atomic_dir(folder) as tmp:
        (tmp / "weights").write_text("w")
    assert _names(folder) == {"weights"}
    assert _names(tmp_path) == {"model"}
    umask = os.umask(0o022)
    os.umask(umask)
    assert folder.stat().st_mode & 0o777 == 0o777 & ~umask
    write_text_atomic(tmp_path / "f.txt", "x")
    assert (tmp_path / "f.txt").stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize(
    ("make", "needle"),
    [
        (lambda d: d / "missing" / "x.jsonl", "does not exist"),
        (lambda d: d / "afile.txt" / "x.jsonl", "is a file, not a folder"),
        (lambda d: d / "afolder", "is a folder"),
    ],
)
def test_unwritable_outputs_are_refused_by_name(tmp_path, make, needle):
    (tmp_path / "afile.txt").write_text("mine")
    (tmp_path / "afolder").mkdir()
    path = make(tmp_path)
    with pytest.raises(OutputError, match=needle) as info:
        write_text_atomic(path, "x")
    assert str(path) in str(info.value)
    with pytest.raises(OutputError):
        check_output_path(path)
    assert (tmp_path / "afile.txt").read_text() == "mine"
    assert _names(tmp_path) == {"afile.txt", "afolder"}
