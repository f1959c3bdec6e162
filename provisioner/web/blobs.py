"""Image blobs by digest: GET/HEAD /artifacts/sha256/<hex>.

The URL names the content, so the response is cacheable forever (ETag = the
digest, `immutable`) by any HTTP cache or object store in front of the
appliance. A blob is hashed before it is first served and again whenever
its file changes (inode, size, mtime or ctime), so a corrupted file is
answered with an error, never with a 200 that claims the digest.
"""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from flask import Blueprint, current_app

from provisioner.core.imageref import HEX
from provisioner.errors import NotFound, ProvisionerError
from provisioner.images.store import sha256_stream
from provisioner.web.files import file_response

log = logging.getLogger("provisioner.http")
blobs = Blueprint("blobs", __name__)


class CorruptBlob(ProvisionerError):
    status = 500


class BlobVerifier:
    """Remembers which file versions hashed to their names. One thread
    hashes a given blob at a time; the others wait for its verdict."""

    def __init__(self) -> None:
        self._ok: dict[str, tuple[int, ...]] = {}
        self._bad: dict[str, tuple[int, ...]] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    @staticmethod
    def _key(path: Path) -> tuple[int, ...]:
        return _stat_key(os.stat(path))

    def known_good(self, digest: str, st: os.stat_result) -> bool:
        """True if this very file version already hashed to digest; never
        hashes (the event loop's fast path asks this)."""
        return self._ok.get(digest) == _stat_key(st)

    def check(self, digest: str, path: Path) -> bool:
        """True if the file at path now has sha256 == digest. Raises
        FileNotFoundError if it is gone."""
        key = self._key(path)
        if self._ok.get(digest) == key:
            return True
        with self._guard:
            lock = self._locks.setdefault(digest, threading.Lock())
        with lock, open(path, "rb") as f:
            # The key and the hash come from the same open file, so a file
            # renamed into place meanwhile cannot take the verdict.
            key = _stat_key(os.fstat(f.fileno()))
            if self._ok.get(digest) == key:
                return True
            if self._bad.get(digest) == key:
                return False
            good = sha256_stream(f).sha256 == digest
            # Keyed by the stat taken before hashing: a change during the
            # hash gives a new key, so the next request hashes again.
            (self._ok if good else self._bad)[digest] = key
            (self._bad if good else self._ok).pop(digest, None)
            return good


def _stat_key(st: os.stat_result) -> tuple[int, ...]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _verifier() -> BlobVerifier:
    return current_app.extensions["provisioner.blob_verifier"]


@blobs.route("/artifacts/sha256/<hexdigest>", methods=["GET", "HEAD"])
def blob(hexdigest: str):
    if not HEX.match(hexdigest):
        raise NotFound(f"{hexdigest!r} is not a sha256 hex digest")
    svc = current_app.extensions["provisioner.service"]()
    if not svc.blob_served(hexdigest):
        raise NotFound(f"no published image has sha256:{hexdigest}")
    path = svc.image_store().path(hexdigest)
    try:
        good = _verifier().check(hexdigest, path)
    except FileNotFoundError:
        raise CorruptBlob(f"sha256:{hexdigest} is missing from the store; run `provisioner image verify`") from None
    if not good:
        svc.record("image.corrupt", f"sha256:{hexdigest} does not match its digest; not served",
                   actor="http", data={"digest": hexdigest})
        raise CorruptBlob(f"sha256:{hexdigest} is corrupt in the store and is not served;"
                          " run `provisioner image verify`")
    return file_response(path, etag=hexdigest, immutable=True)
