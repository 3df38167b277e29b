"""``docs/audit.md`` is product: the export checker it prints runs, unchanged, on a real
export of a registry that was used (pushes, a refused login, admin changes) and accepts it;
the same script refuses the export once one field of one line is changed; the configuration
examples load; every event action the page documents is one dtr records.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from litestar.testing import TestClient

from dtr.app import create_app
from dtr.config import load_settings
from tests.conftest import make_settings
from tests.support.http import basic
from tests.support.oci import OciClient

DOC = Path(__file__).resolve().parents[2] / "docs" / "audit.md"
ADMIN_PW = "doc-admin-password-1"


def checker() -> str:
    """The Python block after "Checking an export outside dtr"."""
    text = DOC.read_text()
    after = text.split("Checking an export outside dtr", 1)[1]
    return re.search(r"```python\n(.*?)```", after, re.S).group(1)  # type: ignore[union-attr]


@pytest.fixture
def used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[TestClient[Any]]:
    monkeypatch.setenv("DTR_ADMIN_PASSWORD", ADMIN_PW)
    settings = make_settings(tmp_path, auth={"enabled": True})
    with TestClient(create_app(settings)) as c:
        admin = basic("admin", ADMIN_PW)
        assert c.post("/api/v1/orgs", json={"name": "acme"}, headers=admin).status_code == 201
        assert c.post("/api/v1/users", json={"name": "bob", "password": "bob-password-1"},
                      headers=admin).status_code == 201
        assert c.get("/auth/token", params={"service": "testserver"},
                     headers=basic("bob", "wrong")).status_code == 401
        token = c.get("/auth/token", params={
            "service": "testserver", "scope": "repository:acme/app:pull,push"},
            headers=admin).json()["token"]
        c.headers["Authorization"] = f"Bearer {token}"
        oci = OciClient(c)
        body = oci.image("acme/app")
        assert oci.put_manifest("acme/app", "v1", body).status_code == 201
        del c.headers["Authorization"]
        c.blocking_portal.call(c.app.state.audit.flush)
        yield c


def run_checker(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", checker(), str(path)], capture_output=True,
                          text=True, check=False, timeout=60)


def test_the_documented_checker_accepts_an_export_and_refuses_a_changed_one(
        used: TestClient[Any], tmp_path: Path) -> None:
    r = used.get("/api/v1/audit/export", params={"format": "jsonl"},
                 headers=basic("admin", ADMIN_PW))
    assert r.status_code == 200, r.text
    lines = r.content.decode().splitlines()
    actions = {json.loads(line)["action"] for line in lines}
    assert {"config.loaded", "user.created", "org.created", "auth.login",
            "manifest.pushed", "tag.written"} <= actions
    export = tmp_path / "audit.jsonl"
    export.write_text("\n".join(lines) + "\n")
    ok = run_checker(export)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{len(lines)} events verified"

    for field, value in (("actor", "mallory"), ("outcome", "allow")):
        changed = [json.loads(line) for line in lines]
        victim = next(e for e in changed if e[field] != value)
        victim[field] = value
        export.write_text("".join(json.dumps(e) + "\n" for e in changed))
        bad = run_checker(export)
        assert bad.returncode != 0
        assert f"event {victim['seq']}: its fields do not match its hash" in bad.stderr


def test_the_configuration_examples_load() -> None:
    blocks = re.findall(r"```yaml\n(.*?)```", DOC.read_text(), re.S)
    assert blocks
    for block in blocks:
        tree = yaml.safe_load(block)
        if isinstance(tree, dict) and "audit" in tree:
            load_settings(env={}, overrides=tree)


def test_every_documented_action_is_one_dtr_records() -> None:
    """Each action in the reference tables appears in dtr's source as a string."""
    source = "\n".join(p.read_text() for p in
                       (Path(__file__).resolve().parents[2] / "dtr").rglob("*.py"))
    documented = set(re.findall(r"^\| `([a-z]+(?:\.[a-z_]+)+)`", DOC.read_text(), re.M))
    assert len(documented) > 30
    missing = sorted(a for a in documented
                     if f'"{a}"' not in source and f"'{a}'" not in source
                     and f'"{a.rsplit(".", 1)[0]}.' not in source)
    assert not missing, f"documented but never recorded: {missing}"
