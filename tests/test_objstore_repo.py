"""A repository whose chunks are in an object store (init --chunks s3://...), end to end
against a real SeaweedFS (tests/seaweed.py): save, restore through GNU tar and bsdtar,
presence from the catalog (no request for an unchanged re-save or a catalog query), check,
expire, catalog copies and recovery from the bucket alone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from restorehelp import compare_trees, extract, tar_stream

from backshift.objstore import CATALOG_COPIES, ObjectStore
from conftest import find0, have, make_tree, run


def init_s3(tmp_path: Path, url: str) -> bytes:
    repo = os.fsencode(tmp_path / "repo")
    run("-r", repo, "init", "--chunk-min", "4096", "--chunk-avg", "16384",
        "--chunk-max", "65536", "--chunks", url)
    return repo


def objects_under(url: str, prefix: str) -> dict[str, int]:
    with ObjectStore(url, threads=1) as s:
        return {k: size for batch in s.client.list(prefix) for k, size in batch}


def chunk_shas(repo: bytes) -> set[str]:
    res = run("-r", repo, "sql", "SELECT sha256 FROM chunks", "--format", "csv")
    return set(res.stdout.split()[1:])


@pytest.fixture
def s3_repo(tmp_path, s3_url):
    return init_s3(tmp_path, s3_url), s3_url


def test_objstore_repo_init_records_the_location_and_no_credential(s3_repo, s3_env):
    repo, url = s3_repo
    assert not os.path.exists(os.path.join(repo, b"chunks"))  # no local chunk store
    res = run("-r", repo, "sql", "SELECT value FROM meta WHERE key = 'chunks'")
    assert url in res.stdout
    catalog = open(os.path.join(repo, b"catalog.sqlite3"), "rb").read()
    assert s3_env.secret_key.encode() not in catalog
    assert s3_env.access_key.encode() not in catalog
    assert objects_under(url, "probe/") == {}  # the probe object is gone again


@pytest.mark.parametrize("tool", ["gnu", "bsd"])
def test_objstore_repo_save_restores_exactly(s3_repo, tmp_path, tool):
    if tool == "bsd" and not have("bsdtar"):
        pytest.fail("bsdtar is missing")
    repo, url = s3_repo
    src = make_tree(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    stored = objects_under(url, "chunks/")
    shas = chunk_shas(repo)
    assert {k.rpartition("/")[2] for k in stored} == shas and shas
    data, _err = tar_stream(repo)
    extract(tool, data, tmp_path / "out")
    compare_trees(src, tmp_path / "out" / os.path.relpath(src, "/"))


def test_objstore_repo_unchanged_resave_and_queries_make_no_requests(
        s3_repo, tmp_path, s3_env, no_racy_margin):
    repo, url = s3_repo
    src = make_tree(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    before = s3_env.request_counts()
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    run("-r", repo, "list", "--backup", "latest")
    run("-r", repo, "sql", "SELECT count(*) FROM files")
    run("-r", repo, "find", "*.txt")
    run("-r", repo, "history", os.path.join(src, "a.txt"))
    run("-r", repo, "diff", "1", "2")
    run("-r", repo, "saves")
    after = s3_env.request_counts()
    # the catalog copy after the re-save is uploaded (one PUT, one LIST, maybe a DELETE of
    # the oldest): no chunk request at all
    changed = {k: after.get(k, 0) - before.get(k, 0) for k in set(after) | set(before)}
    changed = {k: v for k, v in changed.items() if v}
    assert changed.get("GET", 0) == 0 and changed.get("HEAD", 0) == 0, changed
    assert changed.get("PUT", 0) == 1, changed  # the catalog copy, no chunk
    copies = objects_under(url, CATALOG_COPIES + "/")
    assert len(copies) == 2
    assert len(objects_under(url, "chunks/")) == len(chunk_shas(repo))
