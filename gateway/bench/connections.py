"""Connections that cannot exhaust the gateway: one identity holds thousands of stalled connections and
storms new TLS handshakes; another identity's requests must still succeed, at a latency near the quiet one.

    python -m gateway.bench.connections [--stalled 2000] [--storm 8] [--requests 200] [--rounds 6] [--pin]
        [--workers 1] [--set KEY=VALUE ...]

The victim ("operator") opens a new mTLS connection per request (handshake included) and asks
GET /api/v1/models, sequentially: first on a quiet gateway, then while an attacker process
("app") keeps ``--stalled`` connections open (half bare TCP that send three bytes of a ClientHello
and stop, half finished handshakes that send half a request and stop; each reopened when the
gateway drops it) and ``--storm`` loops of new handshakes that close at once. The attacker connects
from its own loopback address (``--attacker-address``, 127.0.0.2), the victim from 127.0.0.1, as two
clients on the network would. Printed: the victim's p50 / p99 and errors in both phases and their
ratio, its requests slower than 1 s (when, since the attack began), the load average, what the gateway
did to the attacker's connections, the CPU share of the gateway, the victim and the attacker (each
from /proc), and at the end in how many rounds the target was met. ``--pin`` puts the gateway on CPU 0
and both load generators on CPU 1, so the attacker's own work does not take the gateway's core.
``--workers``: the gateway's ``server.workers`` (1 by default, one process as the earlier
rounds measured; 0: one per core, what ``gateway serve`` does unless told otherwise, the processes sharing
the port with SO_REUSEPORT); the gateway's CPU and its wait for a CPU are then summed over its processes.
``--set limits.accept_rate_per_address=0`` (say) runs the gateway with a setting changed (as GATEWAY_*
variables).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import statistics
import tempfile
import time
from pathlib import Path

from gateway.bench.server_process import start_gateway
from gateway.security.pki import PkiPaths, init_pki
from gateway.security.tls import client_context

SLOW_MS = 1000.0
TARGET_RATIO = 2.0


async def _victim(
    host: str, port: int, pki: PkiPaths, requests: int, since: float | None = None
) -> tuple[list[float], int, list[tuple[float, ...]]]:
    """Latencies, errors, and for each request slower than SLOW_MS or failed: (seconds since ``since``, ms to
    connect, ms of the TLS handshake, ms to the answer; -1 where that step failed)."""
    context = client_context(pki.ca_cert, pki.client_cert("operator"), pki.client_key("operator"))
    latencies, errors, slow = [], 0, []
    for _ in range(requests):
        marks = [time.perf_counter()]
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
            marks.append(time.perf_counter())
            await asyncio.wait_for(writer.start_tls(context, server_hostname="localhost"), 10)
            marks.append(time.perf_counter())
            writer.write(b"GET /api/v1/models HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            answer = await asyncio.wait_for(reader.read(), 10)
            marks.append(time.perf_counter())
            writer.close()
            ok = answer.startswith(b"HTTP/1.1 200 ")
        except (OSError, TimeoutError):
            ok = False
        errors += not ok
        took_ms = (time.perf_counter() - marks[0]) * 1000
        if ok:
            latencies.append(took_ms)
        if since is not None and (not ok or took_ms > SLOW_MS):
            steps = [round((b - a) * 1000) for a, b in zip(marks, marks[1:], strict=False)]
            slow.append((round(marks[0] - since, 1), *steps, *[-1] * (3 - len(steps))))
    return latencies, errors, slow


async def _hold(host: str, port: int, context, counts: dict[str, int], source: str) -> None:
    """One stalled connection, reopened whenever the gateway drops it."""
    while True:
        try:
            if context is None:
                reader, writer = await asyncio.open_connection(host, port, local_addr=(source, 0))
                writer.write(b"\x16\x03\x01")
            else:
                reader, writer = await asyncio.open_connection(host, port, ssl=context, local_addr=(source, 0))
                writer.write(b"GET /api/v1/models HTTP/1.1\r\nhost: x\r\nx-slow: ")
            counts["opened"] += 1
            await reader.read()
            counts["dropped by the gateway"] += 1
            writer.close()
        except (OSError, TimeoutError):
            counts["failed to open"] += 1
            await asyncio.sleep(0.1)  # paces reconnects of a refused attacker


async def _storm(host: str, port: int, context, counts: dict[str, int], source: str) -> None:
    while True:
        try:
            _, writer = await asyncio.open_connection(host, port, ssl=context, local_addr=(source, 0))
            counts["handshakes"] += 1
            writer.close()
        except OSError:
            counts["failed to open"] += 1
            await asyncio.sleep(0)  # a refusal comes back at once: let the other loops run


async def _attack(host: str, port: int, pki: PkiPaths, stalled: int, storm: int, source: str, stop) -> dict[str, int]:
    context = client_context(pki.ca_cert, pki.client_cert("app"), pki.client_key("app"))
    counts = {"opened": 0, "dropped by the gateway": 0, "failed to open": 0, "handshakes": 0}
    tasks = [asyncio.create_task(_hold(host, port, None if i % 2 else context, counts, source)) for i in range(stalled)]
    tasks += [asyncio.create_task(_storm(host, port, context, counts, source)) for _ in range(storm)]
    while not stop.is_set():
        await asyncio.sleep(0.2)  # polls the parent's stop event (a multiprocessing Event cannot be awaited)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return counts


def _attacker(host: str, port: int, pki: PkiPaths, args: argparse.Namespace, stop, out) -> None:
    out.put(asyncio.run(_attack(host, port, pki, args.stalled, args.storm, args.attacker_address, stop)))


def _summary(latencies: list[float], errors: int, slow: list[tuple[float, ...]]) -> dict:
    ordered = sorted(latencies) or [float("nan")]
    return {
        "p50_ms": round(statistics.median(ordered), 1),
        "p99_ms": round(ordered[int(len(ordered) * 0.99) - 1 if len(ordered) > 1 else 0], 1),
        "errors": errors,
        "slow_or_failed_at_s": slow,
    }


def _cpu_s(pid: int) -> float:
    """CPU time (user + system) the process has used, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _tree(pid: int) -> list[int]:
    """``pid`` and every process below it (the workers of ``server.workers`` > 1, the embedded Redis)."""
    children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    return [pid] + [p for child in children for p in _tree(int(child))]


