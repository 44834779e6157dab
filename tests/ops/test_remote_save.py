"""Remote save (`-r ssh://... save`) end to end through a real OpenSSH server
(tests/helpers/sshd.py): the client half (walk, read, chunk, compress) here, the repository
half in `backshift serve`."""

from __future__ import annotations

import dataclasses
import json
import os
import time

import pytest
from repo_oracle import assert_save_matches, file_digests
from restorehelp import compare_trees, extract

from backshift import chunkcodec
from backshift.errors import (
    ChunkRejected,
    RemoteError,
    RemoteNotSupported,
    RemoteRefused,
    RepositoryIOError,
)
from backshift.remote.client import open_save_channel
from backshift.repo import open_repository
from conftest import find0, run, run_bin


def init_repo(path) -> bytes:
    repo = os.fsencode(path)
    run("-r", repo, "init", "--chunk-min", "4096", "--chunk-avg", "16384",
        "--chunk-max", "65536")
    return repo


def statuses(repo: bytes) -> list[str]:
    with open_repository(repo) as r:
        return [row[0] for row in r.catalog.conn.execute("SELECT status FROM save ORDER BY id")]


def remote_save(url: str, root, env: dict, *args: str, code: int = 0) -> dict:
    res = run_bin("-r", url, "save", "--subset", "t", "--json", *args, input=find0(root),
                  env=env)
    assert res.returncode == code, res.stderr
    return json.loads(res.stdout) if code in (0, 1) else {}


def aged(root):
    """Wait until ROOT's files are past the racy window (a save trusts an unchanged file
    only when it was modified 2 s before the save started): the server is another process."""
    time.sleep(2.1)
    return root


def test_remote_save_restores_exactly_like_a_local_save(tmp_path, tree, sshd, ssh_env):
    local_repo = init_repo(tmp_path / "local")
    remote_repo = init_repo(tmp_path / "remote")
    local = json.loads(run("-r", local_repo, "save", "--subset", "t", "--json",
                           input=find0(tree)).stdout_bytes)
    remote = remote_save(sshd.url(os.fsdecode(remote_repo)), tree, ssh_env)
    for key in ("files", "bytes", "files_read", "bytes_read", "new_chunks",
                "new_bytes_stored", "warnings"):
        assert remote[key] == local[key], key
    run("-r", remote_repo, "check", "--read-data")
    assert_save_matches(remote_repo, remote["save_id"], file_digests(tree))
    listed = [run("-r", r, "list", "--backup", "latest", "-v").stdout_bytes
              for r in (local_repo, remote_repo)]
    assert listed[0] == listed[1]
    stream = run_bin("-r", remote_repo, "tar", "--backup", "latest").stdout
    for tool in ("gnu", "bsd"):
        dest = tmp_path / tool
        extract(tool, stream, dest)
        compare_trees(tree, dest / os.path.relpath(tree, "/"))


def test_remote_resave_borrows_unchanged_files_and_reads_changed_ones(tmp_path, tree, sshd,
                                                                      ssh_env):
    repo = init_repo(tmp_path / "repo")
    url = sshd.url(os.fsdecode(repo))
    first = remote_save(url, aged(tree), ssh_env)
    again = remote_save(url, tree, ssh_env)
    assert (again["files"], again["new_chunks"], again["files_read"]) == (first["files"], 0, 0)
    assert again["files_borrowed"] == first["files_read"]
    (tree / "text.txt").write_bytes(b"changed\n" * 1000)
    third = remote_save(url, tree, ssh_env)
    assert (third["files_read"], third["new_chunks"]) == (1, 1)
    assert_save_matches(repo, third["save_id"], file_digests(tree))
    run("-r", repo, "check", "--read-data")


def test_remote_save_takes_the_repository_after_the_command(tmp_path, tree, sshd, ssh_env):
    repo = init_repo(tmp_path / "repo")
    res = run_bin("save", "-r", sshd.url(os.fsdecode(repo)), "--subset", "t",
                  input=find0(tree), env=ssh_env)
    assert res.returncode == 0, res.stderr
    assert b"saved" in res.stdout or res.stdout
    run("-r", repo, "check")
    assert statuses(repo) == ["complete"]


