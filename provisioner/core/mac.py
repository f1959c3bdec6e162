"""MAC addresses are parsed once, at the edge, into one canonical form:
lower-case, colon-separated (52:54:00:12:34:56)."""

from netaddr import EUI, AddrFormatError, mac_unix_expanded

from provisioner.errors import InvalidInput


def normalize_mac(value: str | bytes) -> str:
    """Accept colon, dash, dot or bare-hex forms (and 6 raw bytes)."""
    if isinstance(value, (bytes, bytearray)):
        if len(value) != 6:
            raise InvalidInput(f"a MAC address has 6 bytes, not {len(value)}")
        return ":".join(f"{b:02x}" for b in value)
    text = value.strip()
    try:
        eui = EUI(text, dialect=mac_unix_expanded)
    except (AddrFormatError, ValueError, TypeError):
        raise InvalidInput(f"{value!r} is not a MAC address") from None
    if eui.version != 48:
        raise InvalidInput(f"{value!r} is not a 48-bit MAC address")
    return str(eui).lower()


def mac_hexhyp(mac: str) -> str:
    """iPXE's ${mac:hexhyp} form, which is URL-safe."""
    return mac.replace(":", "-")
