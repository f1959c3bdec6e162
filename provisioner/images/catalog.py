"""The image half of the service layer: publish, resolve, verify, remove,
gc and channels. Mixed into `provisioner.service.Service`, so the CLI, the
REST API and the console reach images through the same methods.

Publishing writes blobs first and the database row last: until the row is
committed nothing refers to the blobs, so a crash in between leaves only
unreferenced blobs, which `gc` removes.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

from sqlite_utils import Database

from provisioner.core.imageref import ImageRef, check_label, parse_ref
from provisioner.db import events, hosts, images, write
from provisioner.errors import Conflict, InvalidInput, NotFound
from provisioner.images.manifest import ARTIFACTS, Artifact, ImageManifest, parse_manifest
from provisioner.images.store import Blob, Staging, Store

MANIFEST = "manifest.json"


@dataclasses.dataclass(frozen=True)
class Published:
    image: images.ImageRow
    manifest: ImageManifest
    new: bool  # False: the same content was published under this name@version already


@dataclasses.dataclass(frozen=True)
class Problem:
    artifact: str
    expected: str
    actual: str | None  # None: missing

    def __str__(self) -> str:
        if self.actual is None:
            return f"{self.artifact}: sha256:{self.expected} is missing from the store"
        return f"{self.artifact}: expected sha256:{self.expected}, found sha256:{self.actual}"


class ImagesMixin:
    db: Database
    settings: Any
    clock: Any

    def image_store(self) -> Store:
        return Store(self.settings.images_dir)

    # --- resolving ---

    def resolve_image(self, ref: str | ImageRef) -> images.ImageRow:
        """NAME@VERSION, or NAME@CHANNEL through the channel's pointer."""
        r = ref if isinstance(ref, ImageRef) else parse_ref(ref)
        version = r.tag
        if r.is_channel:
            ch = images.channel(self.db, r.name, r.tag)
            if ch is None:
                raise NotFound(f"no channel {r}")
            version = ch.version
        row = images.get(self.db, r.name, version)
        if row is None:
            known = [i.version for i in images.all_images(self.db, r.name)]
            hint = f" (published: {', '.join(known)})" if known else ""
            raise NotFound(f"no image {r.name}@{version}{hint}")
        return row

    def image_manifest(self, row: images.ImageRow) -> ImageManifest:
        path = self.image_store().path(row.digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise NotFound(f"manifest sha256:{row.digest} of {row.name}@{row.version} is missing from the store;"
                           " run `provisioner image verify`") from None
        return parse_manifest(data)

    def list_images(self, name: str | None = None) -> list[dict[str, Any]]:
        by_version: dict[tuple[str, str], list[str]] = {}
        for ch in images.channels(self.db, name):
            by_version.setdefault((ch.name, ch.version), []).append(ch.label)
        return [
            {**row.to_json(), "channels": sorted(by_version.get((row.name, row.version), []))}
            for row in images.all_images(self.db, name)
        ]

    def show_image(self, ref: str) -> dict[str, Any]:
        row = self.resolve_image(ref)
        doc = self.image_manifest(row).to_json()
        doc["digest"] = f"sha256:{row.digest}"
        doc["published"] = row.published
        doc["actor"] = row.actor
        doc["channels"] = sorted(
            c.label for c in images.channels(self.db, row.name) if c.version == row.version
        )
        return doc

    # --- publishing ---

    def check_publishable(self, name: str, version: str, source: Mapping[str, str]) -> None:
        """Refuse early, before a long build or import, when name@version is
        published from another definition or source."""
        row = images.get(self.db, name, version)
        if row is None:
            return
        old = self.image_manifest(row).source
        if old.get("sha256") and source.get("sha256") and old.get("sha256") != source.get("sha256"):
            raise Conflict(
                f"{name}@{version} is published already (image sha256:{row.digest}) from "
                f"{old.get('kind')} sha256:{old.get('sha256')}; this {source.get('kind')} is "
                f"sha256:{source.get('sha256')}. Published versions never change: use a new version"
            )

    def publish_image(self, staging: Staging, manifest: ImageManifest, files: Mapping[str, Path], *,
                      actor: str = "cli") -> Published:
        """Move the staged artifact files into the store and publish
        manifest.name@manifest.version. Publishing the same content again is
        a no-op; other content under a published name@version is refused."""
        if set(files) != set(ARTIFACTS):
            raise InvalidInput(f"an image needs exactly these artifacts: {', '.join(ARTIFACTS)}")
        store = self.image_store().ensure()
        ref = f"{manifest.name}@{manifest.version}"
        with store.publishing():
            blobs: dict[str, Blob] = {name: store.ingest(files[name]) for name in ARTIFACTS}
            manifest = dataclasses.replace(
                manifest, artifacts=tuple(Artifact(n, blobs[n].size, blobs[n].sha256) for n in ARTIFACTS)
            )
            mblob = store.add_bytes(manifest.canonical(), staging)
            with write(self.db):
                row = images.get(self.db, manifest.name, manifest.version)
                if row is None:
                    row = images.ImageRow(
                        name=manifest.name, version=manifest.version, digest=mblob.sha256,
                        created=manifest.created, published=self.clock(), actor=actor,
                        source=manifest.source.get("kind", "unknown"), size=sum(b.size for b in blobs.values()),
                    )
                    images.insert(
                        self.db, row,
                        [(n, b.sha256, b.size) for n, b in blobs.items()] + [(MANIFEST, mblob.sha256, mblob.size)],
                    )
                    events.append(
                        self.db, "image.published", f"{ref} published as sha256:{mblob.sha256}", actor=actor,
                        data={"image": ref, "digest": mblob.sha256, "source": dict(manifest.source)},
                    )
                    return Published(row, manifest, new=True)
        if row.digest == mblob.sha256:
            return Published(row, manifest, new=False)
        # Refused: take back what this publish added, unless another
        # publisher is busy (then `gc` does it later).
        with store.collecting(wait=False) as alone:
            if alone:
                self._drop_unreferenced({b.sha256 for b in blobs.values()} | {mblob.sha256})
        raise Conflict(
            f"{ref} is published already as sha256:{row.digest}; this content is sha256:{mblob.sha256}"
            f"{self._differences(row, manifest)}. Published versions never change: use a new version"
        )

    def _differences(self, row: images.ImageRow, manifest: ImageManifest) -> str:
        try:
            old = self.image_manifest(row)
        except (NotFound, InvalidInput):
            return ""
        changed = [a.name for a in manifest.artifacts if old.artifact(a.name).sha256 != a.sha256]
        changed += [f for f in ("kernel_version", "packages", "source", "created")
                    if getattr(old, f) != getattr(manifest, f)]
        return f" ({', '.join(changed)} differ)" if changed else ""

    def _drop_unreferenced(self, digests: set[str]) -> None:
        # Caller holds the store exclusively: no publisher is between its
        # ingest and its commit.
        store = self.image_store()
        for d in digests - images.referenced_blobs(self.db):
            store.remove(d)

    # --- checking ---

    def verify_image(self, ref: str) -> tuple[images.ImageRow, list[Problem]]:
        """Re-hash every blob of the image against the database and the
        manifest; an empty list means it is intact."""
        row = self.resolve_image(ref)
        store = self.image_store()
        problems: list[Problem] = []
        recorded = images.blobs_of(self.db, row.name, row.version)
        for artifact, (digest, _size) in sorted(recorded.items()):
            found = store.verify(digest)
            if found is None or found.sha256 != digest:
                problems.append(Problem(artifact, digest, found.sha256 if found else None))
        if not any(p.artifact == MANIFEST for p in problems):
            manifest = self.image_manifest(row)
            for a in manifest.artifacts:
                if recorded.get(a.name, (None,))[0] != a.sha256:
                    problems.append(Problem(a.name, a.sha256, recorded.get(a.name, (None,))[0]))
        if problems:
            self.record("image.corrupt", f"{row.name}@{row.version}: " + "; ".join(map(str, problems)),
                        actor="verify", data={"image": f"{row.name}@{row.version}", "digest": row.digest})
        return row, problems

    # --- removing ---

    def remove_image(self, ref: str, *, actor: str = "cli") -> images.ImageRow:
        r = parse_ref(ref)
        if r.is_channel:
            raise InvalidInput(f"{r} is a channel; remove a version (NAME@VERSION)")
        with write(self.db):
            row = self.resolve_image(r)
            pointing = [c for c in images.channels(self.db, r.name) if c.version == r.tag]
            if pointing:
                raise Conflict(
                    f"{r} is the target of channel {', '.join(f'{c.name}@{c.label}' for c in pointing)};"
                    " promote another version there first"
                )
            users = [h for h, img in images.hosts_using(self.db, r.name) if self._points_to(img, row)]
            if users:
                raise Conflict(f"{r} is used by host {', '.join(users)}; give them another image first")
            images.delete(self.db, row.name, row.version)
            events.append(self.db, "image.removed", f"{r} removed (sha256:{row.digest})", actor=actor,
                          data={"image": str(r), "digest": row.digest})
        return row

    def _points_to(self, ref: str, row: images.ImageRow) -> bool:
        try:
            return self.resolve_image(ref) == row
        except (NotFound, InvalidInput):
            return False

    def gc_images(self, *, actor: str = "cli") -> dict[str, Any]:
        """Delete blobs no published image refers to, and staging left by
        killed builds and imports."""
        store = self.image_store()
        stale = store.clean_stale()
        removed, freed = [], 0
        with store.collecting(), write(self.db):
            keep = images.referenced_blobs(self.db)
            for digest in list(store.all_blobs()):
                if digest not in keep:
                    try:
                        freed += store.path(digest).stat().st_size
                    except FileNotFoundError:
                        continue
                    store.remove(digest)
                    removed.append(digest)
            if removed or stale:
                events.append(self.db, "image.gc", f"gc removed {len(removed)} blobs ({freed} bytes)"
                              f" and {len(stale)} stale staging directories", actor=actor,
                              data={"blobs": removed, "staging": stale})
        return {"blobs": removed, "bytes": freed, "staging": stale}

    # --- channels ---

    def promote_image(self, ref: str, label: str, *, actor: str = "cli") -> dict[str, Any]:
        """Point NAME@LABEL at the version of `ref` (NAME@VERSION, or another
        channel's current version)."""
        check_label(label)
        with write(self.db):
            row = self.resolve_image(ref)
            old = images.move_channel(self.db, row.name, label, row.version, actor, self.clock())
            moved = f"{row.name}@{label}: {old or '(new)'} -> {row.version}"
            events.append(self.db, "image.channel", moved, actor=actor,
                          data={"image": row.name, "channel": label, "from": old, "to": row.version})
        return {"name": row.name, "label": label, "from": old, "to": row.version}

    def rollback_channel(self, ref: str, *, actor: str = "cli") -> dict[str, Any]:
        """Move NAME@LABEL back to the version it pointed to before its last
        move (repeatable: each rollback is a move of its own)."""
        r = parse_ref(ref)
        if not r.is_channel:
            raise InvalidInput(f"{r} is a version; roll back a channel (NAME@LABEL)")
        with write(self.db):
            current = images.channel(self.db, r.name, r.tag)
            if current is None:
                raise NotFound(f"no channel {r}")
            history = images.channel_history(self.db, r.name, r.tag, limit=1)
            previous = history[0]["from_version"] if history else None
            if previous is None:
                raise Conflict(f"{r} has no earlier version to roll back to")
            if images.get(self.db, r.name, previous) is None:
                raise Conflict(f"{r} pointed to {r.name}@{previous} before, which was removed")
            images.move_channel(self.db, r.name, r.tag, previous, actor, self.clock())
            events.append(self.db, "image.channel", f"{r}: {current.version} -> {previous} (rollback)",
                          actor=actor, data={"image": r.name, "channel": r.tag, "from": current.version,
                                             "to": previous, "rollback": True})
        return {"name": r.name, "label": r.tag, "from": current.version, "to": previous}

    def channel_history(self, ref: str, limit: int = 50) -> list[dict[str, Any]]:
        r = parse_ref(ref)
        if not r.is_channel:
            raise InvalidInput(f"{r} is a version, not a channel")
        return images.channel_history(self.db, r.name, r.tag, limit=max(1, min(limit, 1000)))

    def list_channels(self, name: str | None = None) -> list[dict[str, Any]]:
        return [c.to_json() for c in images.channels(self.db, name)]

    # --- hosts ---

    def set_host_image(self, host_ref: str, image: str | None, *, actor: str = "cli") -> None:
        with write(self.db):
            host = self.get_host(host_ref)
            if image:
                self.resolve_image(image)  # must exist now
                image = str(parse_ref(image))
            hosts.update(self.db, host.id, image=image or None)
            events.append(self.db, "host.image", f"{host.name} image set to {image or '(none)'}",
                          host=host.name, actor=actor, data={"image": image})

    # --- serving ---

    def blob_served(self, digest_hex: str) -> bool:
        """Only blobs of published images are served: a blob of an import
        killed before publishing stays invisible."""
        return images.blob_known(self.db, digest_hex)
