"""DhcpConfig from the settings file and the resolved interface."""

from __future__ import annotations

from ipaddress import IPv4Address as A
from ipaddress import IPv4Network

import pytest
from netaddr import IPAddress, IPNetwork

from provisioner.net.dhcp.config import DhcpConfig
from provisioner.settings import InterfaceInfo, parse

IFACE = InterfaceInfo(name="br0", index=3, address=IPAddress("10.5.0.1"), network=IPNetwork("10.5.0.0/24"),
                      mac="52:54:00:00:00:01")


def settings(**network):
    return parse({
        "state_dir": "/tmp/x",
        "network": {"interface": "br0", **network},
        "dhcp": {"pool": "10.5.0.100-10.5.0.199", "lease_seconds": 900, "router": "10.5.0.254",
                 "dns": ["10.5.0.2"], "domain": "lab"},
        "http": {"port": 8081},
    })


def test_full_mode_from_settings():
    c = DhcpConfig.from_settings(settings(), IFACE)
    assert c == DhcpConfig(mode="full", server_ip=A("10.5.0.1"), subnet=IPv4Network("10.5.0.0/24"),
                           base_url="http://10.5.0.1:8081", interface="br0", pool_first=A("10.5.0.100"),
                           pool_last=A("10.5.0.199"), lease_seconds=900, router=A("10.5.0.254"),
                           dns=(A("10.5.0.2"),), domain="lab", next_server=A("10.5.0.1"))


def test_advertise_sets_the_urls_and_next_server_but_not_the_server_id():
    c = DhcpConfig.from_settings(settings(dhcp="proxy", advertise="10.5.0.9"), IFACE)
    assert c.mode == "proxy" and c.base_url == "http://10.5.0.9:8081"
    assert c.tftp_server == A("10.5.0.9") and c.server_ip == A("10.5.0.1")


def test_off_is_not_a_server_mode():
    with pytest.raises(ValueError):
        DhcpConfig.from_settings(settings(dhcp="off"), IFACE)
