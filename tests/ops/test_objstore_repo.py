"""A repository whose chunks are in an object store (init --chunks s3://...), end to end
against a real SeaweedFS (tests/helpers/seaweed.py): save, restore through GNU tar and bsdtar,
presence from the catalog (no request for an unchanged re-save or a catalog query), check,
expire, catalog copies and recovery from the bucket alone."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import zstandard
from restorehelp import compare_trees, extract, tar_stream

from backshift.objstore import CATALOG_COPIES, ObjectStore, key_for
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
    run("-r", repo, "stats")
    run("-r", repo, "save", "--dry-run", "--subset", "t", input=find0(src))
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


def test_objstore_repo_queries_load_no_object_store_client(s3_repo, tmp_path, s3_env):
    """list, sql, find, history and diff on a bucket repository read the catalog only:
    neither obstore nor the object-store backend is imported (no client is made); nor does
    making an ObjectStore import obstore before its first request."""
    import subprocess
    import sys
    repo, url = s3_repo
    src = make_tree(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    code = ("import sys; from backshift import cli; code = cli.run(sys.argv[1:]); "
            "print('MODULES', code, ' '.join(sorted(sys.modules)))")
    for args in (["list", "--backup", "latest", "-v"], ["sql", "SELECT count(*) FROM files"],
                 ["find", "*.txt"], ["history", os.path.join(src, "a.txt")],
                 ["diff", "1", "2"]):
        out = subprocess.run([sys.executable, "-c", code, "-r", os.fsdecode(repo), *args],
                             capture_output=True, text=True, check=True).stdout
        status, loaded = out.split("MODULES ", 1)[1].split(" ", 1)
        assert status == "0", (args, out)
        for lazy in ("obstore", "backshift.objstore", "backshift.s3client"):
            assert lazy not in loaded.split(), (args, lazy)
    out = subprocess.run([sys.executable, "-c", "import sys; from backshift.objstore import "
                          f"ObjectStore; ObjectStore({url!r}).close(); print('obstore' in "
                          "sys.modules)"], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False"]


# The CLI in a child that writes its own peak resident size (VmHWM, kB) to HWM_FILE at exit.
# Not ru_maxrss: a child forked from this test process keeps, across its exec, the peak of
# the copy of this process it started as (Linux carries it in signal->maxrss).
PEAK_OF_CLI = """
import atexit, os, sys
def peak():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    with open(os.environ["HWM_FILE"], "w") as out:
        out.write(kb)
