"""`gateway serve` with server.workers > 1: N gateway processes on the same ports, one parent watching them.

Python runs one request's Python code at a time per process; a process per core is how the
gateway uses every core. The parent:

- reserves the HTTP, gRPC and health ports (bound with SO_REUSEPORT, never listening, so a
  port 0 becomes one port every worker shares and the kernel spreads connections over the
  workers' listeners);
- starts the embedded redis-server once (when no predictions.redis_url is set) and hands
  its socket to every worker, so the prediction log, the rollout state, rate limits and the
  feedback store are one, exactly as between replicas;
- points prometheus_client's multiprocess mode at a fresh directory, so any worker's
  /metrics shows the sum of all workers;
- splits the cores' threads: each worker gets cores / workers ONNX Runtime and preprocess
  threads unless runtime.* says otherwise;
- prints the banner once every worker serves, restarts a worker that dies, and on SIGTERM or
  SIGINT stops every worker (each drains: HTTP, gRPC, batchers, prediction log), then saves
  and stops the embedded Redis.

Each worker spools the prediction log to its own file while Redis is unreachable (worker 0
in predictions.spool_dir itself, as a single process does; worker i in spool_dir/worker-i),
and replays it when Redis is back or at the next start with as many workers.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import tempfile
import time
from collections.abc import Callable
from multiprocessing.connection import wait
from pathlib import Path

from gateway.config import Settings
from gateway.monitoring.metrics import MULTIPROCESS_DIR_ENV
from gateway.stop_signals import StopSignals

log = logging.getLogger("gateway.supervisor")

ARM_TIMEOUT_S = 30.0
"""How long a stop waits for a worker that is still starting its interpreter to catch stop signals."""
STOP_TIMEOUT_S = 40.0
"""How long a worker may take to drain (uvicorn and gRPC each allow 10 s, then the log is flushed)."""
RESTART_DELAY_S = 1.0


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound to ``port`` (0: a free one) with SO_REUSEPORT and not listening: it keeps the port
    for the workers' listeners without receiving any of their connections."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def worker_settings(settings: Settings, index: int, ports: dict[str, int], redis_url: str) -> Settings:
    """What worker ``index`` runs with: the shared ports and Redis, its own spool, its share of the cores; the
    skew gauges' background check in the first worker only (they all read the same log)."""
    workers = settings.server.effective_workers
    share = max(1, (os.cpu_count() or 1) // workers)
    runtime = settings.runtime
    predictions = settings.predictions
    return dataclasses.replace(
        settings,
        server=dataclasses.replace(settings.server, **ports, reuse_port=True, workers=1),
        predictions=dataclasses.replace(
            predictions,
            redis_url=redis_url,
            spool_dir=predictions.spool_dir if index == 0 else predictions.spool_dir / f"worker-{index}",
        ),
        runtime=dataclasses.replace(
            runtime,
            onnx_threads=runtime.onnx_threads or share,
            preprocess_workers=runtime.preprocess_workers or share,
        ),
        skew=dataclasses.replace(settings.skew, background_check=settings.skew.background_check and index == 0),
    )


ARMED = "armed"
"""A worker's first message: its stop signals are caught from now on (the parent's SIGTERM will drain it)."""


def _worker_main(settings: Settings, index: int, ready: multiprocessing.Queue) -> None:
    """A worker process: serve until SIGTERM/SIGINT, telling the parent when a stop signal would be caught,
    then once the ports are served."""
    with StopSignals() as stop:
        ready.put((index, ARMED))
        import asyncio
        import sys

        from gateway.cli import START_ERRORS, configure_logging, run_gateway
        from gateway.ingress.http_server import event_loop_factory

        configure_logging(settings)
        try:
            with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
                runner.run(run_gateway(settings, on_ready=lambda: ready.put((index, os.getpid())), stop=stop))
        except START_ERRORS as exc:  # the same line and exit code as a single process gives
            print(f"gateway: error: {exc}", file=sys.stderr, flush=True)
            sys.exit(2)


class Supervisor:
    """Starts, watches and stops the workers (see the module docstring)."""

    def __init__(self, settings: Settings, print_banner: Callable[[Settings, int, int], None]) -> None:
        self._settings = settings
        self._print_banner = print_banner
        self._workers = settings.server.effective_workers
        self._context = multiprocessing.get_context("spawn")
        self._ready: multiprocessing.Queue = self._context.Queue()
        self._processes: dict[int, multiprocessing.Process] = {}
        self._armed: set[int] = set()
        """Workers (by index) whose stop signals are caught: a SIGTERM now drains them."""
        self._stopping = False
        self._embedded = None

    def run(self) -> int:
        server = self._settings.server
        reserved = {"http_port": reserve_port(server.host, server.http_port)}
        reserved["grpc_port"] = reserve_port(server.host, server.grpc_port)
        if server.health_port:
            reserved["health_port"] = reserve_port(server.host, server.health_port)
        ports = {name: sock.getsockname()[1] for name, sock in reserved.items()}
        metrics_dir = Path(tempfile.mkdtemp(prefix="gateway-metrics-"))
        os.environ[MULTIPROCESS_DIR_ENV] = str(metrics_dir)  # inherited by every worker, read at their import
        previous = {sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            redis_url = self._settings.predictions.redis_url or self._start_embedded_redis()
            settings = [worker_settings(self._settings, i, ports, redis_url) for i in range(self._workers)]
            for index in range(self._workers):
                self._start(settings[index], index)
            failed = self._await_ready()
            if failed is not None:
                return failed
            print(f"gateway: {self._workers} workers (pids {', '.join(str(p.pid) for p in self._procs())})")
            if server.health_port:
                print(f"gateway: health on http://{server.host}:{ports['health_port']} (/healthz /readyz /metrics)")
            self._print_banner(settings[0], ports["http_port"], ports["grpc_port"])
            self._watch(settings)
            return 0
        finally:
            self._stop_all()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self._embedded is not None:
                self._embedded.close()
            for sock in reserved.values():
                sock.close()
            os.environ.pop(MULTIPROCESS_DIR_ENV, None)
            shutil.rmtree(metrics_dir, ignore_errors=True)
            log.info("stopped")

    def _start_embedded_redis(self) -> str:
        from gateway.monitoring.stores import EmbeddedRedis

        self._embedded = EmbeddedRedis(self._settings.predictions.embedded_db)
        return f"unix://{self._embedded.socket_path}"

    def _procs(self) -> list[multiprocessing.Process]:
        return [self._processes[i] for i in sorted(self._processes)]

    def _start(self, settings: Settings, index: int) -> None:
        process = self._context.Process(
            target=_worker_main, args=(settings, index, self._ready), name=f"gateway-worker-{index}"
        )
        self._armed.discard(index)
        process.start()
        self._processes[index] = process

    def _await_ready(self) -> int | None:
        """Wait until every worker serves; the exit code to give if one died first (or a stop signal came)."""
        waiting = set(self._processes)
        while waiting and not self._stopping:
            waiting.discard(self._receive())
            dead = [i for i in waiting if not self._processes[i].is_alive()]
            if dead:
                code = self._processes[dead[0]].exitcode
                log.error("worker %d exited (code %s) before serving", dead[0], code)
                return code if code and code > 0 else 1
        return 0 if self._stopping else None

    def _receive(self) -> int | None:
        """One worker's message within 0.2 s: an ARMED one is recorded; the index of a worker now serving."""
        with contextlib.suppress(Exception):
            index, message = self._ready.get(timeout=0.2)
            if message != ARMED:
                return index
            self._armed.add(index)
        return None

    def _watch(self, settings: list[Settings]) -> None:
        """Until a stop signal: a worker that exits is replaced (its live gauges are dropped from /metrics)."""
        from prometheus_client import multiprocess

        while not self._stopping:
            sentinels = {p.sentinel: i for i, p in self._processes.items()}
            for sentinel in wait(list(sentinels), timeout=0.5):
                if self._stopping:
                    break
                index = sentinels[sentinel]
                dead = self._processes[index]
                dead.join()
                multiprocess.mark_process_dead(dead.pid)
                log.error("worker %d (pid %d) exited with code %s; restarting it", index, dead.pid, dead.exitcode)
                time.sleep(RESTART_DELAY_S)
                self._start(settings[index], index)

    def _on_signal(self, signum: int, _frame: object) -> None:
        if not self._stopping:
            log.info("%s: stopping %d workers", signal.Signals(signum).name, len(self._processes))
        self._stopping = True

    def _await_armed(self) -> None:
        """Until every live worker catches stop signals (a SIGTERM before that would kill it undrained)."""
        deadline = time.monotonic() + ARM_TIMEOUT_S
        while time.monotonic() < deadline:
            unarmed = [i for i, p in self._processes.items() if i not in self._armed and p.is_alive()]
            if not unarmed:
                return
            self._receive()

    def _stop_all(self) -> None:
        """SIGTERM every worker (each drains), then wait; a worker still running after STOP_TIMEOUT_S is killed."""
        self._await_armed()
        for process in self._processes.values():
            if process.is_alive():
                os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        for process in self._processes.values():
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                log.error("worker pid %d did not stop within %.0f s; killing it", process.pid, STOP_TIMEOUT_S)
                process.kill()
                process.join()
