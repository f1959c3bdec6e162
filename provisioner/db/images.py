"""Published images and channels: queries and writes. Callers hold the
transaction."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Iterable

from sqlite_utils import Database


@dataclass(frozen=True)
class ImageRow:
    name: str
    version: str
    digest: str
    created: float
    published: float
    actor: str | None
    source: str
    size: int

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "version": self.version, "digest": f"sha256:{self.digest}",
            # As in the manifest; `published` is an event time, a number like every other.
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.created)), "published": self.published, "actor": self.actor,
            "source": self.source, "size": self.size,
        }


@dataclass(frozen=True)
class ChannelRow:
    name: str
    label: str
    version: str
    updated: float
    actor: str | None

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "label": self.label, "version": self.version,
                "updated": self.updated, "actor": self.actor}


def _image(row: dict[str, Any]) -> ImageRow:
    return ImageRow(**{k: row[k] for k in ImageRow.__dataclass_fields__})


def get(db: Database, name: str, version: str) -> ImageRow | None:
    rows = list(db.query("select * from images where name = ? and version = ?", [name, version]))
    return _image(rows[0]) if rows else None


def all_images(db: Database, name: str | None = None) -> list[ImageRow]:
    if name is None:
        rows = db.query("select * from images order by name, published")
    else:
        rows = db.query("select * from images where name = ? order by published", [name])
    return [_image(r) for r in rows]


def insert(db: Database, row: ImageRow, blobs: Iterable[tuple[str, str, int]]) -> None:
    """`blobs`: (artifact, digest, size), the manifest among them."""
    db["images"].insert(
        {k: getattr(row, k) for k in ImageRow.__dataclass_fields__}
    )
    db["image_blobs"].insert_all(
        {"name": row.name, "version": row.version, "artifact": a, "digest": d, "size": s} for a, d, s in blobs
    )


def delete(db: Database, name: str, version: str) -> None:
    db.execute("delete from image_blobs where name = ? and version = ?", [name, version])
    db.execute("delete from images where name = ? and version = ?", [name, version])


def blobs_of(db: Database, name: str, version: str) -> dict[str, tuple[str, int]]:
    return {
        r["artifact"]: (r["digest"], r["size"])
        for r in db.query("select * from image_blobs where name = ? and version = ?", [name, version])
    }


def referenced_blobs(db: Database) -> set[str]:
    return {r["digest"] for r in db.query("select distinct digest from image_blobs")}


def blob_known(db: Database, digest: str) -> bool:
    return bool(list(db.query("select 1 from image_blobs where digest = ? limit 1", [digest])))


def channel(db: Database, name: str, label: str) -> ChannelRow | None:
    rows = list(db.query("select * from channels where name = ? and label = ?", [name, label]))
    return ChannelRow(**rows[0]) if rows else None


def channels(db: Database, name: str | None = None) -> list[ChannelRow]:
    if name is None:
        rows = db.query("select * from channels order by name, label")
    else:
        rows = db.query("select * from channels where name = ? order by label", [name])
    return [ChannelRow(**r) for r in rows]


def move_channel(db: Database, name: str, label: str, version: str, actor: str | None,
                 now: float | None = None) -> str | None:
    """Point name@label at version; returns the version it pointed to."""
    now = time.time() if now is None else now
    old = channel(db, name, label)
    db["channels"].upsert(
        {"name": name, "label": label, "version": version, "updated": now, "actor": actor}, pk=("name", "label")
    )
    db["channel_moves"].insert(
        {"name": name, "label": label, "from_version": old.version if old else None, "to_version": version,
         "ts": now, "actor": actor}
    )
    return old.version if old else None


def channel_history(db: Database, name: str, label: str, limit: int = 50) -> list[dict[str, Any]]:
    return list(db.query(
        "select * from channel_moves where name = ? and label = ? order by id desc limit ?", [name, label, limit]
    ))


def hosts_using(db: Database, name: str) -> list[tuple[str, str]]:
    """(host, image ref) of hosts whose image is any tag of `name`."""
    return [(r["name"], r["image"]) for r in db.query(
        "select name, image from hosts where image like ? escape '\\' order by name",
        [name.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "@%"],
    )]
