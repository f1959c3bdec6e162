"""Read what users already build (a root filesystem tarball, `docker
export` output, an OCI image archive or a `docker save` archive) as one
merged filesystem view, and write that view as a single tar stream.

Pure Python over tarfile: entries are indexed by their data offset in an
uncompressed tar on disk, so file contents are only ever copied in chunks,
never held in memory; images can be gigabytes. `zstd -dc` is the one tool
called, for zstd-compressed layers (the stdlib has no zstd).

Layers are applied with the OCI/AUFS whiteout rules. Paths in the view are
canonical: no entry lies below a symlink, because a layer entry whose parent
is a symlink is placed where the symlink leads (as Docker's layer unpacking
does, inside the root), so `lib/modules/x` of a later layer lands in
`usr/lib/modules/x` on a merged-/usr system.
"""

from __future__ import annotations

import bz2
import dataclasses
import gzip
import hashlib
import json
import lzma
import os
import posixpath
import re
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Literal

from provisioner.errors import InvalidInput

CHUNK = 1 << 20
MAX_SYMLINKS = 40  # what the kernel follows before ELOOP
MAX_JSON = 4 << 20  # index, manifests and configs are a few kilobytes
MAX_READ = 64 << 20  # read_file is for small files: dpkg status, os-release
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
INDEX_TYPES = {
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
}
DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128})")
TYPES = {  # tar entry type -> the type the view keeps
    tarfile.REGTYPE: tarfile.REGTYPE, tarfile.AREGTYPE: tarfile.REGTYPE, tarfile.CONTTYPE: tarfile.REGTYPE,
    tarfile.LNKTYPE: tarfile.LNKTYPE, tarfile.SYMTYPE: tarfile.SYMTYPE, tarfile.DIRTYPE: tarfile.DIRTYPE,
    tarfile.CHRTYPE: tarfile.CHRTYPE, tarfile.BLKTYPE: tarfile.BLKTYPE, tarfile.FIFOTYPE: tarfile.FIFOTYPE,
}
# Pax records tarfile writes again from the entry's own fields (or that
# would make the output depend on when the source was made); all others,
# xattrs above all, are copied through.
REGENERATED_PAX = {"path", "linkpath", "size", "uid", "gid", "uname", "gname", "mtime", "atime", "ctime",
                   "hdrcharset", "comment"}

Kind = Literal["dir", "symlink", "other"]
Lookup = Callable[[str], "tuple[Kind, str] | None"]


class ArchiveError(InvalidInput):
    """The user's archive cannot be imported; the message names the layer
    and entry."""


@dataclass(frozen=True)
class Layer:
    number: int  # 1-based position, for messages
    source: str  # the blob's digest, or its path in a docker save archive; "" for a plain tarball
    path: Path  # an uncompressed tar
    format: str = "tar"  # what the archive was: "tar", "oci" or "docker"

    @property
    def label(self) -> str:
        if not self.source:
            return "archive"
        short = self.source[:19] + "…" if DIGEST.fullmatch(self.source) else self.source
        return f"layer {self.number} ({short})"


@dataclass(frozen=True)
class Member:
    path: str  # canonical, no leading slash; "" is the root directory
    type: bytes  # a tarfile type: REGTYPE, LNKTYPE, SYMTYPE, DIRTYPE, CHRTYPE, BLKTYPE or FIFOTYPE
    mode: int  # permission bits, setuid/setgid/sticky included
    uid: int = 0
    gid: int = 0
    uname: str = ""
    gname: str = ""
    mtime: int = 0
    size: int = 0  # regular files only
    linkname: str = ""  # symlink target as written; for a hard link, the path of the entry holding the data
    devmajor: int = 0
    devminor: int = 0
    pax: tuple[tuple[str, str], ...] = ()  # xattrs and other records to copy through
    layer: int = -1  # index into Merged.layers of the tar holding the data
    offset: int = 0  # where the data starts in that tar
    # While merging, a hard link remembers the member it shares data with.
    origin: Member | None = field(default=None, compare=False, repr=False)

    @property
    def kind(self) -> Kind:
        return "dir" if self.type == tarfile.DIRTYPE else "symlink" if self.type == tarfile.SYMTYPE else "other"


