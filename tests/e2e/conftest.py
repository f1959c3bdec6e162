"""Fixtures for end-to-end tests: a lab namespace, QEMU machines in it, a
settings file for the lab, the appliance running inside the namespace and
the CLI queries that watch it. Everything started here is stopped by PID and
every namespace removed in the fixtures' teardown, pass or fail.

Needs root (namespaces, taps) and qemu-system-x86_64; otherwise skipped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

from provisioner.lab.appliance import (
    Appliance,
    LabConfig,
    find_host,
    host_list,
    write_config,
)
from provisioner.lab.dhcpsniff import DhcpObserver
from provisioner.lab.netns import LabNetwork
from provisioner.lab.qemu import DiskSpec, Machine, MachineSpec
from provisioner.lab.site import SiteDhcp, start_site_dnsmasq

# Agent artifacts are slow to build; e2e runs share one build here unless
# PROVISIONER_LAB_AGENT_DIR points elsewhere.
SHARED_AGENT_ROOT = Path(os.environ.get("PROVISIONER_LAB_AGENT_ROOT", "/var/tmp/provisioner-e2e"))


def _why_not_runnable() -> str | None:
    if os.geteuid() != 0:
        return "needs root for network namespaces and taps"
    for tool in ("ip", "qemu-system-x86_64", "qemu-img", "curl"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = _why_not_runnable()
    here = Path(__file__).parent
    for item in items:
        if Path(str(item.fspath)).is_relative_to(here):
            item.add_marker(pytest.mark.e2e)
            if reason:
                item.add_marker(pytest.mark.skip(reason=reason))


def random_mac() -> str:
    # 52:54:00 is QEMU's locally administered prefix.
    return "52:54:00:" + ":".join(f"{b:02x}" for b in secrets.token_bytes(3))


@pytest.fixture
def lab() -> Iterator[LabNetwork]:
    """A fresh lab namespace with br0 = 10.77.0.1/24 and an IPv6 "no router
    here" answerer (saves iPXE ~16 s per boot); removed afterwards."""
    with LabNetwork.create(answer_router_solicitations=True) as network:
        yield network


@pytest.fixture
def lab_workdir(tmp_path: Path) -> Path:
    path = tmp_path / "lab"
    path.mkdir()
    return path


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    path = tmp_path / "state"
    path.mkdir()
    return path


MachineFactory = Callable[..., Machine]


@pytest.fixture
def vm_factory(lab: LabNetwork, lab_workdir: Path, request: pytest.FixtureRequest) -> Iterator[MachineFactory]:
    """make(name, mac=None, *, start=True, disks=(DiskSpec...), firmware=...,
    **MachineSpec fields) -> Machine. Machines are stopped afterwards (the lab
    would kill them anyway; this keeps the order QEMU -> namespace)."""
    made: list[Machine] = []

    def make(name: str, mac: str | None = None, *, start: bool = True, **spec: Any) -> Machine:
        machine = Machine(MachineSpec(name=name, mac=mac or random_mac(), **spec), lab, lab_workdir / "vms")
        made.append(machine)
        if start:
            machine.start()
        return machine

    yield make
    failed = request.node.stash.get(_FAILED, False)
    for machine in made:
        machine.stop()
        if failed:
            # The serial log is the first thing anyone needs after a red run.
            sys.stderr.write(f"\n{machine.failure_context(60)}\n")


_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call" and report.failed:
        item.stash[_FAILED] = True
    return report


ConfigWriter = Callable[..., LabConfig]


@pytest.fixture
def lab_config(lab: LabNetwork, state_dir: Path, tmp_path: Path) -> ConfigWriter:
    """write(dhcp="full"|"proxy", **write_config options) -> LabConfig for
    the lab bridge: state_dir, pool 10.77.0.100-199, router 10.77.0.1,
    HTTP 8080, TFTP 69."""

    def write(dhcp: str = "full", **options: Any) -> LabConfig:
        return write_config(tmp_path / "provisioner.toml", state_dir=state_dir, lab=lab, dhcp=dhcp, **options)

    return write


