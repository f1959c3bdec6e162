"""The one service layer behind the CLI, the REST API and the web console.

Every change goes through here, so that all three validate the same way and
record the same events. Adapters translate `ProvisionerError`s; nothing here
knows about HTTP or argument parsing.
"""

from __future__ import annotations

import re
import time
from typing import Any, Callable

from sqlite_utils import Database

from provisioner.core.hardware import clean_hardware
from provisioner.core.imageref import parse_ref
from provisioner.core.mac import normalize_mac
from provisioner.core.names import check_host_name, check_ipv4, default_host_name, parse_label
from provisioner.core.policy import Discover, Hold, decide_boot
from provisioner.core.records import Event, Host
from provisioner.core.render import BootContext, render_boot_script
from provisioner.db import events, hosts, tokens, write
from provisioner.db.leases import leases_of
from provisioner.errors import Conflict, Forbidden, InvalidInput, NotFound
from provisioner.images.catalog import ImagesMixin
from provisioner.settings import Settings


MAX_EVENTS = 1000
_PHASE = re.compile(r"^[a-z0-9][a-z0-9-]{0,31}$")  # becomes part of an event kind


class Service(ImagesMixin):
    def __init__(self, settings: Settings, db: Database, *, clock: Callable[[], float] = time.time):
        self.settings = settings
        self.db = db
        self.clock = clock

    # --- hosts ---

    def list_hosts(self) -> list[Host]:
        return hosts.all_hosts(self.db)

    def find_host(self, ref: str) -> Host | None:
        """By name, or by any of its MACs."""
        host = hosts.by_name(self.db, ref)
        if host is None:
            try:
                host = hosts.by_mac(self.db, normalize_mac(ref))
            except InvalidInput:
                host = None
        return host

    def get_host(self, ref: str) -> Host:
        host = self.find_host(ref)
        if host is None:
            raise NotFound(f"no host named or with MAC {ref!r}")
        return host

    def describe(self, host: Host) -> dict[str, Any]:
        """A host as the CLI and the API show it: the record plus its current
        DHCP lease (full mode only)."""
        active = leases_of(self.db, host.macs, self.clock())
        doc = host.to_json()
        doc["lease"] = (
            {"ip": str(active[0].ip), "mac": active[0].mac, "expires": active[0].expires} if active else None
        )
        return doc

    def add_host(self, mac: str, name: str, labels: list[str] | dict[str, str] = (), *, ip: str | None = None,
                 image: str | None = None, actor: str = "cli") -> Host:
        mac = normalize_mac(mac)
        check_host_name(name)
        if ip is not None:
            ip = check_ipv4(ip)
        label_map = dict(labels) if isinstance(labels, dict) else dict(parse_label(x) for x in labels)
        for key, value in label_map.items():
            parse_label(f"{key}={value}")
        with write(self.db):
            if hosts.by_name(self.db, name) is not None:
                raise Conflict(f"a host named {name!r} exists already")
            owner = hosts.by_mac(self.db, mac)
            if owner is not None:
                raise Conflict(f"MAC {mac} belongs to host {owner.name!r} already")
            if ip is not None and (holder := hosts.by_ip(self.db, ip)) is not None:
                raise Conflict(f"address {ip} is reserved for host {holder.name!r} already")
            if image:
                self.resolve_image(image)  # refuse an image that is not published
            host = hosts.insert(self.db, name=name, macs=[mac], state="new", labels=label_map, ip=ip)
            if image:
                hosts.update(self.db, host.id, image=str(parse_ref(image)))
                host = hosts.by_mac(self.db, mac)
            events.append(
                self.db, "host.added", f"host {name} added with MAC {mac}" + (f", address {ip}" if ip else ""),
                host=name, mac=mac, actor=actor,
            )
        return host

    def remove_host(self, ref: str, *, actor: str = "cli") -> Host:
        with write(self.db):
            host = self.get_host(ref)
            hosts.delete(self.db, host.id)
            events.append(
                self.db, "host.removed", f"host {host.name} removed", host=host.name, actor=actor,
                data={"macs": list(host.macs)},
            )
        return host

    def events(self, host_ref: str | None = None, *, limit: int = 100, after_id: int = 0) -> list[Event]:
        """The newest `limit` events (1 to 1000), of one host (by name or any
        of its MACs) or of a bare MAC that no host owns yet."""
        limit = max(1, min(limit, MAX_EVENTS))
        if host_ref is None:
            return events.recent(self.db, limit=limit, after_id=after_id)
        host = self.find_host(host_ref)
        if host is not None:
            return events.recent(self.db, host=host.name, macs=host.macs, limit=limit, after_id=after_id)
        try:
            mac = normalize_mac(host_ref)
        except InvalidInput:
            # A removed host's history stays readable by its name.
            return events.recent(self.db, host=host_ref, limit=limit, after_id=after_id)
        return events.recent(self.db, macs=(mac,), limit=limit, after_id=after_id)

    def record(self, kind: str, message: str, **kw: Any) -> None:
        with write(self.db):
            events.append(self.db, kind, message, **kw)

    # --- boot ---

    def boot_script(self, mac: str, base: str, *, attempt: int = 1) -> str:
        """The iPXE script for the machine with this MAC, from the pure policy."""
        mac = normalize_mac(mac)
        attempt = max(1, min(attempt, 100))
        with write(self.db):
            host = hosts.by_mac(self.db, mac)
            decision = decide_boot(host, discover_unknown=self.settings.boot.unknown == "discover")
            token = None
            if isinstance(decision, Discover):
                token = tokens.issue(self.db, mac, "discover", self.clock(), self.settings.agent.token_seconds).token
            kind = type(decision).__name__.lower()
            # A held machine asks again every few seconds; its log says when
            # the hold began, not every time it asked since.
            if not (isinstance(decision, Hold) and self._last_decision(mac) == kind):
                events.append(
                    self.db, "boot.script", f"{mac}: {kind} ({decision.reason})",
                    host=host.name if host else None, mac=mac, actor="ipxe",
                    data={"decision": kind, "attempt": attempt},
                )
        ctx = BootContext(
            base=base, mac=mac, attempt=attempt, token=token, agent_kernel_args=self.settings.agent.kernel_args
        )
        return render_boot_script(decision, ctx)

    def _last_decision(self, mac: str) -> str | None:
        last = events.recent(self.db, macs=(mac,), limit=1)
        return last[0].data.get("decision") if last and last[0].kind == "boot.script" else None

    # --- agent ---

    def _check_token(self, token: Any, *, allow_used: bool, remote: str | None) -> tuple[str, str]:
        if not isinstance(token, str) or not token:
            self._refuse(None, "agent request without a token", remote)
        found = tokens.find(self.db, token)
        if found is None:
            self._refuse(None, "agent request with an unknown token", remote)
        if found.expires < self.clock():
            self._refuse(found.mac, "agent request with an expired token", remote)
        if not allow_used and found.used is not None:
            self._refuse(found.mac, "agent report with a token that was used already", remote)
        return found.mac, found.purpose

    def _refuse(self, mac: str | None, why: str, remote: str | None) -> None:
        # Recorded in its own transaction so the refusal survives the rollback
        # of the request that caused it.
        if self.db.conn.in_transaction:
            self.db.conn.execute("ROLLBACK")
        host = hosts.by_mac(self.db, mac) if mac else None
        with write(self.db):
            events.append(
                self.db, "agent.refused", f"{why} (from {remote or 'unknown'})",
                host=host.name if host else None, mac=mac, actor="agent", data={"remote": remote},
            )
        raise Forbidden(why)

    def agent_plan(self, token: Any, *, remote: str | None = None) -> dict[str, Any]:
        with write(self.db):
            mac, purpose = self._check_token(token, allow_used=False, remote=remote)
            host = hosts.by_mac(self.db, mac)
        return {"mode": purpose, "mac": mac, "host": host.name if host else None}

    def agent_event(self, token: Any, phase: Any, message: Any, *, remote: str | None = None) -> None:
        if not isinstance(phase, str) or not _PHASE.match(phase):
            raise InvalidInput("phase: expected lower-case letters, digits and '-', at most 32")
        if message is not None and (not isinstance(message, str) or len(message) > 4096):
            raise InvalidInput("message: expected a string of at most 4096 characters")
        with write(self.db):
            # Progress may still arrive after the report (e.g. "poweroff").
            mac, _ = self._check_token(token, allow_used=True, remote=remote)
            host = hosts.by_mac(self.db, mac)
            events.append(
                self.db, f"agent.{phase}", message or phase,
                host=host.name if host else None, mac=mac, actor="agent", data={"remote": remote},
            )

    def agent_report(self, token: Any, hardware: Any, *, remote: str | None = None) -> Host:
        facts = clean_hardware(hardware)
        now = self.clock()
        with write(self.db):
            mac, purpose = self._check_token(token, allow_used=False, remote=remote)
            tokens.mark_used(self.db, token, now)
            host = hosts.by_mac(self.db, mac)
            if host is None:
                name = default_host_name(mac)
                if hosts.by_name(self.db, name) is not None:
                    raise Conflict(f"a host named {name!r} exists with other MACs")
                host = hosts.insert(self.db, name=name, macs=[mac], state="discovered", hardware=facts)
            else:
                state = "discovered" if host.state in ("new", "discovered") else host.state
                hosts.update(self.db, host.id, hardware=facts, state=state)
            # Only the MAC this boot was issued for identifies the host: the
            # other NICs in a report are facts, and a report must not be able
            # to claim MACs of other machines.
            host = hosts.by_mac(self.db, mac)
            assert host is not None
            serials = [d["serial"] for d in facts["disks"] if d["serial"]]
            events.append(
                self.db, "host.discovered",
                f"{host.name} discovered: {len(facts['disks'])} disks, {len(facts['nics'])} NICs, "
                f"{(facts['memory_bytes'] or 0) // 2**20} MiB",
                host=host.name, mac=mac, actor="agent",
                data={"remote": remote, "disk_serials": serials, "purpose": purpose},
            )
        return host
