"""A save's series (HOST/SUBSET): its default name for the paths saved, and whether the
repository holds one (asked before the repository opens for the save)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable

from ..errors import BackshiftError


def subset_for_roots(roots: Iterable[bytes]) -> str:
    """The series name of a save of ROOTS (absolute, normal) given no --subset, as restic
    groups snapshots by their paths: each root without its leading '/' and with '/' as
    '-' (/etc: etc, /usr/share/doc: usr-share-doc, /: rootfs), sorted, joined by '+'. A
    root with anything but letters, digits, '.', '_' and '-' in it, or a name longer than
    SUBSET_NAME_MAX, gives paths-<first 12 hex digits of the SHA-256 of the sorted roots
    joined by NUL> instead."""
    roots = sorted(set(roots))
    parts = []
    for root in roots:
        try:
            text = root.decode("utf-8")
        except UnicodeDecodeError:
            break
        text = text.strip("/").replace("/", "-") or "rootfs"
        if not all(ch.isalnum() or ch in "._-" for ch in text):
            break
        parts.append(text)
    name = "+".join(parts)
    if len(parts) < len(roots) or not name or len(name) > SUBSET_NAME_MAX:
        name = "paths-" + hashlib.sha256(b"\0".join(roots)).hexdigest()[:12]
    return name


SUBSET_NAME_MAX = 80


def series_exists(repo: bytes, hostname: str, subset: str) -> bool:
    """Whether REPO holds a save of HOSTNAME/SUBSET; False when it cannot tell (the save
    itself then reports what is wrong). The catalog is closed again before any fork."""
    from ..catalog import CATALOG_NAME, Catalog
    try:
        cat = Catalog.open(os.path.join(repo, CATALOG_NAME), readonly=True)
    except (BackshiftError, OSError):
        return False
    try:
        return cat.has_series(hostname, subset)
    except Exception:  # noqa: BLE001 - an unreadable catalog is the save's to report
        return False
    finally:
        cat.close()
