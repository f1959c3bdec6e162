"""Artifact download benchmark: the appliance's HTTP server against nginx.

Run from the repository root (root is not needed; nothing leaves loopback):

    .venv/bin/python bench/artifact_bench.py [--size-mib 1024] [--clients 1,8,32] [--repeat 5]

One image is published into a throw-away state directory through the
service layer, as an import does (staging directory, Service.publish_image:
ingest, manifest, SQLite rows); its rootfs.squashfs is SIZE MiB of random
bytes. The appliance's real server
(create_app + make_server: waitress with SendfileChannel, `--threads` worker
threads, the daemon's default) runs in its own process on 127.0.0.1 and
serves it at GET /artifacts/sha256/<hex>. nginx, from a generated minimal
config (sendfile on, tcp_nopush on, `--nginx-workers` workers), serves a hard
link to the same blob at the same path, so both send the same bytes from the
same page cache. Both listen on free ports of 127.0.0.1 only.

1. Warm-up and check: one GET from each server, hashed on the client. Our
   first GET also makes the server sha256 the blob before it answers; that
   wait is reported and not part of any figure below.
2. Throughput: N curl processes (`-o /dev/null`) fetch the whole file at
   once; aggregate = bytes of complete 200 responses / wall time from the
   first client start to the last client end. Each (N, server) run is
   repeated `--repeat` times, the servers taking turns (ours first on even
   repeats, nginx first on odd ones), and the median aggregate is kept.
3. Range at the end of the file: `bytes=-1048576` (the last MiB) and
   `bytes=<size-4096>-` (the last 4 KiB), `--range-reps` times each, and
   `bytes=-268435456` (the last 256 MiB) a 25th as often, on a new
   connection per request and on one kept-alive connection, alternating
   servers request by request; p50/p99 of connect-to-last-byte (a Python
   http.client client, one request at a time; every body is checked against
   the file's tail).

The temporary tree and every process started here (servers, curl clients)
are removed or ended by PID in `finally`, also on Ctrl-C or SIGTERM.

The script re-executes itself in one helper role: `--serve` runs the
appliance's HTTP server in the main thread of its own process.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import http.client
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Self

REPO = Path(__file__).resolve().parent.parent
NGINX = "/usr/sbin/nginx"
HOST = "127.0.0.1"  # the only address this script ever uses
CLIENT_MAX_TIME = 300  # seconds; bounds every curl transfer, hence every run
TAIL_MIB = 1 << 20
TAIL_SMALL = 4096
TAIL_BIG = 256 << 20


# --- helper role ---------------------------------------------------------------


def serve(state_dir: Path, port: int, threads: int) -> None:
    """The appliance's HTTP server as `provisioner serve` runs it (minus
    DHCP/TFTP), until SIGTERM."""
    sys.path.insert(0, str(REPO))
    from provisioner.settings import parse
    from provisioner.web.app import create_app
    from provisioner.web.server import close_server, make_server, run_until_closed

    logging.basicConfig(level=logging.WARNING)
    settings = parse({"state_dir": str(state_dir), "network": {"interface": "lo", "dhcp": "proxy"}})
    server = make_server(create_app(settings), HOST, port, threads=threads)
    closing = threading.Event()

    def stop(*_: object) -> None:
        closing.set()
        close_server(server)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    run_until_closed(server, closing)


# --- the artifact ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Artifact:
    digest: str  # sha256 hex, as published
    size: int
    blob: Path  # the file in the image store
    tail: bytes  # its last MiB (or all of it, if smaller)

    @property
    def url_path(self) -> str:
        return f"/artifacts/sha256/{self.digest}"


def publish(state_dir: Path, size: int) -> Artifact:
    """Publish bench@1.0.0 into a fresh state directory with the service
    layer, as an import would; return its rootfs.squashfs blob."""
    sys.path.insert(0, str(REPO))
    from provisioner.db import open_db
    from provisioner.images.manifest import ImageManifest
    from provisioner.service import Service
    from provisioner.settings import parse

    settings = parse({"state_dir": str(state_dir), "network": {"interface": "lo", "dhcp": "proxy"}})
    svc = Service(settings, open_db(settings.db_path))
    block = 4 << 20
    h = hashlib.sha256()
    with svc.image_store().staging() as st:
        files = {"rootfs.squashfs": st.path / "rootfs.squashfs", "kernel": st.path / "kernel",
                 "modules.cpio": st.path / "modules.cpio"}
        with open(files["rootfs.squashfs"], "wb") as f:  # written out, not sparse
            left = size
            while left > 0:
                data = os.urandom(min(block, left))
                h.update(data)
                f.write(data)
                left -= len(data)
        files["kernel"].write_bytes(os.urandom(64 << 10))
        files["modules.cpio"].write_bytes(os.urandom(16 << 10))
        manifest = ImageManifest(name="bench", version="1.0.0", created=0, artifacts=(), kernel_version="x",
                                 source={"kind": "import", "sha256": "0" * 64})
        published = svc.publish_image(st, manifest, files, actor="bench")
    digest = published.manifest.artifact("rootfs.squashfs").sha256
    if digest != h.hexdigest():
        raise RuntimeError(f"published digest {digest} is not the written data's {h.hexdigest()}")
    blob = svc.image_store().path(digest)
    svc.db.conn.close()
    with open(blob, "rb") as f:
        f.seek(max(0, size - TAIL_MIB))
        tail = f.read()
    return Artifact(digest, size, blob, tail)


def cached(path: Path) -> str:
    """How much of the file is in the page cache, as fincore (util-linux)
    sees it."""
    if not shutil.which("fincore"):
        return "it was just written and read (fincore is missing, not checked)"
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=False).stdout.strip()
    try:
        return f"{int(out) / path.stat().st_size:.0%} of it is resident now (fincore)"
    except ValueError:
        return f"fincore said {out!r}"


# --- servers -------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def proc_cpu(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    out = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                ppid = int(Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
            if ppid == pid:
                out.append(int(entry.name))
    return out


class Server:
    """One server process (ours, or nginx's master), started here and ended
    by its PID (nginx's master ends its own workers)."""

    def __init__(self, name: str, cmd: list[str], port: int):
        self.name, self.cmd, self.port = name, cmd, port
        self.proc: subprocess.Popen | None = None
        self.log = tempfile.TemporaryFile()  # noqa: SIM115 - open for the server's lifetime

    def __enter__(self) -> Self:
        # Its own session, so nothing here gets the terminal's Ctrl-C before
        # we stop it in order.
        self.proc = subprocess.Popen(self.cmd, stdin=subprocess.DEVNULL, stdout=self.log, stderr=self.log,
                                     start_new_session=True)
        try:
            return self._wait_ready()
        except BaseException:
            self.__exit__()
            raise

    def _wait_ready(self) -> Self:
        assert self.proc is not None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited: {self.tail_log()}")
            try:
                conn = http.client.HTTPConnection(HOST, self.port, timeout=2)
                conn.request("HEAD", "/")
                conn.getresponse().read()
                conn.close()
                return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer within 20 s: {self.tail_log()}")

    def tail_log(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")[-800:]

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server and its worker processes."""
        assert self.proc is not None
        return proc_cpu(self.proc.pid) + sum(proc_cpu(c) for c in children(self.proc.pid))

    def __exit__(self, *exc: object) -> None:
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    # Only our own processes: nginx's workers are its master's
                    # children, in the session started above for it.
                    workers = children(self.proc.pid)
                    self.proc.kill()
                    for pid in workers:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    self.proc.wait(5)
        finally:
            self.log.close()


def ours(state_dir: Path, threads: int) -> Server:
    port = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--serve", str(state_dir), str(port), str(threads)]
    return Server("provisioner", cmd, port)


def nginx(root: Path, docroot: Path, workers: str) -> Server:
    port = free_port()
    prefix = root / "nginx"
    prefix.mkdir()
    conf = prefix / "nginx.conf"
    temps = "\n".join(f"    {kind}_temp_path {prefix / kind};" for kind in ("client_body", "proxy", "fastcgi",
                                                                           "uwsgi", "scgi"))
    conf.write_text(f"""daemon off;
master_process on;
worker_processes {workers};
pid {prefix / "nginx.pid"};
error_log {prefix / "error.log"} warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_timeout 65;
    types {{ }}
    default_type application/octet-stream;
{temps}
    server {{
        listen {HOST}:{port};
        root {docroot};
        location /artifacts/sha256/ {{
            add_header Cache-Control "public, max-age=31536000, immutable";
        }}
    }}
}}
""")
    return Server("nginx", [NGINX, "-p", str(prefix), "-c", str(conf), "-e", str(prefix / "error.log")], port)


# --- clients --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class RunResult:
    server: str
    clients: int
    seconds: float  # wall time from the first client start to the last end
    bytes_ok: int
    times: list[float]  # curl's time_total of each complete transfer
    failures: int
    cpu: float = 0.0  # CPU seconds the server (all its processes) used during the run

    @property
    def mb_per_s(self) -> float:
        return self.bytes_ok / self.seconds / 1e6 if self.seconds > 0 else 0.0


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def download(server: Server, art: Artifact, clients: int) -> RunResult:
    """`clients` curl processes fetch the whole artifact at once."""
    url = f"http://{HOST}:{server.port}{art.url_path}"
    cmd = ["curl", "-sS", "--max-time", str(CLIENT_MAX_TIME), "-o", "/dev/null",
           "-w", "%{http_code} %{size_download} %{time_total}", url]
    procs: list[subprocess.Popen] = []
    ends = [0.0] * clients
    outs: list[tuple[str, str]] = [("", "")] * clients

    def wait(i: int) -> None:
        outs[i] = procs[i].communicate()
        ends[i] = time.monotonic()

    cpu0 = server.cpu_seconds()
    try:
        start = time.monotonic()
        for _ in range(clients):
            procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        waiters = [threading.Thread(target=wait, args=(i,), daemon=True) for i in range(clients)]
        for t in waiters:
            t.start()
        for t in waiters:
            t.join()
    finally:
        for p in procs:  # only on an interrupt are any still running
            if p.poll() is None:
                p.kill()
                p.wait()
    cpu = server.cpu_seconds() - cpu0
    times, failures, good = [], 0, 0
    for out, err in outs:
        try:
            code, got, total = out.split()
        except ValueError:
            code, got, total = "000", "0", "0"
        if code == "200" and int(got) == art.size:
            good += 1
            times.append(float(total))
        else:
            failures += 1
            print(f"    failure from {server.name}: HTTP {code}, {got} of {art.size} bytes {err.strip()[-200:]}",
                  file=sys.stderr)
    return RunResult(server.name, clients, max(ends) - start, good * art.size, times, failures, cpu)


def checked_get(server: Server, art: Artifact) -> tuple[float, float]:
    """One full GET through curl, hashed here: (seconds to the first byte,
    seconds in all). Raises if the bytes are not the artifact's."""
    url = f"http://{HOST}:{server.port}{art.url_path}"
    proc = subprocess.Popen(["curl", "-sS", "--max-time", str(CLIENT_MAX_TIME), "-o", "-",
                             "-w", "%{stderr}%{http_code} %{time_starttransfer} %{time_total}", url],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        h, n = hashlib.sha256(), 0
        assert proc.stdout is not None
        while chunk := proc.stdout.read(4 << 20):
            h.update(chunk)
            n += len(chunk)
        err = proc.communicate(timeout=CLIENT_MAX_TIME)[1].decode(errors="replace").strip()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    code, ttfb, total = err.split()[-3:]
    if code != "200" or n != art.size or h.hexdigest() != art.digest:
        raise RuntimeError(f"{server.name}: GET gave HTTP {code}, {n} bytes, sha256 {h.hexdigest()}; "
                           f"expected {art.size} bytes, {art.digest}")
    return float(ttfb), float(total)


@dataclasses.dataclass
class RangeResult:
    label: str
    header: str
    keepalive: bool
    times: dict[str, list[float]]  # server name -> seconds per request
    failures: dict[str, int]


class RangeClient:
    """One request at a time; times connect (if new) to the last body byte."""

    def __init__(self, server: Server, keepalive: bool):
        self.server, self.keepalive = server, keepalive
        self.conn: http.client.HTTPConnection | None = None

    def get(self, path: str, header: str) -> tuple[float, int, str | None, bytes]:
        t0 = time.perf_counter()
        if self.conn is None:
            self.conn = http.client.HTTPConnection(HOST, self.server.port, timeout=30)
        self.conn.request("GET", path, headers={"Range": header})
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - t0
        if not self.keepalive or resp.will_close:
            self.close()
        return elapsed, resp.status, resp.getheader("Content-Range"), body

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def ranges(servers: list[Server], art: Artifact, reps: int) -> list[RangeResult]:
    small = min(TAIL_SMALL, art.size)
    big = min(TAIL_BIG, art.size)
    with open(art.blob, "rb") as f:
        f.seek(art.size - big)
        big_tail = f.read()
    # A large tail shows the sending rate from the end of the file, where
    # the small ones show the fixed cost per request; far fewer repetitions.
    cases = [
        (f"last {len(art.tail) >> 10} KiB", f"bytes=-{TAIL_MIB}", art.tail, reps),
        (f"last {small >> 10} KiB", f"bytes={art.size - small}-", art.tail[-small:], reps),
        (f"last {big >> 20} MiB", f"bytes=-{big}", big_tail, max(5, reps // 25)),
    ]
    results = []
    for keepalive in (False, True):
        for label, header, expect, reps in cases:
            want_cr = f"bytes {art.size - len(expect)}-{art.size - 1}/{art.size}"
            res = RangeResult(label, header, keepalive, {s.name: [] for s in servers},
                              {s.name: 0 for s in servers})
            clients = {s.name: RangeClient(s, keepalive) for s in servers}
            try:
                for _ in range(max(1, reps // 20)):  # warm-up, not recorded
                    for s in servers:
                        clients[s.name].get(art.url_path, header)
                for i in range(reps):
                    for s in (servers if i % 2 == 0 else servers[::-1]):
                        elapsed, status, cr, body = clients[s.name].get(art.url_path, header)
                        if status == 206 and cr == want_cr and body == expect:
                            res.times[s.name].append(elapsed)
                        else:
                            res.failures[s.name] += 1
                            print(f"    range failure from {s.name}: HTTP {status}, Content-Range {cr}, "
                                  f"{len(body)} bytes", file=sys.stderr)
            finally:
                for c in clients.values():
                    c.close()
            results.append(res)
    return results


# --- reporting -----------------------------------------------------------------------


def merge(results: list[RunResult]) -> RunResult:
    """Median aggregate over repeats; percentiles and failures over every
    transfer; CPU of the median run."""
    best = sorted(results, key=lambda r: r.mb_per_s)[len(results) // 2]
    return dataclasses.replace(best, times=[t for r in results for t in r.times],
                               failures=sum(r.failures for r in results))


def throughput_table(rows: list[tuple[RunResult, RunResult]]) -> str:
    def cells(r: RunResult) -> str:
        return f"{r.mb_per_s:>8.0f} {pct(r.times, 0.5):>7.2f} {pct(r.times, 0.99):>7.2f} {r.failures:>4} {r.cpu:>6.1f}"

    sub = f"{'MB/s':>8} {'p50 s':>7} {'p99 s':>7} {'fail':>4} {'cpu s':>6}"
    head = [
        f"{'':>7} | {'provisioner (waitress+sendfile)':^37} | {'nginx':^37} | ours/",
        f"{'clients':>7} | {sub} | {sub} | {'nginx':>6}",
    ]
    body = []
    for o, n in rows:
        ratio = o.mb_per_s / n.mb_per_s if n.mb_per_s else float("nan")
        body.append(f"{o.clients:>7} | {cells(o)} | {cells(n)} | {ratio:>6.2f}")
    return framed(head, body)


def range_table(results: list[RangeResult], names: tuple[str, str]) -> str:
    ours_n, theirs_n = names

    def cells(r: RangeResult, name: str) -> str:
        t = r.times[name]
        return f"{pct(t, 0.5) * 1e3:>7.3f} {pct(t, 0.99) * 1e3:>7.3f} {r.failures[name]:>4}"

    sub = f"{'p50 ms':>7} {'p99 ms':>7} {'fail':>4}"
    head = [
        f"{'':<32} | {'provisioner':^20} | {'nginx':^20} | ours/nginx",
        f"{'Range (connection)':<32} | {sub} | {sub} | {'p50':>4} {'p99':>5}",
    ]
    body = []
    for r in results:
        label = f"{r.header} ({'keep-alive' if r.keepalive else 'new'})"
        p50 = pct(r.times[ours_n], 0.5) / pct(r.times[theirs_n], 0.5)
        p99 = pct(r.times[ours_n], 0.99) / pct(r.times[theirs_n], 0.99)
        body.append(f"{label:<32} | {cells(r, ours_n)} | {cells(r, theirs_n)} | {p50:>4.2f} {p99:>5.2f}")
    return framed(head, body)


def framed(head: list[str], body: list[str]) -> str:
    """Header lines, a rule as wide as the last of them, then the rows."""
    return "\n".join([*head, "-" * len(head[-1]), *body])


# --- the run ---------------------------------------------------------------------------


def bench(args: argparse.Namespace) -> int:
    for tool in ("curl", NGINX):
        if not shutil.which(tool):
            print(f"missing {tool}", file=sys.stderr)
            return 2
    counts = [int(c) for c in args.clients.split(",")]
    size = args.size_mib << 20
    started = time.monotonic()
    load_start = os.getloadavg()[0]
    root = Path(tempfile.mkdtemp(prefix="artifactbench-"))
    try:
        # nginx's workers run as nobody when we are root: they need to reach
        # the hard link (the blob itself is 0444).
        root.chmod(0o755)
        state = root / "state"
        t0 = time.monotonic()
        art = publish(state, size)
        docroot = root / "www"
        (docroot / "artifacts" / "sha256").mkdir(parents=True)
        # Before either server starts: a link changes the inode's ctime,
        # which would make our server hash the blob again.
        os.link(art.blob, docroot / "artifacts" / "sha256" / art.digest)
        print(f"published bench@1.0.0 in {time.monotonic() - t0:.1f} s: rootfs.squashfs {size} bytes "
              f"sha256:{art.digest[:16]}...; {os.cpu_count()} CPUs; load {load_start:.2f}", flush=True)
        with ours(state, args.threads) as mine, nginx(root, docroot, args.nginx_workers) as theirs:
            servers = [mine, theirs]
            print(f"provisioner on {HOST}:{mine.port} (pid {mine.proc.pid}, {args.threads} threads), "
                  f"nginx on {HOST}:{theirs.port} (pid {theirs.proc.pid}, worker_processes {args.nginx_workers})",
                  flush=True)
            ttfb, total = checked_get(mine, art)
            print(f"warm-up: our first GET waited {ttfb:.2f} s for the server's sha256 of the blob "
                  f"(whole GET {total:.2f} s, excluded from every figure); bytes verified", flush=True)
            ttfb, total = checked_get(theirs, art)
            print(f"warm-up: nginx GET {total:.2f} s; bytes verified. From here on both send the file from "
                  f"the page cache: {cached(art.blob)}", flush=True)

            rows: list[tuple[RunResult, RunResult]] = []
            for clients in counts:
                collected: dict[str, list[RunResult]] = {mine.name: [], theirs.name: []}
                for rep in range(args.repeat):
                    for server in (servers if rep % 2 == 0 else servers[::-1]):
                        r = download(server, art, clients)
                        collected[server.name].append(r)
                        print(f"  {server.name:11} clients {clients:2}: {r.mb_per_s:6.0f} MB/s "
                              f"p50 {pct(r.times, 0.5):.2f}s p99 {pct(r.times, 0.99):.2f}s "
                              f"fail {r.failures} server cpu {r.cpu:.1f}s", flush=True)
                rows.append((merge(collected[mine.name]), merge(collected[theirs.name])))
            print(f"  Range requests: {args.range_reps} per case and server ...", flush=True)
            range_results = ranges(servers, art, args.range_reps)
            # Still the same bytes at the end (a cheap guard against a server
            # that went wrong halfway).
            checked_get(mine, art)
            checked_get(theirs, art)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print()
    print(f"Whole-file GET, {size >> 20} MiB from the page cache; aggregate = bytes of complete 200s / wall time; "
          f"median of {args.repeat}")
    print(throughput_table(rows))
    print()
    print(f"Range at the end of the file, {args.range_reps} requests each ({max(5, args.range_reps // 25)} for the"
          f" last {TAIL_BIG >> 20} MiB), connect to last byte")
    print(range_table(range_results, ("provisioner", "nginx")))
    print(f"\n(whole run {time.monotonic() - started:.0f} s; load average {load_start:.2f} when it started)")
    if args.json:
        doc = {
            "size": size, "digest": art.digest, "cpus": os.cpu_count(), "threads": args.threads,
            "load_start": load_start,
            "nginx_workers": args.nginx_workers, "repeat": args.repeat,
            "throughput": [{"ours": dataclasses.asdict(o), "nginx": dataclasses.asdict(n)} for o, n in rows],
            "ranges": [dataclasses.asdict(r) for r in range_results],
        }
        Path(args.json).write_text(json.dumps(doc, indent=1))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mib", type=int, default=1024, help="artifact size in MiB (default 1024)")
    parser.add_argument("--clients", default="1,8,32", help="parallel curl clients per run (default 1,8,32)")
    parser.add_argument("--repeat", type=int, default=5,
                        help="repeats of each run, servers alternating (median kept; default 5)")
    parser.add_argument("--range-reps", type=int, default=500, help="requests per Range case and server (default 500)")
    parser.add_argument("--threads", type=int, default=16,
                        help="our server's worker threads (default 16, the daemon's http.threads default)")
    parser.add_argument("--nginx-workers", default="auto", help="nginx worker_processes (default auto)")
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--serve", nargs=3, metavar=("STATE_DIR", "PORT", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), int(args.serve[1]), int(args.serve[2]))
        return 0
    if args.size_mib < 1 or args.repeat < 1 or args.range_reps < 1:
        parser.error("--size-mib, --repeat and --range-reps must be at least 1")
    signal.signal(signal.SIGTERM, _interrupt)
    return bench(args)


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM unwinds like Ctrl-C, through every `finally` and `__exit__`.
    raise KeyboardInterrupt


if __name__ == "__main__":
    sys.exit(main())
