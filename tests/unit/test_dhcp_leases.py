"""The lease store on a real SQLite file: what survives a restart and what
stays in memory."""

from __future__ import annotations

from ipaddress import IPv4Address as A

from provisioner.db.connection import open_db
from provisioner.db.leases import LeaseStore, list_leases

NOW = 1_700_000_000.0
MAC, OTHER = "52:54:00:00:00:01", "52:54:00:00:00:02"
FIRST, LAST = A("10.0.0.10"), A("10.0.0.12")


def store_at(path) -> LeaseStore:
    return LeaseStore(open_db(path), clock=lambda: NOW)


def test_offers_stay_in_memory(tmp_path):
    s = store_at(tmp_path / "p.db")
    s.offer(MAC, FIRST, NOW)
    assert s.db["leases"].count == 0
    assert s.current(MAC, NOW) == FIRST
    assert not s.available(FIRST, OTHER, NOW)
    assert s.next_free(FIRST, LAST, OTHER, NOW) == A("10.0.0.11")
    assert s.available(FIRST, OTHER, NOW + 61)  # offers expire
    assert store_at(tmp_path / "p.db").current(MAC, NOW) is None  # and are gone after a restart


def test_commit_survives_a_restart(tmp_path):
    s = store_at(tmp_path / "p.db")
    s.commit(MAC, FIRST, 600, NOW, "node1", b"\x01\x02")
    again = store_at(tmp_path / "p.db")
    lease = again.lookup_mac(MAC)
    assert lease.ip == FIRST and lease.expires == NOW + 600 and lease.hostname == "node1" and lease.client_id == "0102"
    assert again.lookup_ip(FIRST).mac == MAC
    assert not again.available(FIRST, OTHER, NOW)
    assert again.next_free(FIRST, LAST, OTHER, NOW) == A("10.0.0.11")
    assert [x.mac for x in list_leases(again.db, now=NOW)] == [MAC]
    assert list_leases(again.db, now=NOW + 601) == []


def test_moving_a_client_replaces_its_record(tmp_path):
    s = store_at(tmp_path / "p.db")
    s.commit(MAC, FIRST, 600, NOW)
    s.commit(MAC, LAST, 600, NOW)
    assert s.lookup_ip(FIRST) is None and s.lookup_ip(LAST).mac == MAC
    assert s.db["leases"].count == 1


def test_release_and_decline_persist(tmp_path):
    s = store_at(tmp_path / "p.db")
    s.commit(MAC, FIRST, 600, NOW)
    s.release(MAC, FIRST, NOW)
    s.commit(OTHER, A("10.0.0.11"), 600, NOW)
    s.decline(OTHER, A("10.0.0.11"), NOW)
    again = store_at(tmp_path / "p.db")
    assert again.lookup_mac(MAC).expires == 0 and again.available(FIRST, OTHER, NOW)
    assert again.lookup_mac(OTHER) is None
    assert not again.available(A("10.0.0.11"), MAC, NOW)
    assert A("10.0.0.11") in again.declined(NOW)


def test_release_of_someone_elses_address_is_ignored(tmp_path):
    s = store_at(tmp_path / "p.db")
    s.commit(MAC, FIRST, 600, NOW)
    s.release(OTHER, FIRST, NOW)
    assert s.lookup_mac(MAC).active(NOW)


def test_reservations_come_from_hosts(tmp_path):
    s = store_at(tmp_path / "p.db")
    s.db["hosts"].insert({"id": 7, "name": "n7", "state": "ready", "ip": "10.0.0.11", "created": NOW, "updated": NOW})
    s.db["host_macs"].insert({"mac": MAC, "host_id": 7})
    s.db["hosts"].insert({"id": 8, "name": "n8", "state": "ready", "ip": "not-an-ip", "created": NOW, "updated": NOW})
    s.db["host_macs"].insert({"mac": OTHER, "host_id": 8})
    assert s.reservation(MAC) == A("10.0.0.11")
    assert s.reservation(OTHER) is None
    assert not s.available(A("10.0.0.11"), OTHER, NOW) and s.available(A("10.0.0.11"), MAC, NOW)


def test_next_free_goes_on_after_the_last_address_and_wraps(tmp_path):
    store = store_at(tmp_path / "s.db")
    first, last = A("10.9.0.10"), A("10.9.0.13")
    got = []
    for i in range(4):
        mac = f"52:54:00:00:01:{i:02x}"
        ip = store.next_free(first, last, mac, NOW)
        store.commit(mac, ip, 600, NOW)
        got.append(str(ip))
    assert got == ["10.9.0.10", "10.9.0.11", "10.9.0.12", "10.9.0.13"]
    assert store.next_free(first, last, "52:54:00:00:01:99", NOW) is None  # full
    store.release("52:54:00:00:01:01", A("10.9.0.11"), NOW)
    # Only after wrapping around is a released address given to someone else.
    assert store.next_free(first, last, "52:54:00:00:01:99", NOW) == A("10.9.0.11")