def test_remote_save_dry_run_is_refused_with_one_line(tmp_path, tree, sshd, ssh_env):
    repo = init_repo(tmp_path / "repo")
    res = run_bin("-r", sshd.url(os.fsdecode(repo)), "save", "-n", "--subset", "t",
                  input=find0(tree), env=ssh_env)
    assert res.returncode == RemoteNotSupported.exit_code
    assert res.stderr.decode().count("\n") == 1


def test_remote_save_refuses_a_chunk_body_that_does_not_match_its_name(tmp_path, sshd,
                                                                       ssh_env):
    """A crafted client: it uploads a sound-looking body under another chunk's name."""
    repo = init_repo(tmp_path / "repo")
    channel, transport = open_save_channel(sshd.url(os.fsdecode(repo)),
                                           ssh_env["BACKSHIFT_REMOTE_PATH"],
                                           open(os.devnull, "wb"))
    try:
        channel.call("save.open", {"hostname": "evil", "subset": "t", "roots": None,
                                   "batch_files": 100, "batch_seconds": 10})
        data = b"the truth" * 100
        body = chunkcodec.Codec(3).encode(data)
        name = bytes(32)  # not sha256(data)
        channel.post("save.put", {"shas": [name.hex()], "lengths": [len(data)],
                                  "sizes": [len(body)]}, body)
        with pytest.raises(RemoteError) as caught:
            channel.call("save.missing", {}, json.dumps([name.hex()]).encode())
        assert caught.value.exit_code == ChunkRejected.exit_code
        assert name.hex() in caught.value.message()
    finally:
        transport.close()
    assert statuses(repo) == ["interrupted"]
    chunk_files = [n for _d, _s, files in os.walk(os.path.join(repo, b"chunks")) for n in files]
    assert chunk_files == []
    run("-r", repo, "check", "--read-data")


AFTER_COMMAND = [
    ["saves"], ["list", "--backup", "latest"], ["tar", "--backup", "latest"],
    ["find", "*.txt"], ["history", "{tree}/a.txt"], ["diff", "1", "2"], ["stats"],
    ["sql", "SELECT count(*) AS n FROM save"], ["check"], ["break-lock"],
    ["expire", "--keep-last", "5"],
]


def test_remote_repository_after_the_command_is_forwarded_like_before_it(
        tmp_path, tree, sshd, ssh_env):
    repo = init_repo(tmp_path / "repo")
    url = sshd.url(os.fsdecode(repo))
    remote_save(url, tree, ssh_env)
    remote_save(url, tree, ssh_env)
    for argv in AFTER_COMMAND:
        argv = [a.replace("{tree}", str(tree)) for a in argv]
        before = run_bin("-r", url, *argv, env=ssh_env)
        after = run_bin(*argv, "-r", url, env=ssh_env)
        glued = run_bin(argv[0], f"--repo={url}", *argv[1:], env=ssh_env)
        assert before.returncode == 0, (argv, before.stderr)
        if argv[0] == "check":  # it says how long it took
            before.stdout = after.stdout = glued.stdout = b""
        assert (after.returncode, after.stdout) == (before.returncode, before.stdout), argv
        assert (glued.returncode, glued.stdout) == (before.returncode, before.stdout), argv


def test_remote_init_with_the_repository_after_the_command(tmp_path, sshd, ssh_env):
    url = sshd.url(tmp_path / "fresh")
    res = run_bin("init", "-r", url, env=ssh_env)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "fresh" / "catalog.sqlite3").exists()


def test_local_repository_after_the_command_overrides_an_ssh_one_before(tmp_path, tree,
                                                                       sshd, ssh_env):
    repo = init_repo(tmp_path / "repo")
    run("-r", repo, "save", "--subset", "t", input=find0(tree))
    res = run_bin("-r", "ssh://127.0.0.1:1/nowhere", "saves", "-r", repo, env=ssh_env)
    assert res.returncode == 0, res.stderr


