"""Each prediction record written once, however often it is sent: an idempotent write to Redis.

A write whose acknowledgement is lost (Redis killed after it applied the write, a connection cut
after the command left) looks like a failure; the log then spools the chunk and replays it later,
and an at-least-once log would hold those records twice. Here every record gets an id at its first
write, ``{writer}:{n}`` (a random writer id per log instance, a counter), kept with it in the spool;
one Lua script writes a chunk atomically and, per record, first sets the record's bit in a bitmap of
written ids (``SETBIT`` returns the old bit): a record whose bit was already set is skipped. The
script takes a chunk as one JSON plan plus the chunk's records in one argument, end to end (the plan
holds each one's length): redis-py packs every argument in Python, fourteen per record cost the
writer about 20 us per record, two cost a tenth of that; the index key is the one argument left per
record (every key a script touches is named in KEYS).

Why a bitmap and not a key per record: it costs one bit per record (a million records: 128 KiB),
kept ``PREDICTION_TTL_S`` after the last write to its shard (2^20 ids per key). Why not the
request id: clients choose KServe's ``id`` and may reuse it for different requests.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import NoScriptError

from gateway.monitoring.feedback import PREDICTION_TTL_S, index_fields, prediction_key

STREAM_PREFIX = "predictions:"
LOG_ID_KEY = "log_id"
WRITTEN_PREFIX = "predictions-written:"
SHARD_IDS = 1 << 20
"""Ids per bitmap key (128 KiB when full)."""

WRITE_ONCE_LUA = """
local maxlen, mark_ttl, index_ttl = ARGV[1], ARGV[2], ARGV[3]
local plan, records, at, written = cjson.decode(ARGV[4]), ARGV[5], 1, 0
for _, entry in ipairs(plan) do
  local stream, mark, index = KEYS[entry[1]], KEYS[entry[2]], KEYS[entry[3]]
  local bit, size, fields = entry[4], entry[5], entry[6]
  local record = string.sub(records, at, at + size - 1)
  at = at + size
  if redis.call('SETBIT', mark, bit, 1) == 0 then
    redis.call('EXPIRE', mark, mark_ttl)
    redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'record', record)
    if #fields > 0 then
      redis.call('HSET', index, unpack(fields))
      redis.call('EXPIRE', index, index_ttl)
    end
    written = written + 1
  end
end
return written
"""
WRITE_ONCE_SHA = hashlib.sha1(WRITE_ONCE_LUA.encode()).hexdigest()


def stream_name(model: str) -> str:
    return STREAM_PREFIX + model


class WriteOnce:
    """Numbers records at their first write; writes chunks so that a repeated record is skipped."""

    def __init__(self, stream_maxlen: int) -> None:
        self._writer = os.urandom(6).hex()
        self._next = 0
        self._maxlen = stream_maxlen

    def _number(self, record: dict[str, Any]) -> tuple[str, int]:
        known = record.get(LOG_ID_KEY)
        if known is None:  # new to the log: numbered here, and the number kept with the record (spool included)
            number = self._next
            self._next += 1
            record[LOG_ID_KEY] = f"{self._writer}:{number}"
            return self._writer, number
        writer, number = known.rsplit(":", 1)
        return writer, int(number)

    def _command(self, records: list[dict[str, Any]]) -> tuple[list[str], list[Any]]:
        """KEYS: each key the chunk touches, once; ARGV: the limits, the plan (per record, as JSON: the
        1-based KEYS of its stream, written-bitmap and index, its bit, its length in the next argument,
        its index fields), then every record's JSON end to end. Few arguments: the client packs each one
        in Python."""
        keys: dict[str, int] = {}
        plan, encoded = [], []
        for record in records:
            writer, number = self._number(record)
            stream = stream_name(record["model"])
            mark = f"{WRITTEN_PREFIX}{writer}:{number // SHARD_IDS}"
            if "request_id" in record and "version" in record and "label" in record:
                fields = [item for pair in index_fields(record).items() for item in pair]
                index_key = prediction_key(record["request_id"])
            else:
                fields, index_key = [], stream
            text = orjson.dumps(record)
            encoded.append(text)
            where = [keys.setdefault(key, len(keys) + 1) for key in (stream, mark, index_key)]
            plan.append([*where, number % SHARD_IDS, len(text), fields])
        return list(keys), [self._maxlen, PREDICTION_TTL_S, PREDICTION_TTL_S, orjson.dumps(plan), b"".join(encoded)]

    async def write(self, client: aioredis.Redis, records: list[dict[str, Any]]) -> int:
        """Write ``records`` (numbering those new to the log) in one atomic script; how many were new to Redis."""
        keys, args = self._command(records)
        try:
            return await client.evalsha(WRITE_ONCE_SHA, len(keys), *keys, *args)
        except NoScriptError:  # a restarted (or new) Redis: load the script with the call
            return await client.eval(WRITE_ONCE_LUA, len(keys), *keys, *args)
