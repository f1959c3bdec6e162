"""The TOML settings file, read once into a frozen Settings object.

Every error names the offending key, so that a wrong file stops the daemon
with one clear line before anything binds. Facts that depend on the running
system (the interface's address) are resolved separately by
`resolve_interface`, so that CLI commands work on a machine where the
provisioning interface does not exist.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netaddr import IPAddress, IPNetwork, IPRange

from provisioner.core.names import check_ipv4
from provisioner.errors import ConfigError, InvalidInput

DEFAULT_CONFIG = Path("/etc/provisioner/provisioner.toml")
DHCP_MODES = ("full", "proxy", "off")


@dataclass(frozen=True)
class NetworkSettings:
    interface: str
    dhcp: str = "full"
    # The address clients are told to reach the appliance at; by default the
    # interface's own IPv4 address.
    advertise: IPAddress | None = None


@dataclass(frozen=True)
class DhcpSettings:
    pool: IPRange | None = None
    lease_seconds: int = 3600
    router: IPAddress | None = None
    dns: tuple[IPAddress, ...] = ()
    domain: str | None = None


@dataclass(frozen=True)
class HttpSettings:
    port: int = 8080
    bind: str = "0.0.0.0"
    threads: int = 16


@dataclass(frozen=True)
class TftpSettings:
    port: int = 69
    root: Path | None = None  # default: <state_dir>/tftp
    timeout: int = 1


@dataclass(frozen=True)
class IpxeSettings:
    bios: Path = Path("/usr/lib/ipxe/undionly.kpxe")
    efi: Path = Path("/usr/lib/ipxe/snponly.efi")
    efi_fallback: Path = Path("/usr/lib/ipxe/ipxe.efi")


@dataclass(frozen=True)
class AgentSettings:
    dir: Path | None = None  # default: <state_dir>/agent
    kernel_args: str = "console=ttyS0,115200 console=tty0"
    token_seconds: int = 3600


@dataclass(frozen=True)
class BootSettings:
    # What an unknown machine that network-boots gets: "discover" (the agent
    # inventories it and powers it off) or "ignore" (no boot file, so its
    # firmware moves on to its next boot device: safe next to machines the
    # appliance must not touch).
    unknown: str = "discover"


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    network: NetworkSettings
    dhcp: DhcpSettings = field(default_factory=DhcpSettings)
    http: HttpSettings = field(default_factory=HttpSettings)
    tftp: TftpSettings = field(default_factory=TftpSettings)
    ipxe: IpxeSettings = field(default_factory=IpxeSettings)
    agent: AgentSettings = field(default_factory=AgentSettings)
    boot: BootSettings = field(default_factory=BootSettings)
    source: Path | None = None

    @property
    def db_path(self) -> Path:
        return self.state_dir / "provisioner.db"

    @property
    def tftp_root(self) -> Path:
        return self.tftp.root or self.state_dir / "tftp"

    @property
    def agent_dir(self) -> Path:
        return self.agent.dir or self.state_dir / "agent"

    @property
    def cache_dir(self) -> Path:
        return self.state_dir / "cache"

    @property
    def images_dir(self) -> Path:
        return self.state_dir / "images"


@dataclass(frozen=True)
class InterfaceInfo:
    """The provisioning interface as found on the running system."""

    name: str
    index: int
    address: IPAddress
    network: IPNetwork
    mac: str


# --- parsing helpers: each takes the dotted key so errors can name it ---


def _fail(key: str, why: str) -> ConfigError:
    return ConfigError(f"config: {key}: {why}")


def _take(table: dict[str, Any], allowed: dict[str, type], prefix: str) -> dict[str, Any]:
    for key in table:
        if key not in allowed:
            known = ", ".join(sorted(allowed))
            raise _fail(f"{prefix}{key}", f"unknown key (known here: {known})")
    out = {}
    for key, kind in allowed.items():
        if key in table:
            value = table[key]
            if kind is not None and not isinstance(value, kind) or isinstance(value, bool) and kind is int:
                raise _fail(f"{prefix}{key}", f"expected {_kind_name(kind)}, got {type(value).__name__}")
            out[key] = value
    return out


def _kind_name(kind: type | tuple) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {str: "a string", int: "an integer", list: "a list", dict: "a table", bool: "true or false"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def _address(key: str, value: str) -> IPAddress:
    try:
        return IPAddress(check_ipv4(value))
    except InvalidInput as exc:
        raise _fail(key, exc.message) from None


def _pool(key: str, value: str) -> IPRange:
    parts = [p.strip() for p in value.split("-")]
    if len(parts) != 2:
        raise _fail(key, f"{value!r} is not a range like 10.0.0.100-10.0.0.200")
    first, last = (_address(key, p) for p in parts)
    if first > last:
        raise _fail(key, f"{value!r} starts after it ends")
    return IPRange(first, last)


def _port(key: str, value: int) -> int:
    if not 1 <= value <= 65535:
        raise _fail(key, f"{value} is not a port number (1-65535)")
    return value


def _positive(key: str, value: int, most: int = 2**31 - 1) -> int:
    if not 0 < value <= most:
        raise _fail(key, f"{value} must be from 1 to {most}")
    return value


# Every key the file may hold, by table ("" is the top level). The README
# documents each one; a test keeps the two in step.
SCHEMA: dict[str, dict[str, type]] = {
    "": {
        "state_dir": str, "network": dict, "dhcp": dict, "http": dict, "tftp": dict, "ipxe": dict, "agent": dict,
        "boot": dict,
    },
    "network": {"interface": str, "dhcp": str, "advertise": str},
    "dhcp": {"pool": str, "lease_seconds": int, "router": str, "dns": list, "domain": str},
    "http": {"port": int, "bind": str, "threads": int},
    "tftp": {"port": int, "root": str, "timeout": int},
    "ipxe": {"bios": str, "efi": str, "efi_fallback": str},
    "agent": {"dir": str, "kernel_args": str, "token_seconds": int},
    "boot": {"unknown": str},
}
UNKNOWN_MACHINES = ("discover", "ignore")


def parse(doc: dict[str, Any], source: Path | None = None) -> Settings:
    top = _take(doc, SCHEMA[""], "")
    if "state_dir" not in top:
        raise _fail("state_dir", "missing (the directory for the database, images and agent)")
    if "network" not in top:
        raise _fail("network", "missing table (at least network.interface)")

    net = _take(top["network"], SCHEMA["network"], "network.")
    if not net.get("interface"):
        raise _fail("network.interface", "missing (the provisioning interface, e.g. \"br0\")")
    mode = net.get("dhcp", "full")
    if mode not in DHCP_MODES:
        raise _fail("network.dhcp", f"{mode!r} is not one of {', '.join(DHCP_MODES)}")
    network = NetworkSettings(
        interface=net["interface"],
        dhcp=mode,
        advertise=_address("network.advertise", net["advertise"]) if "advertise" in net else None,
    )

    d = _take(top.get("dhcp", {}), SCHEMA["dhcp"], "dhcp.")
    dns = d.get("dns", [])
    for i, item in enumerate(dns):
        if not isinstance(item, str):
            raise _fail(f"dhcp.dns[{i}]", "expected an address string")
    dhcp = DhcpSettings(
        pool=_pool("dhcp.pool", d["pool"]) if "pool" in d else None,
        # DHCP carries lease times in 32 bits; 0xffffffff means "infinite".
        lease_seconds=_positive("dhcp.lease_seconds", d.get("lease_seconds", 3600), most=2**32 - 2),
        router=_address("dhcp.router", d["router"]) if "router" in d else None,
        dns=tuple(_address(f"dhcp.dns[{i}]", x) for i, x in enumerate(dns)),
        domain=d.get("domain"),
    )
    if network.dhcp == "full" and dhcp.pool is None:
        raise _fail("dhcp.pool", "missing; network.dhcp = \"full\" hands out addresses from it")

    h = _take(top.get("http", {}), SCHEMA["http"], "http.")
    http = HttpSettings(
        port=_port("http.port", h.get("port", 8080)),
        bind=str(_address("http.bind", h["bind"])) if "bind" in h else "0.0.0.0",
        threads=_positive("http.threads", h.get("threads", 16), most=512),
    )

    t = _take(top.get("tftp", {}), SCHEMA["tftp"], "tftp.")
    tftp = TftpSettings(
        port=_port("tftp.port", t.get("port", 69)),
        root=Path(t["root"]) if "root" in t else None,
        timeout=_positive("tftp.timeout", t.get("timeout", 1), most=255),  # RFC 2349
    )

    i = _take(top.get("ipxe", {}), SCHEMA["ipxe"], "ipxe.")
    ipxe = IpxeSettings(**{k: Path(v) for k, v in i.items()})

    a = _take(top.get("agent", {}), SCHEMA["agent"], "agent.")
    agent = AgentSettings(
        dir=Path(a["dir"]) if "dir" in a else None,
        kernel_args=a.get("kernel_args", AgentSettings.kernel_args),
        token_seconds=_positive("agent.token_seconds", a.get("token_seconds", 3600)),
    )

    b = _take(top.get("boot", {}), SCHEMA["boot"], "boot.")
    unknown = b.get("unknown", "discover")
    if unknown not in UNKNOWN_MACHINES:
        raise _fail("boot.unknown", f"{unknown!r} is not one of {', '.join(UNKNOWN_MACHINES)}")

    return Settings(
        state_dir=Path(top["state_dir"]),
        network=network,
        dhcp=dhcp,
        http=http,
        tftp=tftp,
        ipxe=ipxe,
        agent=agent,
        boot=BootSettings(unknown=unknown),
        source=source,
    )


def load(path: Path | str) -> Settings:
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"config: {path}: no such file (pass --config FILE)") from None
    except OSError as exc:
        raise ConfigError(f"config: {path}: cannot read: {exc.strerror}") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"config: {path}: not valid TOML: {exc}") from None
    return parse(doc, source=path)


def resolve_interface(settings: Settings) -> InterfaceInfo:
    """Read the provisioning interface's IPv4 address and subnet with pyroute2
    and check the DHCP settings against it."""
    from pyroute2 import IPRoute

    name = settings.network.interface
    with IPRoute() as ipr:
        links = ipr.link_lookup(ifname=name)
        if not links:
            raise _fail("network.interface", f"no interface named {name!r} on this system")
        index = links[0]
        link = ipr.link("get", index=index)[0]
        mac = link.get_attr("IFLA_ADDRESS") or ""
        addrs = ipr.addr("dump", index=index, family=2)
    if not addrs:
        raise _fail("network.interface", f"{name!r} has no IPv4 address")
    first = addrs[0]
    address = IPAddress(first.get_attr("IFA_ADDRESS"))
    network = IPNetwork(f"{address}/{first['prefixlen']}")
    info = InterfaceInfo(name=name, index=index, address=address, network=network.cidr, mac=mac)
    check_against_interface(settings, info)
    return info


def base_url(settings: Settings, info: InterfaceInfo) -> str:
    """Where clients reach the appliance's HTTP server: what boot scripts,
    DHCP boot file URLs and the agent's command line all name."""
    return f"http://{settings.network.advertise or info.address}:{settings.http.port}"


def check_against_interface(settings: Settings, info: InterfaceInfo) -> None:
    pool = settings.dhcp.pool
    if settings.network.dhcp == "full" and pool is not None:
        if pool.first < info.network.first or pool.last > info.network.last:
            raise _fail("dhcp.pool", f"{pool} is outside {info.name}'s subnet {info.network}")
        if info.address in pool:
            raise _fail("dhcp.pool", f"{pool} contains the appliance's own address {info.address}")
    if settings.dhcp.router is not None and settings.dhcp.router not in info.network:
        raise _fail("dhcp.router", f"{settings.dhcp.router} is outside {info.name}'s subnet {info.network}")
