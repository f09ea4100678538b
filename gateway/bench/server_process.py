"""Start and stop a real `gateway serve` process on a free loopback port (benchmarks and tests)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

BANNER = re.compile(r"gateway: serving (https?)://([^\s\"]+):(\d+)")
GRPC_BANNER = re.compile(r"gateway: gRPC on ([^\s\"]+:\d+)")
"""The start-up lines, printed or inside a JSON log line (``[logging] format = "json"``)."""
START_TIMEOUT_S = 60
OUTPUT_DRAIN_S = 5.0
"""How long ``stop`` waits for the end of the output once the process has exited (a child that outlives it
could hold the pipe open)."""


@dataclass
class GatewayProcess:
    process: subprocess.Popen
    base_url: str
    grpc_target: str
    """host:port of the gRPC services."""
    output: list[str] = field(default_factory=list)
    """Everything the process printed so far (drained continuously so it never blocks)."""
    reader: threading.Thread | None = None
    """The thread that drains the output: ``stop`` waits for it, so that ``output`` ends with the last lines."""

    def alive(self) -> bool:
        return self.process.poll() is None

    def cpu_seconds(self) -> float:
        """User + system CPU the gateway has used so far: the process, its workers and the children that have
        exited, not its embedded redis-server (the prediction log's own cost) nor that server's children."""
        return cpu_seconds_of(gateway_and_redis_pids(self.process.pid)[0])

    def stop(self, timeout_s: float = 20) -> int:
        """SIGTERM, then SIGKILL if it has not exited within ``timeout_s``; returns the exit code."""
        self.process.terminate()
        try:
            code = self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        if self.reader is not None:  # the last lines may still be in the pipe
            self.reader.join(timeout=OUTPUT_DRAIN_S)
        return code


def process_tree(root: int) -> list[int]:
    """``root`` and every live descendant (read from /proc/<pid>/task/<tid>/children)."""
    pids, index = [root], 0
    while index < len(pids):
        tasks = Path(f"/proc/{pids[index]}/task")
        for task in tasks.iterdir() if tasks.exists() else ():
            try:
                pids.extend(int(child) for child in (task / "children").read_text().split())
            except OSError:
                continue
        index += 1
    return pids


def cpu_seconds_of(pids: list[int]) -> float:
    """User and system CPU of ``pids`` and of their children that have exited (so a total never falls when a
    child ends)."""
    total, tick = 0.0, os.sysconf("SC_CLK_TCK")
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(value) for value in fields[11:15]) / tick  # utime, stime, cutime, cstime
    return total


def gateway_and_redis_pids(root: int) -> tuple[list[int], list[int]]:
    """The processes of the gateway started as ``root`` (itself, its workers), and its embedded redis-servers:
    the parent starts redis-server as its child, and a background save forks the server again; both are the
    prediction log's cost, not the gateway's. A fork's CPU reaches its server's once it is reaped."""
    tree = process_tree(root)
    redis = {pid for pid in tree if _stat_of(pid)[0] == "redis-server"}
    servers = [pid for pid in redis if _stat_of(pid)[1] not in redis]
    redis_tree = {pid for server in servers for pid in process_tree(server)}
    return [pid for pid in tree if pid not in redis_tree], servers


def _stat_of(pid: int) -> tuple[str, int]:
    """(command name, parent pid) of a live process; ("", 0) when it has gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "", 0
    name, rest = text[text.index("(") + 1 :].rsplit(")", 1)
    return name, int(rest.split()[1])


def spawn_gateway(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, workers: int | None = 1
) -> subprocess.Popen:
    """`gateway serve` on free loopback ports with ARGS, just started (its output: one text pipe, stderr in it).

    Unless ``env`` says otherwise, its embedded Redis and log spool live in a fresh temporary directory.
    ``workers``: server.workers (1: one process, as the benchmarks and most tests compare; 0: one per core;
    None: whatever the gateway's configuration says).
    """
    state = Path(tempfile.mkdtemp(prefix="gateway-state-"))
    env = {
        "GATEWAY_PREDICTIONS_EMBEDDED_DB": str(state / "redis" / "gateway.db"),
        "GATEWAY_PREDICTIONS_SPOOL_DIR": str(state / "spool"),
        **({} if workers is None else {"GATEWAY_SERVER_WORKERS": str(workers)}),
        **(env or {}),
    }
    command = ["serve", "--host", "127.0.0.1", "--http-port", "0", "--grpc-port", "0", *args]
    return subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", *command],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=cwd,
        env={**os.environ, **env},
    )


def start_gateway(
    args: list[str], *, env: dict[str, str] | None = None, cwd: Path | None = None, workers: int | None = 1
) -> GatewayProcess:
    """Run `gateway serve` (as ``spawn_gateway``) and return once it printed its addresses."""
    process = spawn_gateway(args, env=env, cwd=cwd, workers=workers)
    killer = threading.Timer(START_TIMEOUT_S, process.kill)
    killer.start()
    output: list[str] = []
    grpc_target = ""
    try:
        for line in process.stdout:
            output.append(line)
            grpc_match = GRPC_BANNER.search(line)
            if grpc_match:
                grpc_target = grpc_match.group(1)
            match = BANNER.search(line)
            if match:
                scheme, host, port = match.groups()
                break
        else:
            raise RuntimeError("gateway exited before serving:\n" + "".join(output))
    finally:
        killer.cancel()
    reader = threading.Thread(target=lambda: output.extend(process.stdout), daemon=True)
    reader.start()
    return GatewayProcess(process, f"{scheme}://{host}:{port}", grpc_target, output, reader)
