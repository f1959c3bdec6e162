"""The boot policy: given what the appliance knows of a machine, decide what
it boots. A pure function over records, so the DHCP, TFTP and HTTP adapters
all ask the same question and tests are plain tables."""

from __future__ import annotations

from dataclasses import dataclass

from provisioner.core.records import Host


@dataclass(frozen=True)
class Discover:
    """Boot the discovery agent: inventory the machine and power off."""

    reason: str


@dataclass(frozen=True)
class Hold:
    """Known and inventoried, but nothing to run yet: wait and ask again, so a
    profile assigned later takes effect without touching the machine."""

    reason: str
    retry_seconds: int = 30


BootDecision = Discover | Hold


def decide_boot(host: Host | None) -> BootDecision:
    if host is None:
        return Discover("unknown machine")
    if not host.hardware:
        return Discover(f"host {host.name} has no hardware facts yet")
    return Hold(f"host {host.name} is {host.state} and has no image to boot yet")
