"""PUT rate of the object-store chunk backend against a throwaway SeaweedFS (weed mini).

    .venv/bin/python tools/objstore_putrate.py [--chunks 2000] [--threads 16 ...]
                                               [--min-kb 8] [--max-kb 64]

Chunks of 8-64 KB by default (half text, half random), put() then flush(): the time
includes encoding (zstd + verify) in the calling thread, as a save would see it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests"))

import seaweed  # noqa: E402

from backshift.objstore import ObjectStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--threads", type=int, nargs="+", default=[16])
    ap.add_argument("--min-kb", type=int, default=8)
    ap.add_argument("--max-kb", type=int, default=64)
    args = ap.parse_args()
    rng = random.Random(1)
    datas = []
    for i in range(args.chunks):
        size = rng.randrange(args.min_kb << 10, (args.max_kb << 10) + 1)
        if i % 2:
            datas.append(os.urandom(size))
        else:
            datas.append(b"".join(b"line %d of chunk %d\n" % (j, i) for j in range(size // 18))
                         [:size])
    shas = [hashlib.sha256(d).digest() for d in datas]
    total = sum(map(len, datas))
    with tempfile.TemporaryDirectory() as tmp:
        server = seaweed.start_seaweed(Path(tmp))
        try:
            os.environ.update(server.env())
            for threads in args.threads:
                url = f"s3://{server.bucket}/rate-{threads}"
                with ObjectStore(url, threads=threads) as store:
                    before = server.request_counts().get("PUT", 0)
                    t0 = time.perf_counter()
                    for d, s in zip(datas, shas, strict=True):
                        store.put(d, s)
                    store.flush()
                    dt = time.perf_counter() - t0
                    puts = server.request_counts().get("PUT", 0) - before
                print(f"threads={threads}: {args.chunks} chunks ({total / 1e6:.1f} MB) in "
                      f"{dt:.2f} s: {args.chunks / dt:.0f} PUTs/s, {total / 1e6 / dt:.1f} MB/s "
                      f"(server counted {puts} PUTs)")
        finally:
            seaweed.stop_seaweed(server)


if __name__ == "__main__":
    main()