@dataclass(frozen=True)
class Merged:
    layers: tuple[Layer, ...]
    entries: dict[str, Member]  # the final view by path; "" is the root

    @property
    def count(self) -> int:
        return len(self.entries)

    def paths(self) -> list[str]:
        return sorted(self.entries, key=sort_key)


def sort_key(path: str) -> tuple[str, ...]:
    # By components, so every directory precedes what it contains.
    return tuple(path.split("/")) if path else ()


def _implicit_dir(path: str) -> Member:
    return Member(path, tarfile.DIRTYPE, 0o755, uname="root", gname="root")


def normalise(name: str, where: str) -> str:
    """An archive name as a view path; '..' anywhere is refused."""
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{where}: entry {name!r} escapes the root")
    return "/".join(parts)


# -- resolving paths inside a view ----------------------------------------


class Unresolvable(Exception):
    """follow() met a missing directory, a non-directory or a symlink loop."""


def follow(path: str, lookup: Lookup, *, follow_last: bool = True,
           create: Callable[[str], None] | None = None) -> str:
    """The canonical path of `path` inside a tree that `lookup` describes,
    following symlinks as a chroot would: absolute targets start again at the
    root and '..' stops at it. The last component may be missing (the result
    is where it would be). A missing directory on the way is made with
    `create`, or else Unresolvable, as are a non-directory and a loop."""
    todo = [p for p in reversed(path.split("/")) if p]
    done: list[str] = []
    hops = 0
    while todo:
        name = todo.pop()
        if name == ".":
            continue
        if name == "..":
            if done:
                done.pop()
            continue
        here = "/".join([*done, name])
        node = lookup(here)
        if node is None:
            if todo:
                if create is None:
                    raise Unresolvable(f"{here!r} does not exist")
                create(here)
            done.append(name)
            continue
        kind, target = node
        if kind == "symlink" and (todo or follow_last):
            hops += 1
            if hops > MAX_SYMLINKS:
                raise Unresolvable(f"too many symlinks at {here!r}")
            if target.startswith("/"):
                done = []
            todo.extend(p for p in reversed(target.split("/")) if p)
            continue
        if todo and kind != "dir":
            raise Unresolvable(f"{here!r} is not a directory")
        done.append(name)
    return "/".join(done)


def _lookup(entries: dict[str, Member]) -> Lookup:
    def lookup(path: str) -> tuple[Kind, str] | None:
        m = entries.get(path)
        return None if m is None else (m.kind, m.linkname)

    return lookup


def resolve(merged: Merged, path: str) -> str | None:
    """The path of the entry `path` names after following symlinks within the
    view, or None if there is none."""
    try:
        found = follow(path, _lookup(merged.entries))
    except Unresolvable:
        return None
    return found if found in merged.entries else None


# -- opening archives ------------------------------------------------------


def _compression(head: bytes) -> str:
    if head.startswith(b"\x1f\x8b"):
        return "gzip"
    if head.startswith(b"\xfd7zXZ\x00"):
        return "xz"
    if head.startswith(b"BZh"):
        return "bzip2"
    if head.startswith(b"\x28\xb5\x2f\xfd"):
        return "zstd"
    return ""


class _Hashing:
    """A reader that hashes everything read through it, starting with bytes
    already taken from the stream to sniff the format."""

    def __init__(self, src: BinaryIO, head: bytes, digest: hashlib._Hash):
        self.src, self.head, self.digest = src, head, digest

    def read(self, n: int = -1) -> bytes:
        if self.head:
            data, self.head = (self.head, b"") if n < 0 or n >= len(self.head) else (self.head[:n], self.head[n:])
        else:
            data = self.src.read(n)
        self.digest.update(data)
        return data


