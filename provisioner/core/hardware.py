"""Validation of the hardware facts an agent reports. Pure: a JSON value in,
a cleaned dict out, or InvalidInput naming the bad field."""

from __future__ import annotations

from typing import Any

from provisioner.core.mac import normalize_mac
from provisioner.errors import InvalidInput

_DISK_STR = ("name", "serial", "wwn", "model", "vendor", "by_path", "transport")
_DISK_BOOL = ("rotational", "removable", "readonly")
MAX_ITEMS = 256


def _opt_str(where: str, value: Any, limit: int = 512) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidInput(f"{where}: expected a string of at most {limit} characters")
    value = value.strip()
    return value or None


def _opt_int(where: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidInput(f"{where}: expected a non-negative integer")
    return value


def _opt_bool(where: str, value: Any) -> bool | None:
    if value is None:
        return None
    if not isinstance(value, bool):
        raise InvalidInput(f"{where}: expected true or false")
    return value


def _list(where: str, value: Any) -> list:
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > MAX_ITEMS:
        raise InvalidInput(f"{where}: expected a list of at most {MAX_ITEMS} items")
    return value


def _table(where: str, value: Any) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidInput(f"{where}: expected an object")
    return value


def clean_hardware(raw: Any) -> dict[str, Any]:
    hw = _table("hardware", raw)
    if raw is None:
        raise InvalidInput("hardware: missing")
    disks = []
    for i, d in enumerate(_list("hardware.disks", hw.get("disks"))):
        d = _table(f"hardware.disks[{i}]", d)
        disk: dict[str, Any] = {k: _opt_str(f"hardware.disks[{i}].{k}", d.get(k)) for k in _DISK_STR}
        if not disk["name"]:
            raise InvalidInput(f"hardware.disks[{i}].name: missing")
        disk["size_bytes"] = _opt_int(f"hardware.disks[{i}].size_bytes", d.get("size_bytes"))
        disk.update({k: _opt_bool(f"hardware.disks[{i}].{k}", d.get(k)) for k in _DISK_BOOL})
        sigs = _list(f"hardware.disks[{i}].signatures", d.get("signatures"))
        disk["signatures"] = [_opt_str(f"hardware.disks[{i}].signatures", s, 64) for s in sigs if s]
        disks.append(disk)
    nics = []
    for i, n in enumerate(_list("hardware.nics", hw.get("nics"))):
        n = _table(f"hardware.nics[{i}]", n)
        mac = _opt_str(f"hardware.nics[{i}].mac", n.get("mac"), 64)
        nics.append(
            {
                "name": _opt_str(f"hardware.nics[{i}].name", n.get("name"), 64),
                "mac": normalize_mac(mac) if mac else None,
                "driver": _opt_str(f"hardware.nics[{i}].driver", n.get("driver"), 64),
                "link": _opt_bool(f"hardware.nics[{i}].link", n.get("link")),
                "speed_mbps": _opt_int(f"hardware.nics[{i}].speed_mbps", n.get("speed_mbps")),
                "boot": _opt_bool(f"hardware.nics[{i}].boot", n.get("boot")),
            }
        )
    cpu = _table("hardware.cpu", hw.get("cpu"))
    system = _table("hardware.system", hw.get("system"))
    firmware = _opt_str("hardware.firmware", hw.get("firmware"), 16)
    if firmware not in (None, "bios", "uefi"):
        raise InvalidInput("hardware.firmware: expected \"bios\" or \"uefi\"")
    return {
        "disks": disks,
        "nics": nics,
        "memory_bytes": _opt_int("hardware.memory_bytes", hw.get("memory_bytes")),
        "cpu": {
            "count": _opt_int("hardware.cpu.count", cpu.get("count")),
            "model": _opt_str("hardware.cpu.model", cpu.get("model")),
        },
        "system": {k: _opt_str(f"hardware.system.{k}", system.get(k)) for k in ("uuid", "vendor", "product", "serial")},
        "firmware": firmware,
        "kernel": _opt_str("hardware.kernel", hw.get("kernel"), 128),
    }
