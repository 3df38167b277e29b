"""Schema revisions: where the Alembic scripts live, the head revision, and upgrade.
The server refuses to start on a database that is not at the head revision.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory


def migrations_dir() -> Path:
    """The Alembic script folder (``migrations/`` of the checkout or the installed copy)."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent.parent / "migrations", here.parent / "_migrations"):
        if (candidate / "env.py").is_file():
            return candidate
    raise FileNotFoundError("dtr migrations folder not found")


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` (an async SQLAlchemy URL)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    """The newest revision the code expects."""
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    if head is None:
        raise RuntimeError("no migrations found")
    return head


def upgrade(url: str, revision: str = "head") -> None:
    """Upgrade the database at ``url`` (blocking; runs the async driver internally)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Downgrade the database at ``url`` to ``revision``."""
    command.downgrade(alembic_config(url), revision)
