"""Ground truth: join a true label to a logged prediction and keep live accuracy per model version.

The prediction log indexes every record under ``prediction:{request_id}`` (model, version,
label, client, and the id of its sampled photo if any; kept PREDICTION_TTL_S). Feedback is
counted once per prediction (HSETNX), in ``accuracy:{model}`` as ``{version}:feedback`` and
``{version}:correct`` counters shared by every gateway replica.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from gateway.core.errors import InvalidInput, NotFound, PermissionDenied, Unavailable
from gateway.core.types import Identity
from gateway.redis_client import LazyRedis, ratios_by_version

PREDICTION_TTL_S = 7 * 24 * 3600


def prediction_key(request_id: str) -> str:
    return f"prediction:{request_id}"


def accuracy_key(model: str) -> str:
    return f"accuracy:{model}"


def index_fields(record: dict[str, Any]) -> dict[str, str]:
    """What the log stores under prediction_key for a record, to join feedback (and its sampled photo) later."""
    fields = {
        "model": record["model"],
        "version": record["version"],
        "label": record["label"],
        "client": record.get("client", ""),
    }
    if record.get("photo_id"):
        fields["photo_id"] = record["photo_id"]
    return fields


class FeedbackStore(LazyRedis):
    async def record(self, request_id: str, label: str, identity: Identity, labels: Callable[[str], tuple]) -> dict:
        """Join ``label`` (the truth) to the prediction ``request_id``; returns the joined result."""
        try:
            client = self._client()
            key = prediction_key(request_id)
            prediction = {k.decode(): v.decode() for k, v in (await client.hgetall(key)).items()}
            if not prediction:
                raise NotFound(
                    f"no logged prediction has request id {request_id!r} (predictions are kept "
                    f"{PREDICTION_TTL_S // 86400} days; one answered a moment ago may still be on its way: retry)"
                )
            if prediction["client"] != identity.name and not identity.is_operator:
                raise PermissionDenied(
                    "feedback on a prediction comes from the client that asked for it, or an operator"
                )
            known = labels(prediction["model"])
            if label not in known:
                raise InvalidInput(f"label {label!r} is not one of model {prediction['model']!r}'s: {', '.join(known)}")
            first = await client.hsetnx(key, "feedback", label)
            recorded = label if first else (await client.hget(key, "feedback")).decode()
            correct = recorded == prediction["label"]
            if first:
                async with client.pipeline(transaction=True) as pipe:
                    pipe.hincrby(accuracy_key(prediction["model"]), f"{prediction['version']}:feedback", 1)
                    pipe.hincrby(accuracy_key(prediction["model"]), f"{prediction['version']}:correct", int(correct))
                    await pipe.execute()
        except RedisError as exc:
            raise Unavailable(f"the prediction log's Redis cannot be reached: {exc}") from None
        return {
            "request_id": request_id,
            "model": prediction["model"],
            "version": prediction["version"],
            "predicted": prediction["label"],
            "label": recorded,
            "correct": correct,
            "already_recorded": not first,
        }

    async def accuracy(self, model: str) -> dict[str, dict[str, float]]:
        """Per version: how many predictions got feedback, how many were right, and the ratio."""
        try:
            counters = await self._client().hgetall(accuracy_key(model))
        except RedisError as exc:
            raise Unavailable(f"the prediction log's Redis cannot be reached: {exc}") from None
        return ratios_by_version(counters, "feedback", "correct", "accuracy")
