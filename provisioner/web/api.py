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
    svc = _service()
    host = svc.add_host(doc["mac"], doc["name"], labels, ip=ip, actor="api")
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
