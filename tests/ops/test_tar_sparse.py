"""`backshift tar` writes files with long zero runs as GNU sparse 1.0 members: GNU tar,
bsdtar and tarfile restore them with holes; everything else in the stream is unchanged."""

from __future__ import annotations

import hashlib
import os
import random
import subprocess
from pathlib import Path

import pytest
from restorehelp import compare_trees, enrich_tree, extract, save_tree, tar_stream
from tarlint import lint_tar

from backshift.ops import tarsparse as tp
from conftest import have, run

KIB, MIB = 1 << 10, 1 << 20
TOOLS = ["gnu", "bsd", "python"]
SPARSE = {  # name: (size, [(offset, length of data)]); the rest is a hole
    "islands": (6 * MIB, [(0, 100 * KIB), (2 * MIB, 50 * KIB), (6 * MIB - 70 * KIB, 70 * KIB)]),
    "tail-hole": (4 * MIB + 100 * KIB, [(0, 100 * KIB)]),
    "head-hole": (4 * MIB + 100 * KIB, [(4 * MIB, 100 * KIB)]),
    "all-hole": (5 * MIB, []),
    "linked": (3 * MIB + 5000, [(MIB, 5000)]),
}
PLAIN = {  # zero runs too short to be holes, or none
    "short-hole": (700 * KIB, [(0, 100 * KIB), (600 * KIB, 100 * KIB)]),
    "plain.bin": (300 * KIB, [(0, 300 * KIB)]),
}


def make_sparse(path: Path | bytes, size: int, extents: list[tuple[int, int]],
                seed: int = 1) -> None:
    """A file of SIZE bytes whose only written bytes are EXTENTS (truncate + pwrite)."""
    rnd = random.Random(seed)
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, 0o640)
    try:
        os.ftruncate(fd, size)
        for offset, length in extents:
            os.pwrite(fd, rnd.randbytes(length), offset)
    finally:
        os.close(fd)


def allocated(path: Path | bytes) -> int:
    return os.stat(path).st_blocks * 512


@pytest.fixture
def sparse_tree(tmp_path) -> Path:
    root = tmp_path / "sparse"
    root.mkdir()
    return add_sparse(root)


def add_sparse(root: Path) -> Path:
    """The files of SPARSE and PLAIN in ROOT, a hardlink to one, long and odd names."""
    for i, (name, (size, extents)) in enumerate({**SPARSE, **PLAIN}.items()):
        make_sparse(root / name, size, extents, seed=i)
    os.link(root / "linked", root / "linked-2")
    deep = root / ("d" * 90)  # a name beyond ustar's 100 bytes, and one not UTF-8
    deep.mkdir()
    make_sparse(deep / ("long-" + "n" * 60), 2 * MIB, [(MIB, 1000)], seed=10)
    make_sparse(os.path.join(os.fsencode(deep), b"bad-\xff-name"), 2 * MIB, [(10, 10)], seed=11)
    for p in [root / "islands", root / "all-hole", deep]:
        os.utime(p, ns=(1_600_000_000_123_456_789, 1_600_000_000_123_456_789))
    return root


def rel(path: Path | bytes) -> str:
    return os.fsdecode(path).lstrip("/")


def test_chunker_cuts_zero_runs_into_whole_zero_chunks():
    """Why a hole is found from the chunk list alone: a zero run is cut into max-size
    chunks of zeros (no content-defined cut point in zeros)."""
    from backshift.chunker import Chunker
    from backshift.model import ChunkerParams

    data = os.urandom(3000) + bytes(10 * MIB) + os.urandom(5000) + bytes(3 * MIB)
    params = ChunkerParams()
    chunks = [bytes(c) for c in Chunker(params).cut_buffer(data)]
    assert [len(c) for c in chunks[:3]] == [params.max_size] * 3
    assert [any(c) for c in chunks] == [True, False, True, False]


@pytest.mark.parametrize("tool", TOOLS)
def test_tar_sparse_files_restore_with_holes(repo, sparse_tree, tmp_path, tool):
    if tool == "bsd" and not have("bsdtar"):
        pytest.skip("bsdtar not installed")
    save_tree(repo, sparse_tree)
    data, err = tar_stream(repo)
    assert err == ""
    total = sum(os.lstat(p).st_size for p in sparse_tree.rglob("*") if p.is_file())
    assert len(data) < total // 4  # the holes are not in the stream
    dest = tmp_path / "dest"
    extract(tool, data, dest)
    if tool == "python":
        compare_trees(sparse_tree, dest / rel(sparse_tree), mode_mask=0o755, mtime_exact=False)
    else:
        compare_trees(sparse_tree, dest / rel(sparse_tree))
    for name in SPARSE:
        # the test repository cuts zero runs into 64 KiB chunks: a data island restores
        # as at most its chunks on either side of it
        size, extents = SPARSE[name]
        assert allocated(dest / rel(sparse_tree) / name) <= 64 * KIB * 3 * max(1, len(extents))


