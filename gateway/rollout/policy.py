"""A model's rollout policy: which version is stable, which is the canary (and its share), which is shadowed.

Pure values: validating a change, promoting and rolling back never touch Redis or the network, so
every rule is tested on its own. ``InvalidInput`` (400 / INVALID_ARGUMENT) names what is wrong.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

from gateway.core.errors import InvalidInput, NotFound

LABELS = ("stable", "canary", "shadow")
"""Version labels a request may pin (TF Serving's ``version_label``, REST ``?label=``)."""
SETTABLE = ("stable", "canary", "canary_percent", "shadow")
"""Fields an operator sets with PUT; ``previous_stable`` is kept by promote for rollback."""


@dataclass(frozen=True)
class RolloutPolicy:
    stable: str
    canary: str | None = None
    canary_percent: float = 0.0
    """Share of routing keys (client identities) sent to the canary, 0-100."""
    shadow: str | None = None
    """Receives a copy of stable traffic after the caller has its answer; never answers anyone."""
    previous_stable: str | None = None
    """The stable version before the last promote: what a rollback without a canary returns to."""
    load: tuple[str, ...] = ()
    """Versions loaded explicitly (admin API), whatever the model's version_policy says."""
    unload: tuple[str, ...] = ()
    """Versions unloaded explicitly (admin API), whatever the model's version_policy says."""

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["load"], values["unload"] = list(self.load), list(self.unload)
        return values

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RolloutPolicy:
        return cls(
            stable=str(data["stable"]),
            canary=_version_or_none(data.get("canary")),
            canary_percent=float(data.get("canary_percent") or 0.0),
            shadow=_version_or_none(data.get("shadow")),
            previous_stable=_version_or_none(data.get("previous_stable")),
            load=tuple(str(v) for v in data.get("load") or ()),
            unload=tuple(str(v) for v in data.get("unload") or ()),
        )

    def version_for_label(self, label: str) -> str | None:
        if label not in LABELS:
            raise NotFound(f"unknown version label {label!r}; labels: {', '.join(LABELS)}")
        return getattr(self, label)

    @property
    def versions(self) -> set[str]:
        """Every version the policy needs loaded."""
        return {v for v in (self.stable, self.canary, self.shadow) if v is not None}

    def validate(self, model: str, loaded: Collection[str]) -> RolloutPolicy:
        """Raise InvalidInput unless every named version is loaded and the shares make sense."""
        available = ", ".join(sorted(loaded, key=_version_order)) or "none"
        for field in ("stable", "canary", "shadow"):
            version = getattr(self, field)
            if version is not None and version not in loaded:
                raise InvalidInput(f"{field}: model {model!r} has no loaded version {version!r} (loaded: {available})")
        if not 0.0 <= self.canary_percent <= 100.0 or math.isnan(self.canary_percent):
            raise InvalidInput(f"canary_percent must lie in 0-100, got {self.canary_percent}")
        if self.canary is None and self.canary_percent > 0:
            raise InvalidInput(f"canary_percent is {self.canary_percent} but no canary version is set")
        if self.canary is not None and self.canary == self.stable:
            raise InvalidInput(f"canary: version {self.canary} is already the stable version")
        if self.shadow is not None and self.shadow == self.stable:
            raise InvalidInput(f"shadow: version {self.shadow} is the stable version; it cannot shadow itself")
        return self

    def with_changes(self, changes: Mapping[str, Any]) -> RolloutPolicy:
        """The policy with the fields of a PUT body replaced; fields left out keep their value."""
        unknown = sorted(set(changes) - set(SETTABLE))
        if unknown:
            raise InvalidInput(f"unknown rollout field(s) {', '.join(unknown)}; settable: {', '.join(SETTABLE)}")
        values = self.to_dict()
        for field in ("stable", "canary", "shadow"):
            if field in changes:
                value = changes[field]
                if field == "stable" and value is None:
                    raise InvalidInput("stable must name a version")
                values[field] = _parse_version(field, value)
        if "canary_percent" in changes:
            percent = changes["canary_percent"]
            if percent is None:
                percent = 0.0
            if isinstance(percent, bool) or not isinstance(percent, (int, float)):
                raise InvalidInput(f"canary_percent must be a number 0-100, got {percent!r}")
            values["canary_percent"] = float(percent)
        elif "canary" in changes and changes["canary"] is None:
            values["canary_percent"] = 0.0  # removing the canary removes its share
        return RolloutPolicy.from_dict(values)

    def promoted(self) -> RolloutPolicy:
        """The canary becomes stable for everyone; the old stable is remembered for rollback."""
        if self.canary is None:
            raise InvalidInput("there is no canary to promote")
        shadow = None if self.shadow == self.canary else self.shadow
        return dataclasses.replace(
            self, stable=self.canary, canary=None, canary_percent=0.0, shadow=shadow, previous_stable=self.stable
        )

    def rolled_back(self) -> RolloutPolicy:
        """Drop the canary (everyone back on stable); without a canary, return to the previous stable."""
        if self.canary is not None:
            return dataclasses.replace(self, canary=None, canary_percent=0.0)
        if self.previous_stable is not None:
            shadow = None if self.shadow == self.previous_stable else self.shadow
            return dataclasses.replace(self, stable=self.previous_stable, shadow=shadow, previous_stable=None)
        raise InvalidInput("there is nothing to roll back: no canary and no previous stable version")

    def loading(self, version: str) -> RolloutPolicy:
        """Explicitly loaded from now on (and no longer explicitly unloaded)."""
        return dataclasses.replace(
            self,
            load=tuple(sorted({*self.load, version}, key=_version_order)),
            unload=tuple(v for v in self.unload if v != version),
        )

    def unloading(self, version: str) -> RolloutPolicy:
        """Explicitly unloaded from now on; refused while the policy routes to it."""
        if version in self.versions:
            arms = [arm for arm in ("stable", "canary", "shadow") if getattr(self, arm) == version]
            raise InvalidInput(f"version {version} is the {' and '.join(arms)} version; change the rollout first")
        return dataclasses.replace(
            self,
            load=tuple(v for v in self.load if v != version),
            unload=tuple(sorted({*self.unload, version}, key=_version_order)),
        )


def _version_or_none(value: Any) -> str | None:
    return None if value is None or value == "" else str(value)


def _parse_version(field: str, value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).isdigit():
        raise InvalidInput(f'{field} must be a version number like "2" or null, got {value!r}')
    return str(int(value))


def _version_order(version: str) -> tuple[int, str]:
    return (int(version), version) if version.isdigit() else (-1, version)
