"""Content-defined cut points: FastCDC (pyfastcdc, compiled, releases the GIL) over a stream."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

from pyfastcdc import FastCDC

from .model import ChunkerParams


class Chunker:
    """Cuts byte streams into content-defined chunks with fixed, recorded parameters.

    One instance per thread: pyfastcdc objects are not safe to share between threads.
    """

    def __init__(self, params: ChunkerParams) -> None:
        if params.algorithm != "fastcdc2020":
            raise ValueError(f"unknown chunker algorithm {params.algorithm!r}")
        self.params = params
        # pyfastcdc's mean chunk is avg_size + min_size (the paper's cut-point skipping):
        # pass avg - min so that the recorded average is the real one.
        self._cdc = FastCDC(
            avg_size=params.avg_size - params.min_size,
            min_size=params.min_size,
            max_size=params.max_size,
            seed=params.seed,
        )

    def cut_buffer(self, buf: bytes | memoryview) -> Iterator[memoryview]:
        """Chunks of an in-memory buffer, as views into it."""
        view = memoryview(buf)
        for c in self._cdc.cut_buf(view):
            yield view[c.offset : c.offset + c.length]

    def cut_stream(self, stream: BinaryIO) -> Iterator[memoryview]:
        """Chunks of a stream. Each view is valid only until the next one is produced."""
        for c in self._cdc.cut_stream(stream):
            yield c.data
