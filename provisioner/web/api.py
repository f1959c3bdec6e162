"""The REST API (JSON), including the agent's endpoints."""

from __future__ import annotations

from flask import Blueprint, current_app, request

from provisioner.errors import InvalidInput

api = Blueprint("api", __name__)


def _service():
    return current_app.extensions["provisioner.service"]()


def _body() -> dict:
    doc = request.get_json(silent=True)
    if not isinstance(doc, dict):
        raise InvalidInput("expected a JSON object body")
    return doc


def _int_arg(name: str, default: int) -> int:
    try:
        return int(request.args.get(name, default))
    except ValueError:
        raise InvalidInput(f"{name}: expected a number") from None


@api.get("/hosts")
def list_hosts():
    svc = _service()
    return {"hosts": [svc.describe(h) for h in svc.list_hosts()]}


@api.post("/hosts")
def add_host():
    doc = _body()
    labels = doc.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidInput("labels: expected an object of strings")
    if not isinstance(doc.get("mac"), str) or not isinstance(doc.get("name"), str):
        raise InvalidInput("mac and name: required strings")
    ip = doc.get("ip")
    if ip is not None and not isinstance(ip, str):
        raise InvalidInput("ip: expected an address string")
    image = doc.get("image")
    if image is not None and not isinstance(image, str):
        raise InvalidInput("image: expected NAME@VERSION or NAME@CHANNEL")
    svc = _service()
    host = svc.add_host(doc["mac"], doc["name"], labels, ip=ip, image=image, actor="api")
    return svc.describe(host), 201


@api.get("/hosts/<ref>")
def show_host(ref: str):
    svc = _service()
    return svc.describe(svc.get_host(ref))


@api.delete("/hosts/<ref>")
def remove_host(ref: str):
    host = _service().remove_host(ref, actor="api")
    return {"removed": host.name}


@api.get("/events")
def list_events():
    events = _service().events(
        request.args.get("host"), limit=_int_arg("limit", 100), after_id=_int_arg("after", 0)
    )
    return {"events": [e.to_json() for e in events]}


@api.get("/agent/plan")
def agent_plan():
    return _service().agent_plan(request.args.get("token"), remote=request.remote_addr)


@api.post("/agent/event")
def agent_event():
    doc = _body()
    _service().agent_event(doc.get("token"), doc.get("phase"), doc.get("message"), remote=request.remote_addr)
    return {"ok": True}


@api.post("/agent/report")
def agent_report():
    doc = _body()
    host = _service().agent_report(doc.get("token"), doc.get("hardware"), remote=request.remote_addr)
    return {"host": host.name}


def _actor(doc: dict | None = None) -> str:
    # No authentication yet (a trusted provisioning network): the caller may
    # name itself; the address is always recorded.
    who = (doc or {}).get("by")
    if who is not None and (not isinstance(who, str) or not who or len(who) > 64):
        raise InvalidInput("by: expected a name of at most 64 characters")
    return f"{who}@{request.remote_addr}" if who else f"api@{request.remote_addr}"


@api.put("/hosts/<ref>/image")
def set_host_image(ref: str):
    doc = _body()
    image = doc.get("image")
    if image is not None and not isinstance(image, str):
        raise InvalidInput("image: expected NAME@VERSION, NAME@CHANNEL or null")
    svc = _service()
    svc.set_host_image(ref, image, actor=_actor(doc))
    return svc.describe(svc.get_host(ref))


@api.get("/images")
def list_images():
    return {"images": _service().list_images(request.args.get("name"))}


@api.get("/images/<name>/<tag>")
def show_image(name: str, tag: str):
    return _service().show_image(f"{name}@{tag}")


@api.post("/images/<name>/<version>/verify")
def verify_image(name: str, version: str):
    row, problems = _service().verify_image(f"{name}@{version}")
    return {"image": f"{row.name}@{row.version}", "digest": f"sha256:{row.digest}", "ok": not problems,
            "problems": [str(p) for p in problems]}


@api.delete("/images/<name>/<version>")
def remove_image(name: str, version: str):
    row = _service().remove_image(f"{name}@{version}", actor=_actor())
    return {"removed": f"{row.name}@{row.version}"}


@api.get("/images/<name>/channels")
def list_channels(name: str):
    return {"channels": _service().list_channels(name)}


@api.get("/images/<name>/channels/<label>")
def channel_history(name: str, label: str):
    return {"moves": _service().channel_history(f"{name}@{label}", limit=_int_arg("limit", 50))}


@api.put("/images/<name>/channels/<label>")
def promote(name: str, label: str):
    doc = _body()
    version = doc.get("version")
    if not isinstance(version, str):
        raise InvalidInput("version: required string")
    return _service().promote_image(f"{name}@{version}", label, actor=_actor(doc))


@api.post("/images/<name>/channels/<label>/rollback")
def rollback(name: str, label: str):
    doc = request.get_json(silent=True) or {}
    return _service().rollback_channel(f"{name}@{label}", actor=_actor(doc if isinstance(doc, dict) else {}))