def _unpack(src: BinaryIO, dest: Path, where: str, algorithm: str = "sha256") -> str:
    """Copy src to dest, decompressed if it is compressed; return the hex
    digest of src as it was stored (what OCI descriptors name)."""
    digest = hashlib.new(algorithm)
    head = src.read(6)
    reader = _Hashing(src, head, digest)
    method = _compression(head)
    try:
        with dest.open("wb") as out:
            if method == "zstd":
                _unzstd(reader, out, where)
            elif method:
                with _decompressor(method, reader) as plain:
                    shutil.copyfileobj(plain, out, CHUNK)
            else:
                shutil.copyfileobj(reader, out, CHUNK)  # type: ignore[misc]
        while reader.read(CHUNK):  # trailing bytes still count towards the digest
            pass
    except tarfile.TarError as e:
        raise ArchiveError(f"{where}: {e}") from None
    except (EOFError, zlib.error, lzma.LZMAError, OSError) as e:
        if isinstance(e, OSError) and e.errno is not None:
            raise  # a disk error here, not bad data
        raise ArchiveError(f"{where}: {method or 'tar'} data is corrupt or truncated ({e})") from None
    return digest.hexdigest()


def _decompressor(method: str, reader: _Hashing) -> BinaryIO:
    if method == "gzip":
        return gzip.GzipFile(fileobj=reader)  # type: ignore[arg-type]
    if method == "xz":
        return lzma.LZMAFile(reader)  # type: ignore[arg-type,return-value]
    return bz2.BZ2File(reader)  # type: ignore[arg-type,return-value]


def _unzstd(reader: _Hashing, out: BinaryIO, where: str) -> None:
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(["zstd", "-dcq"], stdin=subprocess.PIPE, stdout=out, stderr=err)
        except FileNotFoundError:
            raise ArchiveError(f"{where}: zstd-compressed, and zstd is not installed") from None
        assert proc.stdin is not None
        try:
            while chunk := reader.read(CHUNK):
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass  # zstd gave up; its status and message say why
        finally:
            # Closed whatever happened, or zstd would wait for more forever.
            try:
                proc.stdin.close()
            except BrokenPipeError:
                pass
            rc = proc.wait()
        if rc != 0:
            err.seek(0)
            tail = " ".join(err.read().decode(errors="replace").split())[-200:]
            raise ArchiveError(f"{where}: zstd data is corrupt or truncated ({tail or f'exit {rc}'})")


def _is_empty_tar(path: Path) -> bool:
    # tarfile refuses an archive that starts with its end marker ("empty
    # header"), but an empty layer is legal and common.
    with path.open("rb") as f:
        return not f.read(512).strip(b"\0")


def _members(path: Path, where: str) -> list[tarfile.TarInfo]:
    if _is_empty_tar(path):
        return []
    try:
        with tarfile.open(path, "r:", encoding="utf-8") as tf:
            return tf.getmembers()
    except tarfile.TarError as e:
        raise ArchiveError(f"{where}: not a readable tar archive ({e})") from None