def _gateway_cpu_s(pid: int) -> float:
    return sum(_cpu_s(p) for p in _tree(pid))


def _runqueue_wait_s(pid: int) -> float:
    """Time the main threads (the event loops) of the gateway's processes were ready to run but waited for a CPU
    (/proc schedstat), summed over its processes."""
    return sum(int(Path(f"/proc/{p}/schedstat").read_text().split()[1]) for p in _tree(pid)) / 1e9


def _environment(pairs: list[str]) -> dict[str, str]:
    """``section.key=value`` -> ``{"GATEWAY_SECTION_KEY": value}``."""
    env = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        env["GATEWAY_" + key.replace(".", "_").upper()] = value
    return env


def _measured(pid: int, attacker: int | None, victim) -> dict:
    """The victim's summary, with the gateway's CPU and run-queue wait, the victim's own CPU (this process) and
    the attacker's CPU over its run."""
    cpu, waited, own, wall = _gateway_cpu_s(pid), _runqueue_wait_s(pid), _cpu_s(os.getpid()), time.perf_counter()
    attacker_cpu = _cpu_s(attacker) if attacker else 0.0
    latencies, errors, slow = asyncio.run(victim())
    summary = _summary(latencies, errors, slow)
    wall = time.perf_counter() - wall
    used = _gateway_cpu_s(pid) - cpu
    summary["gateway_cpu_ms_per_request"] = round(used * 1000 / (len(latencies) + errors), 2)
    summary["gateway_cpu_share"] = round(used / wall, 2)
    summary["gateway_waiting_for_cpu_share"] = round((_runqueue_wait_s(pid) - waited) / wall, 2)
    summary["victim_cpu_share"] = round((_cpu_s(os.getpid()) - own) / wall, 2)
    if attacker:
        summary["attacker_cpu_share"] = round((_cpu_s(attacker) - attacker_cpu) / wall, 2)
    return summary


