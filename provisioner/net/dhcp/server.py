"""The DHCP socket adapter: move packets between sockets and the responder.

Listener -> responder (pure) -> lease store. One thread reads both sockets
with select; every packet is handled inside its own try block, so a hostile
or malformed packet, or a bug, costs that packet only and never the loop.
Events go to the caller's callback from a separate thread so that a slow
callback (a SQLite insert) cannot delay replies.
"""

from __future__ import annotations

import logging
import queue
import select
import socket
import threading
import time
from pathlib import Path
from typing import Any, Callable

from sqlite_utils import Database

from provisioner.db.connection import open_db
from provisioner.db.leases import LeaseStore
from provisioner.net.dhcp import codec
from provisioner.net.dhcp.config import DhcpConfig
from provisioner.net.dhcp.responder import (
    PXE_PORT,
    SERVER_PORT,
    Commit,
    Decision,
    Decline,
    Effect,
    Forget,
    Offer,
    Release,
    respond,
)

log = logging.getLogger(__name__)

EventSink = Callable[[str, "str | None", str, dict[str, Any]], None]
# At most this many "dhcp.malformed" events per window: a barrage of junk must
# not turn into a barrage of event rows. Every packet is still logged at debug.
MALFORMED_EVENTS_PER_WINDOW = 10
MALFORMED_WINDOW_SECONDS = 60.0
_STOP = object()
RECEIVE_BUFFER = 4 << 20  # capped by net.core.rmem_max
# Events wait here for the callback; if it falls this far behind, new events
# are dropped (and counted) rather than growing memory without bound.
EVENT_QUEUE = 10_000


def apply_effect(store: LeaseStore, effect: Effect, now: float) -> None:
    """Carry out what the responder decided for the lease store."""
    match effect:
        case Offer(mac, ip):
            store.offer(mac, ip, now)
        case Commit(mac, ip, seconds, hostname, client_id):
            store.commit(mac, ip, seconds, now, hostname, client_id)
        case Release(mac, ip):
            store.release(mac, ip, now)
        case Decline(mac, ip):
            store.decline(mac, ip, now)
        case Forget(mac):
            store.forget(mac)


def _noop(kind: str, mac: str | None, message: str, data: dict[str, Any]) -> None:
    pass


