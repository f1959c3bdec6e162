"""A "site" DHCP server for ProxyDHCP scenarios: dnsmasq in the lab's site
namespace, handing out addresses and nothing about PXE, like an ordinary
office or datacentre DHCP server next to which the appliance runs in proxy
mode.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from provisioner.lab.netns import LabError, LabNetwork, SiteNetwork

DNSMASQ = "dnsmasq"


@dataclass(frozen=True)
class SiteDhcp:
    proc: subprocess.Popen
    log_path: Path
    leases_path: Path

    def leases(self) -> list[str]:
        """dnsmasq's lease lines: 'expiry mac ip hostname client-id'."""
        try:
            return [line for line in self.leases_path.read_text().splitlines() if line.strip()]
        except FileNotFoundError:
            return []


def start_site_dnsmasq(
    lab: LabNetwork,
    site: SiteNetwork,
    workdir: Path,
    *,
    first: str = "10.77.0.50",
    last: str = "10.77.0.99",
    netmask: str = "255.255.255.0",
    router: str | None = None,
    timeout: float = 10,
) -> SiteDhcp:
    """dnsmasq as a plain DHCP server on the site's interface: no DNS
    (port=0), no PXE options, its own lease file, logging to a file. The lab
    stops it at close()."""
    if shutil.which(DNSMASQ) is None:
        raise LabError("dnsmasq is not installed")
    workdir.mkdir(parents=True, exist_ok=True)
    leases = workdir / "dnsmasq.leases"
    log_path = workdir / "dnsmasq.log"
    argv = [
        DNSMASQ,
        "--keep-in-foreground",
        "--conf-file=/dev/null",  # ignore any system configuration
        "--port=0",
        f"--interface={site.interface}",
        "--bind-interfaces",
        f"--dhcp-range={first},{last},{netmask},1h",
        f"--dhcp-leasefile={leases}",
        "--dhcp-authoritative",
        "--log-dhcp",
        "--log-facility=-",  # stderr, captured in log_path
        "--pid-file=",  # no pid file: we hold the PID
        "--user=root",
    ]
    if router:
        argv.append(f"--dhcp-option=option:router,{router}")
    with open(log_path, "wb") as out:
        proc = lab.popen(argv, netns=site.netns, stdout=out, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace")
        if "DHCP, IP range" in text:
            return SiteDhcp(proc=proc, log_path=log_path, leases_path=leases)
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    raise LabError(f"site dnsmasq did not start:\n{log_path.read_text(errors='replace')[-1500:]}")