atexit.register(peak)
from backshift.cli import main
main(sys.argv[1:])
"""


def cli_peak_rss(tmp_path: Path, *args) -> int:
    """Run the CLI with ARGS in a child; its peak resident size in bytes."""
    import subprocess
    import sys
    hwm = tmp_path / "hwm"
    res = subprocess.run([sys.executable, "-c", PEAK_OF_CLI, *map(os.fsdecode, args)],
                         capture_output=True, env={**os.environ, "HWM_FILE": str(hwm)})
    assert res.returncode == 0, res.stderr
    return int(hwm.read_text()) << 10


def test_objstore_repo_tar_and_check_read_data_keep_memory_flat(tmp_path, s3_url):
    """tar and check --read-data read a bounded window of objects ahead of the stream: the
    peak RSS is the same for a save 7 times the size of another (4 MiB and 28 MiB of
    incompressible data in chunks of at most 64 KiB: both far more chunks than the 32-object
    window), within a margin (12 MiB; the allocator's warm-up over more chunks is ~5) half
    the 24 MiB that holding the save would add."""
    repo = init_s3(tmp_path, s3_url)
    peaks = {}
    for name, mib in (("small", 4), ("big", 28)):
        src = tmp_path / name
        src.mkdir()
        for i in range(mib // 4):
            (src / f"f{i}.bin").write_bytes(os.urandom(4 << 20))
        run("-r", repo, "save", "--subset", name, input=find0(src))
        out = tmp_path / f"{name}.tar"
        tar = cli_peak_rss(tmp_path, "-r", repo, "tar", "--subset", name, "--backup", "latest",
                           "-o", out)
        assert out.stat().st_size > mib << 20
        out.unlink()
        peaks[name] = (tar, cli_peak_rss(tmp_path, "-r", repo, "check", "--read-data"))
    for i, what in enumerate(("tar", "check --read-data")):
        assert peaks["big"][i] < peaks["small"][i] + (12 << 20), (what, peaks)


# -- check, repair, expire -----------------------------------------------------------------


def put_raw(url: str, key: str, body: bytes) -> None:
    with ObjectStore(url, threads=1) as s:
        s.client.put(key, body)


def get_raw(url: str, key: str) -> bytes:
    with ObjectStore(url, threads=1) as s:
        return s.client.get(key, 1 << 30)[1]


def saved_repo(tmp_path, url) -> tuple[bytes, Path]:
    repo = init_s3(tmp_path, url)
    src = make_tree(tmp_path / "src")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    return repo, src


def biggest_chunk(repo: bytes) -> str:
    res = run("-r", repo, "sql", "SELECT sha256 FROM chunks ORDER BY stored_length DESC "
              "LIMIT 1", "--format", "csv")
    return res.stdout.split()[1]


def test_objstore_repo_check_lists_missing_orphan_and_wrong_length(tmp_path, s3_url, s3_env):
    repo, _src = saved_repo(tmp_path, s3_url)
    run("-r", repo, "check")
    shas = sorted(chunk_shas(repo))
    missing, short = shas[0], shas[1]
    with ObjectStore(s3_url, threads=1) as s:
        s.client.delete([key_for(bytes.fromhex(missing))])
        body = s.client.get(key_for(bytes.fromhex(short)), 1 << 30)[1]
        s.client.put(key_for(bytes.fromhex(short)), body[:-1])
        orphan = s.encode(b"nobody's data\n" * 100)
        s.client.put(key_for(bytes(32)), orphan)  # a stray: its body is not its name's
    before = s3_env.request_counts()
    res = run("-r", repo, "check", exit_code=10)
    after = s3_env.request_counts()
    assert f"chunk {missing}: missing" in res.stdout
    assert f"chunk {short}: size {len(body) - 1} bytes, catalog says {len(body)}" in res.stdout
    assert "1 orphan chunk files" in res.stdout
    # a LIST per fan-out group, a GET for the one of another size only
    assert after.get("GET", 0) - before.get("GET", 0) == 1


def test_objstore_repo_check_read_data_finds_a_flipped_byte_and_repair_moves_it(
        tmp_path, s3_url):
    repo, src = saved_repo(tmp_path, s3_url)
    sha = biggest_chunk(repo)
    key = key_for(bytes.fromhex(sha))
    body = bytearray(get_raw(s3_url, key))
    body[len(body) // 2] ^= 0x40
    put_raw(s3_url, key, bytes(body))
    assert "no problems found" in run("-r", repo, "check").stdout  # same length: LIST only
    res = run("-r", repo, "check", "--read-data", exit_code=10)
    assert f"chunk {sha}: " in res.stdout and "random.bin" in res.stdout
    run("-r", repo, "check", "--read-data", "--repair", exit_code=10)
    assert key not in objects_under(s3_url, "chunks/")
    moved = objects_under(s3_url, "quarantine/")
    assert [k.startswith(f"quarantine/{sha}.") for k in moved] == [True]
    # the next save stores it afresh and the restore is whole again
    os.utime(src / "random.bin")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    assert "no problems found" in run("-r", repo, "check", "--read-data").stdout


def test_objstore_repo_tar_names_the_member_of_a_damaged_object(tmp_path, s3_url):
    repo, _src = saved_repo(tmp_path, s3_url)
    sha = biggest_chunk(repo)
    key = key_for(bytes.fromhex(sha))
    body = bytearray(get_raw(s3_url, key))
    body[-1] ^= 1
    put_raw(s3_url, key, bytes(body))
    data, err = tar_stream(repo, exit_code=10)
    assert "random.bin" in err and sha in err
    extract("gnu", data, tmp_path / "out")


def test_objstore_repo_expire_leaves_exactly_the_referenced_objects(
        tmp_path, s3_url, s3_env):
    repo, src = saved_repo(tmp_path, s3_url)
    (src / "new.bin").write_bytes(os.urandom(50_000))
    (src / "random.bin").write_bytes(os.urandom(60_000))
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    put_raw(s3_url, key_for(bytes(range(32))), b"an orphan a crash left")
    stored_before = {k.rpartition("/")[2] for k in objects_under(s3_url, "chunks/")}
    before = s3_env.request_counts()
    run("-r", repo, "expire", "--keep-last", "1")
    after = s3_env.request_counts()
    names = {k.rpartition("/")[2] for k in objects_under(s3_url, "chunks/")}
    assert names == chunk_shas(repo)
    gone = stored_before - names
    assert bytes(range(32)).hex() in gone and len(gone) > 2
    # freed chunks and the orphan go in batched DELETEs (POST ?delete), one per fan-out
    # group that has any, and one for the catalog copy rotated out
    deletes = after.get("POST", 0) + after.get("DELETE", 0) \
        - before.get("POST", 0) - before.get("DELETE", 0)
    assert deletes <= len({name[:2] for name in gone}) + 1
    # its catalog copy went to the bucket too: two saves and the expire, the newest three
    copies = sorted(objects_under(s3_url, CATALOG_COPIES + "/"))
    assert len(copies) == 3
    newest = zstandard.ZstdDecompressor().decompressobj().decompress(
        get_raw(s3_url, copies[-1]))
    assert newest.startswith(b"SQLite format 3\0")
    assert "no problems found" in run("-r", repo, "check", "--read-data").stdout


# -- recovery from the bucket alone ----------------------------------------------------------


def test_objstore_repo_recovers_from_the_bucket_alone(tmp_path, s3_url):
    repo, src = saved_repo(tmp_path, s3_url)
    (src / "later.txt").write_bytes(b"saved in the second save\n")
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    shutil.rmtree(repo)  # the machine is lost; the bucket is all there is
    new = os.fsencode(tmp_path / "new")
    res = run("-r", new, "init", "--recover", s3_url)
    assert f"{s3_url}/catalog-copies/catalog-" in res.stderr
    assert len(run("-r", new, "saves", "--format", "csv").stdout.splitlines()) == 3
    for tool in ("gnu", "bsd"):
        data, _err = tar_stream(new)
        extract(tool, data, tmp_path / tool)
        compare_trees(src, tmp_path / tool / os.path.relpath(src, "/"))
    assert "no problems found" in run("-r", new, "check", "--read-data").stdout
    run("-r", new, "save", "--subset", "t", input=find0(src))  # and it saves on


def test_objstore_repo_catalog_copy_is_uploaded_beside_the_local_one(tmp_path, s3_url):
    """make_copy hands the bucket upload the copy's file while it syncs and renames the
    local copy (another thread); the bucket's copy is the local copy's bytes, compressed."""
    import threading

    from backshift.ops.catalog_copy import make_copy
    from backshift.repo import WRITE, open_repository
    repo, _src = saved_repo(tmp_path, s3_url)
    threads = []
    with open_repository(repo, WRITE) as r:
        def upload(path, f):
            threads.append(threading.current_thread())
            r.copy_to_bucket(path, f)
        local = make_copy(r.path, r.catalog, upload=upload)
    assert threads and threads[0] is not threading.main_thread()
    key = f"{CATALOG_COPIES}/{os.path.basename(local).decode()}.zst"
    body = zstandard.ZstdDecompressor().decompressobj().decompress(get_raw(s3_url, key))
    assert body == open(local, "rb").read()


def test_objstore_repo_catalog_copy_upload_failure_is_raised_after_the_local_copy(
        tmp_path, s3_url):
    from backshift.ops.catalog_copy import list_copies, make_copy
    from backshift.repo import WRITE, open_repository
    repo, _src = saved_repo(tmp_path, s3_url)
    before = len(list_copies(repo))

    def upload(path, f):
        raise OSError(28, "No space left on device", "upload")
    with open_repository(repo, WRITE) as r, pytest.raises(OSError, match="No space"):
        make_copy(r.path, r.catalog, upload=upload)
    copies = list_copies(repo)
    assert len(copies) == before + 1  # the local copy is whole and in place
    assert not [n for n in os.listdir(os.path.join(repo, b"catalog-copies"))
                if b".tmp" in n]


def test_objstore_repo_recover_refuses_a_bucket_without_a_copy(tmp_path, s3_url):
    new = tmp_path / "new"
    res = run("-r", new, "init", "--recover", s3_url, exit_code=43)
    assert "no catalog copy" in res.stderr and len(res.stderr.splitlines()) == 1
    assert not new.exists()


def test_objstore_repo_init_refuses_a_prefix_holding_a_repository(tmp_path, s3_url):
    saved_repo(tmp_path, s3_url)
    res = run("-r", tmp_path / "second", "init", "--chunks", s3_url, exit_code=4)
    assert "init --recover" in res.stderr
    assert not (tmp_path / "second").exists()


# -- a crash between PUTs and the commit; between expire's commit and its DELETEs ------------


def test_objstore_repo_save_killed_after_its_puts_leaves_orphans_never_trusted(
        tmp_path, s3_url):
    from harness.crash import backshift, killed
    repo = init_s3(tmp_path, s3_url)
    src = make_tree(tmp_path / "src")
    proc = backshift("-r", repo, "save", "--subset", "t", input=find0(src),
                     crash_at="before_save_complete")
    assert killed(proc), proc.stderr
    orphans = objects_under(s3_url, "chunks/")
    assert orphans and chunk_shas(repo) == set()  # PUT, never committed
    # damage an orphan: the next save must not take it as stored
    key = max(orphans, key=orphans.get)
    body = bytearray(get_raw(s3_url, key))
    body[len(body) // 2] ^= 0x20
    put_raw(s3_url, key, bytes(body))
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    assert "no problems found" in run("-r", repo, "check", "--read-data").stdout
    data, _err = tar_stream(repo)
    extract("gnu", data, tmp_path / "out")
    compare_trees(src, tmp_path / "out" / os.path.relpath(src, "/"))


def test_objstore_repo_expire_killed_before_its_deletes_leaves_orphans_the_next_removes(
        tmp_path, s3_url):
    from harness.crash import backshift, killed
    repo, src = saved_repo(tmp_path, s3_url)
    (src / "random.bin").write_bytes(os.urandom(70_000))
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    proc = backshift("-r", repo, "expire", "--keep-last", "1",
                     crash_at="gc_after_catalog_delete")
    assert killed(proc), proc.stderr
    res = run("-r", repo, "check")
    assert " 0 orphan" not in res.stdout and "no problems found" in res.stdout
    run("-r", repo, "expire", "--keep-last", "1")
    names = {k.rpartition("/")[2] for k in objects_under(s3_url, "chunks/")}
    assert names == chunk_shas(repo)
    assert ", 0 orphan chunk files" in run("-r", repo, "check").stdout


# -- errors: one line each, the documented exit code, nothing committed that is not stored --


@pytest.fixture
def quick_retries(monkeypatch):
    """Two retries a few milliseconds apart instead of 6-11 s of backoff."""
    from backshift import objstore
    monkeypatch.setattr(objstore, "RETRIES", 2)
    monkeypatch.setattr(objstore, "BACKOFF_S", 0.005)


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.startswith("backshift: error")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def test_objstore_repo_init_reports_a_missing_bucket(tmp_path, s3_env):
    res = run("-r", tmp_path / "repo", "init", "--chunks", "s3://no-such-bucket/x",
              exit_code=42)
    assert "bucket no-such-bucket does not exist" in one_error_line(res.stderr)
    assert not (tmp_path / "repo").exists()


def test_objstore_repo_init_reports_refused_credentials(tmp_path, s3_url, monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    res = run("-r", tmp_path / "repo", "init", "--chunks", s3_url, exit_code=41)
    line = one_error_line(res.stderr)
    assert "probe PUT" in line and "not-the-secret" not in res.stderr
    assert not (tmp_path / "repo").exists()


def test_objstore_repo_save_reports_an_endpoint_that_is_down(
        tmp_path, s3_url, monkeypatch, quick_retries):
    from seaweed import free_ports
    repo = init_s3(tmp_path, s3_url)
    src = make_tree(tmp_path / "src")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{free_ports(1)[0]}")
    res = run("-r", repo, "save", "--subset", "t", input=find0(src), exit_code=40)
    assert "cannot reach the object store" in one_error_line(res.stderr)
    assert chunk_shas(repo) == set()


def test_objstore_repo_save_throttled_past_its_retries_commits_nothing(
        tmp_path, s3_url, monkeypatch, quick_retries):
    from seaweed import throttling_endpoint
    repo = init_s3(tmp_path, s3_url)
    src = make_tree(tmp_path / "src")
    good = os.environ["AWS_ENDPOINT_URL"]
    with throttling_endpoint() as stub:
        monkeypatch.setenv("AWS_ENDPOINT_URL", stub.url)
        res = run("-r", repo, "save", "--subset", "t", input=find0(src), exit_code=43)
        assert stub.seen >= 3  # each request: the first try and 2 retries
    line = one_error_line(res.stderr)
    assert "failed after 3 attempt(s)" in line and "503 SlowDown" in line
    monkeypatch.setenv("AWS_ENDPOINT_URL", good)
    assert chunk_shas(repo) == set()  # no row names a chunk that is not stored
    res = run("-r", repo, "saves", "--format", "csv")
    assert ",complete," not in res.stdout
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    assert "no problems found" in run("-r", repo, "check", "--read-data").stdout


def test_objstore_repo_save_sends_again_a_put_whose_response_was_lost(
        tmp_path, s3_url, monkeypatch, quick_retries):
    from test_objstore import FaultyClient

    from backshift import objstore
    repo = init_s3(tmp_path, s3_url)
    src = make_tree(tmp_path / "src")
    real = objstore.ObstoreClient
    clients = []

    def faulty(location):
        clients.append(FaultyClient(real(location), put=["lost", None, "lost", "throttle"]))
        return clients[-1]
    monkeypatch.setattr(objstore, "ObstoreClient", faulty)
    run("-r", repo, "save", "--subset", "t", input=find0(src))
    # three sent twice, and one for the catalog copy
    assert clients[0].calls["put"] == len(chunk_shas(repo)) + 3 + 1
    data, _err = tar_stream(repo)
    extract("bsd" if have("bsdtar") else "gnu", data, tmp_path / "out")
    compare_trees(src, tmp_path / "out" / os.path.relpath(src, "/"))


def test_objstore_repo_import_legacy_copies_chunks_into_the_bucket(tmp_path, s3_url):
    from test_import_legacy import LEGACY, assert_restores, legacy_save, source_tree
    root = source_tree(tmp_path)
    sd = tmp_path / "savedir"
    legacy_save(str(LEGACY), sd, find0(root))
    repo = init_s3(tmp_path, s3_url)
    res = run("-r", repo, "import-legacy", str(sd))
    assert "1 saves imported" in res.stdout
    names = {k.rpartition("/")[2] for k in objects_under(s3_url, "chunks/")}
    legacy = {p.name for p in (sd / "chunks").rglob("*") if p.is_file()}
    assert names == chunk_shas(repo) and len(names) == len(legacy)
    assert_restores(repo, 1, root, tmp_path)
    assert "no problems found" in run("-r", repo, "check", "--read-data").stdout


def test_objstore_repo_mount_reads_files_from_the_bucket(tmp_path, s3_url):
    from test_mount import mounted
    repo, src = saved_repo(tmp_path, s3_url)
    with mounted(repo, tmp_path / "mnt", "--backup", "latest"):
        inside = tmp_path / "mnt" / os.path.relpath(src, "/")
        for name in ("random.bin", "text.txt", "a.txt"):
            assert (inside / name).read_bytes() == (src / name).read_bytes()