def open_layers(path: Path, work: Path) -> list[Layer]:
    """The layers of the archive at `path`, bottom first, each an
    uncompressed tar. Temporary files go under `work`; a plain uncompressed
    tarball is used in place, so it must outlive the returned layers."""
    try:
        with path.open("rb") as f:
            head = f.read(6)
    except OSError as e:
        raise ArchiveError(f"{path.name}: cannot read: {e.strerror}") from None
    if not head:
        raise ArchiveError(f"{path.name}: the file is empty")
    work.mkdir(parents=True, exist_ok=True)
    tar = path
    if _compression(head):
        tar = work / "archive.tar"
        with path.open("rb") as f:
            _unpack(f, tar, "archive")
    if _is_empty_tar(tar):
        raise ArchiveError("archive: holds no files")
    try:
        with tarfile.open(tar, "r:", encoding="utf-8") as tf:
            index = {normalise(m.name, "archive"): m for m in tf.getmembers()}
            # Docker 25 and later write both layouts; OCI's has the digests.
            layers = None
            if "oci-layout" in index and "index.json" in index:
                layers = _oci_layers(tf, index, work)
            elif "manifest.json" in index:
                layers = _docker_layers(tf, index, work)
    except tarfile.TarError as e:
        raise ArchiveError(f"archive: not a readable tar archive, compressed or not ({e})") from None
    if layers is None:
        return [Layer(1, "", tar)]
    if tar != path:
        tar.unlink()  # an image archive's layers are copied out of it
    return layers


def _archive_file(tf: tarfile.TarFile, index: dict[str, tarfile.TarInfo], name: str, where: str) -> BinaryIO:
    """A regular file of the outer archive; `docker save` links layers that
    two images share, so links are followed (inside the archive)."""
    for _ in range(8):
        info = index.get(name)
        if info is None:
            raise ArchiveError(f"{where}: {name!r} is not in the archive")
        if info.isreg():
            f = tf.extractfile(info)
            assert f is not None
            return f  # type: ignore[return-value]
        if info.issym():
            name = posixpath.normpath(posixpath.join(posixpath.dirname(name), info.linkname))
        elif info.islnk():
            name = info.linkname
        else:
            raise ArchiveError(f"{where}: {name!r} is not a file")
        name = normalise(name, where)
    raise ArchiveError(f"{where}: {name!r}: too many links")


def _json(data: bytes, what: str) -> object:
    if len(data) > MAX_JSON:
        raise ArchiveError(f"archive: {what} is larger than {MAX_JSON} bytes")
    try:
        return json.loads(data)
    except ValueError as e:
        raise ArchiveError(f"archive: {what} is not valid JSON ({e})") from None


def _blob_path(desc: object, what: str) -> tuple[str, str]:
    digest = desc.get("digest") if isinstance(desc, dict) else None
    if not isinstance(digest, str) or not DIGEST.fullmatch(digest):
        raise ArchiveError(f"archive: {what} has no valid digest ({digest!r})")
    algorithm, _, hexdigest = digest.partition(":")
    return digest, f"blobs/{algorithm}/{hexdigest}"


def _blob_json(tf: tarfile.TarFile, index: dict[str, tarfile.TarInfo], desc: dict, what: str) -> dict:
    digest, name = _blob_path(desc, what)
    data = _archive_file(tf, index, name, f"archive: {what}").read(MAX_JSON + 1)
    algorithm, _, expected = digest.partition(":")
    actual = hashlib.new(algorithm, data).hexdigest()
    if actual != expected:
        raise ArchiveError(f"archive: {what} digest is {algorithm}:{actual}, its descriptor says {digest}")
    doc = _json(data, what)
    if not isinstance(doc, dict):
        raise ArchiveError(f"archive: {what} is not a JSON object")
    return doc


def _platform(desc: dict) -> str:
    p = desc.get("platform") or {}
    name = "/".join(x for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x) or "unknown platform"
    notes = desc.get("annotations") or {}
    ref = notes.get("io.containerd.image.name") or notes.get("org.opencontainers.image.ref.name")
    return f"{name} ({ref})" if ref else name


def _manifests(tf: tarfile.TarFile, index: dict[str, tarfile.TarInfo], doc: dict, depth: int = 0) -> list[dict]:
    """Image manifest descriptors under an index, nested indexes expanded,
    keeping only those whose blob the archive holds: `docker save` of one
    platform keeps the full multi-platform index but one manifest."""
    out: list[dict] = []
    for desc in doc.get("manifests") or []:
        if not isinstance(desc, dict):
            continue
        notes = desc.get("annotations") or {}
        if notes.get("vnd.docker.reference.type") == "attestation-manifest":
            continue  # buildx provenance, not an image
        if _blob_path(desc, "a manifest")[1] not in index:
            continue
        if desc.get("mediaType") in INDEX_TYPES:
            if depth >= 4:
                raise ArchiveError("archive: image indexes nested too deep")
            out.extend(_manifests(tf, index, _blob_json(tf, index, desc, "image index"), depth + 1))
        else:
            out.append(desc)
    return out


