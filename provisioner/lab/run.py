"""`provisioner lab`: the main job. In a fresh lab namespace the appliance
serves full DHCP on the lab bridge; one SeaBIOS machine with two disks
PXE-boots, runs the discovery agent and powers off; the job succeeds when
`host list` shows its MAC as `discovered`, and prints `host show`. Then
images/tiny is built into the appliance's store, promoted to tiny@stable,
given to the host, and fetched by digest from inside the namespace.

Layout of workdir (kept between runs so the agent is built only once):
  build.toml, build/   settings and Debian package cache for `agent build`
  agent/               kernel, agent.cpio, modules.cpio, manifest.json
  state/               the appliance's state dir, wiped at every run so an
                       earlier discovery can never make this run pass
  provisioner.toml     the appliance's settings for this run
  logs/                appliance.log and the VM's serial/QEMU logs
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from provisioner.errors import ProvisionerError
from provisioner.lab.appliance import (
    Appliance,
    LabConfig,
    agent_missing,
    cli,
    find_host,
    host_list,
    write_config,
)
from provisioner.lab.netns import LabError, LabNetwork
from provisioner.lab.qemu import DiskSpec, Machine, MachineSpec

Log = Callable[[str], None]

LAB_MAC = "52:54:00:1a:b0:01"
LAB_SPEC = MachineSpec(
    name="lab-bios-1",
    mac=LAB_MAC,
    firmware="bios",
    disks=(
        DiskSpec(size="2G", serial="LAB-ROOT-0001", interface="virtio"),
        DiskSpec(size="1G", serial="LAB-DATA-0002", interface="virtio"),
    ),
    uuid="6f1c9a52-3a0e-4c1b-9d7e-1a2b3c4d5e01",
    # A failed boot must not loop: QEMU exits and the job reports it.
    no_reboot=True,
)
# Under TCG a discovery boot (iPXE, kernel + initrds over HTTP, agent) takes
# minutes; 15 leaves room for a loaded CI runner.
DISCOVERY_TIMEOUT = 15 * 60
# After QEMU exits (the agent powered off) the report is already stored, but
# give the appliance a moment before calling it a failure.
AFTER_EXIT_GRACE = 20
REQUIRED_TOOLS = ("ip", "qemu-system-x86_64", "qemu-img", "curl")
# (regex on the serial console, what it means), logged once each.
SERIAL_MILESTONES = (
    (r"iPXE \d+\.\d+\.\d+", "firmware: iPXE NIC ROM started"),
    (r"Configuring \(net0 [^)]*\)[. ]*ok", "iPXE: DHCP lease"),
    (r"/boot/ipxe\.\.\. ok", "iPXE: boot script fetched"),
    (r"/agent/modules\.cpio\.\.\. ok", "iPXE: kernel and initrds fetched"),
    (r"Linux version", "kernel: started"),
    (r"Run /init as init", "kernel: running the agent's /init"),
    (r"reboot: Power down", "kernel: powered off"),
)


def preflight() -> str | None:
    if os.geteuid() != 0:
        return "the lab needs root (network namespaces, taps)"
    missing = [tool for tool in REQUIRED_TOOLS if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (run scripts/setup)"
    return None


def _run_logged(args: list[str], log: Log, what: str, keep: Callable[[str], bool] = lambda _line: True) -> None:
    """`provisioner ARGS` with its output logged line by line as it comes;
    LabError if it fails."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "provisioner", *args],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True,
    )
    assert proc.stdout is not None
    try:
        for line in proc.stdout:
            if keep(line):
                log(f"{what}: {line.rstrip()}")
        code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if code != 0:
        raise LabError(f"provisioner {what} failed with exit status {code}")


def ensure_agent(workdir: Path, log: Log) -> Path:
    """Build the agent into workdir/agent with `provisioner agent build`,
    which returns at once when the build there is of the same inputs."""
    agent_dir = workdir / "agent"
    build = write_config(workdir / "build.toml", state_dir=workdir / "build", agent_dir=agent_dir)
    log(f"agent: building into {agent_dir} if its inputs changed (the first build takes a minute or two)")
    _run_logged(["agent", "build", "--config", str(build.path)], log, "agent build")
    still = agent_missing(build)
    if still:
        raise LabError(f"provisioner agent build finished but {', '.join(still)} are missing in {agent_dir}")
    return agent_dir


