"""Lab networks: a namespace holding a bridge, taps for VMs and an optional
"site" namespace joined to the bridge by a veth pair.

Safety model: every link is created *inside* a namespace this module created
(pyroute2 `IPRoute(netns=...)`, which enters the namespace before creating the
link), and the veth's peer is created directly in the site namespace. Nothing
is ever created in, or moved into, the root namespace, so the host's real
interfaces never see a lab frame.

Processes are started with `ip netns exec NAME argv...`. `ip netns exec`
setns()es and then exec()s the command itself (no fork), so the Popen's PID
is the command's PID and can be signalled directly. Each process gets its own
session, so its process group (same id) holds exactly what it spawned.

pyroute2 does the namespace and link work; iproute2's `ip netns exec` runs
commands, because a Popen of a plain argv is simpler to reason about than
forking after setns() in this (possibly threaded) process.
"""

from __future__ import annotations

import ctypes
import logging
import os
import secrets
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Sequence

from netaddr import IPNetwork
from pyroute2 import IPRoute, netns

log = logging.getLogger(__name__)

DEFAULT_PREFIX = "prov-lab"
DEFAULT_BRIDGE = "br0"
DEFAULT_ADDRESS = "10.77.0.1/24"
DEFAULT_SITE_ADDRESS = "10.77.0.2/24"
SITE_INTERFACE = "lan0"
# Seconds between SIGTERM and SIGKILL when stopping a lab process.
TERM_GRACE = 5.0


class LabError(RuntimeError):
    """The lab could not be built or a lab step failed."""


@dataclass(frozen=True)
class SiteNetwork:
    """A second namespace on the lab bridge, e.g. for a site DHCP server."""

    netns: str
    interface: str
    address: IPNetwork
    lab_side: str  # the veth end enslaved to the lab bridge

    @property
    def ip(self) -> str:
        return str(self.address.ip)


def list_namespaces(prefix: str = "") -> list[str]:
    """Named namespaces (those under /var/run/netns) starting with prefix."""
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))


def _unique_name(prefix: str) -> str:
    existing = set(netns.listnetns())
    for _ in range(100):
        name = f"{prefix}-{secrets.token_hex(2)}"
        # The site namespace is derived from the lab's name; keep both free.
        if name not in existing and f"{name}-site" not in existing:
            return name
    raise LabError(f"no free namespace name with prefix {prefix!r}")