def _oci_layers(tf: tarfile.TarFile, index: dict[str, tarfile.TarInfo], work: Path) -> list[Layer]:
    doc = _json(_archive_file(tf, index, "index.json", "archive").read(MAX_JSON + 1), "index.json")
    if not isinstance(doc, dict):
        raise ArchiveError("archive: index.json is not a JSON object")
    found = _manifests(tf, index, doc)
    if len(found) > 1:
        amd64 = [d for d in found if (d.get("platform") or {}).get("os") == "linux"
                 and (d.get("platform") or {}).get("architecture") == "amd64"]
        if len(amd64) != 1:
            listed = ", ".join(_platform(d) for d in found)
            raise ArchiveError(f"archive: holds {len(found)} images ({listed}); need exactly one linux/amd64")
        found = amd64
    if not found:
        raise ArchiveError("archive: the OCI index names no image manifest the archive holds")
    manifest = _blob_json(tf, index, found[0], "image manifest")
    descs = manifest.get("layers")
    if not isinstance(descs, list) or not descs:
        raise ArchiveError("archive: the image manifest lists no layers")
    layers = []
    for number, desc in enumerate(descs, start=1):
        digest, name = _blob_path(desc, f"layer {number}")
        layer = Layer(number, digest, work / f"layer-{number}.tar", "oci")
        algorithm, _, expected = digest.partition(":")
        actual = _unpack(_archive_file(tf, index, name, layer.label), layer.path, layer.label, algorithm)
        if actual != expected:
            raise ArchiveError(f"{layer.label}: blob digest is {algorithm}:{actual}, the manifest says {digest}")
        layers.append(layer)
    return layers


def _docker_layers(tf: tarfile.TarFile, index: dict[str, tarfile.TarInfo], work: Path) -> list[Layer] | None:
    doc = _json(_archive_file(tf, index, "manifest.json", "archive").read(MAX_JSON + 1), "manifest.json")
    if not (isinstance(doc, list) and doc and all(isinstance(e, dict) and "Layers" in e for e in doc)):
        return None  # a root filesystem that happens to hold a manifest.json
    if len(doc) > 1:
        tags = ", ".join(t for e in doc for t in (e.get("RepoTags") or ["<untagged>"]))
        raise ArchiveError(f"archive: holds {len(doc)} images ({tags}); save just one")
    names = doc[0]["Layers"]
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ArchiveError("archive: manifest.json lists no layers")
    layers = []
    for number, name in enumerate(names, start=1):
        name = normalise(name, "archive")
        # Docker 25+ names blobs by digest, so those can be checked; older
        # releases name layers by a random ID.
        m = re.fullmatch(r"blobs/(sha256)/([0-9a-f]{64})", name)
        layer = Layer(number, f"{m[1]}:{m[2]}" if m else name, work / f"layer-{number}.tar", "docker")
        actual = _unpack(_archive_file(tf, index, name, layer.label), layer.path, layer.label)
        if m and actual != m[2]:
            raise ArchiveError(f"{layer.label}: blob digest is sha256:{actual}, its name says {layer.source}")
        layers.append(layer)
    return layers


# -- merging ---------------------------------------------------------------


