"""The discovery agent (an initramfs with a POSIX sh /init) and its builder."""

from provisioner.agent.builder import AgentManifest, Artifact, BuildError, build_agent, read_manifest

__all__ = ["AgentManifest", "Artifact", "BuildError", "build_agent", "read_manifest"]
