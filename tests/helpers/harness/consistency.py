"""H4: assert_repo_consistent(repo): the invariants every repository must keep after any fault."""

from __future__ import annotations

import hashlib
import os
import re

import apsw

from backshift.catalog import APPLICATION_ID, CATALOG_NAME, schema_version
from backshift.lock import pid_alive
from backshift.store import Store

HEX64 = re.compile(rb"^[0-9a-f]{64}$")
# <final name>.tmp.<host>.<pid>.<8 hex>: the only temp files the store may leave behind.
TEMP_NAME = re.compile(rb"^[0-9a-f]{64}\.tmp\.[^/]+\.[0-9]+\.[0-9a-f]{8}$")

UNDECLARED_REFERENCES = {
    "member.version_id -> version": """
        SELECT count(*) FROM member AS m
        WHERE NOT EXISTS (SELECT 1 FROM version AS v WHERE v.id = m.version_id)
    """,
    "member.path_id -> path": """
        SELECT count(*) FROM member AS m
        WHERE NOT EXISTS (SELECT 1 FROM path AS p WHERE p.id = m.path_id)
    """,
    "version.path_id -> path": """
        SELECT count(*) FROM version AS v
        WHERE NOT EXISTS (SELECT 1 FROM path AS p WHERE p.id = v.path_id)
    """,
    "member and version agree on the path": """
        SELECT count(*) FROM member AS m JOIN version AS v ON v.id = m.version_id
        WHERE v.path_id != m.path_id
    """,
}

CHUNKS_OF_COMPLETE_SAVES = """
    SELECT DISTINCT k.sha256, k.length
    FROM save AS s
    JOIN member AS m ON m.save_id = s.id
    JOIN version AS v ON v.id = m.version_id
    JOIN content_chunk AS cc ON cc.content_id = v.content_id
    JOIN chunk AS k ON k.id = cc.chunk_id
    WHERE s.status = 'complete'
"""


def open_readonly(repo: bytes) -> apsw.Connection:
    """A read-only connection to REPO's catalog (raw apsw: the checker trusts no backshift code)."""
    path = os.fsdecode(os.path.join(repo, CATALOG_NAME))
    return apsw.Connection("file:" + path.replace("%", "%25").replace("?", "%3f") + "?mode=ro",
                           flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)


def temp_files(repo: bytes) -> list[bytes]:
    """Every non-final name in the chunk store (temp files, strays)."""
    return [p for sha, p in Store(repo).iter_chunk_files() if sha is None]


def assert_repo_consistent(repo: bytes, allow_temps: bool = True,
                           allow_dead_running: bool = False) -> dict:
    """Fail with a list of every broken invariant; returns a few counts for the caller."""
    problems: list[str] = []
    conn = open_readonly(repo)
    try:
        q = lambda sql: conn.execute(sql).fetchall()  # noqa: E731
        integrity = q("PRAGMA integrity_check")
        if integrity != [("ok",)]:
            problems.append(f"integrity_check: {integrity[:5]}")
        fk = q("PRAGMA foreign_key_check")
        if fk:
            problems.append(f"foreign_key_check: {fk[:5]}")
        for name, sql in UNDECLARED_REFERENCES.items():
            bad = q(sql)[0][0]
            if bad:
                problems.append(f"{bad} rows break {name}")
        if q("PRAGMA application_id")[0][0] != APPLICATION_ID:
            problems.append("application_id differs")
        if q("PRAGMA user_version")[0][0] != schema_version():
            problems.append(f"user_version {q('PRAGMA user_version')} != {schema_version()}")
        for sid, status, pid in q("SELECT id, status, writer_pid FROM save"):
            if status in ("complete", "interrupted"):
                continue
            if status == "running" and (allow_dead_running or pid_alive(pid, None)):
                continue
            problems.append(f"save {sid} is {status!r} but its writer pid {pid} is gone")
        referenced = q(CHUNKS_OF_COMPLETE_SAVES)
        saves = q("SELECT id, status FROM save ORDER BY id")
    finally:
        conn.close()

    store = Store(repo)
    from backshift.errors import DataDamaged
    from backshift.model import ChunkRef
    for sha, length in referenced:
        try:
            store.read(ChunkRef(sha, length))
        except DataDamaged as e:
            problems.append(f"referenced by a complete save: {e}")
    finals = 0
    for sha, item in store.iter_chunk_files():
        if sha is None:
            path = item
            name = os.path.basename(path)
            if not TEMP_NAME.match(name):
                problems.append(f"unexpected file in chunk store: {path!r}")
            elif not allow_temps:
                problems.append(f"temp file left behind: {path!r}")
            continue
        finals += 1
        with open(store.path_for(sha), "rb") as f:
            body = f.read()
        try:
            data = store.codec.decode(body)
        except Exception as e:  # noqa: BLE001 - any decode failure is a finding
            problems.append(f"final-name chunk {sha.hex()} does not decode: {e}")
            continue
        if hashlib.sha256(data).digest() != sha:
            problems.append(f"final-name chunk {sha.hex()} has the wrong content")
    assert not problems, "repository inconsistent:\n  " + "\n  ".join(problems)
    return {"saves": saves, "chunk_files": finals, "referenced_chunks": len(referenced)}
