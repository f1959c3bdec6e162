"""Host records: queries and writes. Callers hold the transaction."""

from __future__ import annotations

import json
import time
from typing import Any, Iterable

from sqlite_utils import Database

from provisioner.core.records import Host


def _host(db: Database, row: dict[str, Any], macs: tuple[str, ...] | None = None) -> Host:
    if macs is None:
        macs = tuple(
            r["mac"] for r in db.query("select mac from host_macs where host_id = ? order by rowid", [row["id"]])
        )
    return Host(
        id=row["id"],
        name=row["name"],
        macs=macs,
        state=row["state"],
        labels=json.loads(row["labels"] or "{}"),
        hardware=json.loads(row["hardware"] or "{}"),
        profile=row["profile"],
        ip=row["ip"],
        image=row.get("image"),
        created=row["created"],
        updated=row["updated"],
    )


def by_mac(db: Database, mac: str) -> Host | None:
    rows = list(
        db.query("select h.* from hosts h join host_macs m on m.host_id = h.id where m.mac = ?", [mac])
    )
    return _host(db, rows[0]) if rows else None


def by_name(db: Database, name: str) -> Host | None:
    rows = list(db.query("select * from hosts where name = ?", [name]))
    return _host(db, rows[0]) if rows else None


def by_ip(db: Database, ip: str) -> Host | None:
    rows = list(db.query("select * from hosts where ip = ?", [ip]))
    return _host(db, rows[0]) if rows else None


def all_hosts(db: Database) -> list[Host]:
    macs: dict[int, list[str]] = {}
    for r in db.query("select host_id, mac from host_macs order by rowid"):
        macs.setdefault(r["host_id"], []).append(r["mac"])
    return [_host(db, row, tuple(macs.get(row["id"], ()))) for row in db.query("select * from hosts order by name")]


def mac_owner(db: Database, mac: str) -> int | None:
    rows = list(db.query("select host_id from host_macs where mac = ?", [mac]))
    return rows[0]["host_id"] if rows else None


def insert(
    db: Database,
    *,
    name: str,
    macs: Iterable[str],
    state: str,
    labels: dict[str, str] | None = None,
    hardware: dict[str, Any] | None = None,
    ip: str | None = None,
) -> Host:
    now = time.time()
    host_id = (
        db["hosts"]
        .insert(
            {
                "name": name,
                "state": state,
                "labels": json.dumps(labels or {}, sort_keys=True),
                "hardware": json.dumps(hardware or {}, sort_keys=True),
                "profile": None,
                "ip": ip,
                "created": now,
                "updated": now,
            }
        )
        .last_pk
    )
    for mac in macs:
        db["host_macs"].insert({"mac": mac, "host_id": host_id})
    host = by_name(db, name)
    assert host is not None
    return host


def add_macs(db: Database, host_id: int, macs: Iterable[str]) -> None:
    for mac in macs:
        db["host_macs"].insert({"mac": mac, "host_id": host_id}, ignore=True)


def update(db: Database, host_id: int, **fields: Any) -> None:
    for key in ("labels", "hardware"):
        if key in fields:
            fields[key] = json.dumps(fields[key], sort_keys=True)
    fields["updated"] = time.time()
    db["hosts"].update(host_id, fields)


def delete(db: Database, host_id: int) -> None:
    db["host_macs"].delete_where("host_id = ?", [host_id])
    db["hosts"].delete(host_id)
