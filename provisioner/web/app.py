"""The Flask app factory. One SQLite connection per server thread; errors are
translated to responses in one place."""

from __future__ import annotations

import logging
import re
import threading

from flask import Flask, g, jsonify, request
from sqlite_utils import Database

from provisioner.db import open_db
from provisioner.errors import ProvisionerError
from provisioner.service import Service
from provisioner.settings import Settings

log = logging.getLogger("provisioner.http")
MAX_BODY = 1 << 20


class _Connections(threading.local):
    db: Database | None = None


def create_app(settings: Settings, *, base_url: str | None = None) -> Flask:
    """`base_url` is where clients reach this server (settings.base_url);
    without one (tests, ad-hoc runs) each request's own Host is used."""
    app = Flask(__name__)
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY
    app.extensions["provisioner.settings"] = settings
    app.extensions["provisioner.base_url"] = base_url
    path = str(settings.db_path)
    open_db(path).conn.close()  # migrate once, before threads share the file
    local = _Connections()

    def service() -> Service:
        if "service" not in g:
            if local.db is None:
                local.db = open_db(path, migrate=False)
            g.service = Service(settings, local.db)
        return g.service

    app.extensions["provisioner.service"] = service

    from provisioner.web.api import api
    from provisioner.web.blobs import BlobVerifier, blobs
    from provisioner.web.boot import boot
    from provisioner.web.fast_blobs import FastBlobs

    verifier = app.extensions["provisioner.blob_verifier"] = BlobVerifier()
    # Picked up by web/server.py's make_server, if that is what serves us.
    app.extensions["provisioner.fast_blobs"] = FastBlobs(settings.db_path, settings.images_dir, verifier)
    app.register_blueprint(boot)
    app.register_blueprint(blobs)
    app.register_blueprint(api, url_prefix="/api/v1")

    @app.get("/healthz")
    def healthz():
        service().db.execute("select 1")
        return {"ok": True}

    @app.errorhandler(ProvisionerError)
    def provisioner_error(exc: ProvisionerError):
        if exc.status >= 500:
            log.error("%s %s: %s", request.method, request.path, exc.message)
        return _error(exc.status, exc.message)

    @app.errorhandler(404)
    def not_found(_exc):
        return _error(404, f"no such resource: {request.path}")

    @app.errorhandler(405)
    def not_allowed(_exc):
        return _error(405, f"{request.method} is not allowed on {request.path}")

    @app.errorhandler(413)
    def too_large(_exc):
        return _error(413, f"request body larger than {MAX_BODY} bytes")

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("%s %s failed", request.method, request.path)
        return _error(500, "internal error; see the appliance's log")

    return app


_UNPRINTABLE = re.compile(r"[^\x20-\x7e]")


def _error(status: int, message: str):
    # iPXE shows the body of a failed script fetch; plain text reads best
    # there. The message may quote the request: it must stay one harmless
    # line, never a second command.
    if request.path.startswith("/boot"):
        safe = _UNPRINTABLE.sub("?", message)[:200]
        return f"#!ipxe\necho provisioner: error {status}: {safe}\nexit 1\n", status, {"Content-Type": "text/plain"}
    return jsonify({"error": message, "status": status}), status
