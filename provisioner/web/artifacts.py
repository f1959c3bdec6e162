"""ETags for the agent artifacts come from the build's manifest (sha256), so
an HTTP cache in front of the appliance revalidates by content."""

from __future__ import annotations

import json
import os
from pathlib import Path

AGENT_ARTIFACTS = ("kernel", "agent.cpio", "modules.cpio", "manifest.json")

_cache: dict[Path, tuple[int, dict]] = {}


def _manifest(agent_dir: Path) -> dict:
    path = agent_dir / "manifest.json"
    try:
        mtime = os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return {}
    cached = _cache.get(path)
    if cached and cached[0] == mtime:
        return cached[1]
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        doc = {}
    _cache[path] = (mtime, doc)
    return doc


def artifact_etag(agent_dir: Path, name: str) -> str | None:
    doc = _manifest(agent_dir)
    entry = (doc.get("artifacts") or {}).get(name) or doc.get(name)
    if isinstance(entry, dict) and isinstance(entry.get("sha256"), str):
        return entry["sha256"]
    return None
