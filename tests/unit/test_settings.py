import pytest
from netaddr import IPAddress, IPNetwork

from provisioner.errors import ConfigError
from provisioner.settings import InterfaceInfo, check_against_interface, load, parse

GOOD = {
    "state_dir": "/var/lib/provisioner",
    "network": {"interface": "br0", "dhcp": "full"},
    "dhcp": {"pool": "10.0.0.100-10.0.0.200", "router": "10.0.0.1", "dns": ["10.0.0.1"], "lease_seconds": 600},
}


def with_(path: str, value):
    doc = {k: dict(v) if isinstance(v, dict) else v for k, v in GOOD.items()}
    *tables, key = path.split(".")
    target = doc
    for t in tables:
        target = target.setdefault(t, {})
    if value is None:
        target.pop(key, None)
    else:
        target[key] = value
    return doc


def test_good_file_parses_into_frozen_settings():
    s = parse(GOOD)
    assert s.network.interface == "br0"
    assert s.dhcp.pool.first == int(IPAddress("10.0.0.100"))
    assert s.dhcp.lease_seconds == 600
    assert s.http.port == 8080 and s.tftp.port == 69
    assert str(s.ipxe.bios) == "/usr/lib/ipxe/undionly.kpxe"
    assert s.tftp_root.name == "tftp" and s.agent_dir.name == "agent"
    with pytest.raises(AttributeError):
        s.state_dir = "/x"


@pytest.mark.parametrize(
    "doc, key",
    [
        (with_("bogus", 1), "bogus"),
        (with_("network.speed", 1), "network.speed"),
        (with_("network.interface", None), "network.interface"),
        (with_("state_dir", None), "state_dir"),
        (with_("network.dhcp", "maybe"), "network.dhcp"),
        (with_("dhcp.pool", "10.0.0.200-10.0.0.100"), "dhcp.pool"),
        (with_("dhcp.pool", "10.0.0.1"), "dhcp.pool"),
        (with_("dhcp.pool", "10.0.0.1-banana"), "dhcp.pool"),
        (with_("dhcp.pool", None), "dhcp.pool"),
        (with_("dhcp.router", "10.1"), "dhcp.router"),
        (with_("dhcp.dns", ["10.0.0.1", "nope"]), "dhcp.dns[1]"),
        (with_("dhcp.dns", "10.0.0.1"), "dhcp.dns"),
        (with_("dhcp.lease_seconds", 0), "dhcp.lease_seconds"),
        (with_("dhcp.lease_seconds", "600"), "dhcp.lease_seconds"),
        (with_("http.port", 70000), "http.port"),
        (with_("http.port", 0), "http.port"),
        (with_("dhcp.lease_seconds", 2**32), "dhcp.lease_seconds"),
        (with_("tftp.timeout", 300), "tftp.timeout"),
        (with_("http.port", True), "http.port"),
        (with_("tftp.port", -1), "tftp.port"),
        (with_("ipxe.arm", "/x"), "ipxe.arm"),
        (with_("boot.unknown", "power-off"), "boot.unknown"),
        (with_("boot.known", "x"), "boot.known"),
    ],
)
def test_bad_values_name_their_key(doc, key):
    with pytest.raises(ConfigError) as err:
        parse(doc)
    assert err.value.message.startswith(f"config: {key}:")
    assert "\n" not in err.value.message


def test_proxy_mode_needs_no_pool():
    s = parse({"state_dir": "/s", "network": {"interface": "br0", "dhcp": "proxy"}})
    assert s.dhcp.pool is None


INFO = InterfaceInfo(name="br0", index=3, address=IPAddress("10.0.0.1"), network=IPNetwork("10.0.0.0/24"), mac="")


@pytest.mark.parametrize(
    "path, value, key",
    [
        ("dhcp.pool", "10.0.1.10-10.0.1.20", "dhcp.pool"),
        ("dhcp.pool", "10.0.0.250-10.0.1.5", "dhcp.pool"),
        ("dhcp.pool", "10.0.0.1-10.0.0.20", "dhcp.pool"),
        ("dhcp.router", "192.168.1.1", "dhcp.router"),
    ],
)
def test_checks_against_the_interface(path, value, key):
    with pytest.raises(ConfigError) as err:
        check_against_interface(parse(with_(path, value)), INFO)
    assert err.value.message.startswith(f"config: {key}:")


def test_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("state_dir = \n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load(bad)
