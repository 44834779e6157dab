"""The error tree: every failure a user can see, its one-line message and its exit code."""

from __future__ import annotations

# The exit-code table. README.md documents it; tests/cli/test_cli_basics.py keeps both equal.
EXIT_OK = 0
EXIT_WARNING = 1  # the operation finished, but some files or members had problems
EXIT_ERROR = 2  # generic error, including bad command-line usage
EXIT_INTERRUPTED = 130  # Ctrl-C / SIGINT (128 + 2)
EXIT_TERMINATED = 143  # SIGTERM (128 + 15), as a shell reports a process it ended
EXIT_BROKEN_PIPE = 141  # the reader of stdout went away (128 + SIGPIPE), as a shell reports


class BackshiftError(Exception):
    """Error: {0}"""

    exit_code = EXIT_ERROR

    def __init__(self, *args: object) -> None:
        super().__init__(*args)
        self.args = args

    def message(self) -> str:
        doc = (type(self).__doc__ or "{0}").strip().splitlines()[0]
        try:
            return doc.format(*self.args)
        except (IndexError, KeyError):
            return " ".join(str(a) for a in self.args) or doc

    def __str__(self) -> str:
        return self.message()


class UsageError(BackshiftError):
    """{0}"""


class RepositoryNotFound(BackshiftError):
    """no repository at {0} (create one with 'backshift -r {0} init')"""

    exit_code = 3
    summary = "no repository at the given path"

    def message(self) -> str:
        """Suggest init only where init would work: a new path or an empty directory."""
        import os

        path = self.args[0] if self.args else ""
        if os.path.isdir(path) and os.listdir(path):
            return (f"no repository at {path}: the directory holds no catalog.sqlite3 "
                    "(is -r the right path?)")
        if os.path.lexists(path) and not os.path.isdir(path):
            return f"no repository at {path}: it is not a directory (is -r the right path?)"
        return super().message()


class RepositoryExists(BackshiftError):
    """cannot init {0}: {1}"""

    exit_code = 4
    summary = "`init`: the target exists and is not an empty directory"


class RepositoryLocked(BackshiftError):
    """repository {0} is locked: {1} (--lock-wait SECONDS on save, expire, check waits)"""

    exit_code = 5
    summary = "the repository is locked by another process"


class CatalogTooNew(BackshiftError):
    """catalog {0} has schema {1}, newer than this backshift knows ({2}); upgrade backshift"""

    exit_code = 6
    summary = "the catalog's schema is newer than this backshift"


class NotACatalog(BackshiftError):
    """{0} is not a usable backshift catalog: {1}"""

    exit_code = 7
    summary = ("the catalog is damaged or not a backshift catalog (README: restoring the "
               "catalog from its copy)")


class CatalogDamaged(NotACatalog):
    """save {0}: the catalog is damaged: {1}; restore it from a copy in {2} (README: \
'Restoring the catalog from its copy')"""


class NoSuchSave(BackshiftError):
    """no save {0} in this repository (see 'backshift saves')"""

    exit_code = 8
    summary = "no such save"


class NoSuchPath(BackshiftError):
    """{0} is not in save {1}"""

    exit_code = 9
    summary = "no such path in the save"


class NothingMatches(NoSuchPath):
    """nothing matches {0} in {1}"""


class DataDamaged(BackshiftError):
    """{0}"""

    exit_code = 10
    summary = "data damaged (missing or corrupt chunks)"


class QueryDenied(BackshiftError):
    """query refused: {0}"""

    exit_code = 11
    summary = "query refused (the `sql` command's read-only rules)"


class QueryTimeout(BackshiftError):
    """query stopped: it ran longer than {0} s (raise --timeout, or narrow the query)"""

    exit_code = 20
    summary = "`sql`: the query ran past its `--timeout` and was stopped"


class QueryFailed(BackshiftError):
    """query failed: {0}"""

    exit_code = 21
    summary = "`sql`: the query failed (syntax error, missing `--param`, value too big)"


class RepositoryIOError(BackshiftError):
    """{0}: {1}"""

    exit_code = 12
    summary = "repository I/O error (disk full, permission denied, ...)"


class ReaderDied(BackshiftError):
    """a reader process died (killed, out of memory?); the save stopped, marked interrupted"""


class NothingToSave(BackshiftError):
    """nothing to save: {0}; no save was recorded"""


class ChunkCorrupt(DataDamaged):
    """chunk {0} is damaged: {1}"""


class ChunkMissing(DataDamaged):
    """chunk {0} is missing from the repository"""


