"""Pure DHCP decision logic: a parsed request in, a `Decision` out.

No sockets, no SQL, no clock: the caller passes the lease view and `now`,
and applies the returned lease effect. Staying silent is an explicit
decision (reply None), never an exception.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field, replace
from ipaddress import IPv4Address
from typing import Any, Protocol

from provisioner.net.dhcp import options as o
from provisioner.net.dhcp.codec import BOOTREPLY, BOOTREQUEST, FLAG_BROADCAST, ZERO, DhcpPacket, MalformedPacket
from provisioner.net.dhcp.config import DhcpConfig
from provisioner.net.dhcp.pxe import IPXE_NO_PXEDHCP, PXE_DISCOVERY_CONTROL, Client, classify

BROADCAST = IPv4Address("255.255.255.255")
SERVER_PORT = 67
CLIENT_PORT = 68
PXE_PORT = 4011


class LeaseView(Protocol):
    """What the responder needs to know about addresses (db.leases.LeaseStore)."""

    def reservation(self, mac: str) -> IPv4Address | None: ...

    def current(self, mac: str, now: float) -> IPv4Address | None:
        """The address this MAC was last offered or leased, even if expired."""

    def available(self, ip: IPv4Address, mac: str, now: float) -> bool:
        """Not leased, offered or reserved to another MAC, and not declined."""

    def next_free(self, first: IPv4Address, last: IPv4Address, mac: str, now: float) -> IPv4Address | None: ...

    def known(self, mac: str) -> bool:
        """Whether a host record owns this MAC."""


# Lease effects: what the caller must do to the store after sending the reply.
@dataclass(frozen=True)
class Offer:
    mac: str
    ip: IPv4Address


@dataclass(frozen=True)
class Commit:
    mac: str
    ip: IPv4Address
    seconds: int
    hostname: str | None = None
    client_id: bytes | None = None


@dataclass(frozen=True)
class Release:
    mac: str
    ip: IPv4Address


@dataclass(frozen=True)
class Decline:
    mac: str
    ip: IPv4Address


@dataclass(frozen=True)
class Forget:
    """The client chose another server's offer: drop ours."""

    mac: str


Effect = Offer | Commit | Release | Decline | Forget


@dataclass(frozen=True)
class Destination:
    address: IPv4Address
    port: int
    broadcast: bool


@dataclass(frozen=True)
class Decision:
    reply: DhcpPacket | None = None
    destination: Destination | None = None
    effect: Effect | None = None
    event: str | None = None  # "dhcp.offer", ...; None for nothing worth recording
    message: str = ""
    data: dict[str, Any] = field(default_factory=dict)


SILENT = Decision()


def respond(
    req: DhcpPacket,
    config: DhcpConfig,
    leases: LeaseView,
    now: float,
    port: int = SERVER_PORT,
    source: tuple[str, int] | None = None,
) -> Decision:
    """Decide the answer to one request that arrived on local `port` from
    `source`. Raises MalformedPacket for requests whose options are
    impossible (the server logs and drops those)."""
    if req.op != BOOTREQUEST:
        return SILENT  # replies from other servers, or our own echoes
    mac = req.mac
    if mac is None:
        raise MalformedPacket(f"not an Ethernet client (htype {req.htype}, hlen {req.hlen})")
    kind = o.message_type(req)
    if kind is None:
        return SILENT  # plain BOOTP: not served
    client = classify(req, mac, config.base_url)
    if config.ignore_unknown and client.netboot and not leases.known(mac):
        # boot.unknown = "ignore": no boot file for a machine nobody
        # registered, so its firmware goes on to its next boot device. As
        # the network's DHCP server we still give it an address.
        if config.mode == "proxy" or port == PXE_PORT:
            if kind != o.DISCOVER:
                return SILENT
            return Decision(event="dhcp.ignored", message=f"{mac} is not a known host: no boot file (boot.unknown)",
                            data={"client": client.kind})
        client = replace(client, bootfile=None)
    if port == PXE_PORT:
        return _pxe_boot_server(req, kind, client, config, source)
    if config.mode == "proxy":
        return _proxy(req, kind, client, config)
    return _full(req, kind, client, config, leases, now)


# --- reply construction ---


def _reply(req: DhcpPacket, kind: int, config: DhcpConfig, client: Client | None,
           yiaddr: IPv4Address = ZERO, ciaddr: IPv4Address = ZERO,
           extra: tuple[tuple[int, bytes], ...] = ()) -> DhcpPacket:
    opts: list[tuple[int, bytes]] = [(o.MESSAGE_TYPE, bytes((kind,))), (o.SERVER_ID, config.server_ip.packed)]
    opts += extra
    siaddr, bootfile = ZERO, b""
    if client is not None and client.netboot and kind != o.NAK:
        opts += _pxe_options(client, config)
        siaddr = config.tftp_server  # next-server; without it PXE ROMs go to 4011
        bootfile = client.bootfile.encode()
    if len(bootfile) > 127:
        # Does not fit the file field with its NUL: option 67 instead.
        opts.append((o.BOOTFILE, bootfile))
        bootfile = b""
    return DhcpPacket(
        op=BOOTREPLY,
        htype=req.htype,
        hlen=req.hlen,
        xid=req.xid,
        flags=req.flags,
        ciaddr=ciaddr,
        yiaddr=yiaddr,
        siaddr=siaddr,
        giaddr=req.giaddr,
        chaddr=req.chaddr,
        file=bootfile,
        options=tuple(opts),
    )


