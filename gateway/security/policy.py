"""Authorization policy: which client identities and roles may use which models for which actions.

The policy is a TOML file (``security.policy_file``)::

    [roles.app]                 # every certificate with role "app" ...
    models = ["*"]              # ... may use any model ...
    actions = ["classify", "feedback"]

    [roles.operator]
    models = ["*"]
    actions = ["*"]             # every action

    [clients.hotdog-app]        # this client name (urn:gateway:client:hotdog-app) instead of its role's entry
    models = ["hotdog"]
    actions = ["classify", "feedback"]

A client entry replaces its role's entry; an identity with neither entry may do nothing.
Without a file, DEFAULT_POLICY applies (the gateway's behaviour before policies existed).

Lookups are O(1): a dict by client name, then by role, then two set memberships. The file is
re-read when its (mtime, size, inode) changes, checked at most every ``reload_s`` seconds on use;
a file that no longer parses keeps the previous policy and logs why.
"""

from __future__ import annotations

import json
import logging
import os
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.core.errors import PermissionDenied
from gateway.core.types import Identity
from gateway.security.pki import ROLES

log = logging.getLogger(__name__)
audit_log = logging.getLogger("gateway.audit")

ACTIONS = ("classify", "feedback", "read_photos", "export_predictions", "rollout")
"""classify: any inference surface (REST, gRPC, KServe v2, TF Serving); feedback: true labels of predictions;
read_photos: photos sampled for retraining; export_predictions: the prediction log as a data set (inputs, photos,
client names); rollout: the rollout admin API (show, change, audit, load/unload)."""
ANY = "*"


class PolicyError(ValueError):
    """The policy file is missing or invalid; the message names the file and the key."""


@dataclass(frozen=True)
class Grant:
    models: frozenset[str]
    actions: frozenset[str]

    def allows(self, action: str, model: str | None) -> bool:
        """``model`` None: the action on at least one model."""
        if ANY not in self.actions and action not in self.actions:
            return False
        return model is None or ANY in self.models or model in self.models


@dataclass(frozen=True)
class Policy:
    clients: Mapping[str, Grant]
    roles: Mapping[str, Grant]
    source: str

    def grant_for(self, identity: Identity) -> Grant | None:
        return self.clients.get(identity.name) or self.roles.get(identity.role)

    def allows(self, identity: Identity, action: str, model: str | None) -> bool:
        grant = self.grant_for(identity)
        return grant is not None and grant.allows(action, model)


DEFAULT_POLICY = Policy(
    clients={},
    roles={
        "app": Grant(frozenset({ANY}), frozenset({"classify", "feedback"})),
        "operator": Grant(frozenset({ANY}), frozenset({ANY})),
    },
    source="default policy",
)


def _strings(where: str, value: Any, allowed: tuple[str, ...] | None) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise PolicyError(f"{where} must be a list of non-empty strings, got {value!r}")
    if allowed is not None:
        unknown = sorted(set(value) - set(allowed) - {ANY})
        if unknown:
            raise PolicyError(f"{where}: unknown action(s) {unknown} (known: {', '.join(allowed)}, or '*')")
    return frozenset(value)


def _grants(path: Path, table: Any, section: str, known: tuple[str, ...] | None) -> dict[str, Grant]:
    if table is None:
        return {}
    if not isinstance(table, dict):
        raise PolicyError(f"{path}: [{section}] must be a table of tables")
    grants = {}
    for name, entry in table.items():
        where = f"{path}: {section}.{name}"
        if known is not None and name not in known:
            raise PolicyError(f"{where}: unknown role (known: {', '.join(known)})")
        if not isinstance(entry, dict):
            raise PolicyError(f"{where} must be a table with models and actions")
        extra = sorted(set(entry) - {"models", "actions"})
        if extra:
            raise PolicyError(f"{where}: unknown key(s) {extra} (known: models, actions)")
        if "models" not in entry or "actions" not in entry:
            raise PolicyError(f"{where} needs both models and actions")
        grants[name] = Grant(
            _strings(f"{where}.models", entry["models"], None), _strings(f"{where}.actions", entry["actions"], ACTIONS)
        )
    return grants


def load_policy(path: Path) -> Policy:
    try:
        with open(path, "rb") as handle:
            data = tomllib.load(handle)
    except OSError as exc:
        raise PolicyError(f"{path} cannot be read: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(f"{path} is not valid TOML: {exc}") from None
    extra = sorted(set(data) - {"roles", "clients"})
    if extra:
        raise PolicyError(f"{path}: unknown section(s) {extra} (known: roles, clients)")
    return Policy(
        clients=_grants(path, data.get("clients"), "clients", None),
        roles=_grants(path, data.get("roles"), "roles", ROLES),
        source=str(path),
    )


def _file_state(path: Path) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)


Denied = Callable[[Identity, str, str | None], None]
"""Called once per denial (identity, action, model): the service counts it in its metrics."""


class Authorizer:
    """Checks an identity against the current policy; reloads the file when it changes; audits denials."""

    def __init__(
        self,
        path: Path | None,
        *,
        reload_s: float = 1.0,
        on_denied: Denied | None = None,
        clock: Callable[[], float] = time.monotonic,
        initial: Policy | None = None,
    ) -> None:
        """``initial``: the file as already parsed at start-up (None: parse ``path`` now)."""
        self._path = path
        self._reload_s = reload_s
        self._on_denied = on_denied
        self._clock = clock
        self._state = _file_state(path) if path is not None else None
        self._policy = initial or (load_policy(path) if path is not None else DEFAULT_POLICY)
        self._checked_at = clock()
        self.reload_failures = 0

    @property
    def policy(self) -> Policy:
        self._maybe_reload()
        return self._policy

    def _maybe_reload(self) -> None:
        if self._path is None:
            return
        now = self._clock()
        if now - self._checked_at < self._reload_s:
            return
        self._checked_at = now
        state = _file_state(self._path)
        if state == self._state:
            return
        self._state = state  # a broken file is judged once, not on every request
        try:
            self._policy = load_policy(self._path)
        except PolicyError as exc:
            self.reload_failures += 1
            log.error("authorization policy NOT reloaded, the previous one stays in force: %s", exc)
            return
        log.info("authorization policy reloaded from %s", self._path)

    def allows(self, identity: Identity, action: str, model: str | None) -> bool:
        return self.policy.allows(identity, action, model)

    def check(self, identity: Identity, action: str, model: str | None = None) -> None:
        """Raise PermissionDenied (audited: one log line, one counter) unless the policy allows it."""
        policy = self.policy
        if policy.allows(identity, action, model):
            return
        target = f"model {model!r}" if model is not None else "any model"
        message = (
            f"client {identity.name!r} (role {identity.role}) may not {action} on {target} "
            f"under the authorization policy ({policy.source})"
        )
        audit_log.warning(
            "%s",
            json.dumps(
                {
                    "event": "authorization_denied",
                    "client": identity.name,
                    "role": identity.role,
                    "action": action,
                    "model": model,
                    "policy": policy.source,
                }
            ),
        )
        if self._on_denied is not None:
            self._on_denied(identity, action, model)
        raise PermissionDenied(message)