@pytest.mark.parametrize("tool", ["tar", "bsdtar"])
def test_tar_sparse_members_extract_to_stdout_whole(repo, sparse_tree, tool):
    """`tar -xO` (no file to seek in) writes the holes as zeros, a trailing one too."""
    if not have(tool):
        pytest.skip(f"{tool} not installed")
    save_tree(repo, sparse_tree)
    data, _ = tar_stream(repo)
    for name in SPARSE:
        res = subprocess.run([tool, "-xOf", "-", f"{rel(sparse_tree)}/{name}"], input=data,
                             capture_output=True, timeout=60)
        assert res.returncode == 0, res.stderr
        assert res.stdout == (sparse_tree / name).read_bytes(), name


def test_tar_sparse_members_are_gnu_sparse_1_0(repo, sparse_tree):
    save_tree(repo, sparse_tree)
    data, _ = tar_stream(repo)
    top = rel(sparse_tree)
    by = {ti.name: ti for ti in lint_tar(data)}
    for name, (size, _extents) in SPARSE.items():
        ti = by[f"{top}/{name}"]
        assert ti.isreg() and ti.size == size
        assert ti.pax_headers["GNU.sparse.major"] == "1"
        assert ti.pax_headers["GNU.sparse.minor"] == "0"
        assert ti.pax_headers["GNU.sparse.realsize"] == str(size)
        assert ti.pax_headers["GNU.sparse.name"] == f"{top}/{name}"
    assert by[f"{top}/linked-2"].islnk() and by[f"{top}/linked-2"].linkname == f"{top}/linked"
    for name in PLAIN:
        assert not any(k.startswith("GNU.") for k in by[f"{top}/{name}"].pax_headers)
    # the header's own name follows GNU tar's convention (for readers that ignore sparse)
    assert f"{top}/GNUSparseFile.0/islands".encode() in data
    last = by[f"{top}/islands"].sparse[-1]  # ends with data: no empty region after it
    assert last[0] + last[1] == SPARSE["islands"][0] and last[1] > 0
    # a file that ends in a hole ends its map with an empty region at its real size
    assert by[f"{top}/tail-hole"].sparse[-1] == (SPARSE["tail-hole"][0], 0)
    assert by[f"{top}/all-hole"].sparse == [(SPARSE["all-hole"][0], 0)]
    assert by[f"{top}/head-hole"].sparse[0][0] >= 3 * MIB


@pytest.mark.parametrize("verbose", [True, False])
def test_list_equals_gnu_tar_listing_of_sparse_members(repo, tree, verbose):
    add_sparse(enrich_tree(tree))  # odd names, devices, odd times beside the sparse files
    save_tree(repo, tree)
    data, _ = tar_stream(repo)
    flags = ["-v"] if verbose else []
    res = subprocess.run(["tar", "-tvf" if verbose else "-tf", "-"], input=data,
                         capture_output=True, timeout=60)
    assert res.returncode == 0, res.stderr
    listed = run("-r", repo, "list", "--backup", "latest", *flags).stdout_bytes
    assert listed == res.stdout
    assert b"GNUSparseFile" not in listed
    if verbose:  # the real size, as GNU tar prints it
        line = [x for x in listed.splitlines() if x.endswith(b"/islands")][0]
        assert b" %d " % SPARSE["islands"][0] in line


def test_tar_no_sparse_writes_plain_members(repo, sparse_tree, tmp_path):
    save_tree(repo, sparse_tree)
    data, _ = tar_stream(repo, "--no-sparse")
    infos = lint_tar(data)
    assert not any(k.startswith("GNU.") for ti in infos for k in ti.pax_headers)
    assert b"GNUSparseFile" not in data
    total = sum(os.lstat(p).st_size for p in sparse_tree.rglob("*") if p.is_file()
                and p.name != "linked-2")
    assert len(data) > total
    dest = tmp_path / "dest"
    extract("gnu", data, dest)
    compare_trees(sparse_tree, dest / rel(sparse_tree))


def test_tar_stream_without_holes_is_unchanged(repo, tree, sparse_tree):
    """Members without holes come out byte for byte as before (--no-sparse is the old
    producer), in a whole save and beside sparse members."""
    enrich_tree(tree)
    save_tree(repo, tree)
    assert tar_stream(repo)[0] == tar_stream(repo, "--no-sparse")[0]
    save_tree(repo, sparse_tree)
    for name in PLAIN:
        one = str(sparse_tree / name)
        assert tar_stream(repo, one)[0] == tar_stream(repo, one, "--no-sparse")[0]


def _zero_chunk(repo: bytes, length: int) -> bytes:
    sha = hashlib.sha256(bytes(length)).hexdigest()
    return os.path.join(repo, b"chunks", sha[:2].encode(), sha.encode())


