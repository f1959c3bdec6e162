"""The discovery agent and its builder.

`build_agent(out_dir, cache_dir)` makes, from Debian 12 packages:
- `kernel`: vmlinuz of the package linux-image-amd64 points at;
- `agent.cpio`: a kernel-agnostic initramfs (busybox, util-linux, e2fsprogs,
  kmod with their libraries, and the sh agent under files/);
- `modules.cpio`: that kernel's NIC and storage drivers with their
  dependencies under /lib/modules/KVER;
- `manifest.json`: size and sha256 of each, the kernel version, packages.

Booted with both initrds, /init (files/init) brings up the BOOTIF NIC,
fetches its plan, reports HARDWARE (docs/contracts.md) and powers off.
"""

from provisioner.agent.builder import AgentManifest, Artifact, BuildError, build_agent, read_manifest
from provisioner.agent.debs import PackageError

__all__ = ["AgentManifest", "Artifact", "BuildError", "PackageError", "build_agent", "read_manifest"]
