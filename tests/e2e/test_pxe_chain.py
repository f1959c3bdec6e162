"""The first hop of every boot, without QEMU: a raw PXE client (scapy-built
DISCOVER) in the site namespace asks the appliance running in the lab
namespace, and a real TFTP or HTTP client then fetches what it was told to,
byte for byte."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

from provisioner.lab.appliance import cli

ROOT = Path(__file__).resolve().parents[2]
IPXE = Path("/usr/lib/ipxe")


def pxe_discover(lab, site, mac: str, arch: int, **kw) -> dict:
    argv = [sys.executable, "-m", "tests.helpers.pxe_client", site.interface, mac, str(arch)]
    for key, value in kw.items():
        argv += [f"--{key.replace('_', '-')}", value]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = lab.run(argv, netns=site.netns, timeout=30, check=False, env=env)
    assert done.returncode == 0, f"no DHCP answer: {done.stderr}"
    return json.loads(done.stdout)


@pytest.fixture
def site(lab):
    return lab.add_site()


@pytest.mark.parametrize("mode", ["full", "proxy"])
@pytest.mark.parametrize("arch, bootfile", [(0, "undionly.kpxe"), (7, "snponly.efi"), (9, "snponly.efi")])
def test_a_non_ipxe_pxe_client_gets_ipxe_over_tftp(lab, site, appliance_factory, lab_config, tmp_path,
                                                   mode, arch, bootfile):
    appliance_factory(lab_config(mode))
    reply = pxe_discover(lab, site, "52:54:00:c0:ff:01", arch)
    assert reply["file"] == bootfile
    assert reply["siaddr"] == "10.77.0.1"
    assert reply["options"]["vendor_class_id"] == "PXEClient"
    if mode == "proxy":
        assert reply["yiaddr"] == "0.0.0.0", "ProxyDHCP never hands out an address"
    else:
        assert reply["yiaddr"].startswith("10.77.0.")
    out = tmp_path / bootfile
    done = lab.run(["atftp", "--option", "blksize 1468", "-g", "-r", reply["file"], "-l", str(out),
                    reply["siaddr"], "69"], netns=site.netns, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    source = {"undionly.kpxe": IPXE / "undionly.kpxe", "snponly.efi": IPXE / "snponly.efi"}[bootfile]
    assert out.read_bytes() == source.read_bytes()


def test_an_ipxe_client_gets_its_boot_script_url(lab, site, appliance_factory, lab_config):
    appliance_factory(lab_config("full"))
    reply = pxe_discover(lab, site, "52:54:00:c0:ff:02", 0, user_class="iPXE")
    assert reply["file"] == "http://10.77.0.1:8080/boot/ipxe?mac=52-54-00-c0-ff-02"
    status, body = lab.http_get(reply["file"], netns=site.netns)
    assert status == 200 and body.startswith("#!ipxe\n")
    assert "http://10.77.0.1:8080/agent/kernel" in body


def test_a_uefi_http_boot_client_gets_ipxe_efi_over_http(lab, site, appliance_factory, lab_config, tmp_path):
    appliance_factory(lab_config("proxy"))
    reply = pxe_discover(lab, site, "52:54:00:c0:ff:03", 16, vendor="HTTPClient:Arch:00016:UNDI:003001")
    assert reply["file"] == "http://10.77.0.1:8080/boot/ipxe.efi"
    assert reply["options"]["vendor_class_id"] == "HTTPClient"
    out = tmp_path / "ipxe.efi"
    done = lab.run(["curl", "-sSf", "-D", "-", "-o", str(out), reply["file"]], netns=site.netns, timeout=30)
    assert "application/efi" in done.stdout.lower()
    assert out.read_bytes() == (IPXE / "ipxe.efi").read_bytes()


def test_a_reserved_address_is_offered_to_its_host(lab, site, appliance_factory, lab_config):
    config = lab_config("full")
    added = cli(["host", "add", "52:54:00:c0:ff:04", "--name", "reserved-1", "--ip", "10.77.0.42"], config)
    assert added.returncode == 0, added.stderr
    appliance_factory(config)
    reply = pxe_discover(lab, site, "52:54:00:c0:ff:04", 0, user_class="iPXE")
    assert reply["yiaddr"] == "10.77.0.42"
    # Anyone else gets a pool address, never the reserved one.
    other = pxe_discover(lab, site, "52:54:00:c0:ff:05", 0, user_class="iPXE")
    assert other["yiaddr"] != "10.77.0.42" and other["yiaddr"].startswith("10.77.0.1")


def test_with_boot_unknown_ignore_only_registered_machines_get_a_boot_file(lab, site, appliance_factory,
                                                                           lab_config):
    config = lab_config("proxy")
    with open(config.path, "a") as f:
        f.write('\n[boot]\nunknown = "ignore"\n')
    appliance_factory(config)
    argv = [sys.executable, "-m", "tests.helpers.pxe_client", site.interface, "52:54:00:c0:ff:06", "0",
            "--timeout", "4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    silent = lab.run(argv, netns=site.netns, timeout=30, check=False, env=env)
    assert silent.returncode == 1 and "no reply" in silent.stderr, "an unknown machine got an answer"
    added = cli(["host", "add", "52:54:00:c0:ff:06", "--name", "registered-1"], config)
    assert added.returncode == 0, added.stderr
    assert pxe_discover(lab, site, "52:54:00:c0:ff:06", 0)["file"] == "undionly.kpxe"
    events = json.loads(cli(["events", "--json"], config).stdout)["events"]
    assert any(e["kind"] == "dhcp.ignored" and e["mac"] == "52:54:00:c0:ff:06" for e in events)
