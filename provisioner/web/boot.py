"""Boot endpoints: what iPXE and UEFI HTTP Boot fetch."""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, current_app, request

from provisioner.web.artifacts import AGENT_ARTIFACTS, artifact_etag
from provisioner.core.bootfiles import BOOT_FILES
from provisioner.core.render import render_chain_script
from provisioner.errors import InvalidInput, NotFound
from provisioner.web.files import file_response

boot = Blueprint("boot", __name__)

IPXE_TEXT = "text/plain; charset=utf-8"


def _settings():
    return current_app.extensions["provisioner.settings"]


def _service():
    return current_app.extensions["provisioner.service"]()


def base_url() -> str:
    configured = current_app.extensions.get("provisioner.base_url")
    return configured or request.host_url.rstrip("/")


@boot.get("/boot.ipxe")
def chain_script():
    return Response(render_chain_script(base_url()), mimetype=IPXE_TEXT)


@boot.get("/boot/ipxe")
def host_script():
    mac = request.args.get("mac")
    if not mac:
        raise InvalidInput("mac: missing (e.g. /boot/ipxe?mac=52-54-00-12-34-56)")
    try:
        attempt = int(request.args.get("attempt", "1"))
    except ValueError:
        raise InvalidInput("attempt: expected a number") from None
    script = _service().boot_script(mac, base_url(), attempt=attempt)
    return Response(script, mimetype=IPXE_TEXT, headers={"Cache-Control": "no-store"})


@boot.get("/boot/<name>")
def ipxe_binary(name: str):
    key = BOOT_FILES.get(name)
    if key is None:
        raise NotFound(f"no boot file {name!r}")
    path: Path = getattr(_settings().ipxe, key)
    # UEFI HTTP Boot decides the image type from Content-Type, then extension.
    mimetype = "application/efi" if name.endswith(".efi") else "application/octet-stream"
    return file_response(path, mimetype=mimetype)


@boot.get("/agent/<name>")
def agent_artifact(name: str):
    if name not in AGENT_ARTIFACTS:
        raise NotFound(f"no agent artifact {name!r}")
    agent_dir = _settings().agent_dir
    etag = artifact_etag(agent_dir, name)
    return file_response(agent_dir / name, etag=etag, immutable=False)
