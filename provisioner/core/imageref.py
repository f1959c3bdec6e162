"""Image references: `name@version`, `name@label` (a channel) and
`sha256:<hex>`.

Versions start with a digit and channel labels with a letter, so a reference
is never ambiguous: `tiny@1.0.0` is a version, `tiny@stable` a channel.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from provisioner.errors import InvalidInput

_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}$")
_VERSION = re.compile(r"^[0-9][A-Za-z0-9._+~-]{0,63}$")
_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class ImageRef:
    name: str
    tag: str  # a version or a channel label

    @property
    def is_channel(self) -> bool:
        return not self.tag[:1].isdigit()

    def __str__(self) -> str:
        return f"{self.name}@{self.tag}"


def check_image_name(name: str) -> str:
    if not _NAME.match(name):
        raise InvalidInput(
            f"image name {name!r}: use lower-case letters, digits, '.', '_' and '-', at most 63, starting with a letter or digit"
        )
    return name


def check_version(version: str) -> str:
    if not _VERSION.match(version):
        raise InvalidInput(
            f"version {version!r}: must start with a digit (letters, digits and ._+~- after it, at most 64);"
            " names like 'stable' are channels"
        )
    return version


def check_label(label: str) -> str:
    if not _LABEL.match(label):
        raise InvalidInput(
            f"channel {label!r}: must start with a lower-case letter (letters, digits, '_' and '-', at most 32);"
            " names starting with a digit are versions"
        )
    return label


def parse_ref(text: str) -> ImageRef:
    """NAME@VERSION or NAME@LABEL; anything else is one clear error."""
    name, sep, tag = str(text).partition("@")
    if not sep or not tag:
        raise InvalidInput(f"image {text!r}: expected NAME@VERSION or NAME@CHANNEL, e.g. tiny@1.0.0 or tiny@stable")
    check_image_name(name)
    if tag[:1].isdigit():
        check_version(tag)
    else:
        check_label(tag)
    return ImageRef(name, tag)


def parse_digest(text: str) -> str | None:
    """The hex of `sha256:<hex>`, or None if text is not a digest reference."""
    m = _DIGEST.match(str(text))
    return m.group(1) if m else None
