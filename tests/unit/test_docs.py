"""The README is checked: its settings example parses, every setting and CLI
command is in it, and the two commands it names exist."""

import argparse
import re
import tomllib
from pathlib import Path

from provisioner.cli import build_parser
from provisioner.settings import SCHEMA, parse

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def toml_example() -> str:
    return re.search(r"```toml\n(.*?)```", README, re.S).group(1)


def test_the_settings_example_is_valid_and_uncommented_it_names_every_key():
    parse(tomllib.loads(toml_example()))
    uncommented = re.sub(r"^# ?", "", toml_example(), flags=re.M)
    uncommented = "\n".join(l for l in uncommented.splitlines() if not re.match(r"^\s*[A-Za-z ]+:", l))
    doc = tomllib.loads(re.sub(r"\s+#[^\"\n]*$", "", uncommented, flags=re.M))
    for table, keys in SCHEMA.items():
        section = doc if table == "" else doc.get(table, {})
        for key in keys:
            assert key in section, f"README's settings example lacks {table + '.' if table else ''}{key}"


def commands(parser: argparse.ArgumentParser, prefix=()):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from commands(sub, prefix + (name,))
            return
    yield " ".join(prefix)


def test_every_cli_command_is_documented():
    for command in commands(build_parser()):
        assert f"`provisioner {command}" in README, f"README lacks `provisioner {command}`"


def test_the_two_commands_exist_and_ci_runs_the_test_command():
    assert "sudo ./scripts/lab" in README and "sudo ./scripts/test" in README
    assert (ROOT / "scripts" / "lab").exists() and (ROOT / "scripts" / "test").exists()
    assert "scripts/test" in (ROOT / ".ci" / "run").read_text()
