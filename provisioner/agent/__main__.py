"""`python -m provisioner.agent OUT_DIR [--cache DIR]`: build the agent
without a settings file (the CLI's `provisioner agent build` uses
Settings.agent_dir and Settings.cache_dir instead)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from provisioner.agent.builder import BuildError, build_agent
from provisioner.agent.debs import PackageError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m provisioner.agent", description=__doc__)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--cache", type=Path, default=Path("/var/cache/provisioner"), help="where .debs are kept")
    args = parser.parse_args(argv)
    try:
        manifest = build_agent(args.out_dir, args.cache)
    except (BuildError, PackageError) as exc:
        print(f"agent build failed: {exc}", file=sys.stderr)
        return 1
    print(f"kernel {manifest.kernel_version}: {', '.join(a.name for a in manifest.artifacts)} in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
