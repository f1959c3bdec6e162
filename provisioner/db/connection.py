"""One connection per thread, WAL, and write transactions that take the write
lock up front (BEGIN IMMEDIATE) so that concurrent writers wait for each other
instead of failing with "database is locked" half-way through."""

from __future__ import annotations

import sqlite3
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlite_utils import Database

from provisioner.db.schema import migrations

BUSY_TIMEOUT_MS = 10_000


def open_db(path: Path | str | None = None, *, migrate: bool = True) -> Database:
    """Open (and migrate) the state database. `None` opens an in-memory one."""
    if path is None:
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
    else:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    db = Database(conn)
    if path is not None:
        db.enable_wal()
        # FULL: a commit (a lease before its ACK, a host, a token) is on disk
        # when it returns, so a power cut loses nothing that was answered.
        # NORMAL would lose the last commits since a WAL checkpoint.
        conn.execute("PRAGMA synchronous = FULL")
    if migrate:
        migrations.apply(db)
    return db


@contextmanager
def write(db: Database) -> Iterator[Database]:
    """A write transaction that holds the write lock from its first statement."""
    conn = db.conn
    if conn.in_transaction:
        # Nested use joins the outer transaction.
        yield db
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield db
    except BaseException:
        # A callee may have ended the transaction itself (to record a refusal
        # that must survive); only roll back what is still open.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")
