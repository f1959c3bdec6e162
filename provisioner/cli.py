"""The command line: parse arguments, call the service layer, print.

Every command works on the state directory named by the settings file,
whether or not the daemon runs."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Sequence

from provisioner import __version__
from provisioner.errors import ConfigError, ProvisionerError
from provisioner.settings import DEFAULT_CONFIG, Settings, load


def _settings(args) -> Settings:
    return load(args.config)


def _service(args):
    from provisioner.db import open_db
    from provisioner.service import Service

    settings = _settings(args)
    return Service(settings, open_db(settings.db_path))


def _json(value) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def _size(n: int | None) -> str:
    if not n:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def _table(rows: list[list[str]], header: list[str], indent: str = "") -> None:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print(indent + "  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


# --- commands ---


def cmd_serve(args) -> int:
    from provisioner.daemon import run

    return run(_settings(args))


def cmd_config_check(args) -> int:
    from provisioner.settings import resolve_interface

    settings = _settings(args)
    info = resolve_interface(settings) if args.interface else None
    print(f"{args.config}: ok" + (f" ({info.name} {info.address}/{info.network.prefixlen})" if info else ""))
    return 0


def cmd_agent_build(args) -> int:
    from provisioner.agent.builder import build_agent

    settings = _settings(args)
    manifest = build_agent(settings.agent_dir, settings.cache_dir, log=lambda line: print(line, flush=True),
                           force=args.force)
    print(f"agent in {settings.agent_dir}: kernel {manifest.kernel_version}")
    return 0


def cmd_host_list(args) -> int:
    svc = _service(args)
    hosts = svc.list_hosts()
    if args.json:
        _json({"hosts": [svc.describe(h) for h in hosts]})
        return 0
    rows = []
    for h in hosts:
        hw = h.hardware
        lease = svc.describe(h)["lease"]
        rows.append([
            h.name,
            h.state,
            ",".join(h.macs),
            lease["ip"] if lease else (h.ip or "-"),
            ",".join(f"{k}={v}" for k, v in sorted(h.labels.items())) or "-",
            str(len(hw.get("disks", []))) if hw else "-",
            _size(hw.get("memory_bytes")) if hw else "-",
        ])
    _table(rows, ["NAME", "STATE", "MACS", "ADDRESS", "LABELS", "DISKS", "MEMORY"])
    return 0


def cmd_host_show(args) -> int:
    svc = _service(args)
    host = svc.get_host(args.ref)
    doc = svc.describe(host)
    if args.json:
        _json(doc)
        return 0
    hw = host.hardware
    print(f"name:     {host.name}")
    print(f"state:    {host.state}")
    print(f"macs:     {', '.join(host.macs)}")
    print(f"labels:   {', '.join(f'{k}={v}' for k, v in sorted(host.labels.items())) or '-'}")
    lease = doc["lease"]
    until = time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(lease["expires"])) if lease else ""
    print(f"address:  {lease['ip'] + ' (leased until ' + until + ')' if lease else '-'}"
          + (f", reserved {host.ip}" if host.ip else ""))
    if not hw:
        print("hardware: not discovered yet")
        return 0
    system = hw.get("system", {})
    cpu = hw.get("cpu", {})
    print(f"system:   {system.get('vendor') or '-'} {system.get('product') or '-'} "
          f"serial {system.get('serial') or '-'} uuid {system.get('uuid') or '-'}")
    print(f"firmware: {hw.get('firmware') or '-'}")
    print(f"cpu:      {cpu.get('count') or '-'} x {cpu.get('model') or '-'}")
    print(f"memory:   {_size(hw.get('memory_bytes'))}")
    print("disks:")
    _table(
        [[d["name"], _size(d.get("size_bytes")), d.get("serial") or "-", d.get("wwn") or "-", d.get("model") or "-",
          d.get("by_path") or "-", ",".join(d.get("signatures") or []) or "-"] for d in hw.get("disks", [])],
        ["NAME", "SIZE", "SERIAL", "WWN", "MODEL", "BY-PATH", "SIGNATURES"],
        indent="  ",
    )
    print("nics:")
    _table(
        [[n.get("name") or "-", n.get("mac") or "-", n.get("driver") or "-",
          {True: "up", False: "down"}.get(n.get("link"), "-")] for n in hw.get("nics", [])],
        ["NAME", "MAC", "DRIVER", "LINK"],
        indent="  ",
    )
    return 0


def cmd_host_add(args) -> int:
    svc = _service(args)
    host = svc.add_host(args.mac, args.name, args.label or [], ip=args.ip, image=args.image)
    print(f"added {host.name} ({', '.join(host.macs)})" + (f", address {host.ip} reserved" if host.ip else ""))
    return 0


def cmd_host_remove(args) -> int:
    host = _service(args).remove_host(args.ref)
    print(f"removed {host.name}")
    return 0


def cmd_events(args) -> int:
    svc = _service(args)
    events = svc.events(args.host, limit=args.limit)
    if args.json and not args.follow:
        _json({"events": [e.to_json() for e in events]})
        return 0
    last = 0
    while True:
        for e in events:
            if args.json:
                print(json.dumps(e.to_json(), sort_keys=True), flush=True)  # one object a line
            else:
                ts = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.ts))
                print(f"{ts}Z  {e.kind:<18} {e.host or e.mac or '-':<20} {e.message}", flush=True)
            last = max(last, e.id)
        if not args.follow:
            return 0
        time.sleep(1)
        events = svc.events(args.host, limit=1000, after_id=last)


def cmd_lab(args) -> int:
    from provisioner.lab.run import run_lab

    return run_lab(Path(args.workdir), log=lambda line: print(line, flush=True), keep=args.keep)


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", default=str(DEFAULT_CONFIG), metavar="FILE",
                        help=f"settings file (default {DEFAULT_CONFIG})")

    p = argparse.ArgumentParser(prog="provisioner", description="Bare-metal PXE provisioning appliance.")
    p.add_argument("--version", action="version", version=f"provisioner {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("serve", parents=[common], help="run the appliance: DHCP, TFTP and HTTP")
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("config", help="check a settings file")
    csub = s.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    c = csub.add_parser("check", parents=[common], help="validate the settings file")
    c.add_argument("--interface", action="store_true", help="also check the provisioning interface")
    c.set_defaults(func=cmd_config_check)

    s = sub.add_parser("agent", help="the discovery agent")
    asub = s.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    a = asub.add_parser("build", parents=[common], help="build the agent kernel and initrds from Debian packages")
    a.add_argument("--force", action="store_true", help="rebuild even when the inputs are unchanged")
    a.set_defaults(func=cmd_agent_build)

    s = sub.add_parser("host", help="hosts known to the appliance")
    hsub = s.add_subparsers(dest="host_command", required=True, metavar="ACTION")
    h = hsub.add_parser("list", parents=[common], help="list hosts")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_host_list)
    h = hsub.add_parser("show", parents=[common], help="show one host by name or MAC")
    h.add_argument("ref", metavar="NAME|MAC")
    h.add_argument("--json", action="store_true")
    h.set_defaults(func=cmd_host_show)
    h = hsub.add_parser("add", parents=[common], help="add a host by MAC")
    h.add_argument("mac", metavar="MAC")
    h.add_argument("--name", required=True)
    h.add_argument("--label", action="append", metavar="KEY=VALUE", help="repeatable")
    h.add_argument("--ip", metavar="ADDRESS", help="reserve this address for it (full DHCP mode)")
    h.add_argument("--image", metavar="NAME@VERSION|NAME@CHANNEL", help="what it should run")
    h.set_defaults(func=cmd_host_add)
    h = hsub.add_parser("remove", parents=[common], help="remove a host by name or MAC")
    h.add_argument("ref", metavar="NAME|MAC")
    h.set_defaults(func=cmd_host_remove)

    from provisioner.cli_images import add_commands

    add_commands(sub, common, hsub)

    s = sub.add_parser("events", parents=[common], help="the event log")
    s.add_argument("--host", metavar="NAME|MAC")
    s.add_argument("--limit", type=int, default=100, help="how many of the newest (1-1000)")
    s.add_argument("--json", action="store_true", help="JSON; with --follow, one object a line")
    s.add_argument("--follow", "-f", action="store_true", help="keep printing new events until Ctrl-C")
    s.set_defaults(func=cmd_events)

    s = sub.add_parser("lab", help="run the QEMU lab: a machine PXE-boots from the appliance and is discovered")
    s.add_argument("--workdir", default="/var/tmp/provisioner-lab", help="where the lab keeps its state and logs")
    s.add_argument("--keep", action="store_true", help="keep the lab running until Ctrl-C")
    s.set_defaults(func=cmd_lab)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    try:
        return args.func(args)
    except ConfigError as exc:
        print(f"provisioner: {exc.message}", file=sys.stderr)
        return 2
    except ProvisionerError as exc:
        print(f"provisioner: error: {exc.message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `provisioner image show ... | head`: the reader left; not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
