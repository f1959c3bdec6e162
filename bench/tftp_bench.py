"""TFTP benchmark: provisioner's TftpServer against dnsmasq's TFTP.

Run as root from the repository root:

    sudo .venv/bin/python bench/tftp_bench.py [--counts 1,10,50] [--losses 0,2] [--repeat 3]

Everything happens in two network namespaces created here with random names
(server and client, joined by a veth pair addressed 10.x inside them only);
no packet reaches the host's own interfaces. Both servers serve the same copy
of /usr/lib/ipxe/ipxe.efi; N curl clients (blksize 1468) fetch it at once.
The runs are repeated with random UDP loss added by nftables in the server
namespace (input and output each drop that percentage). Namespaces, the
temporary root and every process started here are removed in `finally`, also
on Ctrl-C or SIGTERM.

The script re-executes itself in two helper roles: `--serve` runs our server
in the main thread of its own process inside the server namespace, and
`--drive` runs the clients inside the client namespace (so no per-client
`ip netns exec` is timed) and prints their results as JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parent.parent
SOURCE_FILE = Path("/usr/lib/ipxe/ipxe.efi")
FILE_NAME = "ipxe.efi"
BLKSIZE = 1468
CLIENT_MAX_TIME = 120  # seconds; bounds every transfer, hence every run


@dataclasses.dataclass(frozen=True)
class RunResult:
    server: str
    loss: int
    clients: int
    seconds: float  # wall time from the first client start to the last end
    bytes_ok: int
    times: list[float]  # curl's time_total of each successful transfer
    failures: int
    cpu: float = 0.0  # CPU seconds the server used during the run

    @property
    def mb_per_s(self) -> float:
        return self.bytes_ok / self.seconds / 1e6 if self.seconds > 0 else 0.0

    def pct(self, q: float) -> float:
        if not self.times:
            return float("nan")
        ordered = sorted(self.times)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, check=True, capture_output=True, text=True, **kw)  # type: ignore[arg-type]


# --- helper roles ------------------------------------------------------------


def serve(root: Path, host: str) -> None:
    sys.path.insert(0, str(REPO))
    from provisioner.net.tftp import TftpServer

    logging.basicConfig(level=logging.WARNING)
    server = TftpServer(root, host=host, port=69, timeout=1)
    signal.signal(signal.SIGTERM, lambda *_: server.stop())
    server.serve_forever()


def drive(url: str, clients: int, size: int, fetches: int) -> None:
    """Start `clients` curl processes at once, each fetching `url` `fetches`
    times in a row; print one JSON document with every transfer's result."""
    results: list[list[dict]] = [[] for _ in range(clients)]
    starts = [0.0] * clients
    ends = [0.0] * clients

    def one(i: int) -> None:
        cmd = ["curl", "-sS", "--max-time", str(CLIENT_MAX_TIME), "--tftp-blksize", str(BLKSIZE),
               "-w", "%{size_download} %{time_total}\\n"]
        for _ in range(fetches):
            cmd += ["-o", "/dev/null", url]
        starts[i] = time.monotonic()
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        ends[i] = time.monotonic()
        for line in proc.stdout.splitlines():
            got, total = line.split()
            results[i].append({"ok": int(got) == size, "bytes": int(got), "time": float(total)})
        missing = fetches - sum(r["ok"] for r in results[i])
        if missing:
            results[i].append({"ok": False, "bytes": 0, "time": 0.0, "err": proc.stderr.strip()[-300:],
                               "missing": missing})

    threads = [threading.Thread(target=one, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    flat = [r for per_client in results for r in per_client]
    print(json.dumps({"seconds": max(ends) - min(starts), "results": flat}))


# --- the namespaces --------------------------------------------------------------


class Lab:
    """Two namespaces and a veth pair, all named with a random suffix."""

    def __init__(self) -> None:
        sfx = secrets.token_hex(3)
        self.srv_ns = f"tftpb-s-{sfx}"
        self.cli_ns = f"tftpb-c-{sfx}"
        self.srv_if = f"tbs{sfx}"
        self.cli_if = f"tbc{sfx}"
        third = secrets.randbelow(200) + 20
        self.srv_ip = f"10.251.{third}.1"
        self.cli_ip = f"10.251.{third}.2"
        self.created: list[str] = []

    def __enter__(self) -> Self:
        for ns in (self.srv_ns, self.cli_ns):
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
        # Both ends are created directly inside their namespaces; nothing is
        # ever attached to or addressed in the host namespace.
        run(["ip", "link", "add", self.srv_if, "netns", self.srv_ns, "type", "veth",
             "peer", "name", self.cli_if, "netns", self.cli_ns])
        for ns, ifname, ip in ((self.srv_ns, self.srv_if, self.srv_ip), (self.cli_ns, self.cli_if, self.cli_ip)):
            self.ns(ns, ["ip", "link", "set", "lo", "up"])
            self.ns(ns, ["ip", "addr", "add", f"{ip}/24", "dev", ifname])
            self.ns(ns, ["ip", "link", "set", ifname, "up"])
        return self

    def ns(self, ns: str, cmd: list[str], **kw: object) -> subprocess.CompletedProcess:
        return run(["ip", "netns", "exec", ns, *cmd], **kw)

    def set_loss(self, percent: int) -> None:
        if self._has_table():
            self.ns(self.srv_ns, ["nft", "delete", "table", "inet", "tftpbench"])
        if percent <= 0:
            return
        rules = f"""
table inet tftpbench {{
  chain input {{
    type filter hook input priority 0; policy accept;
    meta l4proto udp numgen random mod 100 < {percent} drop
  }}
  chain output {{
    type filter hook output priority 0; policy accept;
    meta l4proto udp numgen random mod 100 < {percent} drop
  }}
}}
"""
        self.ns(self.srv_ns, ["nft", "-f", "-"], input=rules)

    def _has_table(self) -> bool:
        out = run(["ip", "netns", "exec", self.srv_ns, "nft", "list", "tables"]).stdout
        return "tftpbench" in out

    def __exit__(self, *exc: object) -> None:
        for ns in reversed(self.created):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


class Server:
    """One TFTP server process inside the server namespace, ended by PID."""

    def __init__(self, lab: Lab, kind: str, root: Path):
        self.lab, self.kind, self.root = lab, kind, root
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open for the server's lifetime

    def __enter__(self) -> Self:
        if self.kind == "provisioner":
            cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(self.root), self.lab.srv_ip]
        else:
            cmd = ["/usr/sbin/dnsmasq", "--no-daemon", "--conf-file=/dev/null", "--port=0",
                   "--enable-tftp", f"--tftp-root={self.root}", f"--listen-address={self.lab.srv_ip}",
                   "--bind-interfaces", "--tftp-max=200", "--pid-file", "--log-facility=-"]
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.lab.srv_ns, *cmd],
                                     stdout=subprocess.DEVNULL, stderr=self.log)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # ready when a real download works
            if self.proc.poll() is not None:
                self.log.seek(0)
                raise RuntimeError(f"{self.kind} exited: {self.log.read().decode()[-500:]}")
            probe = subprocess.run(["ip", "netns", "exec", self.lab.cli_ns, "curl", "-s", "--max-time", "2",
                                    "-o", "/dev/null", f"tftp://{self.lab.srv_ip}/{FILE_NAME}"], check=False)
            if probe.returncode == 0:
                return self
            time.sleep(0.2)
        raise RuntimeError(f"{self.kind} did not answer within 10 s")

    def cpu_seconds(self) -> float:
        """User plus system CPU time the server has used so far."""
        assert self.proc is not None
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        self.log.close()
        if self.proc is None or self.proc.poll() is not None:
            return
        # ip netns exec execs the server, so this PID is the server itself.
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