def _round(args: argparse.Namespace) -> dict:
    """One gateway process: the victim on it quiet, then under attack."""
    pki = init_pki(Path(tempfile.mkdtemp(prefix="gateway-connections-")) / "pki")
    if args.pin:
        os.sched_setaffinity(0, {0})  # the gateway (and its embedded Redis) inherit CPU 0
    server = start_gateway(
        ["--pki-dir", str(pki.root), "--model-repo", str(args.model_repo)],
        env=_environment(args.set),
        workers=args.workers,
    )
    if args.pin:
        os.sched_setaffinity(0, {1})  # the victim (this process) and the attacker (spawned below) on CPU 1
    host, port = server.base_url.removeprefix("https://").rsplit(":", 1)
    try:
        pid = server.process.pid
        quiet = _measured(pid, None, lambda: _victim(host, int(port), pki, args.requests))
        print("quiet:", quiet, flush=True)
        spawn = multiprocessing.get_context("spawn")
        results, stop = spawn.Queue(), spawn.Event()
        attacker = spawn.Process(target=_attacker, args=(host, int(port), pki, args, stop, results))
        attacker.start()
        began = time.perf_counter()
        time.sleep(args.ramp_s)  # lets the attacker open its connections before measuring
        loud = _measured(pid, attacker.pid, lambda: _victim(host, int(port), pki, args.requests, began))
        load = os.getloadavg()
        print("under attack:", loud, flush=True)
        stop.set()
        counts = results.get(timeout=60)
        attacker.join()
        print("attacker:", counts, flush=True)
        alive = server.alive()
    finally:
        server.stop()
        if args.pin:
            os.sched_setaffinity(0, set(range(os.cpu_count() or 1)))
    ratio = loud["p50_ms"] / quiet["p50_ms"]
    return {
        "stalled": args.stalled,
        "storm": args.storm,
        "quiet": quiet,
        "attack": loud,
        "attacker": counts,
        "p50_ratio": round(ratio, 2),
        "met": bool(ratio <= TARGET_RATIO and loud["errors"] == 0),
        "load_average": [round(value, 2) for value in load],
        "settings": args.set,
        "pinned": args.pin,
        "workers": args.workers,
        "gateway_alive": alive,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stalled", type=int, default=2000)
    parser.add_argument("--storm", type=int, default=8)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=1, help="rounds, each on a new gateway process")
    parser.add_argument("--ramp-s", type=float, default=8.0, help="attack time before the victim measures")
    parser.add_argument("--model-repo", type=Path, default=Path("model_repo"))
    parser.add_argument("--attacker-address", default="127.0.0.2", help="the attacker's source address")
    parser.add_argument(
        "--pin",
        action="store_true",
        help="the gateway on CPU 0, the victim and the attacker on CPU 1 (needs 2 CPUs; other work still shares both)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="server.workers of the gateway (0: one per core, what `gateway serve` does by default)",
    )
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a gateway setting")
    args = parser.parse_args()
    if args.pin and (os.cpu_count() or 1) < 2:
        parser.error("--pin needs at least 2 CPUs")
    if args.pin and args.workers != 1:
        parser.error("--pin puts the gateway on one CPU: with --workers other than 1 it would share it")
    rounds = []
    for _ in range(args.rounds):
        rounds.append(_round(args))
        print(json.dumps(rounds[-1]), flush=True)
    met = sum(r["met"] for r in rounds)
    ratios = [r["p50_ratio"] for r in rounds]
    print(
        f"target (p50 within {TARGET_RATIO}x of quiet, no victim error) met in {met} of {len(rounds)} rounds; "
        f"p50 ratios {ratios}; load averages {[r['load_average'][0] for r in rounds]}",
        flush=True,
    )
    return 0 if all(r["gateway_alive"] and r["attack"]["errors"] == 0 for r in rounds) else 1


if __name__ == "__main__":
    raise SystemExit(main())
