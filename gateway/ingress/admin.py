"""The admin REST API of versioned rollout (operators only, from the client certificate's role).

``GET/PUT /api/v1/models/{m}/rollout``, ``POST .../rollout/promote``, ``POST .../rollout/rollback``,
``GET .../rollout/audit``, ``POST /api/v1/models/{m}/versions/{v}/load`` and ``.../unload``. Every
change is validated (400), atomic in the shared store, audited, and followed by every replica.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request

from gateway.core.errors import InvalidInput
from gateway.core.limits import ParseLimits
from gateway.core.types import Identity
from gateway.ingress.http_common import caller_identity
from gateway.ingress.json_body import json_object
from gateway.models.registry import ModelRegistry
from gateway.rollout.manager import RolloutManager
from gateway.rollout.store import ChangeResult, RolloutState

VersionPath = Annotated[str, Path(pattern=r"^[0-9]{1,9}$")]


def _state(registry: ModelRegistry, state: RolloutState) -> dict[str, Any]:
    """The rollout as this replica follows it, with what it has loaded."""
    described = registry.describe_model(state.model)
    return {
        **state.policy.to_dict(),
        "model": state.model,
        "revision": state.revision,
        "updated_at": state.updated_at,
        "updated_by": state.updated_by,
        "loaded_versions": described["versions"],
        "failed_versions": described["failed_versions"],
    }


def _change(registry: ModelRegistry, result: ChangeResult) -> dict[str, Any]:
    return {
        "changed": result.changed,
        "before": _state(registry, result.before) | {"loaded_versions": None, "failed_versions": None},
        "after": _state(registry, result.after),
    }


ROLLOUT_EXAMPLE = '{"stable": "1", "canary": "2", "canary_percent": 10}'


def admin_router(registry: ModelRegistry, rollout: RolloutManager, *, mtls: bool, limits: ParseLimits) -> APIRouter:
    router = APIRouter(prefix="/api/v1/models/{model}")

    def operator(request: Request, model: str) -> Identity:
        """The caller, if the authorization policy lets it use the rollout admin API on ``model``."""
        identity = caller_identity(request, mtls)
        rollout.require_operator(identity, model)
        return identity

    @router.get("/rollout")
    async def show(request: Request, model: str) -> dict:
        operator(request, model)
        registry.model(model)
        return _state(registry, rollout.state(model))

    @router.put("/rollout")
    async def set_rollout(request: Request, model: str) -> dict:
        """Body: any of ``stable``, ``canary``, ``canary_percent``, ``shadow`` (left out: unchanged);
        optional ``revision``: refuse (409) if the rollout has changed since that revision was read."""
        identity = operator(request, model)
        registry.model(model)
        body = await json_object(request, limits, ROLLOUT_EXAMPLE)
        revision = body.pop("revision", None)
        if revision is not None and (isinstance(revision, bool) or not isinstance(revision, int)):
            raise InvalidInput(f"revision must be an integer, got {revision!r}")
        return _change(registry, await rollout.set(model, body, identity, expected_revision=revision))

    @router.post("/rollout/promote")
    async def promote(request: Request, model: str) -> dict:
        identity = operator(request, model)
        registry.model(model)
        return _change(registry, await rollout.promote(model, identity))

    @router.post("/rollout/rollback")
    async def rollback(request: Request, model: str) -> dict:
        identity = operator(request, model)
        registry.model(model)
        return _change(registry, await rollout.rollback(model, identity))

    @router.get("/rollout/audit")
    async def audit(request: Request, model: str, count: Annotated[int, Query(ge=1, le=1000)] = 100) -> dict:
        operator(request, model)
        registry.model(model)
        return {"model": model, "entries": await rollout.audit(model, count)}

    @router.post("/versions/{version}/load")
    async def load(request: Request, model: str, version: VersionPath) -> dict:
        """Load a version directory now, whatever the version_policy (400 with the reason if it does not load)."""
        return _change(registry, await registry.load_version(model, version, operator(request, model)))

    @router.post("/versions/{version}/unload")
    async def unload(request: Request, model: str, version: VersionPath) -> dict:
        """Unload a version (400 while the rollout routes to it)."""
        return _change(registry, await registry.unload_version(model, version, operator(request, model)))

    return router