class _View:
    """The filesystem as layers are applied: entries by path, and the
    children of each directory, so a subtree goes without a scan."""

    def __init__(self) -> None:
        self.entries: dict[str, Member] = {"": _implicit_dir("")}
        self.kids: dict[str, set[str]] = {"": set()}
        self.lookup = _lookup(self.entries)

    def put(self, m: Member) -> None:
        old = self.entries.get(m.path)
        if old is not None and not (old.type == tarfile.DIRTYPE and m.type == tarfile.DIRTYPE):
            self.remove(m.path)
        self.entries[m.path] = m
        if m.path:
            self.kids[m.path.rpartition("/")[0]].add(m.path)
        if m.type == tarfile.DIRTYPE:
            self.kids.setdefault(m.path, set())

    def clear(self, path: str) -> None:
        """Drop everything below path (a stack, not recursion: archives can
        be arbitrarily deep)."""
        stack = list(self.kids.get(path, ()))
        if path in self.kids:
            self.kids[path] = set()
        while stack:
            child = stack.pop()
            del self.entries[child]
            stack.extend(self.kids.pop(child, ()))

    def remove(self, path: str) -> None:
        if path and path in self.entries:
            self.clear(path)
            self.kids.pop(path, None)
            del self.entries[path]
            self.kids[path.rpartition("/")[0]].discard(path)

    def place(self, path: str, where: str) -> str:
        """Where an entry named `path` goes: its parents resolved through
        symlinks, missing ones made as implicit directories."""
        try:
            return follow(path, self.lookup, follow_last=False, create=lambda p: self.put(_implicit_dir(p)))
        except Unresolvable as e:
            raise ArchiveError(f"{where}: entry {path!r} cannot be placed: {e}") from None

    def find(self, path: str) -> str | None:
        try:
            return follow(path, self.lookup, follow_last=False)
        except Unresolvable:
            return None


def _member(info: tarfile.TarInfo, path: str, layer: int, where: str) -> Member:
    kind = TYPES.get(info.type)
    if kind is None:
        raise ArchiveError(f"{where}: entry {info.name!r} has unsupported type {info.type!r}")
    if info.sparse is not None:
        raise ArchiveError(f"{where}: entry {info.name!r} is a sparse file, which is not supported")
    pax = tuple(sorted((k, v) for k, v in info.pax_headers.items()
                       if k not in REGENERATED_PAX and not k.startswith("GNU.sparse.")))
    return Member(
        path=path, type=kind, mode=info.mode & 0o7777, uid=info.uid, gid=info.gid, uname=info.uname,
        gname=info.gname, mtime=int(info.mtime), size=info.size if kind == tarfile.REGTYPE else 0,
        linkname=info.linkname if kind == tarfile.SYMTYPE else "", devmajor=info.devmajor,
        devminor=info.devminor, pax=pax, layer=layer, offset=info.offset_data,
    )


def _apply(view: _View, layer: Layer, index: int) -> None:
    where = layer.label
    infos = [(normalise(i.name, where), i) for i in _members(layer.path, where)]
    # Whiteouts hide what lower layers hold, never what this one adds, so
    # they all go first whatever their place in the tar.
    for path, _ in infos:
        parent, _, base = path.rpartition("/")
        if base == OPAQUE:
            found = view.find(parent)
            if found is not None and found in view.entries and view.entries[found].type == tarfile.DIRTYPE:
                view.clear(found)
        elif base.startswith(WHITEOUT) and not base.startswith(WHITEOUT + WHITEOUT):
            if base == WHITEOUT:
                raise ArchiveError(f"{where}: whiteout {path!r} names nothing")
            found = view.find(posixpath.join(parent, base[len(WHITEOUT):]))
            if found is not None:
                view.remove(found)
    for path, info in infos:
        if path.rpartition("/")[2].startswith(WHITEOUT):
            continue  # whiteouts, and AUFS's own .wh..wh.* bookkeeping
        path = view.place(path, where)
        m = _member(info, path, index, where)
        if m.path == "" and m.type != tarfile.DIRTYPE:
            raise ArchiveError(f"{where}: the root entry is not a directory")
        if m.type == tarfile.LNKTYPE:
            name = normalise(info.linkname, where)
            found = view.find(name)
            target = view.entries.get(found) if found is not None else None
            if target is None:
                raise ArchiveError(f"{where}: hard link {info.name!r} points at {name!r}, which is not there")
            if target.type == tarfile.DIRTYPE:
                raise ArchiveError(f"{where}: hard link {info.name!r} points at directory {name!r}")
            m = dataclasses.replace(m, origin=target.origin or target)
        view.put(m)


