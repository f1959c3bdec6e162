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


@dataclass(frozen=True)
class Exit:
    """Boot nothing from the network: hand the machine back to its firmware,
    which tries its next boot device."""

    reason: str


BootDecision = Discover | Hold | Exit


def decide_boot(host: Host | None, *, discover_unknown: bool = True) -> BootDecision:
    if host is None:
        if not discover_unknown:
            return Exit("unknown machine, and boot.unknown is ignore")
        return Discover("unknown machine")
    if not host.hardware:
        return Discover(f"host {host.name} has no hardware facts yet")
    return Hold(f"host {host.name} is {host.state} and has no image to boot yet")
