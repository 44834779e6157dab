"""A real OpenSSH server on 127.0.0.1 for the ssh:// tests: throwaway keys, one per session.

Import the fixtures into a test module (`from sshd import sshd, ssh_env`). Two client keys
are authorized: `client_key` may run anything, `forced_key` only the forced command
`backshift serve --restrict-to-path <allowed> --append-only` (as an admin would set it up).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD = "/usr/sbin/sshd"
BACKSHIFT = str(Path(sys.executable).parent / "backshift")


@dataclass(frozen=True)
class Sshd:
    port: int
    dir: Path
    client_key: Path
    forced_key: Path
    allowed: Path  # the forced key's --restrict-to-path

    def rsh(self, key: Path | None = None) -> str:
        return (f"ssh -i {key or self.client_key} -o IdentitiesOnly=yes "
                "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                "-o BatchMode=yes -o LogLevel=ERROR")

    def url(self, path: Path | str) -> str:
        return f"ssh://127.0.0.1:{self.port}{path}"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f",
                    str(path)], check=True)
    return (path.parent / (path.name + ".pub")).read_text().strip()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory) -> Sshd:
    d = tmp_path_factory.mktemp("sshd")
    os.chmod(d, 0o700)
    _keygen(d / "host_key")
    client = _keygen(d / "client_key")
    forced = _keygen(d / "forced_key")
    allowed = d / "allowed"
    allowed.mkdir()
    (d / "authorized_keys").write_text(
        f"{client}\n"
        f'command="{BACKSHIFT} serve --restrict-to-path {allowed} --append-only",restrict '
        f"{forced}\n")
    port = _free_port()
    (d / "sshd_config").write_text(f"""\
Port {port}
ListenAddress 127.0.0.1
HostKey {d / "host_key"}
AuthorizedKeysFile {d / "authorized_keys"}
PidFile {d / "sshd.pid"}
StrictModes no
UsePAM no
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
MaxStartups 50
LogLevel ERROR
Subsystem sftp internal-sftp
""")
    if os.geteuid() == 0:  # a root sshd needs its privilege separation directory
        os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    proc = subprocess.Popen([SSHD, "-D", "-f", str(d / "sshd_config"), "-E",
                             str(d / "sshd.log")])
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("sshd did not start: "
                                   + (d / "sshd.log").read_text(errors="replace")) from None
            time.sleep(0.05)
    yield Sshd(port=port, dir=d, client_key=d / "client_key", forced_key=d / "forced_key",
               allowed=allowed)
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def ssh_env(sshd, monkeypatch) -> dict[str, str]:
    """BACKSHIFT_RSH and BACKSHIFT_REMOTE_PATH for the test sshd, in os.environ and returned."""
    env = {"BACKSHIFT_RSH": sshd.rsh(), "BACKSHIFT_REMOTE_PATH": BACKSHIFT}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return env