def _settle_links(entries: dict[str, Member]) -> dict[str, Member]:
    """Hard links in their final form. Names that still share one original
    member stay linked, the data under the first of them in write order; if
    a later layer replaced or deleted the original, a surviving link becomes
    a regular file with the original's contents (as on overlayfs)."""
    names: dict[int, list[str]] = {}
    origins: dict[int, Member] = {}
    for path, m in entries.items():
        if m.origin is not None:
            names.setdefault(id(m.origin), []).append(path)
            origins[id(m.origin)] = m.origin
    for path, m in entries.items():
        if id(m) in names:
            names[id(m)].append(path)
    out = dict(entries)
    for key, paths in names.items():
        origin = origins[key]
        first, *rest = sorted(paths, key=sort_key)
        out[first] = dataclasses.replace(origin, path=first, origin=None)
        for path in rest:
            out[path] = dataclasses.replace(origin, path=path, type=tarfile.LNKTYPE, linkname=first, size=0,
                                            layer=-1, offset=0, origin=None)
    return out


def merge(layers: list[Layer]) -> Merged:
    """Apply the layers in order (OCI whiteouts and opaque directories
    honoured) and return the resulting view."""
    view = _View()
    for index, layer in enumerate(layers):
        _apply(view, layer, index)
    return Merged(tuple(layers), _settle_links(view.entries))


# -- reading the view ------------------------------------------------------


MAX_TIME = (1 << 32) - 1


def created(merged: Merged) -> int:
    """The newest time of any entry: a creation time for an imported image
    that comes from its contents, not from the clock."""
    # Clamped to what squashfs can record (unsigned 32-bit): a file dated
    # after 2106 must not make the whole import fail.
    # tar2sqfs takes the superblock time as a signed 32-bit number.
    return max(0, min(max((m.mtime for m in merged.entries.values()), default=0), (1 << 31) - 1))


def _data(merged: Merged, m: Member) -> Member:
    """A hard link as the member that holds its data, under its own path."""
    if m.type == tarfile.LNKTYPE:
        return dataclasses.replace(merged.entries[m.linkname], path=m.path)
    return m


def _copy(merged: Merged, m: Member, write: Callable[[bytes], object]) -> None:
    with merged.layers[m.layer].path.open("rb") as f:
        f.seek(m.offset)
        left = m.size
        while left:
            chunk = f.read(min(left, CHUNK))
            if not chunk:
                raise ArchiveError(f"{merged.layers[m.layer].label}: data of {m.path!r} is cut short")
            write(chunk)
            left -= len(chunk)


def _tarinfo(m: Member, mtime: int | None) -> tarfile.TarInfo:
    info = tarfile.TarInfo(m.path or ".")
    info.type, info.mode, info.uid, info.gid = m.type, m.mode, m.uid, m.gid
    info.uname, info.gname, info.linkname = m.uname, m.gname, m.linkname
    # squashfs keeps unsigned 32-bit times: earlier is 1970, later is 2106.
    info.mtime = max(0, min(m.mtime if mtime is None else mtime, MAX_TIME))
    info.size = m.size if m.type == tarfile.REGTYPE else 0
    info.devmajor, info.devminor = m.devmajor, m.devminor
    info.pax_headers = dict(m.pax)
    return info


