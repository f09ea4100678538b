"""How the gateway reaches its shared Redis: one URL, a plain server or a Sentinel-managed master.

``redis+sentinel://[[user]:password@]host:port[,host:port...]/service_name[/db]`` asks the listed
Sentinels which server is the master of ``service_name``, and asks again whenever a connection to it
fails or it answers as a replica: after a failover every client follows the new master on its next
command. A change of master is a failover: logged once per process and counted (``on_failover``).

A write confirmed by the master alone is lost if the master dies before a replica copies it (Redis
replicates asynchronously). ``confirm_replicated`` closes that gap: it waits (``WAIT``) until
``replicas`` replicas hold everything written so far, else raises ``NotReplicated``, and the caller
treats the write as failed (the prediction log spools and replays it, written once; a rollout change
is reported as not durable yet).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

SENTINEL_SCHEME = "redis+sentinel"
PLAIN_SCHEMES = ("redis", "rediss", "unix")
FENCE_KEY = "replication-fence"
"""A key written just before ``WAIT``: the replicas that hold it hold every earlier write of the caller."""


class RedisUrlError(ValueError):
    """The URL cannot be used; the message never holds its password."""


class NotReplicated(RedisError):
    """Fewer replicas than required confirmed a write in time: the master alone holds it."""


@dataclass(frozen=True)
class SentinelAddress:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for messages and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    return url.replace(f"{user}:{parts.password}@", f"{user}:***@", 1)


def parse_sentinel_url(url: str) -> SentinelAddress:
    """The Sentinels, service and db of a ``redis+sentinel://`` URL, or RedisUrlError saying what is wrong."""
    parts = urlsplit(url)
    if parts.scheme != SENTINEL_SCHEME:
        raise RedisUrlError(f"{redacted(url)!r} is not a {SENTINEL_SCHEME}:// URL")
    hosts = parts.netloc.rpartition("@")[2]
    sentinels = []
    for item in hosts.split(","):
        host, colon, port = item.strip().rpartition(":")
        if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise RedisUrlError(f"sentinel {item.strip()!r} in {redacted(url)!r} must be host:port (port 1-65535)")
        sentinels.append((host.strip("[]"), int(port)))
    path = [segment for segment in parts.path.split("/") if segment]
    if not path or len(path) > 2:
        raise RedisUrlError(f"{redacted(url)!r} must end in /service_name or /service_name/db")
    if len(path) == 2 and not path[1].isdigit():
        raise RedisUrlError(f"the db in {redacted(url)!r} must be a number, got {path[1]!r}")
    if parts.query:
        raise RedisUrlError(f"{redacted(url)!r}: query parameters are not supported")
    return SentinelAddress(
        tuple(sentinels),
        unquote(path[0]),
        int(path[1]) if len(path) == 2 else 0,
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password is not None else None,
    )


def check_url(url: str) -> None:
    """Raise RedisUrlError unless ``url`` is a usable plain or Sentinel Redis URL."""
    scheme = urlsplit(url).scheme
    if scheme == SENTINEL_SCHEME:
        parse_sentinel_url(url)
    elif scheme not in PLAIN_SCHEMES:
        raise RedisUrlError(
            f"must start with redis://, rediss://, unix:// or {SENTINEL_SCHEME}://, got {redacted(url)!r}"
        )


class FailoverWatch:
    """The master each client of one process was sent to; a new one is a failover (logged, counted once)."""

    def __init__(self, service: str, on_failover: Callable[[], None] | None = None) -> None:
        self._service = service
        self._on_failover = on_failover
        self._lock = threading.Lock()
        self.master: tuple[str, int] | None = None

    def seen(self, address: tuple[str, int]) -> None:
        with self._lock:
            previous, self.master = self.master, tuple(address)
            if previous is None:
                log.info("Redis: master of %r at %s:%d (Sentinel)", self._service, *address)
                return
            if previous == self.master:
                return
        log.warning(
            "Redis FAILOVER: master of %r moved from %s:%d to %s:%d (Sentinel); clients follow it",
            self._service,
            *previous,
            *address,
        )
        if self._on_failover is not None:
            self._on_failover()


class WatchedPool(SentinelConnectionPool):
    """A Sentinel pool that tells its FailoverWatch about every master it is sent to."""

    def __init__(self, service_name: str, sentinel_manager: Sentinel, **kwargs) -> None:
        self._watch: FailoverWatch = kwargs.pop("watch")
        super().__init__(service_name, sentinel_manager, **kwargs)

    async def get_master_address(self):
        address = await super().get_master_address()
        self._watch.seen(address)
        return address


class RedisLink:
    """Makes clients of one Redis URL (plain or Sentinel); all clients of a link share its FailoverWatch."""

    def __init__(self, url: str, *, timeout_s: float = 2.0, on_failover: Callable[[], None] | None = None) -> None:
        check_url(url)
        self.url = url
        self._timeout_s = timeout_s
        self.sentinel = parse_sentinel_url(url) if urlsplit(url).scheme == SENTINEL_SCHEME else None
        self.watch = FailoverWatch(self.sentinel.service if self.sentinel else "", on_failover)
        self._manager: tuple[asyncio.AbstractEventLoop, Sentinel] | None = None
        """The Sentinel clients, shared by every client made in one event loop (their connections belong to it)."""

    def _sentinels(self, timeouts: dict[str, float]) -> Sentinel:
        assert self.sentinel is not None
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # made outside a loop (a command line tool): its own, used by one client
            return Sentinel(list(self.sentinel.sentinels), sentinel_kwargs=dict(timeouts), **timeouts)
        if self._manager is None or self._manager[0] is not loop:
            self._manager = (loop, Sentinel(list(self.sentinel.sentinels), sentinel_kwargs=dict(timeouts), **timeouts))
        return self._manager[1]

    def connect(self) -> aioredis.Redis:
        """A new client (own pool); with Sentinel, of whichever server is the master now. Call it inside the
        event loop that will use the client."""
        timeouts = {"socket_timeout": self._timeout_s, "socket_connect_timeout": self._timeout_s}
        if self.sentinel is None:
            return aioredis.Redis.from_url(self.url, **timeouts)
        address = self.sentinel
        return self._sentinels(timeouts).master_for(
            address.service,
            connection_pool_class=WatchedPool,
            watch=self.watch,
            db=address.db,
            username=address.username,
            password=address.password,
        )


async def confirm_replicated(client: aioredis.Redis, replicas: int, timeout_ms: int) -> None:
    """Return once ``replicas`` replicas hold every write ``client``'s caller made before; else NotReplicated.

    ``WAIT`` counts the replicas that hold its own connection's last write, so a fence key is written
    on the same connection (one pipeline) first: later than every earlier acknowledged write, so a
    replica holding it holds them too.
    """
    if replicas <= 0:
        return
    async with client.pipeline(transaction=False) as pipe:
        pipe.set(FENCE_KEY, os.urandom(4).hex(), px=60_000)
        pipe.execute_command("WAIT", replicas, timeout_ms)
        _, confirmed = await pipe.execute()
    if int(confirmed) < replicas:
        raise NotReplicated(f"{confirmed} of {replicas} replica(s) confirmed the write within {timeout_ms} ms")
