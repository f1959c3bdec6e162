"""The HTTP adapter behind the real waitress server on loopback, driven by a
real HTTP client (urllib; curl where noted)."""

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest

from provisioner.agent.builder import AgentManifest, Artifact
from provisioner.settings import parse
from provisioner.web import server as web_server
from provisioner.web.app import create_app
from provisioner.web.server import close_server, make_server, run_until_closed


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def appliance(tmp_path, monkeypatch):
    calls = []
    real = os.sendfile

    def counting_sendfile(*args):
        n = real(*args)
        calls.append(n)
        return n

    monkeypatch.setattr(web_server.os, "sendfile", counting_sendfile)
    port = free_port()
    settings = parse({"state_dir": str(tmp_path / "state"), "network": {"interface": "lo", "dhcp": "off"},
                      "http": {"port": port, "bind": "127.0.0.1"}})
    agent = settings.agent_dir
    agent.mkdir(parents=True)
    blob = os.urandom(3 << 20) + b"tail"
    (agent / "kernel").write_bytes(blob)
    manifest = AgentManifest(kernel_version="6.1.0-test", artifacts=(Artifact("kernel", len(blob),
                             hashlib.sha256(blob).hexdigest()),), compression="zstd", packages=(), modules=(),
                             source_date_epoch=0)
    (agent / "manifest.json").write_text(json.dumps(manifest.to_json()))
    srv = make_server(create_app(settings), "127.0.0.1", port, threads=4)
    closing = threading.Event()
    thread = threading.Thread(target=run_until_closed, args=(srv, closing), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}", blob, calls
    closing.set()
    close_server(srv)
    thread.join(5)
    assert not thread.is_alive()


def sent_through_sendfile(calls, expected, timeout=3.0):
    # The server thread records a sendfile call just after it returns, which
    # can be after the client has read the last byte.
    deadline = time.monotonic() + timeout
    while sum(calls) < expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return sum(calls) == expected


def get(url, headers=None, method="GET", data=None):
    req = urllib.request.Request(url, headers=headers or {}, method=method, data=data)
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.headers, err.read()


def test_whole_file_is_sent_with_sendfile_and_a_content_etag(appliance):
    base, blob, calls = appliance
    status, headers, body = get(base + "/agent/kernel")
    assert status == 200 and body == blob
    assert headers["ETag"] == f'"{hashlib.sha256(blob).hexdigest()}"'
    assert headers["Accept-Ranges"] == "bytes"
    assert sent_through_sendfile(calls, len(blob)), "the body went through os.sendfile"


@pytest.mark.parametrize(
    "rng, start, stop",
    [("bytes=0-0", 0, 1), ("bytes=100-4195", 100, 4196), ("bytes=-4", None, None), ("bytes=3145000-", 3145000, None)],
)
def test_ranges_are_byte_exact(appliance, rng, start, stop):
    base, blob, calls = appliance
    status, headers, body = get(base + "/agent/kernel", {"Range": rng})
    assert status == 206
    expected = blob[-4:] if start is None else blob[start:stop]
    assert body == expected
    assert headers["Content-Length"] == str(len(expected))
    assert headers["Content-Range"].endswith(f"/{len(blob)}")
    assert sent_through_sendfile(calls, len(expected))


