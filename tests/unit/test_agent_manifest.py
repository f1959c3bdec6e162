"""manifest.json round trip and the files installed into the initramfs."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from provisioner.agent import builder

MANIFEST = builder.AgentManifest(
    kernel_version="6.1.0-56-amd64",
    artifacts=(
        builder.Artifact("kernel", 8, "a" * 64),
        builder.Artifact("agent.cpio", 5, "b" * 64),
        builder.Artifact("modules.cpio", 4, "c" * 64),
    ),
    compression="zstd",
    packages=(("busybox-static", "1:1.35.0-4"), ("kmod", "30+20221128-1")),
    modules=("virtio_net",),
    source_date_epoch=0,
)


def test_manifest_round_trips_through_json(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(MANIFEST.to_json(), sort_keys=True))
    assert builder.read_manifest(tmp_path) == MANIFEST
    doc = MANIFEST.to_json()
    assert doc["artifacts"]["agent.cpio"] == {"size": 5, "sha256": "b" * 64}
    assert doc["kernel_version"] == "6.1.0-56-amd64"


def test_agent_files_and_console_node(tmp_path: Path) -> None:
    builder._install_agent_files(tmp_path)
    init = tmp_path / "init"
    assert init.read_text().startswith("#!/bin/sh\n")
    assert stat.S_IMODE(init.stat().st_mode) == 0o755
    assert (tmp_path / "usr/share/udhcpc/default.script").stat().st_mode & 0o111
    assert (tmp_path / "usr/lib/provisioner/agent-lib.sh").is_file()
    entries = {e.path: e for e in builder._agent_entries(tmp_path)}
    assert entries["dev/console"].rdev == (5, 1)
    assert stat.S_ISCHR(entries["dev/console"].mode)
