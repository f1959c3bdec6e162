"""The content-addressed blob store under <state_dir>/images.

    blobs/sha256/<hex>    artifacts and manifests, named by their sha256
    tmp/<pid>-<random>/   staging of one build or import, held by a lock

Every blob is written to a staging file, fsynced, renamed into blobs/ and
the directory fsynced: a blob either is complete under its name or is not
there. A process killed half-way leaves only its staging directory, whose
lock dies with it; the next store user removes it. Which blobs belong to an
image is recorded in the database afterwards, so a blob without an image
is invisible and `gc` removes it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from provisioner.core.imageref import HEX
from provisioner.errors import InvalidInput, ProvisionerError

CHUNK = 1 << 20


class StoreError(ProvisionerError):
    """The store itself is damaged or unwritable."""


@dataclass(frozen=True)
class Blob:
    sha256: str
    size: int


def sha256_file(path: Path) -> Blob:
    with open(path, "rb") as f:
        return sha256_stream(f)


def sha256_stream(f: BinaryIO) -> Blob:
    """The sha256 and size of what is left to read in f."""
    h = hashlib.sha256()
    size = 0
    while chunk := f.read(CHUNK):
        h.update(chunk)
        size += len(chunk)
    return Blob(h.hexdigest(), size)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Staging:
    """A private directory for one build or import. Holding its lock marks it
    in use; `Store.clean_stale` removes directories whose lock is free."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = open(path / ".lock", "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._lock.close()

    def __enter__(self) -> "Staging":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Store:
    def __init__(self, root: Path):
        self.root = Path(root)
        self.blobs = self.root / "blobs" / "sha256"
        self.tmp = self.root / "tmp"

    def ensure(self) -> "Store":
        try:
            self.blobs.mkdir(parents=True, exist_ok=True)
            self.tmp.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"image store {self.root}: {exc.strerror}") from None
        return self

    # --- reading ---

    def path(self, sha256: str) -> Path:
        if not HEX.match(sha256):
            raise InvalidInput(f"{sha256!r} is not a sha256 hex digest")
        return self.blobs / sha256

    def has(self, sha256: str) -> bool:
        return self.path(sha256).is_file()

    def read(self, sha256: str) -> bytes:
        return self.path(sha256).read_bytes()

    def verify(self, sha256: str) -> Blob | None:
        """The blob as it is on disk now (None if missing); its sha256 differs
        from the name when the file is corrupt."""
        try:
            return sha256_file(self.path(sha256))
        except FileNotFoundError:
            return None

    def all_blobs(self) -> Iterator[str]:
        if self.blobs.is_dir():
            for entry in os.scandir(self.blobs):
                if HEX.match(entry.name):
                    yield entry.name

    # --- writing ---

    @contextlib.contextmanager
    def publishing(self) -> Iterator[None]:
        """Held (shared) from a publisher's first ingest to its commit, so
        that gc, which takes it exclusively, never deletes a blob that is
        about to be referenced."""
        self.ensure()
        with open(self.root / ".publish.lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_SH)
            yield

    @contextlib.contextmanager
    def collecting(self, *, wait: bool = True) -> Iterator[bool]:
        """Exclusive against publishers; yields False if `wait` is off and a
        publisher holds the lock."""
        self.ensure()
        with open(self.root / ".publish.lock", "a") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
            except BlockingIOError:
                yield False
                return
            yield True

    def staging(self) -> Staging:
        self.ensure()
        self.clean_stale()
        return Staging(Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.tmp)))

    def ingest(self, path: Path, expected: str | None = None) -> Blob:
        """Move a finished file from a staging directory into the store under
        its sha256. If `expected` is given and differs, the file is refused.
        An existing blob of the same digest is replaced by this fresh copy,
        which also repairs one that rotted on disk."""
        path = Path(path)
        with open(path, "rb+") as f:
            h = hashlib.sha256()
            size = 0
            while chunk := f.read(CHUNK):
                h.update(chunk)
                size += len(chunk)
            os.fsync(f.fileno())
        blob = Blob(h.hexdigest(), size)
        if expected is not None and blob.sha256 != expected:
            raise InvalidInput(f"{path.name}: sha256 is {blob.sha256}, expected {expected}")
        os.chmod(path, 0o444)
        self.ensure()
        try:
            os.rename(path, self.blobs / blob.sha256)
        except OSError as exc:
            if exc.errno == errno.EXDEV:
                raise StoreError(f"{path} is not on the store's file system ({self.root})") from None
            raise
        _fsync_dir(self.blobs)
        return blob

    def add_bytes(self, data: bytes, staging: Staging) -> Blob:
        tmp = staging.path / f".bytes-{hashlib.sha256(data).hexdigest()[:16]}"
        with open(tmp, "wb") as f:
            f.write(data)
        return self.ingest(tmp)

    def remove(self, sha256: str) -> bool:
        try:
            os.unlink(self.path(sha256))
        except FileNotFoundError:
            return False
        return True

    def clean_stale(self) -> list[str]:
        """Remove staging directories whose owner is gone (killed builds and
        imports); returns their names."""
        removed = []
        if not self.tmp.is_dir():
            return removed
        for entry in os.scandir(self.tmp):
            lock_path = Path(entry.path) / ".lock"
            try:
                fd = os.open(lock_path, os.O_RDWR)
            except FileNotFoundError:
                # Between mkdtemp and the lock, or a stray file: only remove
                # it if old enough that no live staging can be that young.
                try:
                    if entry.stat(follow_symlinks=False).st_mtime < time.time() - 3600:
                        _rm(Path(entry.path))
                        removed.append(entry.name)
                except FileNotFoundError:
                    pass
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue  # in use
            try:
                _rm(Path(entry.path))
                removed.append(entry.name)
            finally:
                os.close(fd)
        return removed


def _rm(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
