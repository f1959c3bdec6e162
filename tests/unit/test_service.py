import re

import pytest

from provisioner.db import open_db
from provisioner.errors import Conflict, Forbidden, InvalidInput, NotFound
from provisioner.service import Service
from provisioner.settings import parse

SETTINGS = parse({"state_dir": "/nonexistent", "network": {"interface": "br0", "dhcp": "proxy"}})
MAC = "52:54:00:12:34:56"
BASE = "http://10.77.0.1:8080"

HARDWARE = {
    "disks": [
        {"name": "vda", "size_bytes": 2 << 30, "serial": "SER-A", "model": "disk", "by_path": "pci-0000:00:04.0",
         "rotational": False, "signatures": []},
        {"name": "vdb", "size_bytes": 1 << 30, "serial": "SER-B", "wwn": "0x5000c500a1b2c3d4", "signatures": ["gpt"]},
    ],
    "nics": [{"name": "eth0", "mac": "52-54-00-12-34-56", "driver": "virtio_net", "link": True},
             {"name": "eth1", "mac": "52:54:00:12:34:57", "driver": "virtio_net", "link": False}],
    "memory_bytes": 1 << 30,
    "cpu": {"count": 2, "model": "QEMU"},
    "system": {"uuid": "8d1c3e3e-0000-4000-8000-000000000001", "vendor": "QEMU", "product": "pc", "serial": None},
    "firmware": "bios",
}


class Clock:
    def __init__(self):
        self.now = 1_000_000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def svc(clock):
    return Service(SETTINGS, open_db(None), clock=clock)


def token_of(script: str) -> str:
    return re.search(r"provisioner\.token=(\S+)", script).group(1)


def test_unknown_machine_boots_the_agent_and_is_discovered(svc):
    script = svc.boot_script("52-54-00-12-34-56", BASE)
    token = token_of(script)
    assert svc.agent_plan(token) == {"mode": "discover", "mac": MAC, "host": None}
    svc.agent_event(token, "network-up", "eth0 10.77.0.100")
    host = svc.agent_report(token, HARDWARE, remote="10.77.0.100")
    assert host.state == "discovered"
    assert host.name == "host-525400123456"
    assert host.macs == (MAC,), "the other NIC is a fact, not an identity"
    assert {n["mac"] for n in host.hardware["nics"]} == {MAC, "52:54:00:12:34:57"}
    assert [d["serial"] for d in host.hardware["disks"]] == ["SER-A", "SER-B"]
    assert host.hardware["disks"][1]["wwn"] == "0x5000c500a1b2c3d4"
    kinds = [e.kind for e in svc.events(host.name)]
    assert kinds == ["boot.script", "agent.network-up", "host.discovered"]
    # Once discovered and without an image, it is held, not rediscovered.
    assert "asking the appliance again" in svc.boot_script(MAC, BASE)


def test_a_reused_token_is_refused_and_recorded(svc):
    token = token_of(svc.boot_script(MAC, BASE))
    svc.agent_report(token, HARDWARE)
    with pytest.raises(Forbidden, match="used already"):
        svc.agent_report(token, HARDWARE)
    with pytest.raises(Forbidden, match="used already"):
        svc.agent_plan(token)
    refused = [e for e in svc.events() if e.kind == "agent.refused"]
    assert len(refused) == 2 and refused[0].mac == MAC


@pytest.mark.parametrize("token", ["", None, "forged", 42])
def test_wrong_tokens_are_refused_and_recorded(svc, token):
    svc.boot_script(MAC, BASE)
    with pytest.raises(Forbidden):
        svc.agent_report(token, HARDWARE)
    assert [e.kind for e in svc.events()][-1] == "agent.refused"
    assert svc.list_hosts() == []


def test_an_expired_token_is_refused(svc, clock):
    token = token_of(svc.boot_script(MAC, BASE))
    clock.now += SETTINGS.agent.token_seconds + 1
    with pytest.raises(Forbidden, match="expired"):
        svc.agent_report(token, HARDWARE)


@pytest.mark.parametrize(
    "hardware, field",
    [
        (None, "hardware"),
        ([], "hardware"),
        ({"disks": "vda"}, "hardware.disks"),
        ({"disks": [{"size_bytes": 1}]}, "hardware.disks[0].name"),
        ({"disks": [{"name": "vda", "size_bytes": -1}]}, "hardware.disks[0].size_bytes"),
        ({"nics": [{"mac": "nope"}]}, "nope"),
        ({"memory_bytes": "lots"}, "hardware.memory_bytes"),
        ({"firmware": "coreboot"}, "hardware.firmware"),
    ],
)
def test_malformed_reports_are_refused_without_consuming_the_token(svc, hardware, field):
    token = token_of(svc.boot_script(MAC, BASE))
    with pytest.raises(InvalidInput, match=re.escape(field)):
        svc.agent_report(token, hardware)
    assert svc.agent_report(token, HARDWARE).state == "discovered"


def test_rediscovery_of_a_known_host_keeps_name_and_labels(svc):
    svc.add_host(MAC, "rack1-n1", ["rack=r1", "pool=build"])
    assert svc.get_host(MAC).state == "new"
    token = token_of(svc.boot_script(MAC, BASE))
    host = svc.agent_report(token, HARDWARE)
    assert (host.name, host.state, dict(host.labels)) == ("rack1-n1", "discovered", {"pool": "build", "rack": "r1"})