def _pxe_options(client: Client, config: DhcpConfig) -> list[tuple[int, bytes]]:
    opts: list[tuple[int, bytes]] = []
    if client.kind == "http":
        opts.append((o.VENDOR_CLASS, b"HTTPClient"))
    elif client.pxe_vendor:
        opts.append((o.VENDOR_CLASS, b"PXEClient"))
    if client.guid is not None:
        opts.append((o.CLIENT_GUID, client.guid))
    if client.pxe_vendor and client.arch in (None, 0):
        # BIOS only: some UEFI firmware ignores proxy offers that carry
        # discovery control and must take the 4011 path instead (pixiecore).
        opts.append((o.VENDOR_SPECIFIC, PXE_DISCOVERY_CONTROL))
    if client.kind == "ipxe" and config.mode == "full":
        opts.append((o.IPXE_ENCAP, IPXE_NO_PXEDHCP))
    return opts


def _lease_options(config: DhcpConfig, with_times: bool) -> tuple[tuple[int, bytes], ...]:
    opts: list[tuple[int, bytes]] = []
    if with_times:
        secs = config.lease_seconds
        opts += [
            (o.LEASE_TIME, struct.pack("!I", secs)),
            (o.RENEWAL_TIME, struct.pack("!I", secs // 2)),  # T1 = 0.5 (RFC 2131 4.4.5)
            (o.REBINDING_TIME, struct.pack("!I", secs * 7 // 8)),  # T2 = 0.875
        ]
    opts.append((o.SUBNET_MASK, config.subnet.netmask.packed))
    if config.router is not None:
        opts.append((o.ROUTER, config.router.packed))
    if config.dns:
        opts.append((o.DNS, b"".join(a.packed for a in config.dns)))
    if config.domain:
        opts.append((o.DOMAIN, config.domain.encode()))
    return tuple(opts)


def _destination(req: DhcpPacket, nak: bool = False) -> Destination:
    # RFC 2131 4.1. Unicast to yiaddr would need an ARP entry the client
    # cannot answer yet, so an unconfigured client always gets a broadcast.
    if req.giaddr != ZERO:
        return Destination(req.giaddr, SERVER_PORT, False)
    if nak:
        return Destination(BROADCAST, CLIENT_PORT, True)
    if req.ciaddr != ZERO:
        return Destination(req.ciaddr, CLIENT_PORT, False)
    return Destination(BROADCAST, CLIENT_PORT, True)


def _decision(event: str, reply: DhcpPacket, dest: Destination, client: Client,
              effect: Effect | None = None, ip: IPv4Address | None = None, note: str = "") -> Decision:
    data: dict[str, Any] = {"xid": f"{reply.xid:08x}", "client": client.kind}
    if client.arch is not None:
        data["arch"] = client.arch
    if client.bootfile and event != "dhcp.nak":
        data["bootfile"] = client.bootfile
    if ip is not None:
        data["ip"] = str(ip)
    word = event.split(".")[1].upper()
    message = f"{word} {ip or ''} to {client.mac}".replace("  ", " ") + (f" ({note})" if note else "")
    return Decision(reply, dest, effect, event, message, data)


# --- PXE boot server (UDP 4011) ---


def _pxe_boot_server(req: DhcpPacket, kind: int, client: Client, config: DhcpConfig,
                     source: tuple[str, int] | None) -> Decision:
    if kind != o.REQUEST or not client.netboot or source is None:
        return SILENT
    # The client already has its address and asks us directly: answer the
    # source address and port, as pixiecore does.
    reply = _reply(req, o.ACK, config, client, ciaddr=req.ciaddr)
    dest = Destination(IPv4Address(source[0]), source[1], False)
    return _decision("dhcp.ack", reply, dest, client, note="PXE boot server")


# --- ProxyDHCP (UDP 67) ---


def _proxy(req: DhcpPacket, kind: int, client: Client, config: DhcpConfig) -> Decision:
    if not client.netboot:
        return SILENT  # the site's DHCP server owns everyone else
    if kind == o.DISCOVER:
        # yiaddr 0 marks a proxy offer; PXE options only, never an address.
        reply = _reply(req, o.OFFER, config, client)
        return _decision("dhcp.offer", reply, _destination(req), client, note="proxy")
    if kind == o.REQUEST and o.server_id(req) == config.server_ip:
        # iPXE sends its ProxyDHCPREQUEST to 67 when option 43 was offered.
        reply = _reply(req, o.ACK, config, client, ciaddr=req.ciaddr)
        return _decision("dhcp.ack", reply, _destination(req), client, note="proxy")
    return SILENT


# --- full DHCP server (UDP 67) ---


def _full(req: DhcpPacket, kind: int, client: Client, config: DhcpConfig,
          leases: LeaseView, now: float) -> Decision:
    if req.giaddr != ZERO and req.giaddr not in config.subnet:
        # Relayed from another segment: our one pool is on the provisioning
        # subnet, and an address from it would be unusable there.
        return Decision(event="dhcp.ignored", message=f"{client.mac} relayed from {req.giaddr}, outside {config.subnet}",
                        data={"giaddr": str(req.giaddr)})
    if kind == o.DISCOVER:
        ip = _choose(req, client.mac, config, leases, now)
        if ip is None:
            return Decision(event="dhcp.exhausted", message=f"no free address for {client.mac}",
                            data={"xid": f"{req.xid:08x}"})
        reply = _reply(req, o.OFFER, config, client, yiaddr=ip, extra=_lease_options(config, True))
        return _decision("dhcp.offer", reply, _destination(req), client, Offer(client.mac, ip), ip)
    if kind == o.REQUEST:
        return _request(req, client, config, leases, now)
    sid = o.server_id(req)
    if kind in (o.DECLINE, o.RELEASE):
        if sid is not None and sid != config.server_ip:
            return SILENT
        if kind == o.DECLINE:
            ip = o.requested_ip(req)
            if ip is None:
                return SILENT
            if ip != leases.current(client.mac, now):
                # Only the address we offered or leased to this client can be
                # declined by it; anything else would let one client take
                # another's address (or any address) out of service.
                return Decision(event="dhcp.ignored", message=f"{client.mac} declined {ip}, which is not its address",
                                data={"ip": str(ip)})
            return Decision(effect=Decline(client.mac, ip), event="dhcp.decline",
                            message=f"{client.mac} declined {ip} (address in use?)", data={"ip": str(ip)})
        return Decision(effect=Release(client.mac, req.ciaddr), event="dhcp.release",
                        message=f"{client.mac} released {req.ciaddr}", data={"ip": str(req.ciaddr)})
    if kind == o.INFORM:
        # The client has an address already; options only, no lease times.
        reply = _reply(req, o.ACK, config, client, ciaddr=req.ciaddr, extra=_lease_options(config, False))
        return _decision("dhcp.ack", reply, _destination(req), client, note="inform")
    return SILENT


def _choose(req: DhcpPacket, mac: str, config: DhcpConfig, leases: LeaseView, now: float) -> IPv4Address | None:
    reserved = leases.reservation(mac)
    if reserved is not None and reserved in config.subnet and leases.available(reserved, mac, now):
        return reserved
    for candidate in (leases.current(mac, now), o.requested_ip(req)):
        if candidate is not None and config.in_pool(candidate) and leases.available(candidate, mac, now):
            return candidate
    assert config.pool_first is not None and config.pool_last is not None
    return leases.next_free(config.pool_first, config.pool_last, mac, now)


def _request(req: DhcpPacket, client: Client, config: DhcpConfig, leases: LeaseView, now: float) -> Decision:
    sid = o.server_id(req)
    requested = o.requested_ip(req)
    if sid is not None and sid != config.server_ip:
        # SELECTING another server's offer: ours is no longer wanted.
        return Decision(effect=Forget(client.mac))
    if sid is not None:
        state, ip = "selecting", requested
    elif req.ciaddr != ZERO:
        state, ip = "renewing", req.ciaddr
    else:
        state, ip = "init-reboot", requested
    if ip is None:
        raise MalformedPacket(f"REQUEST in {state} without an address")
    why = _refusal(ip, client.mac, config, leases, now)
    if why is not None:
        nak = _reply(req, o.NAK, config, None, extra=((o.MESSAGE, why.encode()),))
        if req.giaddr != ZERO:
            # The relay must broadcast a NAK on the client's segment.
            nak = replace(nak, flags=nak.flags | FLAG_BROADCAST)
        return _decision("dhcp.nak", nak, _destination(req, nak=True), client, ip=ip, note=why)
    ciaddr = req.ciaddr if state == "renewing" else ZERO
    reply = _reply(req, o.ACK, config, client, yiaddr=ip, ciaddr=ciaddr, extra=_lease_options(config, True))
    effect = Commit(client.mac, ip, config.lease_seconds, o.hostname(req), o.client_id(req))
    return _decision("dhcp.ack", reply, _destination(req), client, effect, ip, note=state)


def _refusal(ip: IPv4Address, mac: str, config: DhcpConfig, leases: LeaseView, now: float) -> str | None:
    """Why `ip` cannot be confirmed for `mac`, or None if it can."""
    if ip not in config.subnet:
        return f"{ip} is not on this network"
    reserved = leases.reservation(mac)
    if reserved is not None and reserved in config.subnet and ip != reserved and leases.available(reserved, mac, now):
        return f"{mac} is reserved {reserved}"
    if ip != reserved and not config.in_pool(ip):
        return f"{ip} is not in the pool"
    if not leases.available(ip, mac, now):
        return f"{ip} belongs to another client"
    return None

