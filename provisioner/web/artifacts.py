"""ETags for the agent artifacts come from the build's manifest (sha256), so
an HTTP cache in front of the appliance revalidates by content."""

from __future__ import annotations

import os
from pathlib import Path

from provisioner.agent.builder import AgentManifest, read_manifest

AGENT_ARTIFACTS = ("kernel", "agent.cpio", "modules.cpio", "manifest.json")

# Read once per build, not once per request: keyed by the manifest's mtime.
_cache: dict[Path, tuple[int, AgentManifest | None]] = {}


def _manifest(agent_dir: Path) -> AgentManifest | None:
    try:
        mtime = os.stat(agent_dir / "manifest.json").st_mtime_ns
    except FileNotFoundError:
        return None
    cached = _cache.get(agent_dir)
    if cached and cached[0] == mtime:
        return cached[1]
    try:
        manifest = read_manifest(agent_dir)
    except (OSError, ValueError, KeyError):
        manifest = None
    _cache[agent_dir] = (mtime, manifest)
    return manifest


def artifact_etag(agent_dir: Path, name: str) -> str | None:
    manifest = _manifest(agent_dir)
    if manifest is None:
        return None
    try:
        return manifest.artifact(name).sha256
    except KeyError:
        return None
