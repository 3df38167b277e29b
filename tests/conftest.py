"""Shared fixtures: an in-process dtr app on a temporary data folder."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from litestar.testing import TestClient

from dtr.app import create_app
from dtr.config import Settings, load_settings
from dtr.db.migrate import upgrade


def make_settings(data_dir: Path, **overrides: Any) -> Settings:
    """Settings for an embedded registry in ``data_dir`` (no environment read).

    Authentication is off unless ``auth={"enabled": True, ...}`` is passed: protocol tests
    exercise the OCI API itself; access-control tests switch it on.
    """
    tree: dict[str, Any] = {"server": {"data_dir": str(data_dir)},
                            "storage": {"filesystem": {"fsync": False}},
                            "auth": {"enabled": False}}
    for section, values in overrides.items():
        tree.setdefault(section, {}).update(values)
    settings = load_settings(env={}, overrides=tree)
    upgrade(settings.database_url)
    return settings


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient[Any]]:
    with TestClient(create_app(settings)) as c:
        yield c