def _host_tree(root, shared: dict[str, bytes], own: int):
    root.mkdir()
    (root / "shared").mkdir()
    for name, data in shared.items():
        (root / "shared" / name).write_bytes(data)
    for i in range(own):
        (root / f"own{i}").write_bytes(os.urandom(20_000))
    (root / "link").symlink_to("shared")
    return root


@pytest.mark.parametrize("hosts", [2, 3])
def test_remote_saves_of_several_hosts_at_once_store_shared_content_once(
        tmp_path, sshd, ssh_env, hosts):
    import subprocess

    from conftest import BACKSHIFT
    repo = init_repo(tmp_path / "repo")
    url = sshd.url(os.fsdecode(repo))
    shared = {f"s{i}": os.urandom(40_000) for i in range(20)}
    trees = [_host_tree(tmp_path / f"h{n}", shared, 10) for n in range(hosts)]
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("BACKSHIFT_")},
           **ssh_env}
    procs = [subprocess.Popen([BACKSHIFT, "-r", url, "save", "--hostname", f"web{n}",
                               "--subset", "t", "--json", "--checkpoint-interval", "0.1"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, env=env)
             for n in range(hosts)]
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(hosts) as pool:  # every save gets its names at once
        outs = list(pool.map(lambda pt: pt[0].communicate(find0(pt[1]), timeout=300),
                             zip(procs, trees, strict=True)))
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert b"locked" not in err, err
    with open_repository(repo) as r:
        rows = r.catalog.conn.execute("SELECT count(*) FROM chunk").fetchone()[0]
    chunk_files = [n for _d, _s, files in os.walk(os.path.join(repo, b"chunks"))
                   for n in files]
    assert len(chunk_files) == rows  # every chunk once: the shared ones too
    stored = sum(os.path.getsize(os.path.join(repo, b"chunks", n[:2], n)) for n in chunk_files)
    assert stored < sum(map(len, shared.values())) * 1.1 + hosts * 10 * 20_000 * 1.1
    run("-r", repo, "check", "--read-data")
    for n, tree in enumerate(trees):
        save_id = json.loads(outs[n][0])["save_id"]
        assert_save_matches(repo, save_id, file_digests(tree))
        stream = run_bin("-r", url, "tar", "--backup", str(save_id), env=ssh_env).stdout
        for tool in ("gnu", "bsd"):
            dest = tmp_path / f"{tool}{n}"
            extract(tool, stream, dest)
            compare_trees(tree, dest / os.path.relpath(tree, "/"))


def test_remote_save_allowed_by_an_append_only_forced_key(tmp_path, tree, sshd, ssh_env,
                                                          monkeypatch):
    repo = init_repo(sshd.allowed / f"ao-{tmp_path.name}")
    env = {**ssh_env, "BACKSHIFT_RSH": sshd.rsh(sshd.forced_key)}
    stats = remote_save(sshd.url(os.fsdecode(repo)), tree, env)
    assert stats["status"] == "complete"
    assert_save_matches(repo, stats["save_id"], file_digests(tree))
    res = run_bin("-r", sshd.url(os.fsdecode(repo)), "expire", "--keep-last", "0",
                  "--allow-empty-series", env=env)
    assert res.returncode == RemoteRefused.exit_code


@pytest.fixture
def small_fs(tmp_path):
    """A 4 MiB tmpfs: a real disk full on the repository host."""
    import subprocess
    mnt = tmp_path / "small"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], check=True)
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_remote_save_into_a_full_disk_is_one_line_and_loses_nothing(tmp_path, tree, sshd,
                                                                     ssh_env, small_fs):
    repo = init_repo(small_fs / "repo")
    url = sshd.url(os.fsdecode(repo))
    first = remote_save(url, tree, ssh_env)
    big = tmp_path / "big"
    big.mkdir()
    for i in range(8):
        (big / f"r{i}").write_bytes(os.urandom(1 << 20))
    res = run_bin("-r", url, "save", "--subset", "big", input=find0(big), env=ssh_env)
    assert res.returncode == RepositoryIOError.exit_code, res.stderr
    err = res.stderr.decode()
    assert err.count("\n") == 1 and "No space left on device" in err, err
    assert statuses(repo) == ["complete", "interrupted"]
    run("-r", repo, "check", "--read-data")
    assert_save_matches(repo, first["save_id"], file_digests(tree))
    (tree / "after.txt").write_bytes(b"still saving\n")
    again = remote_save(url, tree, ssh_env)
    assert_save_matches(repo, again["save_id"], file_digests(tree))


