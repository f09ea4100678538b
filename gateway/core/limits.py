"""The limits every parser of the gateway keeps, as the edges receive them (``limits.*`` in the settings)."""

from __future__ import annotations

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True)
class ParseLimits:
    """What one request may hold; beyond each, the edge answers a 4xx naming the limit and its setting."""

    body_max_bytes: int = 10 * MIB
    """Any request body (``limits.max_body_bytes``)."""
    json_max_bytes: int = 8 * MIB
    """The JSON part of a KServe or TF Serving request (``limits.json_max_bytes``)."""
    json_max_depth: int = 32
    """Nesting of arrays and objects in any JSON body (``limits.json_max_depth``)."""
    admin_max_bytes: int = 64 * 1024
    """An admin or feedback body (``limits.admin_max_bytes``)."""
    multipart_max_parts: int = 8
    """Parts of a multipart photo upload (``limits.multipart_max_parts``)."""
    max_tensor_elements: int = 16 * MIB
    """Elements of one input tensor, from its declared shape (``limits.max_tensor_elements``)."""


DEFAULT_LIMITS = ParseLimits()