class DhcpServer:
    """DhcpServer(config, db_path_or_store, on_event=callable).

    `store` may be a path to the state database (opened here, on a
    connection of our own), an open sqlite-utils Database, or a LeaseStore.
    `ports` defaults to 67 and 4011 (the PXE boot server port, answered in
    both modes: harmless in full mode, required by UEFI in proxy mode)."""

    def __init__(
        self,
        config: DhcpConfig,
        store: LeaseStore | Database | Path | str,
        on_event: EventSink | None = None,
        ports: tuple[int, ...] = (SERVER_PORT, PXE_PORT),
        clock: Callable[[], float] = time.time,
    ):
        self.config = config
        if isinstance(store, LeaseStore):
            self.leases = store
        else:
            self.leases = LeaseStore(store if isinstance(store, Database) else open_db(store), clock=clock)
        self._on_event = on_event or _noop
        self._clock = clock
        self._ports = ports
        self._socks: dict[socket.socket, int] = {}
        self._stop_r, self._stop_w = socket.socketpair()
        self._running = threading.Event()
        self._events: queue.Queue[Any] = queue.Queue(maxsize=EVENT_QUEUE)
        self._threads: list[threading.Thread] = []
        self._malformed_window = (0.0, 0)
        self.stats = {"received": 0, "replied": 0, "malformed": 0, "errors": 0, "events_dropped": 0}

    # --- lifecycle ---

    def bind(self) -> None:
        """Open the sockets (separately from serving so start-up errors,
        such as a missing interface, surface in the caller's thread)."""
        if self._socks:
            return
        for port in self._ports:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
                # A rack powering on at once (or a junk burst) arrives faster
                # than one loop drains it; a deeper queue turns drops into delay.
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
                if self.config.interface:
                    # Only the provisioning interface: never answer (or send
                    # broadcasts) on any other network this host is on.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, self.config.interface.encode())
                # 0.0.0.0: clients without an address send to 255.255.255.255.
                sock.bind(("0.0.0.0", port))
            except OSError:
                sock.close()
                self._close()
                raise
            self._socks[sock] = port

    def start(self) -> threading.Thread:
        self.bind()
        t = threading.Thread(target=self.serve_forever, name="dhcp", daemon=True)
        t.start()
        self._threads.append(t)
        self._running.wait(5)
        return t

    def serve_forever(self) -> None:
        self.bind()
        events = threading.Thread(target=self._deliver_events, name="dhcp-events", daemon=True)
        events.start()
        self._threads.append(events)
        self._running.set()
        socks = [*self._socks, self._stop_r]
        try:
            while True:
                try:
                    ready, _, _ = select.select(socks, [], [])
                except InterruptedError:
                    continue
                if self._stop_r in ready:
                    return
                for sock in ready:
                    self._receive(sock)
        finally:
            self._events.put(_STOP)  # blocking: the sentinel must arrive
            self._close()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop serving and close the sockets. Safe to call twice or before
        start(); a stopped server is not restarted (make a new one)."""
        try:
            self._stop_w.send(b"x")
        except OSError:
            pass
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout)
        self._threads.clear()
        if not self._running.is_set():
            self._close()  # bound but never served

    def _close(self) -> None:
        for sock in self._socks:
            sock.close()
        self._socks = {}

    # --- per packet ---

    def _receive(self, sock: socket.socket) -> None:
        try:
            data, source = sock.recvfrom(65535)
        except OSError as exc:
            log.warning("dhcp: receive failed: %s", exc)
            return
        self.stats["received"] += 1
        port = self._socks.get(sock, SERVER_PORT)
        try:
            self.handle(data, port, source, sock)
        except codec.MalformedPacket as exc:
            self.stats["malformed"] += 1
            log.debug("dhcp: dropped packet from %s:%s: %s", source[0], source[1], exc.reason)
            self._malformed(source, exc.reason, data)
        except Exception:  # the loop never dies; a bug costs this packet only
            self.stats["errors"] += 1
            log.exception("dhcp: error handling a packet from %s:%s", *source[:2])

    def handle(self, data: bytes, port: int, source: tuple[str, int], sock: socket.socket | None = None) -> Decision:
        request = codec.parse(data)
        now = self._clock()
        decision = respond(request, self.config, self.leases, now, port=port, source=source)
        # The store first: an ACK must not go out for a lease that failed to
        # reach SQLite (offers cost only a dict update).
        if decision.effect is not None:
            self._apply(decision.effect, now)
        if decision.reply is not None and decision.destination is not None and sock is not None:
            dest = decision.destination
            sock.sendto(codec.build(decision.reply), (str(dest.address), dest.port))
            self.stats["replied"] += 1
        if decision.event is not None:
            self._event((decision.event, request.mac, decision.message, decision.data))
        return decision

    def _apply(self, effect: Effect, now: float) -> None:
        apply_effect(self.leases, effect, now)

    def _malformed(self, source: tuple[str, int], reason: str, data: bytes) -> None:
        start, count = self._malformed_window
        now = time.monotonic()
        if now - start > MALFORMED_WINDOW_SECONDS:
            start, count = now, 0
        count += 1
        self._malformed_window = (start, count)
        if count <= MALFORMED_EVENTS_PER_WINDOW:
            data_info = {"source": f"{source[0]}:{source[1]}", "reason": reason, "length": len(data)}
            self._event(("dhcp.malformed", None, f"dropped a malformed DHCP packet: {reason}", data_info))

    def _event(self, item: tuple) -> None:
        try:
            self._events.put_nowait(item)
        except queue.Full:
            self.stats["events_dropped"] += 1

    def _deliver_events(self) -> None:
        while True:
            item = self._events.get()
            if item is _STOP:
                return
            try:
                self._on_event(*item)
            except Exception:
                log.exception("dhcp: event callback failed")
