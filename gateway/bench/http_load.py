"""A minimal HTTP/1.1 keep-alive load client over asyncio TLS streams.

General clients (httpx) spend more CPU per request than the gateway does at high
concurrency, and on a 2-core machine the load generator shares the cores with the
gateway; this client does only what a benchmark needs: one POST at a time per
connection, Content-Length framed answers.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from urllib.parse import urlsplit


class Connection:
    """One persistent connection; ``post`` returns (status, body)."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self._reader = reader
        self._writer = writer
        self._host = host

    @classmethod
    async def open(cls, base_url: str, context: ssl.SSLContext | None) -> Connection:
        url = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(
            url.hostname, url.port, ssl=context, server_hostname=url.hostname if context else None, limit=1 << 20
        )
        return cls(reader, writer, url.netloc)

    async def post(
        self, path: str, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        extra = "".join(f"{name}: {value}\r\n" for name, value in (headers or {}).items())
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self._host}\r\nContent-Type: {content_type}\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode("ascii")
        self._writer.write(head + body)
        return await self._read_response()

    async def get(self, path: str) -> tuple[int, bytes]:
        self._writer.write(f"GET {path} HTTP/1.1\r\nHost: {self._host}\r\n\r\n".encode("ascii"))
        return await self._read_response()

    async def _read_response(self) -> tuple[int, bytes]:
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split(" ", 2)[1])
        headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
        lowered = {k.lower(): v for k, v in headers.items()}
        if "content-length" in lowered:
            return status, await self._reader.readexactly(int(lowered["content-length"]))
        if lowered.get("transfer-encoding", "").lower() == "chunked":
            return status, await self._read_chunked()
        raise ValueError(f"unframed response: {lines[0]}")

    async def _read_chunked(self) -> bytes:
        chunks = []
        while True:
            size = int((await self._reader.readline()).strip(), 16)
            if size == 0:
                await self._reader.readline()
                return b"".join(chunks)
            chunks.append(await self._reader.readexactly(size))
            await self._reader.readline()

    async def close(self) -> None:
        self._writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await self._writer.wait_closed()