class ReferencedChunksMissing(BackshiftError):
    """{0} chunk(s) kept saves need are missing (first {1}); nothing deleted; run check"""

    exit_code = 13
    summary = "expire: a chunk that a kept save needs is missing; nothing was deleted (run `check`)"


class CheckFoundDamage(DataDamaged):
    """check found {0} problem(s); see above"""


class LegacyDirInvalid(BackshiftError):
    """{0} is not a backshift 1.x save directory (no summaries/ and files/ in it)"""

    exit_code = 25
    summary = "`import-legacy`: the directory is not a backshift 1.x save directory"


class MountUnavailable(BackshiftError):
    """mount needs the optional FUSE support: pip install 'backshift[mount]' ({0})"""


class MountFailed(BackshiftError):
    """cannot mount at {0}: {1}"""


class RemoteUnreachable(BackshiftError):
    """cannot reach {0}: {1}"""

    exit_code = 30
    summary = "`ssh://`: the host cannot be reached (ssh could not connect)"


class RemoteAuthFailed(BackshiftError):
    """ssh to {0} was refused: {1}"""

    exit_code = 31
    summary = "`ssh://`: ssh authentication or host key verification failed"


class RemoteCommandNotFound(BackshiftError):
    """cannot run '{1} serve' on {0}: {2} (install backshift there, or use --remote-path)"""

    exit_code = 32
    summary = "`ssh://`: the remote `backshift serve` command was not found"


class RemoteVersionMismatch(BackshiftError):
    """{0}"""

    exit_code = 33
    summary = "`ssh://`: client and server cannot talk (protocol version or garbled stream)"


class RemoteProtocolError(RemoteVersionMismatch):
    """{0}"""


class RemoteConnectionLost(BackshiftError):
    """connection to {0} lost: {1}"""

    exit_code = 34
    summary = "`ssh://`: the connection to the server was cut before the command finished"


class RemoteRefused(BackshiftError):
    """the server refused: {0}"""

    exit_code = 35
    summary = "`ssh://`: the server refused (outside --restrict-to-path, or --append-only)"


class ChunkRejected(BackshiftError):
    """the server rejected uploaded chunk {0}: its body is not data whose SHA-256 is its name"""

    exit_code = 36
    summary = "`ssh://` save: the server rejected an uploaded chunk (body does not match name)"


class RemoteNotSupported(BackshiftError):
    """{0}"""


class RemoteError(BackshiftError):
    """{0}"""


class ObjectStoreUnreachable(BackshiftError):
    """cannot reach the object store at {0} ({1}): {2}, {3} attempt(s); check AWS_ENDPOINT_URL"""

    exit_code = 40
    summary = "object store: the endpoint cannot be reached (down, wrong AWS_ENDPOINT_URL)"


class ObjectStoreDenied(BackshiftError):
    """object store refused {0}: {1}; check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY"""

    exit_code = 41
    summary = "object store: credentials refused or access denied"


class ObjectStoreBucketMissing(BackshiftError):
    """bucket {0} does not exist at {1}; create it first (backshift never creates buckets)"""

    exit_code = 42
    summary = "object store: the bucket does not exist"


class ObjectStoreFailed(BackshiftError):
    """object store: {1} {0} failed after {2} attempt(s): {3}"""

    exit_code = 43
    summary = "object store: a request failed after its retries (throttling, 5xx, timeouts)"


def exit_code_table() -> list[tuple[int, str]]:
    """Every documented exit code with its meaning, lowest first (README and --help use it)."""
    rows = {
        EXIT_OK: "success",
        EXIT_WARNING: "finished with warnings (files skipped, members damaged); see stderr",
        EXIT_ERROR: "error (bad usage, unexpected failure)",
        EXIT_INTERRUPTED: "interrupted by Ctrl-C / SIGINT (work done so far is committed)",
        EXIT_TERMINATED: "`save` stopped by SIGTERM (work done so far is committed)",
        EXIT_BROKEN_PIPE: "stdout closed early (e.g. piped into head): quiet, as tar",
    }
    for cls in _all_subclasses(BackshiftError):
        if cls.exit_code not in rows:
            rows[cls.exit_code] = cls.__dict__.get("summary") or _describe(cls)
    return sorted(rows.items())


def _describe(cls: type[BackshiftError]) -> str:
    name = cls.__name__
    words = [name[0]]
    for ch in name[1:]:
        if ch.isupper():
            words.append(" ")
        words.append(ch.lower())
    return "".join(words)


def _all_subclasses(cls: type) -> list[type]:
    out = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out
