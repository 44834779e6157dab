"""The mount row of the benchmark: each tool's FUSE mount of its repository (backshift mount,
borg mount, restic mount), measured from outside with ordinary commands right after it
comes up (cold: nothing of it cached yet):

- mount_ls:   `ls -la` of a directory of 5,000 entries (a save of its own: WIDE_ENTRIES)
- mount_find: `find MOUNT/.../SAVE | wc -l` over the whole dataset's newest save
- mount_read: `tar -cf - -C MOUNT/.../SAVE . | cat` (every byte read; GNU tar writing to
  /dev/null itself would read nothing), beside the `tar_pipe` row (`backshift tar | cat`,
  the same plumbing) and the `tar` row

The mount process runs in the background; only the command is timed (run_timed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time

STEPS = ["mount_ls", "mount_find", "mount_read"]
LABELS = {"mount_ls": "mount: ls -la, 5,000-entry dir", "mount_find": "mount: find, all entries",
          "mount_read": "mount: read all (tar to a pipe)"}
WIDE_ENTRIES = 5000
MOUNT_WAIT_S = 300  # borg mount reads the repository's index before it comes up


def wide_dir(work: str) -> str:
    """A directory of WIDE_ENTRIES small files (made once, reused)."""
    d = os.path.join(work, "mount-wide", "d")
    if len(os.listdir(d) if os.path.isdir(d) else ()) != WIDE_ENTRIES:
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        for i in range(WIDE_ENTRIES):
            with open(os.path.join(d, f"entry{i:05d}.txt"), "wb") as f:
                f.write(b"%d\n" % i)
    return d


class Mounted:
    """One tool's mount: how to save the wide directory, mount, find the saves inside the
    mount, and unmount."""

    def __init__(self, tool, env: dict, mountpoint: str) -> None:
        self.tool, self.env, self.mp = tool, env, mountpoint

    def save_wide(self, wide: str) -> list | str:
        name = self.tool.name
        if name == "backshift":
            return [self.tool.bin, "-r", self.tool.repo, "save", "--hostname", "bench",
                    "--subset", "wide", "--no-progress", wide]
        if name == "borg":
            return ["borg", "create", "::wide", wide]
        return ["restic", "backup", "-q", "--host", "bench", "--tag", "wide", wide]

    def mount_argv(self) -> list:
        name = self.tool.name
        if name == "backshift":
            return [self.tool.bin, "-r", self.tool.repo, "mount", self.mp]
        if name == "borg":
            return ["borg", "mount", "-f", self.tool.repo, self.mp]
        return ["restic", "mount", "--no-default-permissions", self.mp]

    def roots(self, ds) -> tuple[str, str]:
        """(the dataset's newest save, the wide save) as directories in the mount, each
        where the save's paths start (its '/')."""
        name = self.tool.name
        if name == "backshift":
            series = os.path.join(self.mp, "bench", "bench")
            ids = sorted((n for n in os.listdir(series) if n.isdigit()), key=int)
            return (os.path.join(series, ids[-1]),
                    os.path.realpath(os.path.join(self.mp, "bench", "wide", "latest")))
        if name == "borg":  # archives s1, s2, s3 (expire kept the last) and wide; no '/'
            archives = sorted(n for n in os.listdir(self.mp) if n.startswith("s"))
            return os.path.join(self.mp, archives[-1]), os.path.join(self.mp, "wide")
        out = subprocess.run(["restic", "snapshots", "--json"], env=self.env,
                             capture_output=True, check=True).stdout
        snaps = json.loads(out)
        wide = [s for s in snaps if "wide" in (s.get("tags") or [])]
        data = [s for s in snaps if "wide" not in (s.get("tags") or [])]
        ids = os.path.join(self.mp, "ids")
        return (os.path.join(ids, data[-1]["short_id"]),
                os.path.join(ids, wide[-1]["short_id"]))

    def unmount(self, proc: subprocess.Popen) -> None:
        subprocess.run(["fusermount3", "-u", self.mp], capture_output=True)
        if os.path.ismount(self.mp):
            subprocess.run(["fusermount", "-u", self.mp], capture_output=True)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def available(tool) -> bool:
    if tool.name == "backshift":
        return tool.has("mount")
    return tool.name in ("borg", "restic") and tool.available()


def run_mount_steps(tool, ds, env: dict, steps: list[str], run_timed, log: str) -> dict:
    """{step: run_timed result} for the mount steps of one tool (None: it has no mount)."""
    if not available(tool):
        return {s: None for s in steps}
    m = Mounted(tool, env, os.path.join(tool.work, "mnt"))
    os.makedirs(m.mp, exist_ok=True)
    wide = wide_dir(os.path.dirname(tool.work))
    with open(log, "ab") as err:
        subprocess.run(m.save_wide(wide), env=env, stdout=subprocess.DEVNULL, stderr=err,
                       check=True)
        proc = subprocess.Popen(m.mount_argv(), env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.DEVNULL, stderr=err)
    try:
        deadline = time.monotonic() + MOUNT_WAIT_S
        while not os.path.ismount(m.mp):
            if proc.poll() is not None or time.monotonic() > deadline:
                print(f"  {tool.name} mount did not come up (see {log})", file=sys.stderr)
                return {s: {"s": 0.0, "rss_kb": 0, "rc": 99, "failed": True} for s in steps}
            time.sleep(0.05)
        data_root, wide_root = m.roots(ds)
        data = os.path.join(data_root, ds.root.lstrip("/"))
        listed = os.path.join(wide_root, wide.lstrip("/"))
        cmds = {"mount_ls": f"ls -la '{listed}' > /dev/null",
                "mount_find": f"find '{data_root}' | wc -l > /dev/null",
                "mount_read": f"tar -cf - -C '{os.path.dirname(data)}' "
                              f"'{os.path.basename(data)}' | cat > /dev/null"}
        return {s: run_timed(cmds[s], env, log) for s in steps}
    finally:
        m.unmount(proc)
