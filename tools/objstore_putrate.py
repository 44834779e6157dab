"""PUT and GET rate of the object-store chunk backend against a throwaway SeaweedFS (weed
mini), with the CPU each side spends: the client's (this process, all threads) and the
server's (the weed process, from /proc/PID/stat), per 1,000 requests.

    .venv/bin/python tools/objstore_putrate.py [--chunks 2000] [--threads 16 ...]
                                               [--min-kb 8] [--max-kb 64] [--no-get]

Chunks of 8-64 KB by default (half text, half random), put() then flush(): the time
includes encoding (zstd + verify) in the calling thread, as a save would see it. Then the
same chunks are read back as tar reads them (read_verified in READ_AHEAD threads: GET,
decode, sha256), and once more with bare obstore GETs in as many threads (no decoding, no
verification): the difference is what backshift's own layer costs per GET.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import resource
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "helpers"))  # seaweed.py

import seaweed  # noqa: E402

from backshift.objstore import READ_AHEAD, ObjectStore, key_for  # noqa: E402


def server_cpu(pid: int) -> float:
    """User + system CPU seconds of process PID so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def client_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def measure(server, what: str, n: int, fn) -> None:
    """Run FN (N requests) and print its wall time and both sides' CPU per 1,000."""
    s0, c0, t0 = server_cpu(server.process.pid), client_cpu(), time.perf_counter()
    fn()
    dt, c1 = time.perf_counter() - t0, client_cpu()
    time.sleep(0.3)  # the server's last responses are accounted
    s1 = server_cpu(server.process.pid)
    per = 1000 / n
    print(f"  {what}: {n} in {dt:.2f} s ({n / dt:.0f}/s); CPU per 1,000: client "
          f"{(c1 - c0) * per:.2f} s, server {(s1 - s0) * per:.2f} s")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=2000)
    ap.add_argument("--threads", type=int, nargs="+", default=[16])
    ap.add_argument("--min-kb", type=int, default=8)
    ap.add_argument("--max-kb", type=int, default=64)
    ap.add_argument("--no-get", action="store_true", help="PUTs only")
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
                print(f"threads={threads}: {args.chunks} chunks ({total / 1e6:.1f} MB)")
                with ObjectStore(url, threads=threads) as store:
                    def put_all(store=store):
                        for d, s in zip(datas, shas, strict=True):
                            store.put(d, s)
                        store.flush()
                    measure(server, "PUT (encode + put + flush)", args.chunks, put_all)
                    if args.no_get:
                        continue

                    def get_all(store=store):
                        with ThreadPoolExecutor(READ_AHEAD) as pool:
                            list(pool.map(lambda i: store.read_verified(shas[i], len(datas[i])),
                                          range(len(datas))))
                    measure(server, f"GET (read_verified, {READ_AHEAD} threads)", args.chunks,
                            get_all)

                    def get_bare(store=store):
                        import obstore
                        raw = store.client.store
                        with ThreadPoolExecutor(READ_AHEAD) as pool:
                            list(pool.map(lambda s: bytes(obstore.get(raw, key_for(s)).bytes()),
                                          shas))
                    measure(server, f"GET (bare obstore, {READ_AHEAD} threads)", args.chunks,
                            get_bare)
        finally:
            seaweed.stop_seaweed(server)


if __name__ == "__main__":
    main()
