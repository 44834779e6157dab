"""save PATH... --exclude-caches / --exclude-if-present NAME: a tagged directory is saved with
its tag files only (GNU tar's --exclude-caches and --exclude-tag); and the options that only
the walk of PATHs can apply are refused with names from find, never silently ignored."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from conftest import find0, run

CACHEDIR_SIGNATURE = b"Signature: 8a477f597d28d172789f06886806bc55"  # bford.info/cachedir


def _tree(root: Path) -> Path:
    (root / "cache" / "sub").mkdir(parents=True)
    (root / "cache" / "CACHEDIR.TAG").write_bytes(CACHEDIR_SIGNATURE + b"\n# a cache\n")
    (root / "cache" / "big.bin").write_bytes(b"x" * 5000)
    (root / "cache" / "sub" / "deep.txt").write_bytes(b"deep\n")
    (root / "fake").mkdir()
    (root / "fake" / "CACHEDIR.TAG").write_bytes(b"not the signature\n")
    (root / "fake" / "kept.txt").write_bytes(b"kept\n")
    (root / "build").mkdir()
    (root / "build" / ".nobackup").write_bytes(b"")
    (root / "build" / "out.o").write_bytes(b"\x7fELF")
    (root / "a.txt").write_bytes(b"a\n")
    return root


def _listed(repo: bytes, root: Path) -> list[str]:
    prefix = os.fsdecode(root).lstrip("/")
    lines = run("-r", repo, "list", "--backup", "latest").stdout.splitlines()
    return [ln[len(prefix):] for ln in lines if ln.startswith(prefix)]


def test_tagged_directories_keep_only_their_tag_files(repo, tmp_path):
    src = _tree(tmp_path / "src")
    run("-r", repo, "save", "--exclude-caches", "--exclude-if-present", ".nobackup", str(src))
    assert _listed(repo, src) == [
        "/", "/a.txt", "/build/", "/build/.nobackup", "/cache/", "/cache/CACHEDIR.TAG",
        "/fake/", "/fake/CACHEDIR.TAG", "/fake/kept.txt"]


def test_a_tagged_root_keeps_only_its_tag_file(repo, tmp_path):
    src = _tree(tmp_path / "src")
    run("-r", repo, "save", "--exclude-caches", str(src / "cache"))
    assert _listed(repo, src) == ["/cache/", "/cache/CACHEDIR.TAG"]


def test_without_the_options_tagged_directories_are_saved_whole(repo, tmp_path):
    src = _tree(tmp_path / "src")
    run("-r", repo, "save", str(src))
    assert "/cache/sub/deep.txt" in _listed(repo, src)


@pytest.mark.parametrize("option", [["--exclude", "*.o"], ["--exclude-caches"],
                                    ["--exclude-if-present", ".nobackup"],
                                    ["--one-file-system"]])
def test_walk_options_with_names_from_find_are_refused(repo, tmp_path, option):
    src = _tree(tmp_path / "src")
    res = run("-r", repo, "save", "--subset", "t", *option, input=find0(src), exit_code=2)
    assert f"{option[0]} applies to the PATHs backshift walks" in res.stderr, res.stderr
    assert run("-r", repo, "saves", "--format", "csv").stdout.strip().count("\n") == 0


@pytest.mark.parametrize("name", ["a/b", "", ".."])
def test_exclude_if_present_takes_a_file_name(repo, tmp_path, name):
    res = run("-r", repo, "save", "--exclude-if-present", name, str(tmp_path), exit_code=2)
    assert "--exclude-if-present takes a file name" in res.stderr
