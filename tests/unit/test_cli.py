"""The CLI as a user runs it: a subprocess on a settings file."""

import json
import subprocess
import sys

import pytest


def run(*args, config=None, check=True):
    cmd = [sys.executable, "-m", "provisioner", *args]
    if config is not None:
        cmd += ["--config", str(config)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"{cmd} failed {proc.returncode}: {proc.stderr}")
    return proc


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "provisioner.toml"
    path.write_text(f'state_dir = "{tmp_path}/state"\n[network]\ninterface = "br-nowhere"\ndhcp = "proxy"\n')
    return path


def test_host_lifecycle(config):
    out = run("host", "add", "52-54-00-AA-00-01", "--name", "rack1-n1", "--label", "rack=r1",
              "--label", "pool=build", config=config).stdout
    assert "added rack1-n1 (52:54:00:aa:00:01)" in out
    listing = run("host", "list", config=config).stdout.splitlines()
    assert listing[0].split() == ["NAME", "STATE", "MACS", "ADDRESS", "LABELS", "DISKS", "MEMORY"]
    assert listing[1].split()[:5] == ["rack1-n1", "new", "52:54:00:aa:00:01", "-", "pool=build,rack=r1"]
    shown = json.loads(run("host", "show", "52:54:00:aa:00:01", "--json", config=config).stdout)
    assert shown["name"] == "rack1-n1" and shown["labels"] == {"rack": "r1", "pool": "build"}
    assert shown["hardware"] == {}
    assert json.loads(run("host", "list", "--json", config=config).stdout)["hosts"][0]["name"] == "rack1-n1"
    dup = run("host", "add", "52:54:00:aa:00:01", "--name", "other", config=config, check=False)
    assert dup.returncode == 1 and "belongs to host 'rack1-n1'" in dup.stderr
    assert "removed rack1-n1" in run("host", "remove", "rack1-n1", config=config).stdout
    missing = run("host", "show", "rack1-n1", config=config, check=False)
    assert missing.returncode == 1 and "no host named" in missing.stderr
    events = run("events", "--host", "rack1-n1", config=config).stdout
    assert "host.added" in events and "host.removed" in events
    kinds = [e["kind"] for e in json.loads(run("events", "--json", config=config).stdout)["events"]]
    assert kinds == ["host.added", "host.removed"]


@pytest.mark.parametrize(
    "text, key",
    [
        ('state_dir = "/s"\n[network]\ninterface = "br0"\ndhcp = "sometimes"\n', "network.dhcp"),
        ('state_dir = "/s"\n[network]\ninterface = "br0"\n[dhcp]\npool = "10.0.0.9-10.0.0.1"\n', "dhcp.pool"),
        ('state_dir = "/s"\n[network]\ninterface = "br0"\ncolour = "red"\n', "network.colour"),
    ],
)
def test_a_bad_settings_file_stops_with_one_line_naming_the_key(tmp_path, text, key):
    path = tmp_path / "bad.toml"
    path.write_text(text)
    for args in (["serve"], ["host", "list"]):
        proc = run(*args, config=path, check=False)
        assert proc.returncode == 2
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(f"provisioner: config: {key}:"), proc.stderr


def test_serve_refuses_a_missing_interface_before_binding(config):
    proc = run("serve", config=config, check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip() == "provisioner: config: network.interface: no interface named 'br-nowhere' on this system"


def test_config_check(config):
    assert run("config", "check", config=config).stdout.strip().endswith(": ok")


def test_host_show_prints_the_discovered_hardware(config):
    import re

    from provisioner.db import open_db
    from provisioner.service import Service
    from provisioner.settings import load

    settings = load(config)
    svc = Service(settings, open_db(settings.db_path))
    script = svc.boot_script("52:54:00:aa:00:09", "http://10.77.0.1:8080")
    token = re.search(r"provisioner\.token=(\S+)", script).group(1)
    svc.agent_report(token, {
        "disks": [{"name": "nvme0n1", "size_bytes": 2 << 30, "serial": "NVME-SER-1", "wwn": "eui.0011",
                   "model": "QEMU NVMe Ctrl", "by_path": "pci-0000:00:05.0-nvme-1", "signatures": ["gpt"]}],
        "nics": [{"name": "eth0", "mac": "52:54:00:aa:00:09", "driver": "e1000e", "link": True}],
        "memory_bytes": 1 << 30, "cpu": {"count": 2, "model": "QEMU Virtual CPU"},
        "system": {"uuid": "u-1", "vendor": "QEMU", "product": "Standard PC"}, "firmware": "uefi",
    })
    out = run("host", "show", "host-525400aa0009", config=config).stdout.splitlines()
    assert "state:    discovered" in out
    assert "firmware: uefi" in out
    assert "memory:   1.0 GiB" in out
    disks = out.index("disks:")
    header, row = out[disks + 1], out[disks + 2]
    assert header.split() == ["NAME", "SIZE", "SERIAL", "WWN", "MODEL", "BY-PATH", "SIGNATURES"]
    assert header.startswith("  NAME") and row.startswith("  nvme0n1")
    # Columns line up under their headers.
    assert row.index("NVME-SER-1") == header.index("SERIAL")
    assert row.index("pci-0000:00:05.0-nvme-1") == header.index("BY-PATH")
    nics = out.index("nics:")
    assert out[nics + 2].split() == ["eth0", "52:54:00:aa:00:09", "e1000e", "up"]


def test_serve_names_the_port_it_cannot_bind(tmp_path):
    import socket

    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    path = tmp_path / "c.toml"
    path.write_text(f'state_dir = "{tmp_path}/state"\n[network]\ninterface = "lo"\ndhcp = "off"\n'
                    f'[http]\nbind = "127.0.0.1"\nport = {port}\n[tftp]\nport = 6969\n')
    try:
        proc = run("serve", config=path, check=False)
    finally:
        busy.close()
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith(f"provisioner: config: http.port: cannot bind HTTP on port {port}:"), proc.stderr


def test_events_follow_prints_new_events_as_they_come(config):
    import select

    from provisioner.db import open_db
    from provisioner.service import Service
    from provisioner.settings import load

    svc = Service(load(config), open_db(load(config).db_path))
    svc.record("test.first", "before")
    proc = subprocess.Popen([sys.executable, "-m", "provisioner", "events", "--follow", "--json",
                             "--config", str(config)], stdout=subprocess.PIPE, text=True)
    try:
        def next_line(timeout=15):
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            assert ready, "no event printed"
            return json.loads(proc.stdout.readline())

        assert next_line()["kind"] == "test.first"
        svc.record("test.second", "after", mac="52:54:00:aa:00:02")
        second = next_line()
        assert (second["kind"], second["mac"]) == ("test.second", "52:54:00:aa:00:02")
        assert proc.poll() is None, "still following"
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
