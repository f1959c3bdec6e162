"""Events from the packet adapters (DHCP, TFTP) are queued and written in
batches by one thread, so that a SQLite write never sits on a packet's path."""

from __future__ import annotations

import logging
import queue
import threading
from pathlib import Path
from typing import Any

from provisioner.db import events, open_db, write

log = logging.getLogger("provisioner.events")
_STOP = object()


class EventSink:
    def __init__(self, db_path: Path, *, max_queue: int = 10_000):
        self.db_path = db_path
        self._queue: queue.Queue = queue.Queue(max_queue)
        self._thread: threading.Thread | None = None
        self.dropped = 0

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="events", daemon=True)
        self._thread.start()

    def emit(self, kind: str, message: str, *, host: str | None = None, mac: str | None = None,
             actor: str | None = None, data: dict[str, Any] | None = None) -> None:
        try:
            self._queue.put_nowait((kind, message, host, mac, actor, data))
        except queue.Full:
            # Under a flood, losing a log line beats stalling the DHCP loop.
            self.dropped += 1

    def stop(self) -> None:
        if self._thread is None:
            return
        self._queue.put(_STOP)
        self._thread.join(timeout=10)
        self._thread = None

    def _run(self) -> None:
        db = open_db(self.db_path, migrate=False)
        stopping = False
        while not stopping:
            batch = [self._queue.get()]
            while len(batch) < 500:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if batch[-1] is _STOP or _STOP in batch:
                stopping = True
                batch = [b for b in batch if b is not _STOP]
            try:
                with write(db):
                    for kind, message, host, mac, actor, data in batch:
                        events.append(db, kind, message, host=host, mac=mac, actor=actor, data=data)
            except Exception:
                log.exception("could not record %d events", len(batch))
        db.conn.close()
