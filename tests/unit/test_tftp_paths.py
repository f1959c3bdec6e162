"""Path containment and option negotiation of the TFTP server, without sockets."""

from pathlib import Path

import pytest

from provisioner.net.tftp import MAX_BLKSIZE, _Refused, negotiate, resolve_in_root


@pytest.fixture
def root(tmp_path: Path) -> Path:
    base = tmp_path / "root"
    (base / "sub").mkdir(parents=True)
    (base / "ipxe.efi").write_bytes(b"x")
    (base / "sub" / "file").write_bytes(b"y")
    (base / "alias.efi").symlink_to("ipxe.efi")
    (base / "etc").symlink_to("/etc")
    (base / "up").symlink_to("..")
    (tmp_path / "secret").write_bytes(b"s")
    return base.resolve()


@pytest.mark.parametrize("name", ["ipxe.efi", "sub/file", "sub//file", "./ipxe.efi", "alias.efi"])
def test_names_inside_the_root_resolve(root: Path, name: str) -> None:
    resolved = resolve_in_root(root, name)
    assert root in resolved.parents
    assert resolved.is_file()


@pytest.mark.parametrize(
    "name",
    [
        "../secret",
        "sub/../../secret",
        "..",
        "/etc/passwd",
        "/ipxe.efi",
        "..\\secret",
        "sub\\file",
        "etc/passwd",  # symlink in the root pointing at /etc
        "up/secret",  # symlink in the root pointing at its parent
    ],
)
def test_names_escaping_the_root_are_access_violations(root: Path, name: str) -> None:
    with pytest.raises(_Refused) as caught:
        resolve_in_root(root, name)
    assert caught.value.code == 2


@pytest.mark.parametrize("name", ["", "ipxe.efi\x00../secret"])
def test_empty_or_nul_names_are_refused(root: Path, name: str) -> None:
    with pytest.raises(_Refused):
        resolve_in_root(root, name)


@pytest.mark.parametrize(
    ("options", "blksize", "oack"),
    [
        ({}, 512, {}),
        ({"blksize": "1468"}, 1468, {"blksize": "1468"}),
        ({"blksize": "1432"}, 1432, {"blksize": "1432"}),  # iPXE
        ({"blksize": "65464"}, MAX_BLKSIZE, {"blksize": str(MAX_BLKSIZE)}),
        ({"BLKSIZE": "1024"}, 1024, {"blksize": "1024"}),  # names are case-insensitive
        ({"blksize": "8"}, 8, {"blksize": "8"}),
        ({"blksize": "7"}, 512, {}),  # out of RFC 2348 range: ignored
        ({"blksize": "65465"}, 512, {}),
        ({"blksize": "abc"}, 512, {}),
        ({"tsize": "0"}, 512, {"tsize": "4242"}),
        ({"tsize": "0", "blksize": "1468"}, 1468, {"tsize": "4242", "blksize": "1468"}),
        ({"windowsize": "4", "blksize": "1468"}, 1468, {"blksize": "1468"}),  # newer EDK2
        ({"timeout": "1", "multicast": "", "x-unknown": "1"}, 512, {}),
    ],
)
def test_negotiate(options: dict[str, str], blksize: int, oack: dict[str, str]) -> None:
    assert negotiate(options, 4242) == (blksize, oack)
