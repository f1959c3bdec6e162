"""Fixtures shared by the image tests: images/tiny built once per session."""

from __future__ import annotations

import json

import pytest

from images_helpers import TINY, cli, make_state


@pytest.fixture(scope="session")
def tiny(tmp_path_factory):
    """images/tiny built once through the CLI: (settings path, the build's
    CompletedProcess, its manifest as printed by --json)."""
    config = make_state(tmp_path_factory.mktemp("tiny-a"))
    proc = cli(config, "image", "build", str(TINY), "--json")
    return config, proc, json.loads(proc.stdout)
