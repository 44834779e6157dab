"""The fleet and the bucket together: hosts save over ssh:// into a repository whose catalog
is on the serve host and whose chunks are in an S3 bucket (a real OpenSSH server and a real
SeaweedFS). The client sends chunk bodies to `serve`, which verifies them and PUTs them; it
never needs the bucket's credentials itself."""

from __future__ import annotations

import json
import os
import shlex
import shutil

from restorehelp import compare_trees, extract

from conftest import find0, run, run_bin


def test_remote_save_into_a_bucket_repository_restores_exactly(tmp_path, tree, sshd, ssh_env,
                                                               s3_url, s3_env,
                                                               monkeypatch):
    repo = os.fsencode(tmp_path / "repo")
    run("-r", repo, "init", "--chunk-min", "4096", "--chunk-avg", "16384",
        "--chunk-max", "65536", "--chunks", s3_url)
    # the credentials live on the repository host only (sshd gives its sessions a fresh
    # environment: they travel in the remote command, as an admin's wrapper would set them)
    creds = " ".join(f"{k}={shlex.quote(v)}" for k, v in s3_env.env().items())
    env = {**ssh_env, "BACKSHIFT_REMOTE_PATH": f"env {creds} {ssh_env['BACKSHIFT_REMOTE_PATH']}"}
    for key in s3_env.env():
        monkeypatch.delenv(key)
    url = sshd.url(os.fsdecode(repo))

    res = run_bin("-r", url, "save", "--subset", "t", "--json", input=find0(tree), env=env)
    assert res.returncode == 0, res.stderr
    first = json.loads(res.stdout)
    assert first["files_read"] > 0 and first["new_chunks"] > 0

    # a copy of a saved file: read again, its chunks asked for and all found in the catalog
    biggest = max((p for p in tree.rglob("*") if p.is_file() and not p.is_symlink()),
                  key=lambda p: p.stat().st_size)
    shutil.copyfile(biggest, tree / "copy-of-the-biggest")
    before = s3_env.request_counts()
    res = run_bin("-r", url, "save", "--subset", "t", "--json", input=find0(tree), env=env)
    assert res.returncode == 0, res.stderr
    again = json.loads(res.stdout)
    assert again["files_read"] >= 1 and again["new_chunks"] == 0, again
    after = s3_env.request_counts()
    reads = {k: after[k] - before.get(k, 0) for k in after if k.upper() in ("GET", "HEAD")}
    assert not any(reads.values()), reads  # presence from the catalog, not a HEAD a chunk

    out = run_bin("-r", url, "tar", "--backup", "latest", env=env)
    assert out.returncode == 0, out.stderr
    extract("gnu", out.stdout, tmp_path / "out")
    compare_trees(tree, tmp_path / "out" / os.path.relpath(tree, "/"))
    for key, value in s3_env.env().items():
        monkeypatch.setenv(key, value)
    run("-r", repo, "check", "--read-data")  # exit 0: every object there and sound
