"""The images part of the REST API, through Flask's test client, on a store
with small stand-in images (the service layer is the same as the CLI's)."""

import pytest

from provisioner.db import open_db
from provisioner.images.manifest import ImageManifest
from provisioner.images.progress import Progress
from provisioner.service import Service
from provisioner.settings import parse
from provisioner.web.app import create_app


@pytest.fixture
def env(tmp_path):
    settings = parse({"state_dir": str(tmp_path), "network": {"interface": "br0", "dhcp": "proxy"}})
    svc = Service(settings, open_db(settings.db_path))
    for version, content in (("1.0.0", b"one"), ("1.1.0", b"two")):
        with svc.image_store().staging() as st:
            files = {}
            for artifact, data in (("kernel", b"k"), ("rootfs.squashfs", content), ("modules.cpio", b"m")):
                files[artifact] = st.path / artifact
                files[artifact].write_bytes(data)
            svc.publish_image(st, ImageManifest(name="tiny", version=version, created=0, artifacts=(),
                                                kernel_version="6.1", source={"kind": "import", "sha256": "0" * 64}),
                              files)
    return svc, create_app(settings).test_client()


def test_list_show_and_channels(env):
    svc, client = env
    r = client.get("/api/v1/images")
    assert r.status_code == 200 and [i["version"] for i in r.json["images"]] == ["1.0.0", "1.1.0"]
    assert r.json["images"][0]["created"] == "1970-01-01T00:00:00Z"
    r = client.put("/api/v1/images/tiny/channels/stable", json={"version": "1.0.0", "by": "alice"})
    assert r.status_code == 200 and r.json == {"name": "tiny", "label": "stable", "from": None, "to": "1.0.0"}
    client.put("/api/v1/images/tiny/channels/stable", json={"version": "1.1.0"})
    shown = client.get("/api/v1/images/tiny/stable").json
    assert shown["version"] == "1.1.0" and shown["channels"] == ["stable"]
    assert set(shown["artifacts"]) == {"kernel", "rootfs.squashfs", "modules.cpio"}
    r = client.post("/api/v1/images/tiny/channels/stable/rollback", json={"by": "bob"})
    assert r.json["to"] == "1.0.0"
    moves = client.get("/api/v1/images/tiny/channels/stable").json["moves"]
    assert [(m["to_version"], m["actor"].split("@")[0]) for m in moves] == [
        ("1.0.0", "bob"), ("1.1.0", "api"), ("1.0.0", "alice")]
    assert client.get("/api/v1/images/tiny/channels").json["channels"][0]["version"] == "1.0.0"


def test_verify_remove_and_host_image(env):
    svc, client = env
    r = client.post("/api/v1/images/tiny/1.0.0/verify")
    assert r.json["ok"] is True and r.json["problems"] == []
    client.post("/api/v1/hosts", json={"mac": "52:54:00:00:00:09", "name": "web9"})
    r = client.put("/api/v1/hosts/web9/image", json={"image": "tiny@1.1.0"})
    assert r.status_code == 200 and r.json["image"] == "tiny@1.1.0"
    r = client.delete("/api/v1/images/tiny/1.1.0")
    assert r.status_code == 409 and "used by host web9" in r.json["error"]
    client.put("/api/v1/hosts/web9/image", json={"image": None})
    assert client.delete("/api/v1/images/tiny/1.1.0").json == {"removed": "tiny@1.1.0"}


@pytest.mark.parametrize("method,path,body,status,why", [
    ("get", "/api/v1/images/tiny/9.9", None, 404, "no image tiny@9.9"),
    ("get", "/api/v1/images/Tiny/1.0.0", None, 400, "image name"),
    ("put", "/api/v1/images/tiny/channels/stable", {"version": 1}, 400, "version"),
    ("put", "/api/v1/images/tiny/channels/1x", {"version": "1.0.0"}, 400, "channel"),
    ("put", "/api/v1/images/tiny/channels/stable", {"version": "1.0.0", "by": "x" * 65}, 400, "by"),
    ("post", "/api/v1/images/tiny/channels/stable/rollback", {}, 404, "no channel"),
    ("put", "/api/v1/hosts/nobody/image", {"image": "tiny@1.0.0"}, 404, "no host"),
    ("put", "/api/v1/hosts/nobody/image", {"image": 5}, 400, "image"),
])
def test_errors_are_json_with_a_reason(env, method, path, body, status, why):
    _svc, client = env
    r = getattr(client, method)(path, json=body)
    assert r.status_code == status and why in r.json["error"]


def test_progress_is_a_status_line_on_a_terminal_and_plain_lines_otherwise():
    import io

    out = io.StringIO()
    p = Progress(2, out, tty=True)
    p.step("one")
    p.detail("a" * 500)
    p.detail("b")
    p.step("two")
    p.done("finished")
    text = out.getvalue()
    assert "\r\x1b[K" in text and "[1/2] one" in text and "finished" in text
    assert max(len(line) for line in text.replace("\r", "\n").splitlines()) < 200  # cut to the terminal width
    out = io.StringIO()
    p = Progress(1, out, tty=False)
    p.step("one")
    p.detail("line 1")
    p.detail("line 2")
    p.done("finished")
    assert out.getvalue().splitlines()[:3] == ["[1/1] one", "    line 1", "    line 2"]
    assert "\x1b" not in out.getvalue()
