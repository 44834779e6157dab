"""The benchmark's floors (bench/limits.py): the best time each step is compared with."""

from __future__ import annotations

import pytest

from bench.datasets import Dataset
from bench.limits import floors

# `many` as measured on the benchmark machine (README's limits line): 1,000,000 distinct
# small files, 218 MB, read at 42 MB/s, sha256 at 2 GB/s
MANY = Dataset("many", "/nonexistent", files=1_000_000, bytes=218_000_000, big_file="",
               subtree="", one_dir="")


def measured(**extra) -> dict:
    return {"sha256_Bps": 2e9, "zstd3_random_Bps": 1.6e9, "zstd3_text_Bps": 3.4e8,
            "fastcdc_Bps": 5.4e9, "find_s": 1.16, "lstat_s": 8.2, "read_s": 5.2, **extra}


def test_bench_save1_floor_counts_a_chunk_file_made_per_file():
    """Making 1M chunk files at 36 us, shared by two cores, and the walk (find + lstat)."""
    floor = floors(measured(chunk_file_s=36e-6), MANY, cores=2)["save1"]
    assert floor > MANY.files * 36e-6 / 2 + 1.16 + 8.2


def test_bench_check_floor_counts_a_chunk_file_read_per_chunk():
    """check --read-data opens and reads one chunk file per chunk (a chunk per distinct
    small file): 1M of them at 20 us are 20 s, which the floor counts on top of hashing."""
    floor = floors(measured(chunk_read_s=20e-6), MANY, cores=2)["check"]
    assert floor == pytest.approx(MANY.files * 20e-6 + MANY.bytes / 2e9)


def test_bench_check_floor_without_the_chunk_file_probe_is_reading_or_hashing():
    assert floors(measured(), MANY, cores=2)["check"] == pytest.approx(5.2)
