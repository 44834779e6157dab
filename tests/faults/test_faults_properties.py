"""Hypothesis: the path codec over arbitrary bytes names, and save/restore of generated trees."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import unicodedata
from pathlib import Path

import pytest
from harness.consistency import assert_repo_consistent
from harness.oracle import assert_save_matches, manifest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backshift import pathcodec
from backshift.model import ChunkerParams
from backshift.repo import init_repository
from conftest import find0, run

# A name component: any bytes but '/' and NUL, and not '.' or '..'.
component = st.binary(min_size=1, max_size=40).map(
    lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")).filter(lambda b: b not in (b".", b".."))
abs_path = st.lists(component, min_size=0, max_size=6).map(lambda parts: b"/" + b"/".join(parts))


@given(st.lists(component, max_size=6), st.lists(st.sampled_from([b"", b"./", b"/", b"././"]),
                                                 max_size=6))
def test_codec_normalize_removes_only_noise(parts, noise):
    """'//', '/./' and trailing '/' vanish; the components stay, in order."""
    raw = b"/"
    for i, p in enumerate(parts):
        raw += p + b"/" + (noise[i] if i < len(noise) else b"")
    assert pathcodec.normalize(raw, b"/cwd") == b"/" + b"/".join(parts)


@given(abs_path)
def test_codec_key_round_trips(path):
    assert pathcodec.from_key(pathcodec.sort_key(path)) == path


@given(st.lists(abs_path, min_size=2, max_size=30))
def test_codec_key_order_is_depth_first_order(paths):
    def components(p: bytes) -> list[bytes]:
        return [] if p == b"/" else p[1:].split(b"/")

    by_key = sorted(set(paths), key=pathcodec.sort_key)
    depth_first = sorted(set(paths), key=components)
    assert by_key == depth_first


@given(abs_path, abs_path)
def test_codec_subtree_range_holds_exactly_the_descendants(top, other):
    lo, hi = pathcodec.subtree_range(pathcodec.sort_key(top))
    inside = lo <= pathcodec.sort_key(other) < hi
    below = other != top and (top == b"/" or other.startswith(top + b"/"))
    assert inside == below


@given(st.binary(max_size=200))
def test_codec_escape_round_trips_and_is_one_printable_line(raw):
    text = pathcodec.escape(raw)
    assert pathcodec.unescape(text) == raw
    # no control character (C0, DEL, C1) survives: no newline, no terminal escape
    assert not any(unicodedata.category(ch) == "Cc" for ch in text)
    assert not any(0xDC80 <= ord(ch) <= 0xDCFF for ch in text)  # and no lone surrogate


# -- save/restore round trip of generated small trees --------------------------------------

file_name = component.filter(lambda b: len(b) < 60)
node = st.recursive(
    st.one_of(st.binary(max_size=3000).map(lambda d: ("file", d)),
              st.binary(min_size=1, max_size=30).map(
                  lambda t: ("link", t.replace(b"\0", b"_")))),
    lambda children: st.dictionaries(file_name, children, max_size=4).map(lambda d: ("dir", d)),
    max_leaves=12)


def _build(path: bytes, spec) -> None:
    kind, value = spec
    if kind == "file":
        with open(path, "wb") as f:
            f.write(value)
    elif kind == "link":
        os.symlink(value, path)
    else:
        os.mkdir(path)
        for name, child in value.items():
            _build(os.path.join(path, name), child)


@pytest.mark.timeout(300)
@settings(max_examples=15, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.dictionaries(file_name, node, max_size=5), st.booleans())
def test_save_then_tar_round_trips_generated_trees(entries, with_hardlink):
    base = tempfile.mkdtemp(prefix="bshyp-")
    try:
        src = os.path.join(os.fsencode(base), b"src")
        _build(src, ("dir", entries))
        if with_hardlink:
            with open(os.path.join(src, b"hl-1"), "wb") as f:
                f.write(b"linked")
            os.link(os.path.join(src, b"hl-1"), os.path.join(src, b"hl-2"))
        repo = os.path.join(os.fsencode(base), b"repo")
        init_repository(repo, ChunkerParams(min_size=256, avg_size=1024, max_size=4096))
        expected = manifest(src)
        run("-r", repo, "save", "--subset", "t", "--hostname", "h", input=find0(src))
        assert_save_matches(repo, 1, expected, src, Path(base))
        assert_repo_consistent(repo)
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", base], check=False)
        shutil.rmtree(base)
