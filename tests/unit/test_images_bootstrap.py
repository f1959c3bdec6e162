"""Debian roots: the host's mirror, the mmdebstrap call, cleaning a root, the
dpkg status. Fake trees and a fake mmdebstrap; nothing touches the network.

The real bootstrap of images/debian-12 runs with PROVISIONER_SLOW=1.
"""

from __future__ import annotations

import hashlib
import os
import stat
import tomllib
from pathlib import Path

import pytest

from provisioner.images import bootstrap as bs

REPO = Path(__file__).resolve().parents[2]

STATUS = """\
Package: base-files
Status: install ok installed
Priority: required
Version: 12.4+deb12u11
Description: Debian base system miscellaneous files
 This package contains the basic filesystem hierarchy.
 .
 Status: install ok installed is not a field here

Package: removed-but-configured
Status: deinstall ok config-files
Version: 1.0

Package: libc6
Status: install ok installed
Architecture: amd64
Multi-Arch: same
Version: 2.36-9+deb12u10
Depends: libgcc-s1

Package: half-installed
Status: install reinstreq half-installed
Version: 2.0

Package: systemd
Status: install ok installed
Version: 252.38-1~deb12u1
"""


def test_installed_packages_reads_only_installed_stanzas(tmp_path: Path) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(STATUS)
    assert bs.installed_packages(tmp_path) == {
        "base-files": "12.4+deb12u11",
        "libc6": "2.36-9+deb12u10",
        "systemd": "252.38-1~deb12u1",
    }


def test_installed_packages_without_dpkg_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(bs.BootstrapError, match="no dpkg status"):
        bs.installed_packages(tmp_path)


# --- the host's mirror -------------------------------------------------------------


