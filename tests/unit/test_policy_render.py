from pathlib import Path

import pytest

from provisioner.core.policy import Discover, Exit, Hold, decide_boot
from provisioner.core.records import Host
from provisioner.core.render import BootContext, render_boot_script, render_chain_script

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "ipxe"


def host(state="discovered", hardware=None):
    return Host(id=1, name="rack1-n1", macs=("52:54:00:00:00:01",), state=state,
                hardware={"disks": []} if hardware is None else hardware)


@pytest.mark.parametrize(
    "scenario, record, expected",
    [
        ("unknown machine", None, Discover),
        ("added by hand, never inventoried", host(state="new", hardware={}), Discover),
        ("discovered, no profile", host(), Hold),
    ],
)
def test_decide_boot(scenario, record, expected):
    assert isinstance(decide_boot(record), expected), scenario


@pytest.mark.parametrize(
    "scenario, record, expected",
    [
        ("unknown machine", None, Exit),
        ("registered, never inventoried", host(state="new", hardware={}), Discover),
        ("discovered", host(), Hold),
    ],
)
def test_decide_boot_when_unknown_machines_are_ignored(scenario, record, expected):
    assert isinstance(decide_boot(record, discover_unknown=False), expected), scenario


CTX = BootContext(base="http://10.77.0.1:8080", mac="52:54:00:12:34:56", token="TOKEN",
                  agent_kernel_args="console=ttyS0,115200")


@pytest.mark.parametrize(
    "name, decision, ctx",
    [
        ("discover", Discover("unknown machine"), CTX),
        ("discover-last-attempt", Discover("unknown machine"), BootContext(**{**CTX.__dict__, "attempt": 5})),
        ("hold", Hold("host rack1-n1 is discovered and has no image to boot yet"), CTX),
        ("exit", Exit("unknown machine, and boot.unknown is ignore"), CTX),
    ],
)
def test_boot_scripts_match_golden_files(name, decision, ctx):
    text = render_boot_script(decision, ctx)
    assert text.startswith("#!ipxe\n")
    golden = GOLDEN / f"{name}.ipxe"
    assert text == golden.read_text(), f"regenerate {golden} if the change is intended"


def test_chain_script_matches_golden_file():
    assert render_chain_script("http://10.77.0.1:8080") == (GOLDEN / "chain.ipxe").read_text()


def test_discover_needs_a_token():
    with pytest.raises(ValueError):
        render_boot_script(Discover("x"), BootContext(base="http://b", mac="52:54:00:12:34:56"))