def test_remote_save_asks_which_chunks_are_missing_ahead_of_the_uploads(tmp_path):
    """Each reader task's question goes out without waiting for its answer: several are in
    flight before the first upload (a round trip each no more), and the save is exact."""
    repo = init_repo(tmp_path / "repo")
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(200):  # above the chunker's minimum: a reader task each
        (root / f"f{i:03}").write_bytes(os.urandom(6_000))
    ops: list[str] = []
    # a commit at every checkpoint: uploads and the records naming them keep their order
    done = pipe_save(repo, root, tmp_path, lambda _server, op: ops.append(op), batch_files=1)
    assert (done.stats.status, done.stats.files_read) == ("complete", 200)
    uploads = [op for op in ops if op in ("save.missing", "save.put")]
    assert uploads[:6] == ["save.missing"] * 6, uploads
    files = [n for _d, _s, names in os.walk(os.path.join(repo, b"chunks")) for n in names]
    with open_repository(repo) as r:  # every uploaded chunk recorded as new: a row each
        rows = r.catalog.conn.execute("SELECT count(*) FROM chunk").fetchone()[0]
    assert rows == len(files) == done.stats.new_chunks
    assert_save_matches(repo, done.stats.save_id, file_digests(root))
    run("-r", repo, "check", "--read-data")


def pipe_save(repo: bytes, root, tmp_path, on_request=None, batch_files=None):
    """A remote save of ROOT into REPO through the pipe transport (serve in a thread);
    ON_REQUEST(server, op) after each request the server answered; BATCH_FILES: files per
    checkpoint, if not the default. A warning fails the test. A SaveRun."""
    from backshift.cli.serve import _serve_saves
    from backshift.ops.save import SaveOptions
    from backshift.ops.saveproxy import run_remote_save
    from backshift.remote.client import Channel, Session
    from backshift.remote.server import Policy, serve
    from backshift.remote.transport import PipeTransport

    def saves(path: str):
        server = _serve_saves(path)
        handle = server.handle

        def watched(op, header, payload):
            try:
                return handle(op, header, payload)
            finally:
                if on_request is not None:
                    on_request(server, op)
        server.handle = watched
        return server

    transports: list[PipeTransport] = []

    def connect():
        transports.append(PipeTransport(lambda inp, out: serve(
            inp, out, Policy(), None, None, lambda _msg: None, saves)))
        session = Session(transports[0])
        session.hello(os.fsdecode(repo))
        return Channel(session)

    try:
        options = SaveOptions("h", "t", roots=[os.fsencode(root)])
        if batch_files is not None:
            options = dataclasses.replace(options, batch_files=batch_files)
        return run_remote_save(connect, options, pytest.fail, cwd=os.fsencode(tmp_path),
                               paths=[os.fsencode(root)])
    finally:
        for transport in transports:
            transport.close()


def test_remote_save_server_tokens_stay_flat_in_the_number_of_files(tmp_path):
    """The server maps the client's content tokens to content ids; each is retired by the
    call that uses it last, so its map stays small however many files a save reads (a
    hard link group's token is kept for the group's later members, which still restore)."""
    from backshift.ops.reader import BATCH_FILES

    repo = init_repo(tmp_path / "repo")
    root = tmp_path / "tree"
    for d in range(6):
        (root / f"d{d}").mkdir(parents=True)
        for i in range(250):  # small files: read in batches, a token for the batch's
            (root / f"d{d}" / f"f{i:03}").write_bytes(b"%d %d\n" % (d, i) * (i % 7 + 1))
    os.link(root / "d0" / "f001", root / "d5" / "zz-link")  # named again at the very end
    (root / "big").write_bytes(os.urandom(200_000))  # read alone: a store's token only
    peaks: list[int] = []
    done = pipe_save(repo, root, tmp_path, lambda server, _op: peaks.append(len(server.tokens)))
    assert (done.stats.status, done.stats.files_read) == ("complete", 1_501)
    # at most one read batch's tokens wait for their stores, and the hard link group's
    assert max(peaks) <= BATCH_FILES + 1 < 1_501
    assert_save_matches(repo, done.stats.save_id, file_digests(root))  # the link too


