"""The one JSON parser of every HTTP surface: bounded in size and depth, UTF-8 only, no duplicate keys.

orjson parses (a tenth of the standard library's time on a tensor's numbers); whatever it refuses or might
read differently goes to the standard library's decoder, whose answer (and error message) is the rule:
NaN and Infinity literals, lone surrogates, any run of 19 or more digits (orjson reads an integer beyond
64 bits as a float), and duplicate keys (orjson keeps the last; a body whose keys outnumber those of the
parsed value has one, and the standard decoder names it).

``json.loads`` recurses once per nesting level and raises ``RecursionError`` near depth 1,000; the
depth is measured before parsing, at C speed (strings removed by a regular expression, brackets
kept, a running sum in numpy), and only when the body has more brackets than the limit at all.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import orjson
from fastapi import Request

from gateway.core.errors import InvalidInput, PayloadTooLarge
from gateway.core.limits import ParseLimits
from gateway.ingress.http_common import read_body

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_KEYS = re.compile(r'"(?:[^"\\]|\\.)*"[ \t\n\r]*:', re.DOTALL)
"""A string followed by a colon: an object's key (in valid JSON nothing else is)."""
_LONG_DIGITS = re.compile(r"[0-9]{19,}")
"""Where an integer may not fit 64 bits (18 digits always do)."""
_BRACKETS = b"[]{}"
_KEEP_BRACKETS = bytes(byte for byte in range(256) if byte not in _BRACKETS)
_STEPS = bytes.maketrans(_BRACKETS, bytes([1, 255, 1, 255]))
"""'[' and '{' become +1, ']' and '}' become -1 (as int8)."""


def json_depth(body: bytes) -> int:
    """The deepest nesting of arrays and objects in ``body`` (exact for valid JSON; brackets inside strings
    do not count)."""
    steps = _STRINGS.sub(b"", body).translate(_STEPS, _KEEP_BRACKETS)
    if not steps:
        return 0
    return int(np.cumsum(np.frombuffer(steps, dtype=np.int8), dtype=np.int64).max())


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        keys = [key for key, _ in pairs]
        duplicate = next(key for index, key in enumerate(keys) if key in keys[:index])
        raise InvalidInput(f"the JSON body has the key {duplicate!r} twice in one object; each key may appear once")
    return obj


async def json_object(request: Request, limits: ParseLimits, example: str) -> dict:
    """The JSON object of a small body (admin, feedback): at most ``limits.admin_max_bytes``; an empty body
    is refused like any other non-object, with ``example`` of what was expected."""
    setting = "limits.admin_max_bytes"
    body = await read_body(request, limits.admin_max_bytes, setting)
    payload = (
        parse_json(
            body, max_bytes=limits.admin_max_bytes, max_depth=limits.json_max_depth, what="the body", setting=setting
        )
        if body
        else None
    )
    if not isinstance(payload, dict):
        raise InvalidInput(f"the body must be a JSON object like {example}")
    return payload


_DECODER = json.JSONDecoder(object_pairs_hook=_unique_keys)
"""Built once (``json.loads`` with a hook builds a decoder per call); it holds no state between calls."""


_UNDECIDED = object()


def _orjson_value(text: str) -> Any:
    """orjson's value of ``text``, or _UNDECIDED for the standard decoder: orjson refused it (and the standard
    decoder's message says why), it had a duplicate key, or it nests deeper than orjson writes (254)."""
    try:
        value = orjson.loads(text)
        if ":" in text and _lost_a_key(text, value):
            return _UNDECIDED
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return _UNDECIDED
    return value


def _lost_a_key(text: str, value: Any) -> bool:
    """Whether ``value`` (orjson's reading of ``text``) lost a duplicate key. Outside strings a colon follows a
    key, and orjson writes a string's colons as they are: so where no ``\\u`` escape could spell a colon, the
    value written back has as many colons as the text unless a pair was dropped (its key's colon, and any in its
    value, went with it). Counting colons is a tenth of counting keys with a regular expression, which the
    texts with escapes still take."""
    if "\\u" not in text:
        return text.count(":") != orjson.dumps(value).count(b":")
    return len(_KEYS.findall(text)) != len(_KEYS.findall(orjson.dumps(value).decode()))


def _may_have_long_digits(text: str) -> bool:
    """Whether ``text`` has a run of 19 or more digits (the count of all its digits rules most bodies out first)."""
    return sum(map(text.count, "0123456789")) >= 19 and _LONG_DIGITS.search(text) is not None


def parse_json(body: bytes, *, max_bytes: int, max_depth: int, what: str, setting: str) -> Any:
    """``body`` parsed, or a 4xx saying which limit or rule it broke. ``what`` names the body in messages
    ("the inference request"); ``setting`` is the key of ``max_bytes`` in the settings."""
    if len(body) > max_bytes:
        raise PayloadTooLarge(f"{what} has {len(body):,} bytes of JSON; the limit is {max_bytes:,} ({setting})")
    if body.count(b"[") + body.count(b"{") > max_depth and (depth := json_depth(body)) > max_depth:
        raise InvalidInput(
            f"{what} nests arrays and objects {depth:,} deep; the limit is {max_depth} (limits.json_max_depth)"
        )
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{what} is not UTF-8 (RFC 8259 requires it): {exc}") from None
    if not _may_have_long_digits(text) and (value := _orjson_value(text)) is not _UNDECIDED:
        return value
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise InvalidInput(f"{what} nests too deep to parse (limits.json_max_depth is {max_depth})") from None
    except ValueError as exc:  # JSONDecodeError, and integers longer than Python converts (4,300 digits)
        raise InvalidInput(f"{what} is not valid JSON: {exc}") from None
