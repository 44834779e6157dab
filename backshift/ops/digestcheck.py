"""Checking the rows a listing or tar stream reads against the save's members digest, and
the error that names a save whose catalog rows are found damaged."""

from __future__ import annotations

import os

from ..catalog import DIGEST_SCHEME, Catalog, MembersDigest
from ..errors import CatalogDamaged


class DigestCheck:
    """The save's members digest, computed from the rows a listing or tar stream reads,
    compared with the one recorded when the save completed (none: nothing to compare)."""

    def __init__(self, catalog: Catalog, save_id: int) -> None:
        self.catalog = catalog
        self.save_id = save_id
        recorded = catalog.save_digest(save_id)
        self.expected = recorded if recorded and recorded[0] == DIGEST_SCHEME else None
        self.computed = MembersDigest()

    def restart(self) -> None:
        """The rows are read again from the first one."""
        self.computed = MembersDigest()

    def verify(self) -> None:
        """CatalogDamaged when the rows read do not give the recorded digest."""
        if self.expected is None:
            return
        _scheme, members, digest = self.expected
        got = self.computed
        if got.members != members or got.digest() != digest:
            raise self.damaged(f"its {got.members:,} member rows do not give the digest "
                               f"recorded for its {members:,} members when it completed")

    def damaged(self, what: str) -> CatalogDamaged:
        return catalog_damaged(self.catalog, self.save_id, what)


def catalog_damaged(catalog: Catalog, save_id: int, what: str) -> CatalogDamaged:
    """The error for a save whose catalog rows are found damaged (WHAT says how)."""
    copies = os.path.join(os.path.dirname(catalog.path), b"catalog-copies", b"")
    return CatalogDamaged(save_id, what, os.fsdecode(copies))
