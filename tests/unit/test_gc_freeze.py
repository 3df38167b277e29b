"""A ``dtr serve`` worker freezes its start-up heap (``dtr.app._freeze_startup_heap``): the
objects alive once the app has started are moved out of the cyclic collector's reach, so
full collections no longer walk them during requests; apps built by tests do not.
Run in a fresh interpreter, so this test process's heap is left alone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import gc, os
from litestar.testing import TestClient
from dtr.app import app_factory, create_app
from dtr.config import resolved_settings
before = gc.get_freeze_count()
with TestClient(create_app(resolved_settings())):
    plain = gc.get_freeze_count()
with TestClient(app_factory()) as c:
    assert c.get("/v2/").status_code == 200
    served = gc.get_freeze_count()
print(before, plain, served)
"""


def test_worker_apps_freeze_their_start_up_heap(tmp_path: Path) -> None:
    env = {"DTR_SERVER_DATA_DIR": str(tmp_path), "DTR_AUTH_ENABLED": "false",
           "PATH": "/usr/bin:/bin"}
    subprocess.run([sys.executable, "-m", "dtr", "db", "upgrade"], env=env, check=True,
                   capture_output=True)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, check=True,
                         capture_output=True, text=True, timeout=120).stdout.split()
    before, plain, served = map(int, out[-3:])
    assert before == plain == 0
    assert served > 50_000