@pytest.mark.parametrize("damage", ["missing", "corrupt"])
def test_tar_damaged_zero_chunk_is_never_read(repo, sparse_tree, tmp_path, damage):
    save_tree(repo, sparse_tree)
    chunk = _zero_chunk(repo, 64 * KIB)
    assert os.path.exists(chunk)
    if damage == "missing":
        os.unlink(chunk)
    else:
        with open(chunk, "r+b") as f:
            f.seek(4)
            f.write(b"garbage!")
    data, err = tar_stream(repo, *[str(sparse_tree / n) for n in SPARSE])
    assert err == ""
    dest = tmp_path / "dest"
    extract("gnu", data, dest)
    compare_trees(sparse_tree, dest / rel(sparse_tree), only=[n.encode() for n in SPARSE])


def test_tar_missing_data_chunk_in_sparse_member_pads_and_exits_10(repo, sparse_tree, tmp_path):
    from backshift import pathcodec
    from backshift.catalog import Catalog
    from backshift.ops import select

    save_tree(repo, sparse_tree)
    cat = Catalog.open(os.path.join(repo, b"catalog.sqlite3"), readonly=True)
    try:
        row = cat.entry_at_key(1, pathcodec.sort_key(os.fsencode(sparse_tree / "islands")))
        refs = cat.chunks_of_content(select.Entry(*row).content_id)
    finally:
        cat.close()
    offset, victim = 0, None
    for ref in refs:  # the first chunk of the island at 2 MiB
        if offset >= 2 * MIB and ref.sha256 != hashlib.sha256(bytes(ref.length)).digest():
            victim = ref
            break
        offset += ref.length
    assert victim is not None
    sha = victim.sha256.hex()
    os.unlink(os.path.join(repo, b"chunks", sha[:2].encode(), sha.encode()))
    data, err = tar_stream(repo, exit_code=10)
    assert "islands" in err and f"{victim.length} zero bytes at offset {offset}" in err
    lines = err.strip().splitlines()
    assert "Traceback" not in err and len(lines) == 2 and "1 member(s) damaged" in lines[1]
    dest = tmp_path / "dest"
    extract("gnu", data, dest)
    got = (dest / rel(sparse_tree) / "islands").read_bytes()
    want = (sparse_tree / "islands").read_bytes()
    assert len(got) == len(want)
    assert got[offset:offset + victim.length] == bytes(victim.length)
    assert got[:offset] == want[:offset]
    assert got[offset + victim.length:] == want[offset + victim.length:]
    assert got != want


def test_tar_sparse_plan_takes_only_a_consistent_chunk_list():
    """A chunk list that does not add up to the size (a damaged catalog) is written as a
    plain member, whose padding and reports are the producer's; so is one whose data
    would need a pax size (tarfile then finds the next member at the wrong offset)."""
    z = hashlib.sha256(bytes(64 * KIB)).digest()
    d = hashlib.sha256(b"data").digest()
    zero = (b"k", z, 64 * KIB, 30)
    data = (b"k", d, 64 * KIB, 64 * KIB + 2)
    holes = [zero] * 20
    plan = tp.sparse_plan(21 * 64 * KIB, [data, *holes])
    assert plan is not None
    assert plan.regions == [(0, 64 * KIB), (21 * 64 * KIB, 0)]
    assert tp.sparse_plan(21 * 64 * KIB + 1, [data, *holes]) is None  # longer than chunks
    assert tp.sparse_plan(20 * 64 * KIB, [data, *holes]) is None  # shorter
    assert tp.sparse_plan(20 * 64 * KIB, [(b"k", z, -5, 30), *holes]) is None
    assert tp.sparse_plan(10 * 64 * KIB, [zero] * 10) is None  # less than 1 MiB of holes
    assert tp.sparse_plan(18 * 64 * KIB, [data] * 18) is None  # no holes
    big = [(b"k", d, 1 << 30, 1 << 30)] * 9
    assert tp.sparse_plan(9 * (1 << 30) + 20 * 64 * KIB, [*big, *holes]) is None
    # GNU tar reads each data region in whole blocks, tarfile and libarchive back to back:
    # a region followed by a hole takes the zeros it needs from it; the last one does not
    odd = (b"k", d, 1000, 1002)
    plan = tp.sparse_plan(2000 + 20 * 64 * KIB, [odd, *holes, odd])
    assert plan.regions == [(0, 1024), (1000 + 20 * 64 * KIB, 1000)]
    assert plan.layout == [24, *[-1] * 20, 0]
    assert plan.stored == 512 + 1024 + 1000
    tiny = (b"k", hashlib.sha256(bytes(100)).digest(), 100, 0)  # a hole is a block at least
    plan = tp.sparse_plan(1000 + 100 + 20 * 64 * KIB, [odd, tiny, *holes])
    assert plan.regions == [(0, 1100 + 436), (1100 + 20 * 64 * KIB, 0)]
    assert plan.layout == [0, 436, *[-1] * 20]
    # a hole chunk's zero-ness comes from its name, not from its compressed size alone
    fake = (b"k", d, 64 * KIB, 30)
    assert tp.sparse_plan(21 * 64 * KIB, [fake] * 21) is None
