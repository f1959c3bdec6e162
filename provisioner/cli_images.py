"""`provisioner image ...` and `provisioner host set`: parse, call the
service layer, print. Registered by provisioner.cli."""

from __future__ import annotations

import getpass
import os
import sys
import time
from pathlib import Path

from provisioner.images.progress import Progress


def _who(args) -> str:
    """Who moved a channel or published an image: --by, else the login
    behind sudo, else the user running the command."""
    if getattr(args, "by", None):
        return args.by
    return os.environ.get("SUDO_USER") or getpass.getuser()


def _svc(args):
    from provisioner.cli import _service

    return _service(args)


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime(ts))


def _published(args, result) -> int:
    from provisioner.cli import _json, _size

    row, manifest = result.image, result.manifest
    if args.json:
        _json({**manifest.to_json(), "digest": f"sha256:{row.digest}", "new": result.new})
        return 0
    what = "published" if result.new else "already published with the same content"
    print(f"{row.name}@{row.version} {what}: sha256:{row.digest}")
    for a in manifest.artifacts:
        print(f"  {a.name:<16} {_size(a.size):>10}  sha256:{a.sha256}")
    return 0


def cmd_image_build(args) -> int:
    from provisioner.images.build import STEPS, build_image

    svc = _svc(args)
    progress = Progress(len(STEPS), prefix="image: ")
    result = build_image(Path(args.definition), svc, cache_dir=svc.settings.cache_dir, progress=progress,
                         actor=_who(args))
    progress.done(f"built {result.image.name}@{result.image.version}")
    return _published(args, result)


def cmd_image_import(args) -> int:
    from provisioner.images.importer import STEPS, import_image

    svc = _svc(args)
    progress = Progress(len(STEPS), prefix="image: ")
    result = import_image(Path(args.path), svc, name=args.name, version=args.version,
                          kernel=Path(args.kernel) if args.kernel else None,
                          modules=Path(args.modules) if args.modules else None, progress=progress, actor=_who(args))
    progress.done(f"imported {result.image.name}@{result.image.version}")
    return _published(args, result)


def cmd_image_list(args) -> int:
    from provisioner.cli import _json, _size, _table

    rows = _svc(args).list_images(args.name)
    if args.json:
        _json({"images": rows})
        return 0
    _table(
        [[f"{r['name']}@{r['version']}", r["digest"][:19], _size(r["size"]), r["source"], r["created"].replace("T", " "),
          ",".join(r["channels"]) or "-"] for r in rows],
        ["IMAGE", "DIGEST", "SIZE", "SOURCE", "CREATED", "CHANNELS"],
    )
    return 0


def cmd_image_show(args) -> int:
    from provisioner.cli import _json, _size

    doc = _svc(args).show_image(args.ref)
    if args.json:
        _json(doc)
        return 0
    print(f"image:       {doc['name']}@{doc['version']}")
    print(f"digest:      {doc['digest']}")
    print(f"created:     {doc['created']}")
    print(f"published:   {_when(doc['published'])} by {doc['actor'] or '-'}")
    print(f"channels:    {', '.join(doc['channels']) or '-'}")
    print(f"source:      {', '.join(f'{k}={v}' for k, v in sorted(doc['source'].items()))}")
    print(f"kernel:      {doc['kernel_version']}")
    print(f"modules:     {len(doc['modules'])} in modules.cpio")
    print(f"packages:    {len(doc['packages'])}")
    print("artifacts:")
    for name, a in doc["artifacts"].items():
        print(f"  {name:<16} {_size(a['size']):>10}  sha256:{a['sha256']}")
    return 0


def cmd_image_verify(args) -> int:
    row, problems = _svc(args).verify_image(args.ref)
    for p in problems:
        print(f"{row.name}@{row.version}: {p}", file=sys.stderr)
    if problems:
        print(f"{row.name}@{row.version}: CORRUPT ({len(problems)} problems)", file=sys.stderr)
        return 1
    print(f"{row.name}@{row.version}: ok (sha256:{row.digest})")
    return 0


def cmd_image_remove(args) -> int:
    row = _svc(args).remove_image(args.ref, actor=_who(args))
    print(f"removed {row.name}@{row.version}; `provisioner image gc` frees its blobs")
    return 0


def cmd_image_gc(args) -> int:
    from provisioner.cli import _size

    result = _svc(args).gc_images(actor=_who(args))
    print(f"removed {len(result['blobs'])} blobs ({_size(result['bytes'])}) and "
          f"{len(result['staging'])} stale staging directories")
    return 0


def cmd_image_promote(args) -> int:
    moved = _svc(args).promote_image(args.ref, args.channel, actor=_who(args))
    print(f"{moved['name']}@{moved['label']}: {moved['from'] or '(new)'} -> {moved['to']}")
    return 0