def write_tar(merged: Merged, out: BinaryIO, *, mtime: int | None = None) -> None:
    """The view as one PAX tar stream, sorted by path; `out` may be a pipe.
    With `mtime`, every entry gets that time (reproducible output)."""
    files: dict[int, BinaryIO] = {}
    try:
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, encoding="utf-8") as tf:
            for m in sorted(merged.entries.values(), key=lambda m: sort_key(m.path)):
                src = None
                if m.type == tarfile.REGTYPE and m.size:
                    if m.layer not in files:
                        files[m.layer] = merged.layers[m.layer].path.open("rb")
                    src = files[m.layer]
                    src.seek(m.offset)
                try:
                    tf.addfile(_tarinfo(m, mtime), src)
                except OSError as e:
                    if e.errno is not None:
                        raise  # the output's (a closed pipe), not the layer's
                    # tarfile's "unexpected end of data": the layer changed.
                    raise ArchiveError(f"{merged.layers[m.layer].label}: data of {m.path!r} is cut short") from None
    finally:
        for f in files.values():
            f.close()


def read_file(merged: Merged, path: str) -> bytes | None:
    """The contents of a small regular file, symlinks followed within the
    view; None if there is no such file."""
    found = resolve(merged, path)
    if found is None:
        return None
    m = _data(merged, merged.entries[found])
    if m.type != tarfile.REGTYPE:
        return None
    if m.size > MAX_READ:
        raise ArchiveError(f"{path!r} is {m.size} bytes, too large to read whole")
    parts: list[bytes] = []
    _copy(merged, m, parts.append)
    return b"".join(parts)


def _open_dir(root_fd: int, parts: list[str]) -> int:
    """An fd for the directory root/parts..., made where missing; a symlink
    on the way is an error (O_NOFOLLOW), never followed."""
    fd = os.dup(root_fd)
    try:
        for name in parts:
            try:
                os.mkdir(name, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
    except BaseException:
        os.close(fd)
        raise
    return fd


def extract_subset(merged: Merged, dest: Path, prefixes: tuple[str, ...]) -> list[str]:
    """Write the directories, regular files and symlinks under `prefixes`
    into dest and return their view paths, sorted. A prefix is resolved in
    the view first, so `lib/modules/` on a merged-/usr system yields entries
    under `usr/lib/modules/`. Hard links are written as plain copies;
    devices and fifos are skipped. Symlinks are recreated, never followed:
    their targets are the image's and may point anywhere on this host."""
    roots = {found for p in prefixes if (found := resolve(merged, p.strip("/"))) is not None}
    chosen = [p for p in merged.paths()
              if any(r == "" or p == r or p.startswith(r + "/") for r in roots)]
    dest.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    root_fd = os.open(dest, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for path in chosen:
            m = _data(merged, merged.entries[path])
            if m.type not in (tarfile.DIRTYPE, tarfile.REGTYPE, tarfile.SYMTYPE):
                continue
            try:
                _extract_one(merged, m, root_fd)
            except OSError as e:
                raise ArchiveError(f"cannot extract {path!r} to {dest}: {e.strerror}") from None
            written.append(path)
    finally:
        os.close(root_fd)
    return written


def _extract_one(merged: Merged, m: Member, root_fd: int) -> None:
    *parents, name = m.path.split("/") if m.path else [""]
    if not name:
        return  # the root: dest itself
    fd = _open_dir(root_fd, parents)
    try:
        if m.type == tarfile.DIRTYPE:
            os.close(_open_dir(fd, [name]))
            return
        try:
            os.unlink(name, dir_fd=fd)
        except FileNotFoundError:
            pass
        except IsADirectoryError:
            raise OSError(21, f"{m.path!r} is a directory in the destination") from None
        if m.type == tarfile.SYMTYPE:
            os.symlink(m.linkname, name, dir_fd=fd)
            return
        out = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600, dir_fd=fd)
        with os.fdopen(out, "wb") as f:
            _copy(merged, m, f.write)
            os.fchmod(f.fileno(), m.mode & 0o777)
    finally:
        os.close(fd)