def test_remote_resave_answers_the_names_it_did_not_borrow_with_the_offer(tmp_path):
    """A re-save's hard links and changed files are not borrowed by the offer; the offer's
    answer carries what the client then asks of each (locate, kept attributes, borrow), so
    no question costs a round trip; what it saves and counts is what a local save does."""
    local = init_repo(tmp_path / "local")
    remote = init_repo(tmp_path / "remote")
    root = tmp_path / "tree"
    (root / "sub").mkdir(parents=True)
    for i in range(20):
        (root / "sub" / f"f{i:02}").write_bytes(b"%d\n" % i * (i + 1))
    for i in range(6):  # hard link pairs: never on the offer's fast path
        (root / f"h{i}").write_bytes(b"linked %d\n" % i * 50)
        os.link(root / f"h{i}", root / "sub" / f"h{i}-again")
    os.symlink("sub/f01", root / "link")
    aged(root)
    stats = []
    for step in range(3):
        if step == 2:  # changed: a plain file and a linked one, read again; one more
            (root / "sub" / "f03").write_bytes(b"changed\n")
            (root / "h2").write_bytes(b"changed too\n")
            (root / "sub" / "new").write_bytes(b"new\n")
        ops: list[str] = []
        done = pipe_save(remote, root, tmp_path, lambda _server, op, ops=ops: ops.append(op))
        assert "save.ask" not in ops or step == 0, ops
        here = json.loads(run("-r", local, "save", "--subset", "t", "--hostname", "h",
                              "--json", input=find0(root)).stdout_bytes)
        assert_save_matches(remote, done.stats.save_id, file_digests(root))
        stats.append(done.stats)
        for key in ("files", "bytes", "files_read", "files_borrowed", "bytes_borrowed",
                    "warnings"):
            assert getattr(done.stats, key) == here[key], (step, key)
    assert [(s.files_read, s.files_borrowed) for s in stats] == [(26, 0), (0, 26), (3, 24)]


def test_remote_resave_keeps_several_offers_in_flight(tmp_path, monkeypatch):
    """An unchanged re-save offers its names a batch at a time; the next batches are
    lstat'ed and offered while the server answers the first (settled in order)."""
    from backshift.ops.feed import FEED_BATCH, OFFERS_AHEAD
    from backshift.ops.saveproxy import SessionProxy

    repo = init_repo(tmp_path / "repo")
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(FEED_BATCH * (OFFERS_AHEAD + 2)):
        (root / f"f{i:04}").write_bytes(b"%d\n" % i)
    aged(root)
    pipe_save(repo, root, tmp_path)
    offered = {"out": 0, "most": 0}
    offer_ahead = SessionProxy.offer_ahead

    def counted(self, entries):
        answer = offer_ahead(self, entries)
        offered["out"] += 1
        offered["most"] = max(offered["most"], offered["out"])

        def taken():
            offered["out"] -= 1
            return answer()
        return taken
    monkeypatch.setattr(SessionProxy, "offer_ahead", counted)
    done = pipe_save(repo, root, tmp_path)
    assert (done.stats.files_read, done.stats.files_borrowed) == (0, len(os.listdir(root)))
    assert offered["most"] == OFFERS_AHEAD
    assert_save_matches(repo, done.stats.save_id, file_digests(root))


def test_remote_save_server_refuses_a_malformed_offer_and_keeps_the_save_interrupted(tmp_path):
    from backshift.cli.serve import _serve_saves
    from backshift.errors import RemoteProtocolError

    repo = init_repo(tmp_path / "repo")
    server = _serve_saves(os.fsdecode(repo))
    server.handle("save.open", {"hostname": "h", "subset": "t", "roots": None,
                                "batch_files": 100, "batch_seconds": 10}, b"")
    with pytest.raises(RemoteProtocolError, match="malformed save.offer"):
        server.handle("save.offer", {}, b'[["/x", [33188, 1, 2], "u", "g"]]')  # a short lstat
    assert statuses(repo) == ["interrupted"]


