"""`python -m bench`: time backshift's steps on seeded datasets, beside the machine's limits
and the peers (borg, restic, the original backshift), and print one table per dataset.

Each step is one whole process (start-up included), timed by wall clock; peak RSS comes from
os.wait4 of the child (the largest of it and its waited-for descendants).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time

from . import datasets, limits, mountbench
from .objstore import BackshiftS3
from .peers import TOOLS, Tool, empty_trash, trash_dir

TOOLS = {**TOOLS, "s3": BackshiftS3}  # the object-store column (chunks in a SeaweedFS)

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS = ["init", "save1", "resave", "resave_mod", "list", "list1dir", "tar", "tar_pipe", "tarsub",
         "find", "history", "sql", "check", "expire", *mountbench.STEPS]
LABELS = {
    "init": "init", "save1": "first save", "resave": "unchanged re-save",
    "resave_mod": "re-save, 1% touched + insert", "list": "list -v (whole save)",
    "list1dir": "list --no-recursive (one dir)", "tar": "tar whole save > /dev/null",
    "tar_pipe": "tar whole save | cat",
    "tarsub": "tar one subtree", "check": "check --read-data", "expire": "expire + GC",
    "find": "find (many catalog)", "history": "history (many catalog)",
    "sql": "sql (count, bytes by type in the save)", **mountbench.LABELS,
}
MANY_ONLY = {"find", "history"}
DEFAULT_RUNS = {"small": 3, "mixed": 3, "system": 3, "many": 1}
DEFAULT_PEERS = {"small": "borg,restic,original,s3", "mixed": "borg,restic,original,s3,ssh",
                 "system": "borg,restic", "many": ""}
# s3: chunks in a SeaweedFS bucket; ssh: backshift itself into an ssh:// repository on localhost


# A small fresh process times the step and reports its children's peak RSS: a child forked
# straight from this (large) process would inherit this process's RSS high-water mark.
_TIMER = """
import os, resource, subprocess, sys, time
fd, how = int(sys.argv[1]), sys.argv[2]
cmd = sys.argv[3:] if how == "argv" else sys.argv[3]
t = time.perf_counter()
rc = subprocess.call(cmd, shell=how == "sh", stdin=subprocess.DEVNULL)
dt = time.perf_counter() - t
rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
os.write(fd, f"{dt} {rss} {rc}".encode())
"""


def run_timed(cmd, env: dict, log: str) -> dict:
    """Run CMD (argv list, or str for sh -c) with stdout to /dev/null; time, RSS, status."""
    shell = isinstance(cmd, str)
    rfd, wfd = os.pipe()
    argv = [sys.executable, "-c", _TIMER, str(wfd),
            *(["sh", cmd] if shell else ["argv", *cmd])]
    with open(log, "ab") as err:
        err.write(f"$ {cmd if shell else ' '.join(cmd)}\n".encode())
        err.flush()
        p = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=err, pass_fds=(wfd,))
        os.close(wfd)
        with os.fdopen(rfd, "rb") as r:
            report = r.read().decode()
        p.wait()
    dt, rss, rc = report.split()
    return {"s": float(dt), "rss_kb": int(rss), "rc": int(rc)}


# -- the dataset changes of the 'modified' step, undone after it ----------------------------

INSERT = b"inserted by the benchmark\n" * 40


def modify(ds: datasets.Dataset, seed: int) -> list[str]:
    """Touch 1% of the files (new mtime) and insert bytes in the middle of the big file."""
    names = []
    for dirpath, _dirs, files in os.walk(ds.root):
        names.extend(os.path.join(dirpath, f) for f in files)
    names.sort()
    touched = [n for n in names[seed % 100 :: 100] if not os.path.islink(n)]
    now = time.time()
    for n in touched:
        os.utime(n, (now, now))
    if ds.big_file:
        with open(ds.big_file, "r+b") as f:
            data = f.read()
            mid = len(data) // 2
            f.seek(mid)
            f.write(INSERT + data[mid:])
    return touched


def unmodify(ds: datasets.Dataset) -> None:
    if ds.big_file:
        with open(ds.big_file, "r+b") as f:
            data = f.read()
            mid = (len(data) - len(INSERT)) // 2
            assert data[mid : mid + len(INSERT)] == INSERT, "big file not as modified"
            f.seek(mid)
            f.write(data[mid + len(INSERT) :])
            f.truncate()
        os.utime(ds.big_file, (datasets.FIXED_MTIME, datasets.FIXED_MTIME))


# -- one dataset ----------------------------------------------------------------------------


def run_dataset(ds: datasets.Dataset, tools: list[Tool], steps: list[str], runs: int,
                log: str) -> dict:
    steps = [s for s in steps if s not in MANY_ONLY or ds.name.startswith("many")]
    if ds.name.startswith("many"):  # reading a million files through FUSE: many minutes
        steps = [s for s in steps if s != "mount_read"]
    results: dict = {t.name: {s: [] for s in steps} for t in tools}
    sizes: dict = {t.name: {} for t in tools}
    for run in range(runs):
        for tool in tools:
            tool.reset()
            env = tool.env()
            save_no = 0
            for step in STEPS:
                if step in MANY_ONLY and not ds.name.startswith("many"):
                    continue
                if step not in steps and step not in ("init", "save1"):
                    continue  # later steps need a repository and a save: always made
                if step in ("save1", "resave", "resave_mod"):
                    save_no += 1  # the saves made so far (borg names its archives by it)
                if step in mountbench.STEPS:  # all of them at once, in one mount
                    if step == next(s for s in mountbench.STEPS if s in steps):
                        wanted = [s for s in mountbench.STEPS if s in steps]
                        for s, r in mountbench.run_mount_steps(tool, ds, env, wanted,
                                                               run_timed, log).items():
                            if r is not None and r["rc"] not in (0, 1):
                                r["failed"] = True
                            results[tool.name][s].append(r)
                            tag = "n/a" if r is None else f"{r['s']:.2f}s"
                            print(f"  run {run + 1}/{runs} {tool.name:9} {s:10} {tag}",
                                  file=sys.stderr)
                    continue
                # the racy-timestamp rule: data changed < 2 s before a save is re-read next time
                if step == "resave_mod":
                    modify(ds, run)
                    time.sleep(0.05)
                cmd = piped_tar(tool.command("tar", ds, save_no)) if step == "tar_pipe" \
                    else tool.command(step, ds, save_no)
                try:
                    if cmd is None:
                        r = None
                    else:
                        r = run_timed(cmd, env, log)
                finally:
                    if step == "resave_mod":
                        unmodify(ds)
                if r is not None and r["rc"] not in (0, 1):
                    print(f"  {tool.name} {step}: exit {r['rc']} (see {log})", file=sys.stderr)
                    r["failed"] = True
                if step in steps:
                    results[tool.name][step].append(r)
                if run == 0 and step in ("save1", "resave", "resave_mod"):
                    sizes[tool.name][step] = tool.repo_bytes()
                tag = "n/a" if r is None else f"{r['s']:.2f}s"
                print(f"  run {run + 1}/{runs} {tool.name:9} {step:10} {tag}", file=sys.stderr)
        for tool in tools:
            tool.reset()  # set aside, deleted at the end of the whole run
    return {"steps": summarize(results), "sizes": sizes}


def piped_tar(cmd) -> str | None:
    """The tar step through a pipe, as the mount row's read-through runs (`tar -cf - | cat`):
    the two compare like for like, each stream copied once more through cat."""
    if cmd is None:
        return None
    inner = f"{cmd if isinstance(cmd, str) else shlex.join(cmd)} | cat > /dev/null"
    return f"bash -o pipefail -c {shlex.quote(inner)}"  # the tool's exit status, not cat's


def summarize(results: dict) -> dict:
    out: dict = {}
    for tool, steps in results.items():
        for step, rs in steps.items():
            good = [r for r in rs if r is not None and not r.get("failed")]
            if not rs or all(r is None for r in rs):
                cell = {"na": "command not available"}
            elif not good:
                cell = {"na": "failed"}
            else:
                cell = {"median_s": statistics.median(r["s"] for r in good),
                        "runs_s": [r["s"] for r in good],
                        "peak_rss_mb": max(r["rss_kb"] for r in good) / 1024}
            out.setdefault(step, {})[tool] = cell
    return out


# -- output ---------------------------------------------------------------------------------


def table(name: str, ds: datasets.Dataset, res: dict, lim: dict, peers: list[str]) -> str:
    head = ["step", "backshift", "vs limit", *peers, *[f"bs/{p}" for p in peers], "RSS MB"]
    rows = []
    for step, cells in res["steps"].items():
        b = cells.get("backshift", {})
        bs = b.get("median_s")
        row = [LABELS[step], f"{bs:.2f}s" if bs is not None else "n/a"]
        floor = lim["floor"].get(step)
        row.append(f"{bs / floor:.1f}x" if bs is not None and floor else "")
        ratios = []
        for p in peers:
            c = cells.get(p, {})
            ps = c.get("median_s")
            row.append(f"{ps:.2f}s" if ps is not None else "n/a")
            ratios.append(f"{bs / ps:.2f}" if bs is not None and ps else "")
        row += ratios
        row.append(f"{b['peak_rss_mb']:.0f}" if "peak_rss_mb" in b else "")
        rows.append(row)
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]

    def fmt(r: list) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)) + " |"

    lines = [f"### {name}: {ds.files:,} files, {ds.bytes / 1e6:,.0f} MB", "",
             fmt(head), "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    lines += [fmt(r) for r in rows]
    lines.append("")
    lines.append(
        f"limits: read {lim['read_Bps'] / 1e6:,.0f} MB/s, sha256 {lim['sha256_Bps'] / 1e6:,.0f}"
        f" MB/s, zstd-3 {lim['zstd3_text_Bps'] / 1e6:,.0f} (text) / "
        f"{lim['zstd3_random_Bps'] / 1e6:,.0f} (random) MB/s, fastcdc "
        f"{lim['fastcdc_Bps'] / 1e6:,.0f} MB/s, find {lim['entries'] / lim['find_s']:,.0f}"
        f" entries/s, lstat {lim['entries'] / lim['lstat_s']:,.0f}/s"
        + (f", chunk file (create, write 4 KiB, rename, sync) {lim['chunk_file_s'] * 1e6:,.0f} us"
           if "chunk_file_s" in lim else "")
        + (f", chunk file read (open, read, close) {lim['chunk_read_s'] * 1e6:,.0f} us"
           if "chunk_read_s" in lim else ""))
    for tool, by_step in res["sizes"].items():
        if not by_step:
            continue
        parts = [f"repo after 3 saves {by_step.get('resave_mod', {}).get('repo', 0) / 1e6:,.1f} MB"]
        if tool == "backshift" and "save1" in by_step and "resave" in by_step:
            c1 = by_step["save1"]["catalog"]
            c2 = by_step["resave"]["catalog"]
            parts.append(f"catalog {c1 / ds.files:.0f} B/file after the first save, "
                         f"+{(c2 - c1) / ds.files:.1f} B/file for an unchanged re-save")
        puts = by_step.get("save1", {}).get("puts")
        first = res["steps"].get("save1", {}).get(tool, {}).get("median_s")
        if puts and first:
            parts.append(f"first save: {puts:,} PUTs, {puts / first:,.0f} PUTs/s")
        lines.append(f"{tool}: " + ", ".join(parts))
    return "\n".join(lines)


def machine() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return {"cpu": model, "cores": os.cpu_count(), "mem_gb": round(mem / 2**30, 1),
            "kernel": platform.release(), "python": platform.python_version(),
            "loadavg_at_start": os.getloadavg(), "when": time.strftime("%Y-%m-%d %H:%M:%S")}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--datasets", default="small,mixed,system,many")
    ap.add_argument("--runs", type=int, default=None, help="runs per step (median reported)")
    ap.add_argument("--peers", default=None,
                    help="comma list of borg,restic,original,s3,ssh (default: all for "
                         "small/mixed; s3: chunks in a SeaweedFS bucket; ssh: backshift "
                         "over ssh:// to localhost)")
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--out", default=None, help="JSON file (default bench/results/<time>.json)")
    ap.add_argument("--work", default=os.path.join(HERE, "cache", "work"))
    ap.add_argument("--note", default="", help="free text stored with the results")
    args = ap.parse_args(argv)
    steps = [s for s in args.steps.split(",") if s]
    unknown = set(steps) - set(STEPS)
    if unknown:
        ap.error(f"unknown steps: {', '.join(sorted(unknown))} (known: {', '.join(STEPS)})")
    out = args.out or os.path.join(HERE, "results", time.strftime("%Y%m%d-%H%M%S") + ".json")
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    log = os.path.splitext(out)[0] + ".log"
    empty_trash(args.work)  # left by an interrupted run
    report = {"machine": machine(), "note": args.note, "datasets": {}}
    texts = []
    for name in [d for d in args.datasets.split(",") if d]:
        print(f"dataset {name}: generating or reusing", file=sys.stderr)
        ds = datasets.get(name)
        print(f"dataset {name}: measuring the machine's limits", file=sys.stderr)
        os.makedirs(args.work, exist_ok=True)
        lim = limits.measure(ds, args.work, trash_dir(os.path.join(args.work, "x")))
        base = "many" if name.startswith("many") else name
        peer_names = [p for p in (args.peers if args.peers is not None
                                  else DEFAULT_PEERS.get(base, "")).split(",") if p]
        tools = [TOOLS["backshift"](args.work)]
        for p in peer_names:
            t = TOOLS[p](args.work)
            if t.available():
                tools.append(t)
            else:
                print(f"peer {p} not installed (make bench-peers)", file=sys.stderr)
        runs = args.runs or DEFAULT_RUNS.get(base, 1)
        res = run_dataset(ds, tools, steps, runs, log)
        report["datasets"][name] = {"files": ds.files, "bytes": ds.bytes, "runs": runs,
                                    "limits": lim, **res}
        texts.append(table(name, ds, res, lim, [t.name for t in tools[1:]]))
        with open(out, "w") as f:
            json.dump(report, f, indent=1)
    m = report["machine"]
    print(f"\nmachine: {m['cpu']}, {m['cores']} cores, {m['mem_gb']} GB, Linux {m['kernel']},"
          f" Python {m['python']}, load at start {m['loadavg_at_start'][0]:.1f}"
          + (f" ({args.note})" if args.note else "") + "\n")
    print("\n\n".join(texts))
    print(f"\nJSON: {out}")
    empty_trash(args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
