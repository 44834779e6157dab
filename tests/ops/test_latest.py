"""`--backup latest` is the newest complete save (of --hostname/--subset); a save named by
id that is not complete (running, or killed) is shown with a warning and exit 1."""

from __future__ import annotations

import io
import json
import tarfile
import time

import pytest
from harness import crash
from harness.scenario import one_line_error
from test_save import _save_waiting_for_more_names

from conftest import find0, make_tree, run


def _files_committed(repo: bytes, save_id: int) -> int:
    res = run("-r", repo, "sql", "--format", "json", "--param", f"id={save_id}",
              "SELECT count(*) AS n FROM files WHERE save_id = :id")
    return json.loads(res.stdout.splitlines()[0])["n"]


def _names(tar_bytes: bytes) -> list[str]:
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:") as tf:
        return tf.getnames()


@pytest.mark.timeout(120)
def test_latest_is_the_newest_complete_save_never_a_running_or_killed_one(repo, tmp_path):
    root = make_tree(tmp_path / "src")
    waiting = _save_waiting_for_more_names(repo, root)  # save 1, this host, subset default
    try:
        deadline = time.monotonic() + 30
        while _files_committed(repo, 1) == 0:  # it commits what it has while it waits
            assert time.monotonic() < deadline, "the waiting save committed nothing"
            time.sleep(0.2)
        # no complete save yet: one line, exit 8 (not the running save's first names)
        res = run("-r", repo, "list", "--backup", "latest", exit_code=8)
        line = one_line_error(res.stderr)
        assert "no save latest (no complete save yet)" in line, line
        assert res.stdout == ""
        run("-r", repo, "save", "--hostname", "h", "--subset", "s", input=find0(root))
        whole = run("-r", repo, "list", "--backup", "2").stdout_bytes
        assert run("-r", repo, "list", "--backup", "latest").stdout_bytes == whole
        assert run("-r", repo, "tar", "--backup", "latest").stdout_bytes == \
            run("-r", repo, "tar", "--backup", "2").stdout_bytes
        # the running save by its id: what it has so far, said on stderr, exit 1
        res = run("-r", repo, "list", "--backup", "1", exit_code=1)
        assert res.stderr.splitlines() == [
            "backshift: warning: save 1 is still running: this is what it has committed "
            "so far, not a complete save"]
        assert 0 < len(res.stdout.splitlines()) < len(whole.splitlines())
        waiting.kill()  # a real kill: the row stays 'running', its process is gone
        waiting.wait(timeout=30)
    finally:
        waiting.kill()
        waiting.stdin.close()
        waiting.wait(timeout=30)
    assert run("-r", repo, "list", "--backup", "latest").stdout_bytes == whole
    res = run("-r", repo, "tar", "--backup", "1", exit_code=1)
    assert res.stderr.splitlines() == [
        "backshift: warning: save 1 is interrupted: it holds only what it committed before "
        "it stopped, not a complete save"]
    assert 0 < len(_names(res.stdout_bytes)) < len(whole.splitlines())
    run("-r", repo, "list", "--backup", "1", "-v", exit_code=1)
    # a newer complete save of another series is latest; --hostname/--subset narrow it
    run("-r", repo, "save", "--hostname", "h", "--subset", "other", input=find0(root))
    run("-r", repo, "save", "--hostname", "g", "--subset", "s", input=find0(root))
    latest = {(): 4, ("--subset", "s"): 4, ("--hostname", "h"): 3,
              ("--hostname", "h", "--subset", "s"): 2, ("--subset", "other"): 3}
    for narrow, sid in latest.items():
        got = run("-r", repo, "list", "--backup", "latest", "--format", "json", *narrow)
        want = run("-r", repo, "list", "--backup", str(sid), "--format", "json")
        assert got.stdout == want.stdout and got.stderr == "", narrow
    res = run("-r", repo, "tar", "--backup", "latest", "--hostname", "nobody", exit_code=8)
    assert "no complete save of host 'nobody' yet" in one_line_error(res.stderr)
    res = run("-r", repo, "list", "--backup", "3", "--subset", "s", exit_code=8)
    assert "no save 3 of subset 's'" in one_line_error(res.stderr)
    # killed just before its final commit: save 5 holds every member, but is not complete
    proc = crash.backshift("-r", repo, "save", "--hostname", "h", "--subset", "s",
                           input=find0(root), crash_at="before_save_complete")
    crash.assert_killed(proc)
    for narrow, sid in latest.items():
        got = run("-r", repo, "tar", "--backup", "latest", *narrow)
        assert got.stdout_bytes == run("-r", repo, "tar", "--backup", str(sid)).stdout_bytes
    res = run("-r", repo, "list", "--backup", "5", "--subset", "s", exit_code=1)
    assert "save 5 is interrupted" in res.stderr
