"""`provisioner serve` as a process on loopback (DHCP off): it starts, serves,
and stops cleanly on SIGTERM even with clients still connected."""

import json
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def daemon(tmp_path):
    http, tftp = free_port(), free_port(socket.SOCK_DGRAM)
    config = tmp_path / "provisioner.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n[network]\ninterface = "lo"\ndhcp = "off"\n'
        f'[http]\nbind = "127.0.0.1"\nport = {http}\n[tftp]\nport = {tftp}\n'
    )
    log = open(tmp_path / "daemon.log", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "serve", "--config", str(config)],
                            stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{http}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=1) as resp:
                if resp.status == 200:
                    break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                log.seek(0)
                pytest.fail(f"daemon did not start:\n{log.read()}")
            time.sleep(0.2)
    yield proc, base, config, log
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    log.close()


def test_sigterm_stops_it_with_clients_still_connected(daemon):
    proc, base, config, log = daemon
    host, port = base.removeprefix("http://").split(":")
    idle = socket.create_connection((host, int(port)))  # a keep-alive client that went quiet
    busy = socket.create_connection((host, int(port)))
    busy.sendall(b"GET /boot/ipxe.efi HTTP/1.1\r\nHost: x\r\n\r\n")  # and one we never read from
    time.sleep(0.3)
    started = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=10)
    finally:
        idle.close()
        busy.close()
    assert code == 0
    assert time.monotonic() - started < 5
    log.seek(0)
    text = log.read()
    assert "Traceback" not in text, text
    events = subprocess.run([sys.executable, "-m", "provisioner", "events", "--json", "--config", str(config)],
                            capture_output=True, text=True, check=True).stdout
    kinds = [e["kind"] for e in json.loads(events)["events"]]
    assert kinds[0] == "appliance.started" and kinds[-1] == "appliance.stopped"