def test_host_crud_and_conflicts(svc):
    svc.add_host("52:54:00:00:00:01", "n1")
    with pytest.raises(Conflict, match="exists already"):
        svc.add_host("52:54:00:00:00:02", "n1")
    with pytest.raises(Conflict, match="belongs to host 'n1'"):
        svc.add_host("52-54-00-00-00-01", "n2")
    with pytest.raises(InvalidInput):
        svc.add_host("52:54:00:00:00:03", "Bad_Name")
    with pytest.raises(InvalidInput):
        svc.add_host("52:54:00:00:00:03", "n3", ["novalue"])
    with pytest.raises(InvalidInput):
        svc.add_host("not-a-mac", "n3")
    assert svc.get_host("52:54:00:00:00:01").name == "n1"
    assert svc.remove_host("n1").name == "n1"
    with pytest.raises(NotFound):
        svc.get_host("n1")
    assert [e.kind for e in svc.events("n1")] == ["host.added", "host.removed"]


def test_address_reservations(svc, clock):
    host = svc.add_host("52:54:00:00:00:01", "n1", ip="10.0.0.42")
    assert host.ip == "10.0.0.42"
    with pytest.raises(Conflict, match="reserved for host 'n1'"):
        svc.add_host("52:54:00:00:00:02", "n2", ip="10.0.0.42")
    for bad in ("10.0.0", "fe80::1", "banana"):
        with pytest.raises(InvalidInput, match="not an IPv4 address"):
            svc.add_host("52:54:00:00:00:03", "n3", ip=bad)
    assert svc.describe(host)["lease"] is None


def test_describe_shows_the_active_lease_of_any_of_its_macs(svc, clock):
    from ipaddress import IPv4Address

    from provisioner.db.leases import LeaseStore

    host = svc.add_host("52:54:00:00:00:01", "n1")
    store = LeaseStore(svc.db, clock=clock)
    store.commit("52:54:00:00:00:01", IPv4Address("10.0.0.100"), 600, clock.now)
    assert svc.describe(host)["lease"] == {"ip": "10.0.0.100", "mac": "52:54:00:00:00:01", "expires": clock.now + 600}
    clock.now += 601
    assert svc.describe(host)["lease"] is None


def test_a_report_cannot_claim_another_machines_mac(svc):
    svc.add_host("52:54:00:12:34:57", "victim")
    token = token_of(svc.boot_script(MAC, BASE))
    svc.agent_report(token, HARDWARE)  # lists the victim's MAC among its NICs
    assert svc.get_host("52:54:00:12:34:57").name == "victim"
    assert svc.get_host(MAC).macs == (MAC,)


def test_event_limits_are_clamped(svc):
    for i in range(5):
        svc.record("test.tick", f"tick {i}")
    assert len(svc.events(limit=-1)) == 1
    assert len(svc.events(limit=0)) == 1
    assert [e.message for e in svc.events(limit=2)] == ["tick 3", "tick 4"]
    assert len(svc.events(limit=10**9)) == 5


def test_events_of_a_mac_that_no_host_owns_yet(svc):
    svc.record("dhcp.offer", "offered 10.0.0.100", mac=MAC)
    svc.record("dhcp.offer", "offered 10.0.0.101", mac="52:54:00:00:00:99")
    assert [e.message for e in svc.events("52-54-00-12-34-56")] == ["offered 10.0.0.100"]
    assert svc.events("never-seen") == []


def test_a_held_machine_asking_again_does_not_fill_the_log(svc):
    token = token_of(svc.boot_script(MAC, BASE))
    svc.agent_report(token, HARDWARE)
    for _ in range(5):
        assert "asking the appliance again" in svc.boot_script(MAC, BASE)
    kinds = [(e.kind, e.data.get("decision")) for e in svc.events(MAC)]
    assert kinds == [("boot.script", "discover"), ("host.discovered", None), ("boot.script", "hold")]


@pytest.mark.parametrize("phase", ["", "Network Up", "x" * 40, "a.b", None, 7])
def test_agent_phases_are_short_plain_words(svc, phase):
    token = token_of(svc.boot_script(MAC, BASE))
    with pytest.raises(InvalidInput, match="phase"):
        svc.agent_event(token, phase, "hello")


def test_progress_after_the_report_is_still_recorded(svc):
    token = token_of(svc.boot_script(MAC, BASE))
    svc.agent_report(token, HARDWARE)
    svc.agent_event(token, "poweroff", "powering off")
    assert svc.events(MAC)[-1].kind == "agent.poweroff"


def test_unknown_machines_are_sent_back_to_their_firmware_when_ignored(clock):
    settings = parse({"state_dir": "/nonexistent", "network": {"interface": "br0", "dhcp": "proxy"},
                      "boot": {"unknown": "ignore"}})
    svc = Service(settings, open_db(None), clock=clock)
    script = svc.boot_script(MAC, BASE)
    assert script.rstrip().endswith("exit 1") and "provisioner.token" not in script
    assert svc.db["boot_tokens"].count == 0
    svc.add_host(MAC, "rack1-n1")
    assert "provisioner.token=" in svc.boot_script(MAC, BASE), "a registered machine is inventoried"
