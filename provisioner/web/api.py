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
    return {"hosts": [h.to_json() for h in _service().list_hosts()]}


@api.post("/hosts")
def add_host():
    doc = _body()
    labels = doc.get("labels") or {}
    if not isinstance(labels, dict) or not all(isinstance(v, str) for v in labels.values()):
        raise InvalidInput("labels: expected an object of strings")
    if not isinstance(doc.get("mac"), str) or not isinstance(doc.get("name"), str):
        raise InvalidInput("mac and name: required strings")
    host = _service().add_host(doc["mac"], doc["name"], labels, actor="api")
    return host.to_json(), 201


@api.get("/hosts/<ref>")
def show_host(ref: str):
    return _service().get_host(ref).to_json()


@api.delete("/hosts/<ref>")
def remove_host(ref: str):
    host = _service().remove_host(ref, actor="api")
    return {"removed": host.name}


@api.get("/events")
def list_events():
    events = _service().events(
        request.args.get("host"), limit=min(_int_arg("limit", 100), 1000), after_id=_int_arg("after", 0)
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