def stop_process(proc: subprocess.Popen, grace: float = TERM_GRACE) -> int | None:
    """SIGTERM then SIGKILL one process we started and its own process group
    (it leads one: it was started in a new session), so helpers it spawned
    go too. Returns the exit status, or None if it could not be reaped."""
    pid = proc.pid
    status: int | None = proc.returncode
    if proc.poll() is None:
        _signal_group(pid, signal.SIGTERM)
        try:
            status = proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            _signal_group(pid, signal.SIGKILL)
            try:
                status = proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                log.error("lab: process %d did not die after SIGKILL", pid)
                return None
    else:
        status = proc.returncode
    # The leader is gone; give what it left in its group a moment to follow
    # the SIGTERM, then SIGKILL the rest.
    deadline = time.monotonic() + min(grace, 2.0)
    while not _group_gone(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if not _group_gone(pid):
        _signal_group(pid, signal.SIGKILL)
    return status


def _group_gone(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _signal_group(pgid: int, sig: int) -> None:
    # Only the group: every lab process leads its own session, and signalling
    # a bare PID after its leader was reaped could hit a recycled PID.
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass
    except PermissionError as exc:
        log.warning("lab: cannot signal process group %d: %s", pgid, exc)


class LabNetwork:
    """A namespace with a bridge at `address`, plus taps, a site namespace
    and processes. Use as a context manager or call close(); close() is
    idempotent and removes everything even after a partial create()."""

    def __init__(
        self,
        *,
        prefix: str = DEFAULT_PREFIX,
        bridge: str = DEFAULT_BRIDGE,
        address: str = DEFAULT_ADDRESS,
        answer_router_solicitations: bool = False,
    ) -> None:
        self.prefix = prefix
        # See provisioner/lab/ra.py: saves iPXE ~16 s of IPv6 waiting per boot.
        self.answer_router_solicitations = answer_router_solicitations
        self.bridge = bridge
        self.address = IPNetwork(address)
        self.name = ""
        self.site: SiteNetwork | None = None
        self._namespaces: list[str] = []  # created by us, in creation order
        self._links: list[str] = []  # taps and veth ends in the lab namespace
        self._procs: list[subprocess.Popen] = []
        self._tap_counter = 0
        self._created = False
        self._closed = False
        # pyroute2 forks helpers; a forked copy of this object must never
        # tear down the lab (or signal its processes) on its own.
        self._owner_pid = os.getpid()

    # --- lifecycle ---

    @classmethod
    def create(cls, **kwargs: Any) -> LabNetwork:
        lab = cls(**kwargs)
        lab.up()
        return lab

    def up(self) -> None:
        if self._created:
            raise LabError("lab network already created")
        self._created = True
        try:
            self.name = _unique_name(self.prefix)
            netns.create(self.name)
            self._namespaces.append(self.name)
            with IPRoute(netns=self.name) as ipr:
                self._loopback_up(ipr)
                # forward_delay 0 and no STP: a tap is forwarding the moment
                # QEMU opens it, so the firmware's first DHCPDISCOVER is not
                # eaten by a listening/learning phase.
                ipr.link(
                    "add", ifname=self.bridge, kind="bridge", br_forward_delay=0, br_stp_state=0
                )
                index = ipr.link_lookup(ifname=self.bridge)[0]
                ipr.addr(
                    "add", index=index, address=str(self.address.ip), prefixlen=self.address.prefixlen
                )
                ipr.link("set", index=index, state="up")
            log.info("lab: namespace %s, bridge %s %s", self.name, self.bridge, self.address)
            if self.answer_router_solicitations:
                self.start_router_advertiser()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> LabNetwork:
        if not self._created:
            self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def ip(self) -> str:
        return str(self.address.ip)

    @staticmethod
    def _loopback_up(ipr: IPRoute) -> None:
        # New namespaces start with lo down; 127.0.0.1 inside the lab is handy.
        ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")

    # --- links ---

    def add_tap(self, name: str | None = None) -> str:
        """A persistent tap in the lab namespace, enslaved to the bridge and up.
        QEMU (run inside the namespace) attaches to it by name."""
        self._require_up()
        if name is None:
            self._tap_counter += 1
            name = f"tap{self._tap_counter}"
        if len(name) > 15:
            raise LabError(f"interface name {name!r} is longer than 15 characters")
        with IPRoute(netns=self.name) as ipr:
            ipr.link("add", ifname=name, kind="tuntap", mode="tap")
            self._links.append(name)
            index = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=index, master=self._bridge_index(ipr), state="up")
        return name

    def add_site(self, address: str = DEFAULT_SITE_ADDRESS) -> SiteNetwork:
        """A namespace `<lab>-site` whose `lan0` is a veth joined to the bridge."""
        self._require_up()
        if self.site is not None:
            raise LabError("this lab already has a site namespace")
        site_ns = f"{self.name}-site"
        lab_side = "vsite0"
        addr = IPNetwork(address)
        netns.create(site_ns)
        self._namespaces.append(site_ns)
        with IPRoute(netns=self.name) as ipr:
            # The peer is born in the site namespace (net_ns_fd by name), so
            # neither end ever exists in the root namespace.
            ipr.link(
                "add", ifname=lab_side, kind="veth", peer={"ifname": SITE_INTERFACE, "net_ns_fd": site_ns}
            )
            self._links.append(lab_side)
            index = ipr.link_lookup(ifname=lab_side)[0]
            ipr.link("set", index=index, master=self._bridge_index(ipr), state="up")
        with IPRoute(netns=site_ns) as ipr:
            self._loopback_up(ipr)
            index = ipr.link_lookup(ifname=SITE_INTERFACE)[0]
            ipr.addr("add", index=index, address=str(addr.ip), prefixlen=addr.prefixlen)
            ipr.link("set", index=index, state="up")
        self.site = SiteNetwork(netns=site_ns, interface=SITE_INTERFACE, address=addr, lab_side=lab_side)
        return self.site

    def _bridge_index(self, ipr: IPRoute) -> int:
        found = ipr.link_lookup(ifname=self.bridge)
        if not found:
            raise LabError(f"bridge {self.bridge} missing in namespace {self.name}")
        return found[0]

    def _require_up(self) -> None:
        if not self._created or self._closed or not self.name:
            raise LabError("lab network is not up")

    def _check_netns(self, name: str | None) -> str:
        target = name or self.name
        if target not in self._namespaces:
            # Refuse to run anything outside a namespace we created: a typo
            # must not land a DHCP server in some other network.
            raise LabError(f"{target!r} is not a namespace of this lab")
        return target

    # --- processes ---

    def popen(
        self,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        stdout: int | IO[Any] | None = subprocess.DEVNULL,
        stderr: int | IO[Any] | None = subprocess.DEVNULL,
        stdin: int | IO[Any] | None = subprocess.DEVNULL,
        env: dict[str, str] | None = None,
        cwd: str | Path | None = None,
    ) -> subprocess.Popen:
        """Start argv inside the lab namespace (or the site's, by name); the
        lab stops it at close(). The Popen's PID is the command's own PID."""
        self._require_up()
        target = self._check_netns(netns)
        proc = subprocess.Popen(
            ["ip", "netns", "exec", target, *argv],
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            env=env,
            cwd=cwd,
            start_new_session=True,
        )
        self._procs.append(proc)
        log.info("lab: started pid %d in %s: %s", proc.pid, target, " ".join(argv))
        return proc

    def run(
        self,
        argv: Sequence[str],
        *,
        netns: str | None = None,
        timeout: float = 60,
        check: bool = True,
        env: dict[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a short command inside a lab namespace and wait for it."""
        self._require_up()
        target = self._check_netns(netns)
        return subprocess.run(
            ["ip", "netns", "exec", target, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            env=env,
            stdin=subprocess.DEVNULL,
        )

    def start_router_advertiser(self) -> subprocess.Popen:
        """Answer IPv6 router solicitations on the bridge with "no router
        here" (provisioner/lab/ra.py), so iPXE does not wait ~16 s for one."""
        return self.popen([sys.executable, "-m", "provisioner.lab.ra", "--netns", self.name, self.bridge])

    def stop(self, proc: subprocess.Popen, grace: float = TERM_GRACE) -> int | None:
        """Stop one process this lab started (TERM, then KILL)."""
        if proc not in self._procs:
            raise LabError(f"pid {proc.pid} was not started by this lab")
        return stop_process(proc, grace)

    def http_get(self, url: str, *, netns: str | None = None, timeout: float = 5) -> tuple[int, str]:
        """GET url from inside a lab namespace with curl; (0, "") if nothing
        answered. Keeps health checks off the root namespace."""
        try:
            done = self.run(
                ["curl", "-s", "-o", "-", "-w", "\n%{http_code}", "--max-time", str(timeout), url],
                netns=netns,
                timeout=timeout + 5,
                check=False,
            )
        except subprocess.TimeoutExpired:
            return 0, ""
        body, _, code = done.stdout.rpartition("\n")
        try:
            return int(code), body
        except ValueError:
            return 0, ""

    # --- teardown ---

    def close(self) -> None:
        """Stop every process, delete taps/veths and the namespaces. Safe to
        call more than once and after a failed create()."""
        if self._closed or os.getpid() != self._owner_pid:
            return
        self._closed = True
        problems: list[str] = []
        for proc in reversed(self._procs):
            if stop_process(proc) is None and proc.poll() is None:
                problems.append(f"pid {proc.pid} survived SIGKILL")
        if self.name and self.name in self._namespaces and self._links:
            try:
                with IPRoute(netns=self.name) as ipr:
                    for link in reversed(self._links):
                        found = ipr.link_lookup(ifname=link)
                        if found:
                            ipr.link("del", index=found[0])
            except Exception as exc:  # removing the namespace deletes them anyway
                log.warning("lab: deleting links in %s: %s", self.name, exc)
        for name in reversed(self._namespaces):
            try:
                netns.remove(name)
            except FileNotFoundError:
                pass
            except Exception as exc:
                problems.append(f"namespace {name}: {exc}")
        log.info("lab: removed %s", ", ".join(self._namespaces) or "nothing")
        if problems:
            raise LabError("lab cleanup incomplete: " + "; ".join(problems))



_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


@contextmanager
def in_netns(name: str) -> Iterator[None]:
    """Run this thread (only) inside a named namespace; sockets made inside
    stay there after it switches back. For tests and benchmarks that need a
    socket in a namespace without a subprocess."""
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{name}", os.O_RDONLY)
    try:
        if _libc.setns(target, _CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns {name}")
        try:
            yield
        finally:
            if _libc.setns(own, _CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back to our own namespace")
    finally:
        os.close(own)
        os.close(target)

def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.5) -> bool:
    """Poll predicate() until it is true or timeout seconds have passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())