def etc_apt(tmp_path: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return tmp_path


DEBIAN_SOURCES = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""


@pytest.mark.parametrize(
    "files, suite, mirror",
    [
        ("one-line sources.list", "bookworm", "http://ftp.de.debian.org/debian/"),
        ("deb822 sources", "bookworm", "http://deb.debian.org/debian"),
        ("deb-src and options first", "bookworm", "http://mirror.example/debian"),
        ("a disabled stanza", "bookworm", "http://second.example/debian"),
        ("security and third parties only match their own suite", "bookworm", "http://deb.debian.org/debian"),
        ("another release's host", "trixie", "http://deb.debian.org/debian"),
    ],
)
def test_host_mirror(tmp_path: Path, files: str, suite: str, mirror: str) -> None:
    layouts = {
        "one-line sources.list": {
            "sources.list": "# the installer's\ndeb http://ftp.de.debian.org/debian/ bookworm main contrib\n",
        },
        "deb822 sources": {
            "sources.list.d/debian.sources": DEBIAN_SOURCES,
            # apt ignores other suffixes, so must we
            "sources.list.d/aaa.list.disabled-by-farm": "deb http://nope.example/debian bookworm main\n",
        },
        "deb-src and options first": {
            "sources.list": (
                "deb-src http://src.example/debian bookworm main\n"
                "deb [arch=amd64 signed-by=/usr/share/keyrings/k.gpg] http://mirror.example/debian bookworm main\n"
            ),
        },
        "a disabled stanza": {
            "sources.list.d/a.sources": (
                "Types: deb deb-src\nURIs: http://first.example/debian\nSuites: bookworm\n"
                "Components: main\nEnabled: no\n\n"
                "Types: deb\nURIs: http://second.example/debian\nSuites: bookworm\nComponents: main\n"
                "Signed-By:\n -----BEGIN PGP PUBLIC KEY BLOCK-----\n .\n Suites: sid\n"
            ),
        },
        "security and third parties only match their own suite": {
            "sources.list": (
                "deb http://deb.debian.org/debian-security bookworm-security main\n"
                "deb https://packages.example.com/apt cloud-sdk-bookworm main\n"
            ),
            "sources.list.d/debian.sources": DEBIAN_SOURCES,
        },
        "another release's host": {
            "sources.list": "deb https://packages.example.com/apt nodistro main\n",
            "sources.list.d/debian.sources": DEBIAN_SOURCES,
        },
    }
    assert bs.host_mirror(suite, etc_apt(tmp_path, layouts[files])) == mirror


def test_no_mirror_is_one_line(tmp_path: Path) -> None:
    root = etc_apt(tmp_path, {"sources.list": "deb http://deb.debian.org/debian bookworm contrib\n"})
    with pytest.raises(bs.BootstrapError, match=r"no Debian mirror for bookworm main .*set \[base\] mirror"):
        bs.host_mirror("bookworm", root)


def test_deb822_sources_keep_every_uri() -> None:
    text = "Types: deb\nURIs: http://a.example/debian http://b.example/debian\nSuites: sid\nComponents: main contrib\n"
    assert bs.parse_deb822(text) == [
        bs.Source("http://a.example/debian", ("sid",), ("main", "contrib")),
        bs.Source("http://b.example/debian", ("sid",), ("main", "contrib")),
    ]


# --- the mmdebstrap call -------------------------------------------------------------


def command(**kw) -> list[str]:
    args = {
        "suite": "bookworm", "packages": ["systemd-sysv", "linux-image-amd64"], "variant": "apt",
        "mirror": "http://deb.debian.org/debian", "components": ["main"], "cache_dir": None,
    }
    args.update(kw)
    return bs.mmdebstrap_command(Path("/work/root"), **args)


def test_command_ends_with_suite_target_mirror() -> None:
    cmd = command(components=["main", "non-free-firmware"])
    assert cmd[:2] == ["mmdebstrap", "--mode=root"]
    assert "--variant=apt" in cmd and "--include=systemd-sysv,linux-image-amd64" in cmd
    assert "--components=main,non-free-firmware" in cmd
    assert cmd[-3:] == ["bookworm", "/work/root", "http://deb.debian.org/debian"]
    assert not any("var/cache/apt/archives" in arg for arg in cmd)


def test_cache_hooks_quote_the_cache_path() -> None:
    cmd = command(cache_dir=Path("/var/cache/provisioner test/debs"))
    assert "--skip=essential/unlink" in cmd
    hooks = [a for a in cmd if a.startswith(("--setup-hook=", "--customize-hook=")) and "debs" in a]
    assert len(hooks) == 2
    assert all("'/var/cache/provisioner test/debs'" in h for h in hooks)


@pytest.mark.parametrize("bad", ["a,b", "two words", "?priority(required)", "../x.deb", ""])
def test_package_names_that_mmdebstrap_would_split_are_refused(bad: str) -> None:
    with pytest.raises(bs.BootstrapError, match="not a package name"):
        command(packages=["systemd", bad])


def test_versions_and_suites_in_package_names_pass() -> None:
    cmd = command(packages=["systemd=252.38-1~deb12u1", "cloud-init/bookworm-backports", "libc6:amd64"])
    assert "--include=systemd=252.38-1~deb12u1,cloud-init/bookworm-backports,libc6:amd64" in cmd


def fake_mmdebstrap(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, script: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "mmdebstrap"
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return fake


def test_bootstrap_streams_output_and_passes_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mmdebstrap(
        tmp_path, monkeypatch,
        'echo "I: sde=$SOURCE_DATE_EPOCH initrd=$INITRD lc=$LC_ALL umask=$(umask)"\n'
        'echo "W: to stderr" >&2\n'
        'for a in "$@"; do echo "arg $a"; done\n',
    )
    lines: list[str] = []
    bs.bootstrap(tmp_path / "root", suite="bookworm", packages=["systemd"], mirror="http://m/debian", sde=1716163200, log=lines.append)
    assert lines[:2] == ["I: sde=1716163200 initrd=No lc=C.UTF-8 umask=0022", "W: to stderr"]
    assert lines[-3:] == ["arg bookworm", f"arg {tmp_path / 'root'}", "arg http://m/debian"]


def test_bootstrap_failure_names_mmdebstrap_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mmdebstrap(tmp_path, monkeypatch, 'echo "E: apt-get update failed"; echo "I: removing tempdir"; exit 1\n')
    with pytest.raises(bs.BootstrapError) as err:
        bs.bootstrap(tmp_path / "root", suite="bookworm", packages=[], mirror="http://m/debian", sde=0, log=lambda _l: None)
    assert str(err.value) == "mmdebstrap bookworm failed with status 1: E: apt-get update failed"


def test_bootstrap_refuses_a_non_empty_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake_mmdebstrap(tmp_path, monkeypatch, "exit 0\n")
    (tmp_path / "root").mkdir()
    (tmp_path / "root/etc").mkdir()
    with pytest.raises(bs.BootstrapError, match="not an empty directory"):
        bs.bootstrap(tmp_path / "root", suite="bookworm", packages=[], mirror="http://m/debian", sde=0)


# --- clean_root -------------------------------------------------------------------------


def make_tree(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_clean_root_removes_identity_and_build_leftovers(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root, {
        "etc/machine-id": "0123456789abcdef0123456789abcdef\n",
        "var/lib/dbus/machine-id": "0123456789abcdef0123456789abcdef\n",
        "etc/hostname": "buildhost\n",
        "etc/ssh/ssh_host_ed25519_key": "secret",
        "etc/ssh/ssh_host_ed25519_key.pub": "public",
        "etc/ssh/sshd_config": "kept",
        "etc/passwd": "root:x:0:0:root:/root:/bin/bash\n",
        "etc/passwd-": "old",
        "etc/shadow": "root:*:20418:0:99999:7:::\nnew:!:0:0:99999:7:::\nold:*:19000:0:99999:7:::\nsys:*::::::\n",
        "etc/shadow-": "old",
        "var/log/dpkg.log": "log",
        "var/log/apt/history.log": "log",
        "var/cache/apt/pkgcache.bin": "cache",
        "var/cache/apt/archives/systemd_252_amd64.deb": "deb",
        "var/cache/apt/archives/lock": "",
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease": "list",
        "var/lib/apt/lists/lock": "",
        "var/lib/apt/lists/partial/x": "partial",
        "var/lib/dpkg/status": STATUS,
        "var/lib/dpkg/status-old": STATUS,
        "var/cache/debconf/config.dat": "kept",
        "var/cache/debconf/config.dat-old": "old",
        "var/cache/ldconfig/aux-cache": "aux",
        "var/lib/systemd/random-seed": "seed",
        "var/lib/cloud/instance/obj.pkl": "state",
        "boot/vmlinuz-6.1.0-50-amd64": "kernel",
        "boot/initrd.img-6.1.0-50-amd64": "initrd",
        "tmp/build.txt": "tmp",
        "tmp/.hidden/x": "tmp",
        "var/tmp/y": "tmp",
        "run/lock/subsys/x": "run",
        "usr/lib/python3/dist-packages/cloudinit/__init__.py": "",
        "usr/lib/python3/dist-packages/cloudinit/__pycache__/__init__.cpython-311.pyc": "pyc",
        "usr/lib/python3.11/__pycache__/os.cpython-311.pyc": "pyc",
        "usr/lib/systemd/systemd-resolved": "",
        "etc/resolv.conf": "nameserver 10.0.0.1\n",
    })
    (root / "var/log/journal").mkdir()
    os.chmod(root / "etc/shadow", 0o640)
    sde = 1716163200  # day 19863

    bs.clean_root(root, sde)

    present = {str(p.relative_to(root)) for p in root.rglob("*")}
    for gone in (
        "etc/hostname", "etc/ssh/ssh_host_ed25519_key", "etc/ssh/ssh_host_ed25519_key.pub",
        "etc/passwd-", "etc/shadow-", "var/log/dpkg.log", "var/log/apt/history.log",
        "var/cache/apt/pkgcache.bin", "var/cache/apt/archives/systemd_252_amd64.deb",
        "var/lib/apt/lists/deb.debian.org_debian_dists_bookworm_InRelease", "var/lib/apt/lists/lock",
        "var/lib/apt/lists/partial/x", "var/lib/dpkg/status-old", "var/cache/debconf/config.dat-old",
        "var/cache/ldconfig/aux-cache", "var/lib/systemd/random-seed", "var/lib/cloud/instance",
        "boot/initrd.img-6.1.0-50-amd64", "tmp/build.txt", "tmp/.hidden", "var/tmp/y", "run/lock",
        "usr/lib/python3/dist-packages/cloudinit/__pycache__", "usr/lib/python3.11/__pycache__",
    ):
        assert gone not in present, gone
    for kept in (
        "etc/ssh/sshd_config", "etc/passwd", "var/lib/dpkg/status", "var/cache/debconf/config.dat",
        "var/cache/apt/archives/lock", "var/lib/apt/lists/partial", "var/log/apt", "var/log/journal",
        "boot/vmlinuz-6.1.0-50-amd64", "usr/lib/python3/dist-packages/cloudinit/__init__.py",
        "tmp", "var/tmp", "run",
    ):
        assert kept in present, kept

    machine_id = root / "etc/machine-id"
    assert machine_id.is_file() and not machine_id.is_symlink() and machine_id.read_bytes() == b""
    assert os.readlink(root / "var/lib/dbus/machine-id") == "/etc/machine-id"
    assert os.readlink(root / "etc/resolv.conf") == "../run/systemd/resolve/stub-resolv.conf"
    # Dates after SOURCE_DATE_EPOCH's day are clamped to it; 0 and empty mean something else.
    assert (root / "etc/shadow").read_text() == (
        "root:*:19863:0:99999:7:::\nnew:!:0:0:99999:7:::\nold:*:19000:0:99999:7:::\nsys:*::::::\n"
    )
    assert stat.S_IMODE((root / "etc/shadow").stat().st_mode) == 0o640


def test_clean_root_without_resolved_leaves_resolv_conf_to_the_image(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root, {"etc/resolv.conf": "nameserver 192.0.2.53\n", "etc/passwd": ""})
    bs.clean_root(root, 0)
    assert (root / "etc/resolv.conf").read_text() == "nameserver 192.0.2.53\n"
    assert not (root / "var/lib/dbus").exists()  # no dbus, no link
    assert (root / "etc/machine-id").read_bytes() == b""


def test_clean_root_never_follows_a_symlink_out_of_the_root(tmp_path: Path) -> None:
    host = tmp_path / "host"
    make_tree(host, {"tmp/precious": "host file", "log/syslog": "host log", "ssh/ssh_host_rsa_key": "host key"})
    root = tmp_path / "root"
    make_tree(root, {"etc/passwd": ""})
    # Absolute symlinks point into the root once booted, into the build host now.
    (root / "var").mkdir()
    (root / "var/tmp").symlink_to(host / "tmp")
    (root / "var/log").symlink_to(host / "log")
    (root / "tmp").symlink_to(host / "tmp")
    (root / "etc/ssh").symlink_to(host / "ssh")
    (root / "usr").symlink_to(host)
    bs.clean_root(root, 0)
    assert sorted(str(p.relative_to(host)) for p in host.rglob("*") if p.is_file()) == [
        "log/syslog", "ssh/ssh_host_rsa_key", "tmp/precious",
    ]


def test_clean_root_is_idempotent(tmp_path: Path) -> None:
    root = tmp_path / "root"
    make_tree(root, {"etc/passwd": "", "etc/shadow": "root:*:30000:0:99999:7:::\n", "var/lib/dbus/x": ""})
    bs.clean_root(root, 1716163200)
    first = tree_digest(root)
    bs.clean_root(root, 1716163200)
    assert tree_digest(root) == first


def test_clean_root_refuses_what_is_not_a_root(tmp_path: Path) -> None:
    with pytest.raises(bs.BootstrapError, match="not a root filesystem"):
        bs.clean_root(tmp_path, 0)


def tree_digest(root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        h.update(str(path.relative_to(root)).encode())
        if path.is_symlink():
            h.update(os.readlink(path).encode())
        elif path.is_file():
            h.update(path.read_bytes())
    return h.hexdigest()


# --- the real thing -------------------------------------------------------------------------


@pytest.mark.skipif(os.environ.get("PROVISIONER_SLOW") != "1", reason="set PROVISIONER_SLOW=1 (bootstraps Debian from a mirror)")
@pytest.mark.skipif(os.geteuid() != 0, reason="mmdebstrap's root mode needs root")
def test_debian_12_bootstraps_and_cleans(tmp_path: Path) -> None:
    definition = tomllib.loads((REPO / "images/debian-12/image.toml").read_text())
    root = tmp_path / "root"
    packages = [definition["packages"]["kernel"], *definition["packages"]["install"]]
    bs.bootstrap(
        root,
        suite=definition["base"]["suite"],
        packages=packages,
        variant=definition["base"].get("variant", "apt"),
        components=definition["base"].get("components", ["main"]),
        sde=1716163200,
        cache_dir=Path(os.environ.get("PROVISIONER_DEB_CACHE", "/var/cache/provisioner-test/debs")),
        log=lambda _line: None,
    )
    bs.clean_root(root, 1716163200)
    installed = bs.installed_packages(root)
    assert set(definition["packages"]["install"]) <= set(installed)
    assert not list(root.glob("etc/ssh/ssh_host_*"))
    assert (root / "etc/machine-id").read_bytes() == b""
    assert list(root.glob("boot/vmlinuz-*")) and not list(root.glob("boot/initrd.img-*"))
    assert not list(root.rglob("__pycache__"))
