"""The object-store column of the benchmark: backshift with its chunks in a bucket of a
SeaweedFS started for the run (`weed mini`, as the tests start it: tests/helpers/seaweed.py), the
catalog in the tool's local directory. Its request counts give the PUTs/s of a first save."""

from __future__ import annotations

import atexit
import os
import sys
import tempfile
import time

from .peers import Backshift

TESTS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                     "helpers")  # where seaweed.py lives


class _Server:
    server = None
    workdir = None

    @classmethod
    def get(cls):
        if cls.server is None:
            sys.path.insert(0, TESTS)
            import seaweed  # the tests' fixture code: free ports, S3 identity, metrics

            cls.workdir = tempfile.mkdtemp(prefix="bench-seaweed-")
            cls.server = seaweed.start_seaweed(__import__("pathlib").Path(cls.workdir))
            atexit.register(cls.stop)
        return cls.server

    @classmethod
    def settle(cls, quiet_s: float = 0.02, window_s: float = 0.5, limit_s: float = 60) -> None:
        """Wait until the server has been idle for a moment (under QUIET_S of CPU in WINDOW_S).
        After a save's 20,000 PUTs SeaweedFS digests them in the background for seconds, on the
        same 2 cores: a step timed meanwhile (list, sql: no request at all) would be charged
        for it, and compare unfairly with the local column."""
        if cls.server is None:
            return
        stat = f"/proc/{cls.server.process.pid}/stat"

        def cpu() -> float:
            with open(stat) as f:
                fields = f.read().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

        deadline = time.monotonic() + limit_s
        while time.monotonic() < deadline:
            before = cpu()
            time.sleep(window_s)
            if cpu() - before < quiet_s:
                return

    @classmethod
    def stop(cls):
        import shutil

        import seaweed
        if cls.server is not None:
            seaweed.stop_seaweed(cls.server)
            cls.server = None
        if cls.workdir is not None:
            shutil.rmtree(cls.workdir, ignore_errors=True)


class BackshiftS3(Backshift):
    """backshift with `init --chunks s3://BUCKET/<fresh prefix>` against a local SeaweedFS."""

    name = "s3"

    def available(self) -> bool:
        return os.path.exists(os.path.join(os.path.dirname(sys.executable), "weed"))

    def reset(self) -> None:
        super().reset()
        self.prefix = f"bench-{time.time_ns()}"
        self._puts_before = None

    def env(self) -> dict:
        return {**{k: v for k, v in os.environ.items() if not k.startswith("AWS_")},
                **_Server.get().env()}

    def command(self, step, ds, save_no):
        _Server.settle()
        if step == "init":
            server = _Server.get()
            self._puts_before = server.request_counts().get("PUT", 0)
            return [self.bin, "-r", self.repo, "init", "--chunks",
                    f"s3://{server.bucket}/{self.prefix}"]
        return super().command(step, ds, save_no)

    def repo_bytes(self) -> dict:
        """The local catalog's size, and the PUTs the server counted since init (after the
        first save: its chunk objects, the probe and one catalog copy)."""
        cat = sum(os.path.getsize(os.path.join(self.repo, n)) for n in os.listdir(self.repo)
                  if n.startswith("catalog.sqlite3"))
        puts = _Server.get().request_counts().get("PUT", 0) - (self._puts_before or 0)
        return {"repo": cat, "catalog": cat, "puts": puts}
