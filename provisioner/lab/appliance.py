"""The appliance as the lab sees it: a settings file for the lab network,
`provisioner serve` running inside the lab namespace, and the CLI queries
used to watch it. Shared by the e2e fixtures and `provisioner lab`.

The CLI is always run as `sys.executable -m provisioner`, so the lab drives
the same code and virtualenv it was started from.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from provisioner import settings as settings_mod
from provisioner.lab.netns import LabError, LabNetwork

LAB_POOL = "10.77.0.100-10.77.0.199"
AGENT_ARTIFACTS = ("kernel", "agent.cpio", "modules.cpio", "manifest.json")


@dataclass(frozen=True)
class LabConfig:
    path: Path
    state_dir: Path
    http_port: int
    dhcp: str


def _toml_str(value: str | Path) -> str:
    # json.dumps yields a valid TOML basic string for any path we write.
    return json.dumps(str(value))


def write_config(
    path: Path,
    *,
    state_dir: Path,
    lab: LabNetwork | None = None,
    interface: str = "br0",
    dhcp: str = "full",
    pool: str = LAB_POOL,
    router: str = "10.77.0.1",
    http_port: int = 8080,
    tftp_port: int = 69,
    agent_dir: Path | None = None,
    kernel_args: str | None = None,
) -> LabConfig:
    """Write a provisioner TOML file for the lab bridge and check it with the
    project's own settings parser, so a bad lab config fails here and not
    inside the daemon."""
    if lab is not None:
        interface, router = lab.bridge, lab.ip
    lines = [
        f"state_dir = {_toml_str(state_dir)}",
        "",
        "[network]",
        f"interface = {_toml_str(interface)}",
        f"dhcp = {_toml_str(dhcp)}",
        "",
        "[dhcp]",
    ]
    if dhcp == "full":
        # In proxy mode the site server owns addresses; no pool of ours.
        lines.append(f"pool = {_toml_str(pool)}")
        lines.append(f"router = {_toml_str(router)}")
    lines += ["", "[http]", f"port = {http_port}", "", "[tftp]", f"port = {tftp_port}"]
    agent_lines = []
    if agent_dir is not None:
        agent_lines.append(f"dir = {_toml_str(agent_dir)}")
    if kernel_args is not None:
        agent_lines.append(f"kernel_args = {_toml_str(kernel_args)}")
    if agent_lines:
        lines += ["", "[agent]", *agent_lines]
    text = "\n".join(lines) + "\n"
    settings_mod.parse(tomllib.loads(text), source=path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return LabConfig(path=path, state_dir=state_dir, http_port=http_port, dhcp=dhcp)


def agent_dir_of(config: LabConfig) -> Path:
    return settings_mod.load(config.path).agent_dir


def agent_missing(config: LabConfig) -> list[str]:
    directory = agent_dir_of(config)
    return [name for name in AGENT_ARTIFACTS if not (directory / name).is_file()]


def cli(args: list[str], config: LabConfig, *, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run `provisioner ARGS --config FILE` in the root namespace: the state
    commands only read the state dir and open no sockets."""
    return subprocess.run(
        [sys.executable, "-m", "provisioner", *args, "--config", str(config.path)],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def host_list(config: LabConfig) -> list[dict[str, Any]]:
    done = cli(["host", "list", "--json"], config)
    if done.returncode != 0:
        raise LabError(f"host list failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    data = json.loads(done.stdout)
    hosts = data.get("hosts", []) if isinstance(data, dict) else data
    return list(hosts)


def find_host(hosts: list[dict[str, Any]], mac: str) -> dict[str, Any] | None:
    mac = mac.lower()
    for host in hosts:
        macs = host.get("macs") or ([host["mac"]] if host.get("mac") else [])
        if mac in (m.lower() for m in macs):
            return host
    return None


class Appliance:
    """`provisioner serve` inside the lab namespace, logging to a file."""

    def __init__(self, lab: LabNetwork, config: LabConfig, log_path: Path) -> None:
        self.lab = lab
        self.config = config
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://{self.lab.ip}:{self.config.http_port}"

    def start(self, *, timeout: float = 60) -> None:
        if self.proc is not None:
            raise LabError("appliance already started")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as out:
            self.proc = self.lab.popen(
                [sys.executable, "-m", "provisioner", "serve", "--config", str(self.config.path)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.wait_healthy(timeout)

    def healthy(self) -> bool:
        # Asked from inside the namespace: the appliance binds there only.
        code, _ = self.lab.http_get(f"{self.url}/healthz", timeout=2)
        return code == 200

    def wait_healthy(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise LabError(
                    f"provisioner serve exited with {self.proc.returncode} before answering /healthz\n"
                    f"{self.log_tail()}"
                )
            if self.healthy():
                return
            time.sleep(0.5)
        raise LabError(f"provisioner serve: no 200 from {self.url}/healthz after {timeout:.0f}s\n{self.log_tail()}")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        return self.lab.stop(self.proc)

    def log_tail(self, lines: int = 40) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return "--- appliance log: none ---"
        return f"--- last {lines} lines of {self.log_path} ---\n" + "\n".join(text.splitlines()[-lines:])