TINY = Path(__file__).resolve().parents[2] / "images" / "tiny"


def publish_tiny(workdir: Path, config: LabConfig, lab: LabNetwork, appliance: Appliance, mac: str,
                 log: Log) -> None:
    """Build images/tiny into the lab's store, promote it to tiny@stable, give
    it to the discovered host, and fetch its root by digest from the
    appliance inside the namespace, checking the sha256 of what came back."""
    from provisioner.images.definition import load_definition

    if not TINY.is_dir():
        log(f"lab: {TINY} is not here (not run from a checkout); skipping the image step")
        return
    ref = load_definition(TINY).ref
    cache = config.state_dir / "cache"
    if not cache.exists():
        (workdir / "build" / "cache").mkdir(parents=True, exist_ok=True)
        cache.symlink_to(workdir / "build" / "cache")  # the agent build's package cache
    started = time.monotonic()
    # Step headers only: the build's indented detail lines would bury the lab's own.
    _run_logged(["image", "build", str(TINY), "--config", str(config.path)], log, "image build",
                keep=lambda line: not line.startswith(" "))
    log(f"lab: {ref} built and published in {time.monotonic() - started:.0f}s")
    for args in (["image", "promote", ref, "stable", "--by", "lab"], ["host", "set", mac, "--image", "tiny@stable"]):
        done = cli(args, config)
        if done.returncode != 0:
            raise LabError(f"provisioner {' '.join(args)} failed: {done.stderr.strip()[-300:]}")
        log(f"lab: {done.stdout.strip()}")
    shown = cli(["image", "show", "tiny@stable", "--json"], config)
    if shown.returncode != 0:
        raise LabError(f"image show failed: {shown.stderr.strip()[-300:]}")
    rootfs = json.loads(shown.stdout)["artifacts"]["rootfs.squashfs"]["sha256"]
    url = f"{appliance.url}/artifacts/sha256/{rootfs}"
    got = lab.run(["sh", "-c", f"curl -sf --max-time 60 {url} | sha256sum"], timeout=90, check=False)
    if got.stdout.split()[:1] != [rootfs]:
        raise LabError(f"GET {url} from the lab did not return the blob (sha256 {got.stdout.strip()!r})")
    log(f"lab: GET {url} from inside the lab: sha256 matches")
    log(cli(["image", "list"], config).stdout.rstrip())


def _fresh_state(workdir: Path) -> Path:
    state = workdir / "state"
    if state.exists():
        shutil.rmtree(state)
    state.mkdir(parents=True)
    return state


class _Milestones:
    """Logs each serial-console milestone once, so a long TCG boot shows
    where it is."""

    def __init__(self, machine: Machine, log: Log) -> None:
        self.machine = machine
        self.log = log
        self.seen: set[str] = set()

    def poll(self, started: float) -> None:
        text = self.machine.serial_clean()
        for pattern, what in SERIAL_MILESTONES:
            if pattern not in self.seen and re.search(pattern, text):
                self.seen.add(pattern)
                self.log(f"  {time.monotonic() - started:6.1f}s  {what}")


def wait_discovered(machine: Machine, config: LabConfig, appliance: Appliance, log: Log,
                    timeout: float = DISCOVERY_TIMEOUT) -> dict:
    started = time.monotonic()
    deadline = started + timeout
    milestones = _Milestones(machine, log)
    last_state: str | None = None
    exited_at: float | None = None
    while True:
        milestones.poll(started)
        host = find_host(host_list(config), machine.spec.mac)
        state = host.get("state") if host else None
        if state != last_state:
            log(f"  {time.monotonic() - started:6.1f}s  appliance: host {machine.spec.mac} is {state or 'unknown'}")
            last_state = state
        if state == "discovered":
            return host or {}
        if appliance.proc is not None and appliance.proc.poll() is not None:
            raise LabError(f"the appliance exited with {appliance.proc.returncode} during the boot")
        now = time.monotonic()
        if not machine.running:
            exited_at = exited_at or now
            if now - exited_at > AFTER_EXIT_GRACE:
                raise LabError(
                    f"the VM stopped (QEMU exit status {machine.proc.returncode if machine.proc else '?'}) "
                    f"but its host is {state or 'unknown'}, not discovered"
                )
        if now > deadline:
            raise LabError(f"no discovery within {timeout / 60:.0f} min; host is {state or 'unknown'}")
        time.sleep(3)


