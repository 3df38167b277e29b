"""Docs are product: generated reference tables are current, every CLI command is
documented, and every YAML example in docs/ is a valid configuration."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
import yaml

from dtr import docgen
from dtr.cli import main
from dtr.config import load_settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def test_generated_docs_are_current() -> None:
    for path, text in docgen.expected().items():
        assert path.read_text() == text, f"{path.name} is stale: run python -m dtr.docgen"


def _commands(group: click.Group, prefix: str = "dtr") -> list[str]:
    out = []
    for name, cmd in group.commands.items():
        full = f"{prefix} {name}"
        if isinstance(cmd, click.Group):
            out += _commands(cmd, full)
        else:
            out.append(full)
    return out


def test_every_cli_command_is_documented() -> None:
    text = (DOCS / "cli.md").read_text()
    commands = _commands(main)
    assert "dtr serve" in commands
    for command in commands:
        assert f"## `{command}" in text, f"{command} missing from docs/cli.md"


def _yaml_examples() -> list[tuple[str, str]]:
    return [(doc.name, block) for doc in sorted(DOCS.glob("*.md"))
            for block in re.findall(r"```yaml\n(.*?)```", doc.read_text(), re.S)]


@pytest.mark.parametrize(("doc", "block"), _yaml_examples())
def test_yaml_examples_are_valid_configs(tmp_path: Path, doc: str, block: str) -> None:
    path = tmp_path / "config.yml"
    path.write_text(block)
    settings = load_settings(path, env={})
    assert yaml.safe_load(block)
    assert settings.server.port > 0
