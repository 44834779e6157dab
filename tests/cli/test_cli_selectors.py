"""CLI depth: selectors and paths resolve alike in tar, history and find, and one that
matches nothing is exit 9 naming it (as a missing plain path already was)."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from conftest import run


@pytest.fixture
def saved(repo, tmp_path, no_racy_margin):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "report[1].txt").write_bytes(b"literal brackets\n")
    (src / "sub" / "a.pdf").write_bytes(b"pdf\n")
    (src / "sub" / "b.txt").write_bytes(b"txt\n")
    run("-r", repo, "save", "--subset", "s", str(src))
    return repo, str(src).lstrip("/")


def _names(data: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(data)) as tf:
        return [m.name for m in tf.getmembers()]


def test_tar_glob_matching_nothing_is_exit_9(saved):
    repo, _ = saved
    res = run("-r", repo, "tar", "--backup", "1", "*.docx", exit_code=9)
    assert res.stderr.splitlines() == ["backshift: error: nothing matches '*.docx' in save 1"]


def test_tar_glob_matching_nothing_among_others_is_exit_9(saved):
    repo, src = saved
    res = run("-r", repo, "tar", "--backup", "1", f"{src}/sub", "*.pdf", "*.odt", exit_code=9)
    assert f"{src}/sub/a.pdf" in _names(res.stdout_bytes)  # what matched is written
    assert res.stderr.splitlines() == ["backshift: error: nothing matches '*.odt' in save 1"]
    # a glob whose matches all lie inside a path selector matched something
    res = run("-r", repo, "tar", "--backup", "1", f"{src}/sub", "*.pdf")
    assert f"{src}/sub/b.txt" in _names(res.stdout_bytes)


def test_tar_name_with_brackets_is_taken_literally(saved):
    repo, src = saved
    res = run("-r", repo, "tar", "--backup", "1", f"{src}/report[1].txt")
    assert _names(res.stdout_bytes)[-1] == f"{src}/report[1].txt"


def test_history_takes_a_name_pasted_from_list(saved, tmp_path):
    repo, src = saved
    listed = run("-r", repo, "list", "--backup", "1").stdout.splitlines()
    assert f"{src}/sub/a.pdf" in listed
    res = run("-r", repo, "history", f"{src}/sub/a.pdf", "--format", "csv")
    assert res.stdout.splitlines()[1].startswith("1,")
    os.chdir(tmp_path / "src")  # and a path relative to where the user stands
    assert run("-r", repo, "history", "sub/a.pdf", "--format", "csv").stdout == res.stdout


def test_history_of_a_path_no_save_holds_is_exit_9(saved):
    repo, src = saved
    res = run("-r", repo, "history", f"/{src}/nope", exit_code=9)
    assert res.stderr.splitlines() == [
        f"backshift: error: nothing matches /{src}/nope in any save"]
    assert res.stdout == ""


def test_find_takes_a_name_pasted_from_list_and_nothing_is_exit_9(saved):
    repo, src = saved
    res = run("-r", repo, "find", f"{src}/sub/*.pdf", "--format", "csv")
    assert res.stdout.splitlines()[1].split(",")[4] == f"/{src}/sub/a.pdf"
    res = run("-r", repo, "find", "*.docx", exit_code=9)
    assert res.stderr.splitlines() == ["backshift: error: nothing matches '*.docx' in any save"]
    assert res.stdout == ""
    res = run("-r", repo, "find", "*.pdf", "--since", "2999-01-01", exit_code=9)
    assert "since 2999-01-01" in res.stderr
