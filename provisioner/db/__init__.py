"""SQLite state through sqlite-utils: schema, migrations and queries."""

from provisioner.db.connection import open_db, write

__all__ = ["open_db", "write"]
