"""`ssh://[USER@]HOST[:PORT]/ABSOLUTE/PATH`: recognise and parse a remote repository URL."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UsageError

PREFIX = "ssh://"


@dataclass(frozen=True)
class SshUrl:
    user: str | None
    host: str
    port: int | None
    path: str

    @property
    def destination(self) -> str:
        """The `[USER@]HOST` argument for ssh."""
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.port is not None else ""
        user = f"{self.user}@" if self.user else ""
        return f"{PREFIX}{user}{host}{port}{self.path}"


def parse(url: str) -> SshUrl:
    """Split an ssh:// URL; a relative path, an empty host or a bad port is a UsageError."""
    if not url.startswith(PREFIX):
        raise UsageError(f"{url}: not an ssh:// URL")
    rest = url[len(PREFIX):]
    slash = rest.find("/")
    if slash < 0:
        raise UsageError(f"{url}: no repository path: use ssh://[USER@]HOST[:PORT]/ABSOLUTE/PATH")
    authority, path = rest[:slash], rest[slash:]
    user, _, hostport = authority.rpartition("@")
    if "@" in authority and not user:
        raise UsageError(f"{url}: empty user name before '@'")
    host, port = _split_port(url, hostport)
    if not host:
        raise UsageError(f"{url}: no host name: use ssh://[USER@]HOST[:PORT]/ABSOLUTE/PATH")
    if host.startswith("-") or any(c.isspace() for c in host + user):
        raise UsageError(f"{url}: {host!r} is not a host name")
    first = path.split("/")[1] if path != "/" else ""
    if first in ("~", ".", "..") or first.startswith("~") or path == "/":
        raise UsageError(f"{url}: the repository path must be absolute, "
                         f"as in ssh://{authority}/srv/backups/repo")
    return SshUrl(user=user or None, host=host, port=port, path=path)


def _split_port(url: str, hostport: str) -> tuple[str, int | None]:
    if hostport.startswith("["):  # [IPv6]:port
        end = hostport.find("]")
        if end < 0:
            raise UsageError(f"{url}: unclosed '[' in the host")
        host, tail = hostport[1:end], hostport[end + 1:]
        if tail and not tail.startswith(":"):
            raise UsageError(f"{url}: unexpected {tail!r} after the host")
        text = tail[1:] if tail else None
    else:
        host, sep, text = hostport.partition(":")
        text = text if sep else None
    if text is None:
        return host, None
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 65535:
        raise UsageError(f"{url}: bad port {text!r}: want a number from 1 to 65535")
    return host, int(text)
