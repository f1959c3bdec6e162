"""Validation of operator-supplied names and labels."""

import re

from netaddr import AddrFormatError, IPAddress

from provisioner.errors import InvalidInput

_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9_.-]{0,62})$")
_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.:/@+-]{0,128}$")


def check_host_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(
            f"host name {name!r}: use lower-case letters, digits and '-', at most 63, not starting or ending with '-'"
        )
    return name


def parse_label(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep:
        raise InvalidInput(f"label {text!r}: expected KEY=VALUE")
    if not _LABEL_KEY.match(key):
        raise InvalidInput(f"label key {key!r}: use lower-case letters, digits, '_', '.', '-'")
    if not _LABEL_VALUE.match(value):
        raise InvalidInput(f"label value {value!r}: letters, digits and _.:/@+- only, at most 128")
    return key, value


def default_host_name(mac: str) -> str:
    return "host-" + mac.replace(":", "")


def check_ipv4(text: str) -> str:
    try:
        addr = IPAddress(text)
    except (AddrFormatError, ValueError, TypeError):
        raise InvalidInput(f"{text!r} is not an IPv4 address") from None
    if addr.version != 4:
        raise InvalidInput(f"{text!r} is not an IPv4 address")
    return str(addr)
