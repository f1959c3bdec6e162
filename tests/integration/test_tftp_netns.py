"""The TFTP server bound to 0.0.0.0 answers from the address each request was
sent to (IP_PKTINFO). Runs inside a private network namespace with a veth
interface carrying two addresses, so nothing is bound on the host's
interfaces and no packet leaves the namespace."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2"),
]


@pytest.fixture
def netns() -> Iterator[tuple[str, str, str]]:
    sfx = secrets.token_hex(3)
    name = f"tftpt-{sfx}"
    third = secrets.randbelow(200) + 20
    primary, secondary = f"10.252.{third}.1", f"10.252.{third}.2"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        for cmd in (
            ["ip", "link", "set", "lo", "up"],
            # A veth pair with both ends inside the namespace (this kernel has
            # no dummy driver); only one end carries addresses.
            ["ip", "link", "add", "tva", "type", "veth", "peer", "name", "tvb"],
            ["ip", "addr", "add", f"{primary}/24", "dev", "tva"],
            ["ip", "addr", "add", f"{secondary}/24", "dev", "tva"],
            ["ip", "link", "set", "tva", "up"],
            ["ip", "link", "set", "tvb", "up"],
        ):
            subprocess.run(["ip", "netns", "exec", name, *cmd], check=True)
        yield name, primary, secondary
    finally:
        subprocess.run(["ip", "netns", "del", name], check=False)


SCRIPT = textwrap.dedent(
    """
    import json, socket, struct, sys, tempfile
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    from provisioner.net.tftp import TftpServer

    root = Path(tempfile.mkdtemp())
    (root / "f.bin").write_bytes(b"z" * 100)
    seen = {}
    with TftpServer(root, host="0.0.0.0", port=0) as srv:
        port = srv.address[1]
        for source, target in zip(sys.argv[2::2], sys.argv[3::2]):
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.bind((source, 0))
            sock.settimeout(3)
            sock.sendto(b"\\x00\\x01f.bin\\x00octet\\x00", (target, port))
            data, peer = sock.recvfrom(600)
            sock.sendto(struct.pack("!HH", 4, 1), peer)
            seen[target] = [peer[0], len(data)]
            sock.close()
    print(json.dumps(seen))
    """
)


def test_reply_comes_from_the_address_the_request_was_sent_to(netns: tuple[str, str, str]) -> None:
    name, primary, secondary = netns
    # (client source, server target) pairs. Without IP_PKTINFO the kernel would
    # answer the second and third from the client's own address, the
    # preferred source for that destination, and the client would see a
    # reply from an address it never asked.
    pairs = [primary, primary, primary, secondary, "127.0.0.1", "127.0.0.2"]
    result = subprocess.run(
        ["ip", "netns", "exec", name, sys.executable, "-c", SCRIPT, str(REPO), *pairs],
        capture_output=True, text=True, timeout=30, check=False,
    )
    assert result.returncode == 0, result.stderr
    seen = json.loads(result.stdout)
    assert seen == {primary: [primary, 104], secondary: [secondary, 104], "127.0.0.2": ["127.0.0.2", 104]}
