"""The image manifest: what an image is made of, as canonical JSON.

The image's digest is the sha256 of these exact bytes, so they must come out
the same for the same content: sorted keys, fixed indentation, no wall-clock
fields (`created` is SOURCE_DATE_EPOCH, not the time of the build).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Mapping

from provisioner.agent.builder import Artifact
from provisioner.core.imageref import HEX, check_image_name, check_version
from provisioner.errors import InvalidInput

SCHEMA = 1
ARTIFACTS = ("kernel", "rootfs.squashfs", "modules.cpio")


@dataclass(frozen=True)
class ImageManifest:
    name: str
    version: str
    created: int  # epoch seconds, from SOURCE_DATE_EPOCH
    artifacts: tuple[Artifact, ...]
    kernel_version: str
    packages: tuple[tuple[str, str], ...] = ()  # (package, version), sorted
    modules: tuple[str, ...] = ()  # what modules.cpio carries
    # Where it came from: {"kind": "definition", "sha256": digest of the
    # definition directory} or {"kind": "import", "format": ..., "sha256": ...}.
    source: Mapping[str, str] = field(default_factory=dict)
    description: str = ""

    def artifact(self, name: str) -> Artifact:
        for a in self.artifacts:
            if a.name == name:
                return a
        raise KeyError(name)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": SCHEMA,
            "name": self.name,
            "version": self.version,
            "created": _iso(self.created),
            "description": self.description,
            "kernel_version": self.kernel_version,
            "artifacts": {a.name: {"size": a.size, "sha256": a.sha256} for a in self.artifacts},
            "packages": dict(self.packages),
            "modules": list(self.modules),
            "source": dict(self.source),
        }

    def canonical(self) -> bytes:
        return canonical_json(self.to_json())

    @property
    def digest(self) -> str:
        return hashlib.sha256(self.canonical()).hexdigest()

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> "ImageManifest":
        try:
            if doc.get("schema") != SCHEMA:
                raise InvalidInput(f"manifest schema {doc.get('schema')!r} is not {SCHEMA}")
            created = datetime.strptime(doc["created"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=timezone.utc)
            artifacts = []
            for name in ARTIFACTS:
                a = doc["artifacts"][name]
                if not isinstance(a["size"], int) or not HEX.match(str(a["sha256"])):
                    raise InvalidInput(f"manifest artifact {name}: bad size or sha256")
                artifacts.append(Artifact(name, a["size"], a["sha256"]))
            return cls(
                name=check_image_name(doc["name"]),
                version=check_version(doc["version"]),
                created=int(created.timestamp()),
                artifacts=tuple(artifacts),
                kernel_version=str(doc["kernel_version"]),
                packages=tuple(sorted((str(k), str(v)) for k, v in doc.get("packages", {}).items())),
                modules=tuple(str(m) for m in doc.get("modules", [])),
                source={str(k): str(v) for k, v in doc.get("source", {}).items()},
                description=str(doc.get("description", "")),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise InvalidInput(f"manifest is not valid: {type(exc).__name__}: {exc}") from None


def _iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical_json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode()


def parse_manifest(data: bytes) -> ImageManifest:
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"manifest is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise InvalidInput("manifest is not a JSON object")
    return ImageManifest.from_json(doc)
