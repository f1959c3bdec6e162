"""The append-only event log."""

from __future__ import annotations

import json
import time
from typing import Any

from sqlite_utils import Database

from provisioner.core.records import Event


def append(
    db: Database,
    kind: str,
    message: str,
    *,
    host: str | None = None,
    mac: str | None = None,
    actor: str | None = None,
    data: dict[str, Any] | None = None,
) -> int:
    return db["events"].insert(
        {
            "ts": time.time(),
            "kind": kind,
            "message": message,
            "host": host,
            "mac": mac,
            "actor": actor,
            "data": json.dumps(data or {}, sort_keys=True),
        }
    ).last_pk


def recent(
    db: Database, *, host: str | None = None, macs: tuple[str, ...] = (), limit: int = 100, after_id: int = 0
) -> list[Event]:
    where, args = ["id > ?"], [after_id]
    clause = []
    if host is not None:
        clause.append("host = ?")
        args.append(host)
    if macs:
        clause.append(f"mac in ({','.join('?' * len(macs))})")
        args.extend(macs)
    if clause:
        where.append("(" + " or ".join(clause) + ")")
    sql = f"select * from events where {' and '.join(where)} order by id desc limit ?"
    args.append(limit)
    rows = list(db.query(sql, args))
    rows.reverse()
    return [
        Event(
            id=r["id"],
            ts=r["ts"],
            kind=r["kind"],
            message=r["message"],
            host=r["host"],
            mac=r["mac"],
            actor=r["actor"],
            data=json.loads(r["data"] or "{}"),
        )
        for r in rows
    ]
