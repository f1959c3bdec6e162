"""The DHCP server's own frozen configuration, derived once from Settings.

The responder never sees Settings: keeping this small record separate lets
the tests build configurations directly and keeps netaddr (used by settings)
out of the per-packet path, where stdlib ipaddress is cheaper.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network

from provisioner.settings import InterfaceInfo, Settings
from provisioner.settings import base_url as appliance_url

MODES = ("full", "proxy")


@dataclass(frozen=True)
class DhcpConfig:
    mode: str  # "full" hands out addresses; "proxy" adds PXE options next to another server
    server_ip: IPv4Address  # option 54 and the address replies come from
    subnet: IPv4Network
    base_url: str  # http://{advertise}:{port}, no trailing slash
    interface: str = ""  # SO_BINDTODEVICE target; "" only in tests
    pool_first: IPv4Address | None = None
    pool_last: IPv4Address | None = None
    lease_seconds: int = 3600
    router: IPv4Address | None = None
    dns: tuple[IPv4Address, ...] = ()
    domain: str | None = None
    next_server: IPv4Address | None = None  # siaddr (TFTP); default server_ip
    ignore_unknown: bool = False  # boot.unknown = "ignore": boot files only for registered MACs

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"DHCP mode {self.mode!r} is not one of {MODES}")
        if self.mode == "full" and (self.pool_first is None or self.pool_last is None):
            raise ValueError("full DHCP needs a pool")

    @property
    def tftp_server(self) -> IPv4Address:
        return self.next_server or self.server_ip

    def in_pool(self, ip: IPv4Address) -> bool:
        if self.pool_first is None or self.pool_last is None:
            return False
        return self.pool_first <= ip <= self.pool_last

    @classmethod
    def from_settings(cls, settings: Settings, iface: InterfaceInfo) -> "DhcpConfig":
        """Raises ValueError if settings.network.dhcp is "off": the daemon
        should not start a DHCP server at all then."""
        advertise = settings.network.advertise or iface.address
        pool = settings.dhcp.pool
        return cls(
            mode=settings.network.dhcp,
            server_ip=IPv4Address(str(iface.address)),
            subnet=IPv4Network(str(iface.network), strict=False),
            base_url=appliance_url(settings, iface),
            interface=iface.name,
            pool_first=IPv4Address(str(pool[0])) if pool is not None else None,
            pool_last=IPv4Address(str(pool[-1])) if pool is not None else None,
            lease_seconds=settings.dhcp.lease_seconds,
            router=IPv4Address(str(settings.dhcp.router)) if settings.dhcp.router else None,
            dns=tuple(IPv4Address(str(a)) for a in settings.dhcp.dns),
            domain=settings.dhcp.domain,
            next_server=IPv4Address(str(advertise)),
            ignore_unknown=settings.boot.unknown == "ignore",
        )