def measure(lab: Lab, server: str, loss: int, clients: int, size: int, fetches: int) -> RunResult:
    url = f"tftp://{lab.srv_ip}/{FILE_NAME}"
    cmd = ["ip", "netns", "exec", lab.cli_ns, sys.executable, str(Path(__file__).resolve()),
           "--drive", url, str(clients), str(size), str(fetches)]
    # Its own process group, so an interrupted run ends its curl clients too.
    driver = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, _ = driver.communicate(timeout=CLIENT_MAX_TIME * fetches + 60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    data = json.loads(out)
    good = [r for r in data["results"] if r["ok"]]
    for r in data["results"]:
        if not r["ok"]:
            print(f"    failure: {r.get('err') or 'short file'}", file=sys.stderr)
    return RunResult(server, loss, clients, data["seconds"], sum(r["bytes"] for r in good),
                     [r["time"] for r in good], clients * fetches - len(good))


def merge(results: list[RunResult]) -> RunResult:
    """Median aggregate over repeats; percentiles over every transfer."""
    best = sorted(results, key=lambda r: r.mb_per_s)[len(results) // 2]
    times = [t for r in results for t in r.times]
    return RunResult(best.server, best.loss, best.clients, best.seconds, best.bytes_ok, times,
                     sum(r.failures for r in results), best.cpu)


def table(rows: list[tuple[RunResult, RunResult]]) -> str:
    def cells(r: RunResult) -> str:
        return f"{r.mb_per_s:>8.2f} {r.pct(0.5):>7.3f} {r.pct(0.99):>7.3f} {r.failures:>4} {r.cpu:>5.2f}"

    sub = f"{'MB/s':>8} {'p50 s':>7} {'p99 s':>7} {'fail':>4} {'cpu s':>5}"
    lines = [
        f"{'':>4} {'':>7} | {'provisioner (tftpy codec)':^36} | {'dnsmasq':^36} | ours/",
        f"{'loss':>4} {'clients':>7} | {sub} | {sub} | {'dnsmasq':>7}",
    ]
    lines.append("-" * len(lines[-1]))
    for ours, theirs in rows:
        ratio = ours.mb_per_s / theirs.mb_per_s if theirs.mb_per_s else float("nan")
        lines.append(f"{ours.loss:>3}% {ours.clients:>7} | {cells(ours)} | {cells(theirs)} | {ratio:>7.2f}")
    return "\n".join(lines)


def bench(args: argparse.Namespace) -> int:
    if os.geteuid() != 0:
        print("needs root (network namespaces): sudo .venv/bin/python bench/tftp_bench.py", file=sys.stderr)
        return 2
    for tool in ("ip", "nft", "curl", "/usr/sbin/dnsmasq"):
        if not shutil.which(tool):
            print(f"missing {tool}", file=sys.stderr)
            return 2
    counts = [int(c) for c in args.counts.split(",")]
    losses = [int(x) for x in args.losses.split(",")]
    size = SOURCE_FILE.stat().st_size
    root = Path(tempfile.mkdtemp(prefix="tftpbench-"))
    rows: list[tuple[RunResult, RunResult]] = []
    try:
        # dnsmasq drops privileges to nobody: the root must be world-readable.
        root.chmod(0o755)
        shutil.copyfile(SOURCE_FILE, root / FILE_NAME)
        (root / FILE_NAME).chmod(0o644)
        with Lab() as lab:
            print(f"namespaces {lab.srv_ns} ({lab.srv_ip}) <-> {lab.cli_ns} ({lab.cli_ip}); "
                  f"file {size} bytes; {os.cpu_count()} CPUs; load {os.getloadavg()[0]:.2f}", flush=True)
            for loss in losses:
                lab.set_loss(loss)
                for clients in counts:
                    collected: dict[str, list[RunResult]] = {"provisioner": [], "dnsmasq": []}
                    for rep in range(args.repeat if loss == 0 else args.loss_repeat):
                        # Alternate the servers so background load hits both alike.
                        for kind in ("provisioner", "dnsmasq") if rep % 2 == 0 else ("dnsmasq", "provisioner"):
                            lab.set_loss(0)  # the readiness probe runs loss-free
                            with Server(lab, kind, root) as server:
                                lab.set_loss(loss)
                                cpu = server.cpu_seconds()
                                fetches = args.fetches if loss == 0 else 1
                                result = measure(lab, kind, loss, clients, size, fetches)
                                result = dataclasses.replace(result, cpu=server.cpu_seconds() - cpu)
                            collected[kind].append(result)
                            print(f"  {kind:11} loss {loss}% clients {clients:2}: {result.mb_per_s:7.2f} MB/s "
                                  f"p50 {result.pct(0.5):.3f}s p99 {result.pct(0.99):.3f}s fail {result.failures} "
                                  f"server cpu {result.cpu:.2f}s", flush=True)
                    rows.append((merge(collected["provisioner"]), merge(collected["dnsmasq"])))
            lab.set_loss(0)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(table(rows))
    if args.json:
        Path(args.json).write_text(json.dumps([[o.__dict__, t.__dict__] for o, t in rows], indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--counts", default="1,10,50", help="parallel clients per run (default 1,10,50)")
    parser.add_argument("--losses", default="0,2", help="percent UDP loss each way, one pass per value (default 0,2)")
    parser.add_argument("--fetches", type=int, default=5,
                        help="downloads per client, one after the other, in loss-free runs (lossy runs: 1)")
    parser.add_argument("--repeat", type=int, default=3, help="repeats of each loss-free run (median kept)")
    parser.add_argument("--loss-repeat", type=int, default=1, help="repeats of each lossy run")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve", nargs=2, metavar=("ROOT", "HOST"), help=argparse.SUPPRESS)
    parser.add_argument("--drive", nargs=4, metavar=("URL", "N", "SIZE", "FETCHES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), args.serve[1])
        return 0
    if args.drive:
        drive(args.drive[0], int(args.drive[1]), int(args.drive[2]), int(args.drive[3]))
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    return bench(args)


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, through every `finally` and `__exit__`.
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