_forks: list[int] = []
os.register_at_fork(after_in_parent=lambda: _forks.append(os.getpid()))


def test_remote_save_forks_reader_processes_only_when_a_file_is_read(tmp_path):
    """The reader pool of a remote save starts with its first file to read, and its staging
    directory is made then: an unchanged re-save (everything borrowed) forks no reader
    process and makes no staging directory, a first save does both."""
    repo = init_repo(tmp_path / "repo")
    root = tmp_path / "tree"
    root.mkdir()
    for i in range(20):
        (root / f"f{i:02}").write_bytes(os.urandom(5_000))
    aged(root)
    from backshift.ops.saveproxy import STAGING, _staging_parent
    parent = _staging_parent() or __import__("tempfile").gettempdir()
    staged: list[str] = []

    def staging(_server, _op):  # the client's staging directory, while the server answers
        staged.extend(n for n in os.listdir(parent) if n.startswith(f"{STAGING}{os.getpid()}-"))

    before = len(_forks)
    first = pipe_save(repo, root, tmp_path, staging)
    assert first.stats.files_read == 20
    assert len(_forks) > before  # the readers: processes
    assert staged  # where they wrote the bodies to upload
    before, staged[:] = len(_forks), []
    again = pipe_save(repo, root, tmp_path, staging)
    assert (again.stats.status, again.stats.files_read) == ("complete", 0)
    assert again.stats.files_borrowed == 20
    assert len(_forks) == before
    assert staged == []  # nothing to stage: no staging directory made
    assert_save_matches(repo, again.stats.save_id, file_digests(root))


def spying_rsh(tmp_path, sshd, spy: str) -> str:
    """A BACKSHIFT_RSH that runs the shell line SPY (in the ssh process, whose parent is the
    client: $PPID) and then becomes the test's ssh."""
    script = tmp_path / "rsh.sh"
    script.write_text(f'{spy}\nexec {sshd.rsh()} "$@"\n')
    return f"sh {script}"


def test_remote_save_starts_ssh_before_any_reader_process(tmp_path, tree, sshd, ssh_env):
    """ssh (its handshake ~0.4 s) starts when the save command begins, before the client's
    own set-up: when it starts, the client has no other child (the reader processes of a
    first save come once the server has answered); the save is exact."""
    repo = init_repo(tmp_path / "repo")
    mark = tmp_path / "mark"
    env = {**ssh_env, "BACKSHIFT_RSH": spying_rsh(
        tmp_path, sshd, f"echo $$ > {mark}.self; cat /proc/$PPID/task/*/children > {mark}")}
    done = remote_save(sshd.url(os.fsdecode(repo)), tree, env)
    assert done["files_read"] > 0  # a first save: read by reader processes
    assert mark.read_text().split() == (tmp_path / "mark.self").read_text().split()
    assert_save_matches(repo, done["save_id"], file_digests(tree))


def test_remote_save_refused_argument_ends_the_ssh_started_early(tmp_path, tree, sshd,
                                                                 ssh_env):
    """An argument refused after ssh started: one line, UsageError's code, and the ssh
    process is ended (killed and reaped), not left behind."""
    from backshift.errors import UsageError

    repo = init_repo(tmp_path / "repo")
    pidfile = tmp_path / "ssh.pid"
    env = {**ssh_env, "BACKSHIFT_RSH": spying_rsh(tmp_path, sshd, f"echo $$ > {pidfile}")}
    res = run_bin("-r", sshd.url(os.fsdecode(repo)), "save", "--subset", "", input=find0(tree),
                  env=env)
    assert res.returncode == UsageError.exit_code, res.stderr
    assert res.stderr.decode().count("\n") == 1, res.stderr
    pid = int(pidfile.read_text())
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert statuses(repo) == []