def test_unsatisfiable_range_and_conditional_requests(appliance):
    base, blob, _ = appliance
    status, headers, _ = get(base + "/agent/kernel", {"Range": f"bytes={len(blob) + 10}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(blob)}"
    etag = get(base + "/agent/kernel", method="HEAD")[1]["ETag"]
    assert get(base + "/agent/kernel", {"If-None-Match": etag})[0] == 304
    # A stale If-Range means "send everything".
    status, _, body = get(base + "/agent/kernel", {"Range": "bytes=0-9", "If-Range": '"stale"'})
    assert status == 200 and body == blob


@pytest.mark.skipif(not shutil.which("curl"), reason="curl not installed")
def test_curl_resumes_a_partial_download(appliance, tmp_path):
    base, blob, _ = appliance
    out = tmp_path / "kernel"
    out.write_bytes(blob[:12345])
    subprocess.run(["curl", "-sSf", "-C", "-", "-o", str(out), base + "/agent/kernel"], check=True, timeout=30)
    assert out.read_bytes() == blob


def test_ipxe_binaries_and_missing_files(appliance):
    base, _, _ = appliance
    status, headers, body = get(base + "/boot/ipxe.efi")
    assert status == 200 and headers["Content-Type"] == "application/efi"
    assert body == open("/usr/lib/ipxe/ipxe.efi", "rb").read()
    assert get(base + "/boot/nope.efi")[0] == 404
    assert get(base + "/agent/agent.cpio")[0] == 404
    assert get(base + "/agent/..%2fprovisioner.db")[0] == 404
    assert get(base + "/nowhere")[0] == 404


def test_boot_script_and_agent_api_over_http(appliance):
    base, _, _ = appliance
    status, headers, body = get(base + "/boot/ipxe?mac=52-54-00-12-34-56")
    assert status == 200 and body.startswith(b"#!ipxe\n")
    assert headers["Content-Type"].startswith("text/plain")
    token = re.search(rb"provisioner\.token=(\S+)", body).group(1).decode()
    assert f"{base}/agent/kernel".encode() in body

    def post(path, doc):
        return get(base + path, {"Content-Type": "application/json"}, "POST", json.dumps(doc).encode())

    assert json.loads(get(f"{base}/api/v1/agent/plan?token={token}")[2])["mode"] == "discover"
    assert post("/api/v1/agent/event", {"token": token, "phase": "network-up", "message": "ok"})[0] == 200
    hw = {"disks": [{"name": "vda", "serial": "S1", "size_bytes": 1}], "nics": [], "memory_bytes": 1}
    status, _, body = post("/api/v1/agent/report", {"token": token, "hardware": hw})
    assert status == 200, body
    name = json.loads(body)["host"]
    status, _, body = post("/api/v1/agent/report", {"token": token, "hardware": hw})
    assert status == 403 and json.loads(body)["error"].endswith("used already")
    host = json.loads(get(f"{base}/api/v1/hosts/{name}")[2])
    assert host["state"] == "discovered" and host["hardware"]["disks"][0]["serial"] == "S1"
    kinds = [e["kind"] for e in json.loads(get(f"{base}/api/v1/events")[2])["events"]]
    assert kinds[-1] == "agent.refused"


@pytest.mark.parametrize(
    "path, body, status",
    [
        ("/api/v1/agent/report", b"not json", 400),
        ("/api/v1/agent/report", b"[1,2]", 400),
        ("/api/v1/agent/report", b'{"token": "x", "hardware": {}}', 403),
        ("/api/v1/agent/event", b'{"token": "x"}', 400),
        ("/api/v1/hosts", b'{"mac": "zz", "name": "a"}', 400),
        ("/api/v1/agent/report", b"{" + b" " * (2 << 20) + b"}", 413),
    ],
)
def test_bad_requests_get_clear_errors(appliance, path, body, status):
    base, _, _ = appliance
    got, headers, text = get(base + path, {"Content-Type": "application/json"}, "POST", body)
    assert got == status
    assert "error" in json.loads(text)
    assert get(base + "/healthz")[0] == 200


def test_boot_errors_are_ipxe_scripts(appliance):
    base, _, _ = appliance
    status, _, body = get(base + "/boot/ipxe?mac=bogus")
    assert status == 400 and body.startswith(b"#!ipxe\n") and b"not a MAC address" in body
    status, _, body = get(base + "/boot/ipxe")
    assert status == 400 and b"mac: missing" in body


def _client(tmp_path, base_url=None):
    settings = parse({"state_dir": str(tmp_path / "s"), "network": {"interface": "lo", "dhcp": "off"}})
    return create_app(settings, base_url=base_url).test_client()


def test_boot_scripts_name_the_configured_address_whatever_the_host_header(tmp_path):
    client = _client(tmp_path, base_url="http://10.77.0.1:8080")
    body = client.get("/boot/ipxe?mac=52-54-00-12-34-56", headers={"Host": "evil.example"}).text
    assert "evil.example" not in body
    assert "kernel http://10.77.0.1:8080/agent/kernel" in body
    assert "provisioner.url=http://10.77.0.1:8080 " in body
    chain = client.get("/boot.ipxe", headers={"Host": "evil.example"}).text
    assert "chain http://10.77.0.1:8080/boot/ipxe?" in chain


@pytest.mark.parametrize("path", ["/boot/x%0Achain%20http://evil/x", "/boot/ipxe?mac=00%0Dchain%20http://evil/"])
def test_a_request_cannot_inject_commands_into_an_error_script(tmp_path, path):
    resp = _client(tmp_path).get(path)
    assert resp.status_code in (400, 404)
    lines = resp.text.splitlines()
    assert lines[0] == "#!ipxe" and lines[-1] == "exit 1" and len(lines) == 3
    assert lines[1].startswith("echo provisioner: error")


def test_close_server_ends_the_loop_with_a_client_still_connected(tmp_path):
    port = free_port()
    settings = parse({"state_dir": str(tmp_path / "state"), "network": {"interface": "lo", "dhcp": "off"}})
    srv = make_server(create_app(settings), "127.0.0.1", port, threads=2)
    closing = threading.Event()
    thread = threading.Thread(target=run_until_closed, args=(srv, closing), daemon=True)
    thread.start()
    with socket.create_connection(("127.0.0.1", port)) as idle:
        idle.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        idle.settimeout(5)
        answer = b""
        while not answer.endswith(b'{"ok":true}\n'):
            answer += idle.recv(1024)
        assert answer.startswith(b"HTTP/1.1 200")  # served, and kept alive
        closing.set()
        close_server(srv)
        thread.join(5)
        assert not thread.is_alive(), "an idle keep-alive client kept the server running"
        assert idle.recv(1024) == b"", "the client's connection was closed"
