"""Typed, frozen records shared by the core, the service layer and adapters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

@dataclass(frozen=True)
class Host:
    """state: "new" (added by hand, not yet inventoried) or "discovered"
    (inventoried by the agent); deploy states come with images."""

    id: int
    name: str
    macs: tuple[str, ...]
    state: str
    labels: Mapping[str, str] = field(default_factory=dict)
    hardware: Mapping[str, Any] = field(default_factory=dict)
    profile: str | None = None
    ip: str | None = None
    image: str | None = None  # NAME@VERSION or NAME@CHANNEL it should run
    created: float = 0.0
    updated: float = 0.0

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "macs": list(self.macs),
            "state": self.state,
            "labels": dict(self.labels),
            "hardware": dict(self.hardware),
            "profile": self.profile,
            "ip": self.ip,
            "image": self.image,
            "created": self.created,
            "updated": self.updated,
        }


@dataclass(frozen=True)
class Event:
    id: int
    ts: float
    kind: str
    message: str
    host: str | None = None
    mac: str | None = None
    actor: str | None = None
    data: Mapping[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "ts": self.ts,
            "kind": self.kind,
            "message": self.message,
            "host": self.host,
            "mac": self.mac,
            "actor": self.actor,
            "data": dict(self.data),
        }


@dataclass(frozen=True)
class BootToken:
    token: str
    mac: str
    purpose: str
    issued: float
    expires: float
    used: float | None = None
