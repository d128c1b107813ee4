"""Atomic writes: all or nothing, readable like any other file."""

from __future__ import annotations

import os
import stat

import pytest

from segmenter.errors import SegmenterError
from segmenter.fileio import atomic_path, write_json, write_text


def test_write_replaces_whole_file_and_leaves_no_temporaries(tmp_path):
    target = tmp_path / "sub" / "manifest.json"
    write_json(target, {"a": 1})
    write_json(target, {"a": 2})
    assert target.read_text() == '{\n  "a": 2\n}\n'
    assert sorted(p.name for p in target.parent.iterdir()) == ["manifest.json"]


def test_failure_keeps_the_previous_content(tmp_path):
    target = tmp_path / "config.yaml"
    write_text(target, "old\n")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir()] == ["config.yaml"]


def test_files_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        # fileio reads the umask once at import; 022 is what it saw in this process too
        write_text(tmp_path / "a.txt", "x")
    finally:
        os.umask(old)
    mode = stat.S_IMODE((tmp_path / "a.txt").stat().st_mode)
    assert mode & 0o044 == 0o044  # group and others can read, as with open()


def test_unwritable_folder_is_one_line(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SegmenterError, match=r"file/out.json: cannot write"):
        write_json(blocker / "out.json", {})
