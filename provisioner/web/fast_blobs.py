"""Blob requests answered on the HTTP server's event loop.

A GET or HEAD of /artifacts/sha256/<hex> whose blob is published and has
already been verified (web/blobs.py) is answered here without a worker
thread, a WSGI environ or Flask: the loop writes the header and hands the
range to sendfile. That is most of what a small Range request costs (iPXE
and HTTP caches fetch ranges). Anything else (an unknown or unverified
blob, a file that changed since it was hashed, a store error) returns None
and takes the ordinary Flask route, which hashes, records events and words
the errors. Both routes answer from web/file_reply.py.
"""

from __future__ import annotations

import io
import os
import sqlite3
import time
from pathlib import Path

from sqlite_utils import Database

from provisioner.core.imageref import HEX
from provisioner.db import images
from provisioner.images.store import Store
from provisioner.web.blobs import BlobVerifier
from provisioner.web.file_reply import FileReply, file_reply

PREFIX = "/artifacts/sha256/"
RECHECK = 1.0  # seconds


class FastBlobs:
    """Used from the event loop's thread only (close() too, once the loop
    has ended)."""

    def __init__(self, db_path: Path, images_dir: Path, verifier: BlobVerifier) -> None:
        self._db_path = db_path
        self._blobs = f"{Store(images_dir).blobs}/"
        self._verifier = verifier
        self._db: Database | None = None
        self._version: int | None = None
        self._served: dict[str, float] = {}  # digest -> trusted until (monotonic)
        self.hits = 0  # requests answered here

    def open(self, method: str, path: str, *, if_none_match: str | None, if_range: str | None,
             range_header: str | None) -> tuple[FileReply, io.FileIO | None] | None:
        """The reply and the open file to send its body from (None when
        there is no body), or None: take the ordinary route."""
        hexdigest = path[len(PREFIX):]
        if not path.startswith(PREFIX) or not HEX.match(hexdigest) or not self._published(hexdigest):
            return None
        try:
            f = io.FileIO(self._blobs + hexdigest)  # unbuffered: the body goes out by sendfile
        except OSError:
            return None
        try:
            st = os.fstat(f.fileno())
            if not self._verifier.known_good(hexdigest, st):
                f.close()
                return None
            reply = file_reply(method=method, size=st.st_size, mtime=st.st_mtime, tag=hexdigest, immutable=True,
                               if_none_match=if_none_match, if_range=if_range, range_header=range_header)
        except BaseException:
            f.close()
            raise
        self.hits += 1
        if not reply.length:
            f.close()
            return reply, None
        return reply, f

    def _published(self, hexdigest: str) -> bool:
        # A yes is trusted for RECHECK seconds, then asked again: removing
        # an image stops new fast-path requests for its blobs within that
        # time (a download already running goes on whatever we do).
        # data_version changes whenever another connection commits, so a
        # fresh answer is one pragma when nothing changed.
        now = time.monotonic()
        if self._served.get(hexdigest, 0.0) > now:
            return True
        try:
            if self._db is None:
                # The loop must not wait on a busy database: Flask's route,
                # which may, answers instead.
                self._db = Database(sqlite3.connect(str(self._db_path), isolation_level=None,
                                                    check_same_thread=False, timeout=0))
            version = self._db.execute("PRAGMA data_version").fetchone()[0]
            if version != self._version:
                self._version = version
                self._served.clear()
            elif hexdigest in self._served:
                self._served[hexdigest] = now + RECHECK
                return True
            found = images.blob_known(self._db, hexdigest)
        except sqlite3.Error:
            return False
        if found:
            self._served[hexdigest] = now + RECHECK
        return found

    def close(self) -> None:
        if self._db is not None:
            self._db.conn.close()
            self._db = None
