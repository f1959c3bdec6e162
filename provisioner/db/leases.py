"""The DHCP lease store: SQLite for what must survive a restart (ACKed
leases, declined addresses), memory for what must not cost a disk write
(pending offers).

The DHCP server is the only writer of `leases` and `declined`, so the store
keeps an in-memory index of them: allocation scans the pool address by
address and must not run a query per address. Reservations live in
`hosts.ip` and are edited by others, so they are read from SQLite (the
per-address reserved set is cached for a moment only).

One LeaseStore belongs to one thread (the DHCP loop). Other threads read
with `list_leases(db)` on their own connection.
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Callable

from sqlite_utils import Database

from provisioner.db.connection import write

OFFER_SECONDS = 60.0  # a client normally REQUESTs within a second or two
DECLINE_SECONDS = 600.0  # keep a declined (probably conflicting) address out this long
RESERVED_CACHE_SECONDS = 2.0

_RESERVATIONS = (
    "SELECT host_macs.mac AS mac, hosts.ip AS ip FROM host_macs "
    "JOIN hosts ON hosts.id = host_macs.host_id WHERE hosts.ip IS NOT NULL AND hosts.ip != ''"
)


@dataclass(frozen=True)
class Lease:
    mac: str
    ip: IPv4Address
    expires: float  # epoch seconds; 0 = released
    hostname: str | None = None
    client_id: str | None = None  # hex
    updated: float = 0.0

    def active(self, now: float) -> bool:
        return self.expires > now


def _lease(row: dict) -> Lease:
    return Lease(
        mac=row["mac"],
        ip=IPv4Address(row["ip"]),
        expires=row["expires"],
        hostname=row["hostname"],
        client_id=row["client_id"],
        updated=row["updated"],
    )


def list_leases(db: Database, now: float | None = None) -> list[Lease]:
    """All lease records ordered by address; only active ones if `now` is given."""
    rows = db.execute("SELECT mac, ip, expires, hostname, client_id, updated FROM leases").fetchall()
    leases = [_lease(dict(zip(("mac", "ip", "expires", "hostname", "client_id", "updated"), r))) for r in rows]
    if now is not None:
        leases = [lease for lease in leases if lease.active(now)]
    return sorted(leases, key=lambda lease: lease.ip)


def leases_of(db: Database, macs: tuple[str, ...], now: float) -> list[Lease]:
    """The active leases held by any of these MACs, newest first."""
    if not macs:
        return []
    rows = db.execute(
        f"SELECT mac, ip, expires, hostname, client_id, updated FROM leases "
        f"WHERE mac IN ({','.join('?' * len(macs))}) AND expires > ? ORDER BY updated DESC",
        [*macs, now],
    ).fetchall()
    return [_lease(dict(zip(("mac", "ip", "expires", "hostname", "client_id", "updated"), r))) for r in rows]


def _ip_or_none(text: str | None) -> IPv4Address | None:
    try:
        return IPv4Address(text) if text else None
    except ValueError:
        return None  # a bad hosts.ip is the host editor's problem, not a crash here


class LeaseStore:
    def __init__(self, db: Database, clock: Callable[[], float] = time.time):
        self.db = db
        self._clock = clock
        self._leases: dict[str, Lease] = {}  # mac -> lease (any state)
        # Address-keyed indexes use int(ip): IPv4Address hashes through a
        # string, and the pool scan does a few lookups per address.
        self._by_ip: dict[int, str] = {}  # ip -> mac of its lease record
        self._offers: dict[str, tuple[IPv4Address, float]] = {}  # mac -> (ip, until)
        self._offered: dict[int, tuple[str, float]] = {}  # ip -> (mac, until)
        self._declined: dict[int, float] = {}  # ip -> until
        self._reserved: dict[int, frozenset[str]] = {}
        self._reserved_at = -1e18
        self._cursor = 0  # where next_free starts looking
        self.reload()

    def reload(self) -> None:
        now = self._clock()
        self._leases = {lease.mac: lease for lease in list_leases(self.db)}
        self._by_ip = {int(lease.ip): lease.mac for lease in self._leases.values()}
        self._declined = {}
        for ip, until in self.db.execute("SELECT ip, until FROM declined").fetchall():
            if until > now and _ip_or_none(ip) is not None:
                self._declined[int(IPv4Address(ip))] = until

    # --- reads (the responder's LeaseView) ---

    def lookup_mac(self, mac: str) -> Lease | None:
        return self._leases.get(mac)

    def lookup_ip(self, ip: IPv4Address) -> Lease | None:
        mac = self._by_ip.get(int(ip))
        return None if mac is None else self._leases[mac]

    def reservation(self, mac: str) -> IPv4Address | None:
        row = self.db.execute(_RESERVATIONS + " AND host_macs.mac = ?", [mac]).fetchone()
        return None if row is None else _ip_or_none(row[1])

    def known(self, mac: str) -> bool:
        return self.db.execute("SELECT 1 FROM host_macs WHERE mac = ?", [mac]).fetchone() is not None

    def _reserved_ips(self) -> dict[int, frozenset[str]]:
        now = time.monotonic()
        if now - self._reserved_at > RESERVED_CACHE_SECONDS:
            found: dict[int, set[str]] = {}
            for mac, text in self.db.execute(_RESERVATIONS).fetchall():
                ip = _ip_or_none(text)
                if ip is not None:
                    found.setdefault(int(ip), set()).add(mac)
            self._reserved = {ip: frozenset(macs) for ip, macs in found.items()}
            self._reserved_at = now
        return self._reserved

    def current(self, mac: str, now: float) -> IPv4Address | None:
        offer = self._offers.get(mac)
        if offer is not None and offer[1] > now:
            return offer[0]
        lease = self._leases.get(mac)
        return None if lease is None else lease.ip

    def available(self, ip: IPv4Address, mac: str, now: float) -> bool:
        return self._free(int(ip), mac, now, self._reserved_ips())

    def _free(self, n: int, mac: str, now: float, reserved: dict[int, frozenset[str]]) -> bool:
        until = self._declined.get(n)
        if until is not None and until > now:
            return False
        holder = self._by_ip.get(n)
        if holder is not None and holder != mac and self._leases[holder].active(now):
            return False
        offer = self._offered.get(n)
        if offer is not None and offer[0] != mac and offer[1] > now:
            return False
        owners = reserved.get(n)
        return owners is None or mac in owners

    def next_free(self, first: IPv4Address, last: IPv4Address, mac: str, now: float) -> IPv4Address | None:
        """The next free address after the last one handed out, wrapping
        around the pool. Scanning from the pool's start would walk past every
        address in use for every new client (slow on a large, busy pool),
        and would hand an address just released by one client straight to
        another instead of keeping it for its owner's return."""
        reserved = self._reserved_ips()
        lo, hi = int(first), int(last)
        start = self._cursor if lo <= self._cursor <= hi else lo
        for n in itertools.chain(range(start, hi + 1), range(lo, start)):
            if self._free(n, mac, now, reserved):
                self._cursor = n + 1
                return IPv4Address(n)
        return None

    # --- writes ---

    def offer(self, mac: str, ip: IPv4Address, now: float, seconds: float = OFFER_SECONDS) -> None:
        """Hold `ip` for `mac` in memory only: an OFFER costs no disk write."""
        self.forget(mac)
        self._offers[mac] = (ip, now + seconds)
        self._offered[int(ip)] = (mac, now + seconds)
        if len(self._offers) > 4096:
            self._expire_offers(now)

    def forget(self, mac: str) -> None:
        old = self._offers.pop(mac, None)
        if old is not None and self._offered.get(int(old[0]), ("",))[0] == mac:
            del self._offered[int(old[0])]

    def _expire_offers(self, now: float) -> None:
        for mac in [m for m, (_, until) in self._offers.items() if until <= now]:
            self.forget(mac)

    def commit(self, mac: str, ip: IPv4Address, seconds: int, now: float,
               hostname: str | None = None, client_id: bytes | None = None) -> Lease:
        lease = Lease(mac, ip, now + seconds, hostname, client_id.hex() if client_id else None, now)
        with write(self.db):
            # The address may still carry another MAC's expired record.
            self.db.execute("DELETE FROM leases WHERE ip = ? AND mac != ?", [str(ip), mac])
            self.db.execute(
                "INSERT OR REPLACE INTO leases (mac, ip, expires, hostname, client_id, updated) VALUES (?, ?, ?, ?, ?, ?)",
                [mac, str(ip), lease.expires, hostname, lease.client_id, now],
            )
        self.forget(mac)
        self._drop_record(mac)
        stale = self._by_ip.pop(int(ip), None)
        if stale is not None:
            self._leases.pop(stale, None)
        self._leases[mac] = lease
        self._by_ip[int(ip)] = mac
        return lease

    def _drop_record(self, mac: str) -> None:
        old = self._leases.pop(mac, None)
        if old is not None and self._by_ip.get(int(old.ip)) == mac:
            del self._by_ip[int(old.ip)]

    def release(self, mac: str, ip: IPv4Address, now: float) -> None:
        """Keep the record (expires = 0) so the client gets the same address
        back next time if nobody else took it."""
        self.forget(mac)
        lease = self._leases.get(mac)
        if lease is None or lease.ip != ip:
            return  # not ours to release
        with write(self.db):
            self.db.execute("UPDATE leases SET expires = 0, updated = ? WHERE mac = ? AND ip = ?", [now, mac, str(ip)])
        self._leases[mac] = Lease(mac, ip, 0.0, lease.hostname, lease.client_id, now)

    def decline(self, mac: str, ip: IPv4Address, now: float, seconds: float = DECLINE_SECONDS) -> None:
        self.forget(mac)
        with write(self.db):
            self.db.execute("INSERT OR REPLACE INTO declined (ip, mac, until) VALUES (?, ?, ?)", [str(ip), mac, now + seconds])
            self.db.execute("DELETE FROM leases WHERE mac = ? AND ip = ?", [mac, str(ip)])
        lease = self._leases.get(mac)
        if lease is not None and lease.ip == ip:
            self._drop_record(mac)
        self._declined[int(ip)] = now + seconds

    def declined(self, now: float) -> dict[IPv4Address, float]:
        return {IPv4Address(n): until for n, until in self._declined.items() if until > now}
