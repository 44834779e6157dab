"""Deterministic benchmark datasets, generated from a seed into bench/cache/ and reused.

Nothing is downloaded or checked in. A dataset directory is complete when its stamp file
exists; a half-made one (interrupted generation) is removed and made again.

- small: ~3,000 source-like files and a few binaries (a quick look, ~25 MB)
- mixed: ~20,000 source-like files in a nested tree, 50 files of 100 KB - 5 MB (half text,
  half random), two ~100 MB files (one random, one text), symlinks and hardlinks (~400 MB)
- many:  1,000,000 small files in 1,000 directories (the catalog's scale)
- system: a copy of this machine's /usr/share, /usr/bin and /etc (a real tree: ~56,000
  entries, ~1 GB here), taken once; saved from `find -print0` (FROM_FIND)
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass

CACHE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cache")
VERSION = 1  # bump when a generator changes: old cache directories are then ignored
FIXED_MTIME = 1_700_000_000  # every generated file gets this mtime (deterministic listings)

_WORDS = (
    b"def class return import from self None True False if else elif for while in not and "
    b"or with as try except finally raise yield lambda pass break continue int str bytes "
    b"list dict set tuple len range print open read write close value key item index data "
    b"result path name size count offset buffer stream chunk store catalog save version "
    b"static const void char unsigned struct typedef include define ifdef endif switch case "
    b"default goto sizeof malloc free memcpy strlen printf fprintf stderr stdout main argc "
    b"argv error errno status flags mode options config parse token node tree left right"
).split()
_PUNCT = [b"(", b")", b":", b",", b" = ", b".", b"[", b"]", b" + ", b" == "]


@dataclass
class Dataset:
    name: str
    root: str  # the directory to save (inside the cache directory)
    files: int  # regular files
    bytes: int  # bytes of regular files
    big_file: str  # the large file the 'modified' step inserts bytes into
    subtree: str  # a directory for `tar` of one subtree
    one_dir: str  # a directory for `list --no-recursive` (many entries)


def text_bytes(rng: random.Random, n: int) -> bytes:
    """About N bytes of source-like text (words, punctuation, indented lines)."""
    out = []
    total = 0
    words = _WORDS
    punct = _PUNCT
    while total < n:
        indent = b"    " * rng.randrange(4)
        k = rng.randrange(3, 12)
        line = indent + b" ".join(rng.choices(words, k=k)) + rng.choice(punct) + b"\n"
        out.append(line)
        total += len(line)
    return b"".join(out)[:n]


def _big_text(rng: random.Random, n: int) -> bytes:
    """N bytes of text built line by line from a large random line pool (fast, not periodic)."""
    pool = [text_bytes(rng, rng.randrange(40, 400)) for _ in range(20000)]
    parts = []
    total = 0
    while total < n:
        piece = b"".join(rng.choices(pool, k=64))
        parts.append(piece)
        total += len(piece)
    return b"".join(parts)[:n]


def _write(path: str, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
    os.utime(path, (FIXED_MTIME, FIXED_MTIME))


def _fresh(root: str) -> str | None:
    """The dataset directory if complete, else None (a partial one is removed)."""
    stamp = root + ".done"
    if os.path.exists(stamp):
        return root
    if os.path.exists(root):
        shutil.rmtree(root)
    if os.path.exists(root + ".json"):
        os.unlink(root + ".json")
    return None


def _finish(root: str) -> None:
    with open(root + ".done", "w") as f:
        f.write(time.strftime("%Y-%m-%d %H:%M:%S\n"))


def _source_tree(rng: random.Random, base: str, nfiles: int, mean_size: int) -> int:
    """NFILES text files in a nested tree of ~nfiles/25 directories; returns bytes written."""
    dirs = [base]
    ndirs = max(1, nfiles // 25)
    for i in range(ndirs):
        parent = rng.choice(dirs[-50:]) if rng.random() < 0.7 else rng.choice(dirs)
        d = os.path.join(parent, f"pkg{i:04d}")
        os.mkdir(d)
        dirs.append(d)
    total = 0
    for i in range(nfiles):
        d = rng.choice(dirs)
        size = min(int(rng.expovariate(1 / mean_size)) + 50, 200_000)
        ext = rng.choice([".py", ".c", ".h", ".txt", ".md", ".js"])
        _write(os.path.join(d, f"file{i:06d}{ext}"), text_bytes(rng, size))
        total += size
    return total


def _links(rng: random.Random, base: str, nsym: int, nhard: int) -> None:
    files = []
    for dirpath, _dirs, names in os.walk(base):
        files.extend(os.path.join(dirpath, n) for n in names)
    files.sort()
    for i in range(nsym):
        target = rng.choice(files)
        os.symlink(os.path.relpath(target, base), os.path.join(base, f"link{i:03d}"))
    os.mkdir(os.path.join(base, "hard"))
    for i in range(nhard):
        os.link(rng.choice(files), os.path.join(base, "hard", f"h{i:03d}"))


def make_small() -> str:
    root = os.path.join(CACHE, f"small-v{VERSION}")
    if _fresh(root):
        return root
    rng = random.Random(1)
    os.makedirs(os.path.join(root, "src"))
    _source_tree(rng, os.path.join(root, "src"), 3000, 4000)
    os.mkdir(os.path.join(root, "bin"))
    for i in range(4):
        _write(os.path.join(root, "bin", f"blob{i}.bin"), rng.randbytes(2_000_000))
    _write(os.path.join(root, "bin", "big.bin"), rng.randbytes(8_000_000))
    _links(rng, root, 20, 20)
    _finish(root)
    return root


def make_mixed() -> str:
    root = os.path.join(CACHE, f"mixed-v{VERSION}")
    if _fresh(root):
        return root
    rng = random.Random(2)
    os.makedirs(os.path.join(root, "src"))
    _source_tree(rng, os.path.join(root, "src"), 20000, 4500)
    media = os.path.join(root, "media")
    os.mkdir(media)
    for i in range(50):
        size = rng.randrange(100_000, 5_000_000)
        data = text_bytes(rng, size) if i % 2 == 0 else rng.randbytes(size)
        _write(os.path.join(media, f"m{i:02d}.{'txt' if i % 2 == 0 else 'bin'}"), data)
    big = os.path.join(root, "big")
    os.mkdir(big)
    _write(os.path.join(big, "random.bin"), rng.randbytes(100_000_000))
    _write(os.path.join(big, "text.log"), _big_text(rng, 100_000_000))
    _links(rng, root, 50, 50)
    _finish(root)
    return root


def make_many(count: int = 1_000_000, per_dir: int = 1000) -> str:
    root = os.path.join(CACHE, f"many{count}-v{VERSION}")
    if _fresh(root):
        return root
    rng = random.Random(3)
    pool = [text_bytes(rng, rng.randrange(20, 400)) for _ in range(4096)]
    os.makedirs(root)
    ndirs = (count + per_dir - 1) // per_dir
    n = 0
    for d in range(ndirs):
        sub = os.path.join(root, f"d{d // 100:02d}", f"d{d:04d}")
        os.makedirs(sub)
        for i in range(min(per_dir, count - n)):
            # a unique first line: every file is a distinct content (the catalog's worst case)
            body = b"%d\n" % n + pool[rng.randrange(4096)]
            p = os.path.join(sub, f"f{i:04d}.txt")
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, body)
            os.close(fd)
            os.utime(p, (FIXED_MTIME, FIXED_MTIME))
            n += 1
    _finish(root)
    return root


SYSTEM_SOURCES = ("/usr/share", "/usr/bin", "/etc")


def make_system() -> str:
    """A copy of SYSTEM_SOURCES under system-v1/ (cp -a: modes, owners, times, links and
    attributes kept; what cannot be read is left out with cp's message). The copy's mtimes
    are the originals' and never change after (the machine's own updates do not reach it),
    so every run of the bench saves the same tree."""
    root = os.path.join(CACHE, f"system-v{VERSION}")
    if _fresh(root):
        return root
    for src in SYSTEM_SOURCES:
        dest = os.path.join(root, src.lstrip("/"))
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        # exit 1 when some files could not be copied (sockets, unreadable): the rest stands
        subprocess.run(["cp", "-a", "--no-target-directory", src, dest], check=False)
        if not os.path.isdir(dest):
            raise RuntimeError(f"could not copy {src} into {dest}")
    _finish(root)
    return root


# datasets whose backshift saves read their names from `find ROOT -print0` (as users
# run it), not from a walk of ROOT
FROM_FIND = {"system"}


def describe(name: str, root: str) -> Dataset:
    """Count files and bytes, and pick the fixed big file, subtree and directory of a dataset."""
    files = 0
    total = 0
    best_dir, best_count = root, -1
    for dirpath, _dirs, names in os.walk(root):
        n = 0
        for fn in names:
            st = os.lstat(os.path.join(dirpath, fn))
            if st.st_mode & 0o170000 == 0o100000:
                files += 1
                total += st.st_size
                n += 1
        if n > best_count:
            best_dir, best_count = dirpath, n
    if name == "mixed":
        big = os.path.join(root, "big", "random.bin")
        subtree = os.path.join(root, "media")
    elif name == "small":
        big = os.path.join(root, "bin", "big.bin")
        subtree = os.path.join(root, "bin")
    elif name == "system":
        big = ""
        subtree = os.path.join(root, "etc")
    else:
        big = ""
        subtree = os.path.join(root, "d00")
    return Dataset(name, root, files, total, big, subtree, best_dir)


MAKERS = {"small": make_small, "mixed": make_mixed, "many": make_many, "system": make_system}


def get(name: str) -> Dataset:
    """The dataset NAME, generated on first use; 'many100k' etc. is a slice of 'many'."""
    if name.startswith("many") and name != "many":
        count = int(name[4:].replace("k", "000").replace("m", "000000"))
        root = make_many(count)
    else:
        root = MAKERS[name]()
    info = root + ".json"
    if os.path.exists(info):
        with open(info) as f:
            fields = json.load(f)
        # a shared cache may have been described from another checkout: re-root its paths
        old = fields["root"]
        return Dataset(**{k: root + v[len(old):] if isinstance(v, str) and v.startswith(old)
                          else v for k, v in fields.items()})
    ds = describe(name, root)
    with open(info, "w") as f:
        json.dump(asdict(ds), f)
    return ds
