"""Shared by the image integration tests: a state directory with settings,
the package cache, and a service on it."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioner.db import open_db
from provisioner.service import Service
from provisioner.settings import load

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "images" / "tiny"


def package_cache() -> Path:
    cache = Path(os.environ.get("PROVISIONER_TEST_CACHE", "/var/cache/provisioner-test"))
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError:
        pytest.skip(f"cannot create the package cache {cache}; set PROVISIONER_TEST_CACHE")
    return cache


def make_state(base: Path) -> Path:
    """A settings file whose state directory shares the test package cache;
    returns the settings path."""
    state = base / "state"
    state.mkdir(parents=True)
    (state / "cache").symlink_to(package_cache())
    config = base / "provisioner.toml"
    config.write_text(f'state_dir = "{state}"\n[network]\ninterface = "lo"\ndhcp = "proxy"\n')
    return config


def service(config: Path) -> Service:
    settings = load(config)
    return Service(settings, open_db(settings.db_path))


def cli(config: Path, *args: str, check: bool = True, **kw) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "provisioner", *args, "--config", str(config)],
                          capture_output=True, text=True, cwd=ROOT, **kw)
    if check and proc.returncode != 0:
        raise AssertionError(f"provisioner {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def flip_bit(path: Path, offset: int, mask: int = 0x01) -> None:
    """Corrupt one bit of a (read-only) store blob in place."""
    os.chmod(path, 0o644)
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ mask]))


@contextlib.contextmanager
def running(app, port: int = 0, threads: int = 4):
    """The appliance's HTTP server (waitress, sendfile, the blob fast path)
    for `app` on loopback, for as long as the block runs; yields it."""
    from provisioner.web.server import close_server, make_server, run_until_closed

    srv = make_server(app, "127.0.0.1", port, threads=threads)
    closing = threading.Event()
    thread = threading.Thread(target=run_until_closed, args=(srv, closing), daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        closing.set()
        close_server(srv)
        thread.join(5)


@contextlib.contextmanager
def serving(settings) -> Iterator[int]:
    """The appliance's app on a free loopback port; yields the port."""
    from provisioner.web.app import create_app

    with running(create_app(settings)) as srv:
        yield srv.socket.getsockname()[1]
