"""The .deb cache: reuse, offline fallback, kernel metapackage resolution.

apt is replaced by fakes; nothing here touches the network.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from provisioner.agent import debs


def cache_with(tmp_path: Path, names: list[str], records: dict[str, dict[str, str]]) -> debs.DebCache:
    cache = debs.DebCache(tmp_path, log=lambda _msg: None)
    for name in names:
        (cache.dir / name).write_bytes(b"")
    cache._show_many = lambda pkgs: {p: records[p] for p in pkgs if p in records}  # type: ignore[method-assign]
    cache._updated = True  # never run apt-get update in these tests

    def no_download(package: str, version: str) -> debs.Deb:
        raise AssertionError(f"unexpected download of {package} {version}")

    cache._download = no_download  # type: ignore[method-assign]
    return cache


def test_cached_candidate_is_not_downloaded_again(tmp_path: Path) -> None:
    cache = cache_with(
        tmp_path,
        ["busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"],
        {"busybox-static": {"Version": "1:1.35.0-4+deb12u1+b1"}},
    )
    deb = cache.get("busybox-static")
    assert deb.version == "1:1.35.0-4+deb12u1+b1"
    assert deb.path.name == "busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"


def test_new_candidate_is_downloaded(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, ["kmod_29-1_amd64.deb"], {"kmod": {"Version": "30-1"}})
    with pytest.raises(AssertionError, match="unexpected download of kmod 30-1"):
        cache.get("kmod")


def test_offline_uses_newest_cached(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, ["kmod_30-1_amd64.deb", "kmod_30-1+b2_amd64.deb", "kmod_29-9_amd64.deb"], {})
    assert cache.get("kmod").version == "30-1+b2"


def test_offline_without_cache_is_a_clear_error(tmp_path: Path) -> None:
    cache = cache_with(tmp_path, [], {})
    with pytest.raises(debs.PackageError, match="kmod"):
        cache.get("kmod")


def test_kernel_metapackage_resolves_to_the_real_package(tmp_path: Path) -> None:
    cache = cache_with(
        tmp_path, [], {"linux-image-amd64": {"Version": "6.1.192-2", "Depends": "linux-image-6.1.0-56-amd64 (= 6.1.192-2)"}}
    )
    assert cache.resolve_kernel("linux-image-amd64") == "linux-image-6.1.0-56-amd64"


def test_kernel_offline_picks_numerically_newest(tmp_path: Path) -> None:
    cache = cache_with(
        tmp_path,
        ["linux-image-6.1.0-9-amd64_6.1.27-1_amd64.deb", "linux-image-6.1.0-56-amd64_6.1.192-2_amd64.deb",
         "linux-image-6.1.0-56-cloud-amd64_6.1.192-2_amd64.deb"],
        {},
    )  # fmt: skip
    assert cache.resolve_kernel("linux-image-amd64") == "linux-image-6.1.0-56-amd64"


APT_CACHE_SHOW = """\
Package: kmod
Version: 30+20221128-1
Depends: libc6 (>= 2.34), liblzma5 (>= 5.1.1alpha+20120614)
Description: tools for managing Linux kernel modules
 This package contains a set of programs for loading, inserting, and
 Version: not-a-field

Package: libc6
Version: 2.36-9+deb12u14
Filename: pool/main/g/glibc/libc6_2.36-9+deb12u14_amd64.deb

"""


def test_one_apt_cache_call_for_many_packages(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[list[str]] = []

    def fake_run(cmd: list[str], **_kw: object) -> subprocess.CompletedProcess[str]:
        calls.append(cmd)
        # apt-cache exits 100 when one name is unknown but still prints the rest.
        return subprocess.CompletedProcess(cmd, 100, APT_CACHE_SHOW, "E: No packages found")

    monkeypatch.setattr(debs, "_run", fake_run)
    cache = debs.DebCache(tmp_path, log=lambda _msg: None)
    cache._updated = True
    cache.prefetch(["kmod", "libc6", "no-such-package"])
    assert cache.candidate("kmod")["Version"] == "30+20221128-1"
    assert cache.candidate("libc6")["Version"] == "2.36-9+deb12u14"
    assert len(calls) == 1
