"""Fetch Debian packages with apt-get download into a cache, and unpack them.

The cache holds plain .deb files under cache_dir/debs. A package whose
candidate version is already cached is not downloaded again; when apt
cannot be asked at all (no package lists, offline) the newest cached .deb of
that name is used, so a once-built appliance can rebuild without a mirror.
"""

from __future__ import annotations

from provisioner.errors import ProvisionerError

import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

Log = Callable[[str], None]


class PackageError(ProvisionerError):
    """The agent build failed; the message is one line saying why."""


@dataclass(frozen=True)
class Deb:
    package: str
    version: str
    path: Path


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, **kw)


def deb_fields(path: Path) -> dict[str, str]:
    out = _run(["dpkg-deb", "-f", str(path), "Package", "Version", "Depends"], check=True).stdout
    fields: dict[str, str] = {}
    for line in out.splitlines():
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    return fields


def _version_key(version: str) -> object:
    # Comparing Debian versions correctly needs dpkg; cmp_to_key on
    # `dpkg --compare-versions` would do, but we only order a handful.
    import functools

    def cmp(a: str, b: str) -> int:
        if a == b:
            return 0
        lt = subprocess.run(["dpkg", "--compare-versions", a, "lt", b]).returncode == 0
        return -1 if lt else 1

    return functools.cmp_to_key(cmp)(version)


class DebCache:
    def __init__(self, cache_dir: Path, log: Log) -> None:
        self.dir = cache_dir / "debs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.log = log
        self._updated = False
        self._index: dict[tuple[str, str], Path] | None = None
        self._records: dict[str, dict[str, str]] = {}

    def _cached(self) -> dict[tuple[str, str], Path]:
        if self._index is None:
            self._index = {}
            for path in sorted(self.dir.glob("*.deb")):
                name, version, _arch = path.name.split("_", 2)
                # apt-get download writes the epoch colon as %3a.
                self._index[(name, version.replace("%3a", ":"))] = path
        return self._index

    def _show(self, package: str) -> dict[str, str] | None:
        """apt's candidate record for a package, or None if apt does not know it."""
        return self._show_many([package]).get(package)

    def _show_many(self, packages: list[str]) -> dict[str, dict[str, str]]:
        # One apt-cache call for many packages: each call costs ~0.6 s of
        # loading the package lists, which dominated the build.
        proc = _run(["apt-cache", "show", "--no-all-versions", *packages])
        records: dict[str, dict[str, str]] = {}
        for stanza in proc.stdout.split("\n\n"):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line[:1].isspace() or ":" not in line:
                    continue
                key, _, value = line.partition(":")
                fields.setdefault(key, value.strip())
            if "Package" in fields and "Version" in fields:
                records.setdefault(fields["Package"], fields)
        return records

    def prefetch(self, packages: list[str]) -> None:
        """Ask apt about many packages at once; later get() calls reuse it."""
        missing = [p for p in packages if p not in self._records]
        if missing:
            self._records.update(self._show_many(missing))

    def candidate(self, package: str) -> dict[str, str] | None:
        record = self._records.get(package) or self._show(package)
        if record is None and not self._updated:
            # Only now is an update worth its network traffic.
            self.log("agent: apt does not know %s; running apt-get update" % package)
            proc = _run(["apt-get", "update"])
            self._updated = True
            if proc.returncode != 0:
                self.log("agent: apt-get update failed: " + proc.stderr.strip()[-300:])
            self._records.clear()
            record = self._show(package)
        if record is not None:
            self._records[package] = record
        return record

    def newest_cached(self, package: str) -> Deb | None:
        versions = [(v, p) for (n, v), p in self._cached().items() if n == package]
        if not versions:
            return None
        version, path = max(versions, key=lambda vp: _version_key(vp[0]))
        return Deb(package, version, path)

    def get(self, package: str) -> Deb:
        record = self.candidate(package)
        if record is None:
            cached = self.newest_cached(package)
            if cached is None:
                raise PackageError(f"package {package}: apt does not know it and it is not in {self.dir}")
            self.log(f"agent: apt does not know {package}; using cached {cached.path.name}")
            return cached
        version = record["Version"]
        path = self._cached().get((package, version))
        if path is not None:
            return Deb(package, version, path)
        return self._download(package, version)

    def _download(self, package: str, version: str) -> Deb:
        self.log(f"agent: downloading {package} {version}")
        # Download into a private directory and move the finished file in, so
        # an interrupted download never leaves a truncated .deb in the cache.
        with tempfile.TemporaryDirectory(dir=self.dir, prefix=".download-") as tmp:
            proc = _run(
                # Sandbox user root: the cache is root's, _apt may not write it.
                ["apt-get", "-q", "-o", "APT::Sandbox::User=root", "download", f"{package}={version}"],
                cwd=tmp,
            )
            if proc.returncode != 0:
                raise PackageError(f"apt-get download {package}={version} failed: {proc.stderr.strip()[-500:]}")
            files = list(Path(tmp).glob("*.deb"))
            if len(files) != 1:
                raise PackageError(f"apt-get download {package}: expected one .deb, got {len(files)}")
            dest = self.dir / files[0].name
            shutil.move(str(files[0]), dest)
        self._cached()[(package, version)] = dest
        return Deb(package, version, dest)

    def resolve_kernel(self, meta: str = "linux-image-amd64") -> str:
        """The real kernel package a metapackage depends on
        (linux-image-amd64 -> linux-image-6.1.0-NN-amd64)."""
        record = self.candidate(meta)
        if record is not None:
            for alt in record.get("Depends", "").split(","):
                name = alt.split("|")[0].split("(")[0].strip()
                if name.startswith("linux-image-"):
                    return name
            raise PackageError(f"{meta}: no linux-image-* dependency in {record.get('Depends')!r}")
        flavour = meta.removeprefix("linux-image-")
        names = sorted(
            # linux-image-6.1.0-56-amd64 for flavour amd64, not ...-cloud-amd64
            {n for (n, _v) in self._cached() if re.fullmatch(r"linux-image-[0-9.]+-[0-9]+-" + re.escape(flavour), n)},
            # Numeric parts compared as numbers: 6.1.0-56 is newer than 6.1.0-9.
            key=lambda n: [int(x) if x.isdigit() else x for x in re.split(r"(\d+)", n)],
        )
        if not names:
            raise PackageError(f"{meta}: apt does not know it and no kernel package is cached")
        self.log(f"agent: apt does not know {meta}; using cached {names[-1]}")
        return names[-1]


def unpack(deb: Deb, dest: Path) -> None:
    subprocess.run(["dpkg-deb", "-x", str(deb.path), str(dest)], check=True)