ApplianceStarter = Callable[..., Appliance]


@pytest.fixture
def appliance_factory(lab: LabNetwork, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[ApplianceStarter]:
    """start(config, timeout=60) -> Appliance: `provisioner serve` inside the
    lab namespace, healthy (/healthz 200 asked from inside the namespace).
    Stopped by PID afterwards; its log is printed if the test failed."""
    started: list[Appliance] = []

    def start(config: LabConfig, timeout: float = 60) -> Appliance:
        appliance = Appliance(lab, config, tmp_path / f"appliance-{len(started)}.log")
        started.append(appliance)
        appliance.start(timeout=timeout)
        return appliance

    yield start
    failed = request.node.stash.get(_FAILED, False)
    for appliance in reversed(started):
        appliance.stop()
        if failed:
            sys.stderr.write(f"\n{appliance.log_tail(80)}\n")


@pytest.fixture
def appliance(appliance_factory: ApplianceStarter, lab_config: ConfigWriter) -> Appliance:
    """The appliance in full-DHCP mode on the lab bridge."""
    return appliance_factory(lab_config("full"))


@pytest.fixture
def hosts() -> Callable[[LabConfig], list[dict[str, Any]]]:
    """hosts(config) -> the `host list --json` records (no namespace needed)."""
    return host_list


@pytest.fixture
def lab_host() -> Callable[[LabConfig, str], dict[str, Any] | None]:
    """lab_host(config, mac) -> that MAC's host record, or None."""
    return lambda config, mac: find_host(host_list(config), mac)


@pytest.fixture
def dhcp_observer(lab: LabNetwork, tmp_path: Path) -> Iterator[Callable[..., DhcpObserver]]:
    """start(netns=None, interface=None) -> a listen-only DHCP observer on
    UDP 67 inside the lab (or site) namespace."""
    observers: list[DhcpObserver] = []

    def start(netns: str | None = None, interface: str | None = None) -> DhcpObserver:
        observer = DhcpObserver(lab, tmp_path / f"dhcp-{len(observers)}.jsonl", netns=netns, interface=interface)
        observers.append(observer)
        observer.start()
        return observer

    yield start
    for observer in observers:
        observer.stop()


@pytest.fixture
def site_dhcp(lab: LabNetwork, tmp_path: Path) -> Callable[..., SiteDhcp]:
    """start(first="10.77.0.50", last="10.77.0.99", router=None) -> SiteDhcp:
    a site namespace (created if needed) joined to br0 at 10.77.0.2 running
    dnsmasq as a plain DHCP server, for ProxyDHCP tests. Stopped by the lab."""

    def start(**options: Any) -> SiteDhcp:
        site = lab.site or lab.add_site()
        return start_site_dnsmasq(lab, site, tmp_path / "site", **options)

    return start


@pytest.fixture(scope="session")
def agent_dir() -> Path:
    """Agent artifacts for discovery boots, built once with
    `provisioner agent build` and shared between runs."""
    override = os.environ.get("PROVISIONER_LAB_AGENT_DIR")
    if override:
        return Path(override)
    state = SHARED_AGENT_ROOT / "state"
    config = write_config(
        SHARED_AGENT_ROOT / "build.toml", state_dir=state, agent_dir=SHARED_AGENT_ROOT / "agent"
    )
    # Always asked: the build returns at once when its inputs are unchanged,
    # and rebuilds when the agent's code or the Debian packages changed.
    done = subprocess.run(
        [sys.executable, "-m", "provisioner", "agent", "build", "--config", str(config.path)],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if done.returncode != 0:
        pytest.fail(f"provisioner agent build failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return SHARED_AGENT_ROOT / "agent"


__all__ = ["DiskSpec", "random_mac"]