def _wait_for_interrupt(log: Log, lab: LabNetwork) -> None:
    log(f"lab: kept running; look around with `ip netns exec {lab.name} bash` "
        f"(appliance at http://{lab.ip}:8080); press Ctrl-C to tear it down")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        log("lab: interrupted")


def run_lab(workdir: Path, log: Log = print, keep: bool = False) -> int:
    """Run the lab once; 0 on a discovered machine, 1 on failure, 2 when the
    lab cannot run here. Everything it starts is stopped before it returns."""
    problem = preflight()
    if problem:
        log(f"lab: {problem}")
        return 2
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    logs = workdir / "logs"
    if logs.exists():
        shutil.rmtree(logs)
    logs.mkdir()

    # SIGTERM (CI cancelling the job) must unwind through the finally below
    # like Ctrl-C does, or the namespace and QEMU would outlive the job.
    # pyroute2 forks short-lived helpers (namespace creation, sockets in a
    # namespace) and stops them with SIGTERM; a fork inherits this handler
    # and our whole call stack, so only the owner process may unwind.
    owner = os.getpid()

    def on_sigterm(signum: int, frame: object) -> None:
        if os.getpid() != owner:
            os._exit(128 + signum)
        raise KeyboardInterrupt

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, on_sigterm)

    lab: LabNetwork | None = None
    machine: Machine | None = None
    appliance: Appliance | None = None
    started = time.monotonic()
    try:
        agent_dir = ensure_agent(workdir, log)
        lab = LabNetwork.create(answer_router_solicitations=True)
        log(f"lab: namespace {lab.name}, bridge {lab.bridge} {lab.address}")
        config = write_config(
            workdir / "provisioner.toml", state_dir=_fresh_state(workdir), lab=lab, dhcp="full", agent_dir=agent_dir
        )
        appliance = Appliance(lab, config, logs / "appliance.log")
        appliance.start(timeout=60)
        log(f"lab: appliance healthy at {appliance.url} (log {appliance.log_path})")

        machine = Machine(LAB_SPEC, lab, logs)
        machine.start()
        log(f"lab: VM {machine.spec.name} ({machine.spec.mac}, SeaBIOS, 2 disks) booting under TCG; "
            f"serial log {machine.serial_log}")
        wait_discovered(machine, config, appliance, log)
        log(f"lab: discovered in {time.monotonic() - started:.0f}s")
        shown = cli(["host", "show", machine.spec.mac], config)
        log(shown.stdout.rstrip() or shown.stderr.rstrip())
        if shown.returncode != 0:
            raise LabError(f"host show failed with exit status {shown.returncode}")
        publish_tiny(workdir, config, lab, appliance, machine.spec.mac, log)
        if keep:
            _wait_for_interrupt(log, lab)
        log("lab: OK")
        return 0
    except (LabError, ProvisionerError, subprocess.SubprocessError, OSError, ValueError) as exc:
        log(f"lab: FAILED: {exc}")
        if machine is not None:
            log(machine.failure_context(40))
        if appliance is not None:
            log(appliance.log_tail(40))
            events = cli(["events", "--limit", "20"], appliance.config)
            log("--- last appliance events ---\n" + (events.stdout.rstrip() or events.stderr.rstrip()))
        if keep and lab is not None:
            _wait_for_interrupt(log, lab)
        return 1
    except KeyboardInterrupt:
        if os.getpid() != owner:
            os._exit(130)  # a forked helper caught Ctrl-C: not ours to clean up
        log("lab: interrupted; cleaning up")
        return 130
    finally:
        if os.getpid() != owner:
            os._exit(1)
        if lab is not None:
            try:
                lab.close()
                log(f"lab: removed {lab.name} and everything started in it")
            except LabError as exc:
                log(f"lab: cleanup problem: {exc}")
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