def cmd_image_rollback(args) -> int:
    moved = _svc(args).rollback_channel(args.ref, actor=_who(args))
    print(f"{moved['name']}@{moved['label']}: {moved['from']} -> {moved['to']} (rolled back)")
    return 0


def cmd_image_channels(args) -> int:
    from provisioner.cli import _json, _table

    svc = _svc(args)
    if args.history:
        moves = svc.channel_history(args.history)
        if args.json:
            _json({"moves": moves})
            return 0
        _table([[_when(m["ts"]), m["from_version"] or "(new)", m["to_version"], m["actor"] or "-"] for m in moves],
               ["WHEN", "FROM", "TO", "BY"])
        return 0
    rows = svc.list_channels(args.name)
    if args.json:
        _json({"channels": rows})
        return 0
    _table([[f"{r['name']}@{r['label']}", r["version"], _when(r["updated"]), r["actor"] or "-"] for r in rows],
           ["CHANNEL", "VERSION", "MOVED", "BY"])
    return 0


def cmd_host_set(args) -> int:
    _svc(args).set_host_image(args.ref, args.image, actor=_who(args))
    print(f"{args.ref}: image {args.image or '(none)'}")
    return 0


def add_commands(sub, common, host_sub) -> None:
    s = sub.add_parser("image", help="versioned, immutable images: build, import, publish, serve")
    isub = s.add_subparsers(dest="image_command", required=True, metavar="ACTION")
    by = {"metavar": "WHO", "help": "who does this, for the event log (default: the invoking user)"}

    i = isub.add_parser("build", parents=[common], help="build and publish images/NAME (a definition directory)")
    i.add_argument("definition", metavar="DIR")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.add_argument("--by", **by)
    i.set_defaults(func=cmd_image_build)

    i = isub.add_parser("import", parents=[common],
                        help="publish a rootfs tarball, docker export, OCI/docker archive, directory or squashfs")
    i.add_argument("path", metavar="PATH")
    i.add_argument("--name", required=True)
    i.add_argument("--version", required=True)
    i.add_argument("--kernel", metavar="PATH", help="the kernel to boot it with, if the image has none")
    i.add_argument("--modules", metavar="DIR",
                   help="that kernel's lib/modules/VERSION, if neither the image nor the kernel's tree has it")
    i.add_argument("--json", action="store_true", help="print the manifest as JSON")
    i.add_argument("--by", **by)
    i.set_defaults(func=cmd_image_import)

    i = isub.add_parser("list", parents=[common], help="list published images")
    i.add_argument("name", nargs="?", metavar="NAME")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_image_list)

    i = isub.add_parser("show", parents=[common], help="show an image's manifest")
    i.add_argument("ref", metavar="NAME@VERSION|NAME@CHANNEL")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_image_show)

    i = isub.add_parser("verify", parents=[common], help="re-hash an image's blobs; non-zero exit on any mismatch")
    i.add_argument("ref", metavar="NAME@VERSION|NAME@CHANNEL")
    i.set_defaults(func=cmd_image_verify)

    i = isub.add_parser("remove", parents=[common], help="unpublish a version no host or channel uses")
    i.add_argument("ref", metavar="NAME@VERSION")
    i.add_argument("--by", **by)
    i.set_defaults(func=cmd_image_remove)

    i = isub.add_parser("gc", parents=[common], help="delete blobs no image refers to and stale staging")
    i.add_argument("--by", **by)
    i.set_defaults(func=cmd_image_gc)

    i = isub.add_parser("promote", parents=[common], help="point channel NAME@CHANNEL at a version")
    i.add_argument("ref", metavar="NAME@VERSION")
    i.add_argument("channel", metavar="CHANNEL", help="e.g. stable")
    i.add_argument("--by", **by)
    i.set_defaults(func=cmd_image_promote)

    i = isub.add_parser("rollback", parents=[common], help="move a channel back to its previous version")
    i.add_argument("ref", metavar="NAME@CHANNEL")
    i.add_argument("--by", **by)
    i.set_defaults(func=cmd_image_rollback)

    i = isub.add_parser("channels", parents=[common], help="list channels, or one channel's moves")
    i.add_argument("name", nargs="?", metavar="NAME")
    i.add_argument("--history", metavar="NAME@CHANNEL", help="every move of this channel, newest first")
    i.add_argument("--json", action="store_true")
    i.set_defaults(func=cmd_image_channels)

    h = host_sub.add_parser("set", parents=[common], help="set what a host should run")
    h.add_argument("ref", metavar="NAME|MAC")
    h.add_argument("--image", required=True, metavar="NAME@VERSION|NAME@CHANNEL", help='"" for none')
    h.add_argument("--by", **by)
    h.set_defaults(func=cmd_host_set)
