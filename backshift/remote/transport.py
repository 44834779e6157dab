"""How frames travel: the system ssh running `backshift serve`, or a thread over pipes (tests)."""

from __future__ import annotations

import os
import re
import select
import shlex
import signal
import subprocess
import threading
from collections import deque

from ..errors import (
    BackshiftError,
    RemoteAuthFailed,
    RemoteCommandNotFound,
    RemoteConnectionLost,
    RemoteUnreachable,
    RemoteVersionMismatch,
    UsageError,
)
from .url import SshUrl

DEFAULT_RSH = "ssh"
DEFAULT_REMOTE_PATH = "backshift"

# What OpenSSH prints when it reached the host but may not log in (exit status 255 either way).
AUTH_FAILURE = re.compile(rb"Permission denied|Too many authentication failures|"
                          rb"Host key verification failed|Authentication failed|"
                          rb"no matching host key type|REMOTE HOST IDENTIFICATION HAS CHANGED")
CLOSE_WAIT_S = 10.0  # after the client closes the server's stdin, serve ends at once


def ssh_argv(url: SshUrl, remote_path: str, rsh: str) -> list[str]:
    """`$BACKSHIFT_RSH [-p PORT] [USER@]HOST $BACKSHIFT_REMOTE_PATH serve`, split like a shell."""
    try:
        program = shlex.split(rsh)
    except ValueError as e:
        raise UsageError(f"BACKSHIFT_RSH {rsh!r}: {e}") from None
    if not program:
        raise UsageError("BACKSHIFT_RSH is empty: set it to an ssh command, e.g. 'ssh -i KEY'")
    port = ["-p", str(url.port)] if url.port is not None else []
    return [*program, *port, url.destination, remote_path, "serve"]


class SshTransport:
    """An ssh process whose stdin/stdout carry the frames; its stderr is relayed.

    Until the server has answered the hello, stderr lines are held back: if the connection
    fails they explain it (unreachable, refused login, command not found) in one line.
    """

    def __init__(self, url: SshUrl, remote_path: str, rsh: str, err,
                 keep_sigint: bool = False) -> None:
        self.host = url.host
        self.remote_path = remote_path
        self.err = err
        self.live = False
        self.held: list[bytes] = []
        self.tail: deque[bytes] = deque(maxlen=5)
        self.lock = threading.Lock()
        argv = ssh_argv(url, remote_path, rsh)
        # KEEP_SIGINT (a save): ssh starts with SIGINT ignored, which OpenSSH keeps, so a
        # Ctrl-C at the terminal stops the save (it commits what is saved) and not the
        # connection it commits through
        old_sigint = None
        if keep_sigint and threading.current_thread() is threading.main_thread():
            old_sigint = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=subprocess.PIPE)
        except OSError as e:
            raise RemoteUnreachable(url.host, f"cannot run {argv[0]!r} (BACKSHIFT_RSH): "
                                              f"{e.strerror or e}") from None
        finally:
            if old_sigint is not None:
                signal.signal(signal.SIGINT, old_sigint)
        self.reader = self.proc.stdout
        self.writer = self.proc.stdin
        self.relay = threading.Thread(target=self._relay_stderr, daemon=True)
        self.relay.start()

    def _relay_stderr(self) -> None:
        for line in self.proc.stderr:
            with self.lock:
                if line.strip():
                    self.tail.append(line.strip())
                if self.live:
                    self._emit(b"remote: " + line)
                elif len(self.held) < 100:
                    self.held.append(line)

    def _emit(self, data: bytes) -> None:
        try:
            self.err.write(data)
            self.err.flush()
        except (OSError, ValueError):
            pass

    def connected(self) -> None:
        """The hello succeeded: show what ssh said so far, relay what comes from now on."""
        with self.lock:
            self.live = True
            for line in self.held:
                self._emit(line)
            self.held.clear()

    def lost(self, detail: str) -> BackshiftError:
        """The error that explains a broken connection, after ssh has ended."""
        self._end(kill=False)
        rc = self.proc.returncode
        with self.lock:
            said = self.tail[-1].decode("utf-8", "replace") if self.tail else ""
            everything = b"\n".join(self.tail)
        if not self.live:
            if rc in (126, 127):
                return RemoteCommandNotFound(self.host, self.remote_path,
                                             said or f"the remote shell exited with {rc}")
            if rc == 255 and AUTH_FAILURE.search(everything):
                return RemoteAuthFailed(self.host, said)
            if rc == 255:
                return RemoteUnreachable(self.host, said or "ssh exited with status 255")
            if rc is not None and rc >= 0:  # it ran, but is no serve that answers (too old?)
                return RemoteVersionMismatch(
                    f"'{self.remote_path} serve' on {self.host} ended before the handshake "
                    f"(exit status {rc}{': ' + said if said else ''}); is the backshift "
                    "there a release without serve?")
        status = (f"ssh killed by signal {-rc}" if rc is not None and rc < 0
                  else f"ssh exited with status {rc}")
        return RemoteConnectionLost(self.host, f"{detail} ({status}{': ' + said if said else ''})")

    def close(self, failed: bool = False) -> None:
        self._end(kill=failed)
        self.proc.stdout.close()
        if not self.relay.is_alive():
            self.proc.stderr.close()

    def _end(self, kill: bool) -> None:
        try:
            self.writer.close()
        except OSError:
            pass
        if kill and self.proc.poll() is None:
            self.proc.terminate()
        try:
            self._wait(CLOSE_WAIT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.relay.join(timeout=5)

    def _wait(self, timeout: float) -> None:
        """proc.wait(TIMEOUT), woken by the exit itself through a pidfd where there is one:
        Popen.wait(timeout) polls with doubling sleeps, which found ssh's ~25 ms wind-down
        after the last answer up to ~10 ms late (at the end of every remote command)."""
        if self.proc.returncode is None and hasattr(os, "pidfd_open"):
            try:
                fd = os.pidfd_open(self.proc.pid)
            except OSError:
                pass
            else:
                try:
                    select.select([fd], [], [], timeout)  # readable once ssh has exited
                finally:
                    os.close(fd)
                timeout = 0.5
        self.proc.wait(timeout=timeout)


class PipeTransport:
    """`serve` in a thread over two os.pipe pairs: the protocol without ssh, for fast tests.

    SERVE(reader, writer) runs the server side; it returns when the client closes its end.
    """

    host = "pipe"

    def __init__(self, serve) -> None:
        c2s_r, c2s_w = os.pipe()
        s2c_r, s2c_w = os.pipe()
        self.reader = open(s2c_r, "rb")
        self.writer = open(c2s_w, "wb")
        self.result: list[object] = []

        def run() -> None:
            with open(c2s_r, "rb") as inp, open(s2c_w, "wb") as out:
                try:
                    self.result.append(serve(inp, out))
                except BaseException as e:  # noqa: BLE001 - kept for the test to see
                    self.result.append(e)

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def connected(self) -> None:
        pass

    def lost(self, detail: str) -> BackshiftError:
        self._end()
        return RemoteConnectionLost(self.host, detail)

    def close(self, failed: bool = False) -> None:
        if failed:  # a server blocked writing to us gets EPIPE and ends
            self.reader.close()
        self._end()
        self.reader.close()

    def _end(self) -> None:
        try:
            self.writer.close()
        except OSError:
            pass
        self.thread.join(timeout=30)
