"""One-time boot tokens: issued when a boot script sends a machine to the
agent, consumed by the agent's final report."""

from __future__ import annotations

import secrets

from sqlite_utils import Database

from provisioner.core.records import BootToken


def issue(db: Database, mac: str, purpose: str, now: float, lifetime: float) -> BootToken:
    token = BootToken(token=secrets.token_urlsafe(24), mac=mac, purpose=purpose, issued=now, expires=now + lifetime)
    db["boot_tokens"].insert(
        {
            "token": token.token,
            "mac": mac,
            "purpose": purpose,
            "issued": now,
            "expires": token.expires,
            "used": None,
        }
    )
    # Keep the table small: tokens past their lifetime are worthless.
    db.execute("delete from boot_tokens where expires < ?", [now - 86400])
    return token


def find(db: Database, token: str) -> BootToken | None:
    rows = list(db.query("select * from boot_tokens where token = ?", [token]))
    if not rows:
        return None
    r = rows[0]
    return BootToken(
        token=r["token"], mac=r["mac"], purpose=r["purpose"], issued=r["issued"], expires=r["expires"], used=r["used"]
    )


def mark_used(db: Database, token: str, now: float) -> None:
    db["boot_tokens"].update(token, {"used": now})
