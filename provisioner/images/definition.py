"""Image definitions: images/<name>/image.toml, plus an optional files/
overlay and hooks/.

Read once into a frozen record; any mistake is one line naming the key.
The definition digest covers everything a build reads from the directory
(image.toml, files/, hooks/), so a changed definition can never be
published under a version that was built from another one.
"""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner.core.imageref import check_image_name, check_version, parse_ref
from provisioner.errors import InvalidInput

METHODS = ("unpack", "mmdebstrap")
_SCHEMA: dict[str, Any] = {
    "name": str, "version": str, "description": str, "source_date_epoch": int,
    "base": {"method": str, "suite": str, "variant": str, "mirror": str, "components": list, "sources": list,
             "image": str},
    "packages": {"kernel": str, "install": list},
    "build": {"commands": list, "modules": list},
}
DIGESTED = ("image.toml", "files", "hooks")


class DefinitionError(InvalidInput):
    """The definition is wrong; the message names the file and the key."""


@dataclass(frozen=True)
class Definition:
    path: Path  # the directory
    name: str
    version: str
    description: str
    method: str  # unpack | mmdebstrap | image
    suite: str
    variant: str
    mirror: str | None
    components: tuple[str, ...]
    sources: tuple[str, ...]  # extra one-line apt sources (updates, security)
    base_image: str | None  # NAME@VERSION when method == "image"
    kernel: str | None  # a package; None: the base image's kernel
    install: tuple[str, ...]
    commands: tuple[str, ...]
    modules: tuple[str, ...]
    digest: str  # sha256 over DIGESTED
    source_date_epoch: int | None  # from image.toml, if pinned there

    @property
    def ref(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def files_dir(self) -> Path:
        return self.path / "files"

    @property
    def hooks(self) -> tuple[Path, ...]:
        d = self.path / "hooks"
        if not d.is_dir():
            return ()
        return tuple(sorted(p for p in d.iterdir() if p.is_file() and os.access(p, os.X_OK)))


def _fail(path: Path, key: str, why: str) -> DefinitionError:
    return DefinitionError(f"{path}: {key}: {why}")


def _check_keys(doc: dict, schema: dict, prefix: str, path: Path) -> None:
    for key, value in doc.items():
        if key not in schema:
            raise _fail(path, prefix + key, f"unknown key (known: {', '.join(sorted(schema))})")
        want = schema[key]
        if isinstance(want, dict):
            if not isinstance(value, dict):
                raise _fail(path, prefix + key, "expected a table")
            _check_keys(value, want, prefix + key + ".", path)
        elif want is list:
            if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
                raise _fail(path, prefix + key, "expected a list of non-empty strings")
        elif not isinstance(value, want) or isinstance(value, bool):
            raise _fail(path, prefix + key, f"expected {want.__name__}, got {type(value).__name__}")


def load_definition(directory: Path) -> Definition:
    directory = Path(directory)
    toml = directory / "image.toml"
    if directory.is_file() and directory.name == "image.toml":
        directory, toml = directory.parent, directory
    try:
        doc = tomllib.loads(toml.read_text())
    except FileNotFoundError:
        raise DefinitionError(f"{directory}: no image.toml (an image definition is a directory with image.toml)") from None
    except tomllib.TOMLDecodeError as exc:
        raise DefinitionError(f"{toml}: not valid TOML: {exc}") from None
    _check_keys(doc, _SCHEMA, "", toml)
    for key in ("name", "version"):
        if key not in doc:
            raise _fail(toml, key, "missing")
    try:
        name, version = check_image_name(doc["name"]), check_version(doc["version"])
    except InvalidInput as exc:
        raise DefinitionError(f"{toml}: {exc.message}") from None

    base = doc.get("base", {})
    packages = doc.get("packages", {})
    build = doc.get("build", {})
    base_image = base.get("image")
    if base_image is not None:
        if "method" in base:
            raise _fail(toml, "base", "give either method or image, not both")
        try:
            ref = parse_ref(base_image)
        except InvalidInput as exc:
            raise _fail(toml, "base.image", exc.message) from None
        if ref.is_channel:
            # A channel moves; a build must name what it starts from.
            raise _fail(toml, "base.image", f"{base_image} is a channel; name a version (NAME@VERSION)")
        method = "image"
    else:
        method = base.get("method", "mmdebstrap")
        if method not in METHODS:
            raise _fail(toml, "base.method", f"{method!r}: expected one of {', '.join(METHODS)}, or set base.image")
    for line in base.get("sources", []):
        if not line.startswith("deb ") or len(line.split()) < 3 or "\n" in line:
            raise _fail(toml, "base.sources", f"{line!r}: expected one-line sources like 'deb URL SUITE main'")
    if base.get("sources") and method != "mmdebstrap":
        raise _fail(toml, "base.sources", "only for method = \"mmdebstrap\"")
    kernel = packages.get("kernel")
    if kernel is None and method != "image":
        raise _fail(toml, "packages.kernel", "missing: every image needs a kernel (e.g. linux-image-amd64)")
    sde = doc.get("source_date_epoch")
    if sde is not None and sde < 0:
        raise _fail(toml, "source_date_epoch", "must not be negative")
    return Definition(
        path=directory,
        name=name,
        version=version,
        description=doc.get("description", ""),
        method=method,
        suite=base.get("suite", "bookworm"),
        variant=base.get("variant", "apt"),
        mirror=base.get("mirror") or None,
        components=tuple(base.get("components", ["main"])),
        sources=tuple(base.get("sources", [])),
        base_image=base_image,
        kernel=kernel,
        install=tuple(packages.get("install", [])),
        commands=tuple(build.get("commands", [])),
        modules=tuple(build.get("modules", [])),
        digest=definition_digest(directory),
        source_date_epoch=sde,
    )


def definition_digest(directory: Path) -> str:
    """sha256 over the path, type, executable bit and content (or link
    target) of everything in DIGESTED, in sorted order. Owners and times are
    left out: they differ between checkouts of the same definition."""
    h = hashlib.sha256()
    for top in DIGESTED:
        start = directory / top
        if not start.exists() and not start.is_symlink():
            continue
        paths = [start] if not start.is_dir() else sorted(
            (Path(d) / n for d, dirs, files in os.walk(start) for n in dirs + files), key=lambda p: p.as_posix()
        )
        if start.is_dir():
            paths = [start, *paths]
        for p in paths:
            rel = p.relative_to(directory).as_posix()
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                entry = b"l" + os.readlink(p).encode()
            elif stat.S_ISDIR(st.st_mode):
                entry = b"d"
            elif stat.S_ISREG(st.st_mode):
                entry = (b"x" if st.st_mode & 0o111 else b"f") + hashlib.sha256(p.read_bytes()).digest()
            else:
                raise DefinitionError(f"{p}: only files, directories and symlinks can be in a definition")
            h.update(rel.encode() + b"\0" + entry + b"\0")
    return h.hexdigest()


def source_date_epoch(defn: Definition) -> int:
    """The time every file of the image gets, and the manifest's `created`:
    $SOURCE_DATE_EPOCH, else the definition's own, else the time of the last
    commit that touched the definition, else its newest file."""
    env = os.environ.get("SOURCE_DATE_EPOCH")
    if env:
        try:
            return int(env)
        except ValueError:
            raise DefinitionError(f"SOURCE_DATE_EPOCH={env!r} is not an integer") from None
    if defn.source_date_epoch is not None:
        return defn.source_date_epoch
    try:
        out = subprocess.run(
            ["git", "log", "-1", "--format=%ct", "--", "."], cwd=defn.path, capture_output=True, text=True, timeout=30
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=defn.path, capture_output=True, text=True, timeout=30
        )
        if out.returncode == 0 and out.stdout.strip() and dirty.returncode == 0 and not dirty.stdout.strip():
            return int(out.stdout.strip())
    except (OSError, subprocess.SubprocessError, ValueError):
        pass
    newest = 0
    for top in DIGESTED:
        for p in [defn.path / top, *((defn.path / top).rglob("*") if (defn.path / top).is_dir() else [])]:
            if p.exists():
                newest = max(newest, int(p.lstat().st_mtime))
    return newest
