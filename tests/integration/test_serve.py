"""``dtr serve`` as an operator runs it: an audit sink with an unusable file (a CA that is
not there) stops it before any worker starts, naming the sink; a worker that dies is
replaced and the registry keeps answering; a big blob comes back whole whether the worker
streams it or granian sends the file (pathsend), one pull at a time and several at once.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from tests.support.peers import dtr, dtr_env, dtr_server, free_port


def test_an_unusable_sink_file_stops_serve_before_the_workers(tmp_path: Path) -> None:
    config = tmp_path / "dtr.yaml"
    config.write_text("audit:\n  sinks:\n    - name: siem\n      type: syslog\n"
                      "      address: 127.0.0.1:6514\n      tls: true\n"
                      f"      ca_file: {tmp_path / 'missing-ca.pem'}\n")
    env = dtr_env(tmp_path / "data")
    dtr("db", "upgrade", env=env)
    done = subprocess.run([sys.executable, "-m", "dtr", "serve", "--config", str(config),
                           "--port", str(free_port())], check=False, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode != 0
    assert "audit.sinks.siem" in done.stderr
    assert "missing-ca.pem" in done.stderr
    assert "listening" not in done.stderr


def test_a_dead_worker_is_replaced(tmp_path: Path) -> None:
    with dtr_server(tmp_path / "data", workers=2) as srv:
        assert srv.proc is not None
        parent = psutil.Process(srv.proc.pid)

        def workers() -> set[int]:
            found = set()
            for child in parent.children():
                try:  # a killed worker is a zombie until granian reaps it
                    if (child.status() != psutil.STATUS_ZOMBIE
                            and "dtr.audit.relay" not in " ".join(child.cmdline())):
                        found.add(child.pid)
                except psutil.Error:
                    continue
            return found

        def listening(pid: int) -> bool:
            """The worker has its own listening socket on the port (granian gives each
            worker one, ``SO_REUSEPORT``)."""
            try:
                return any(c.status == psutil.CONN_LISTEN and c.laddr.port == srv.port
                           for c in psutil.Process(pid).net_connections("tcp"))
            except psutil.Error:
                return False

        before = workers()
        assert len(before) == 2
        victim = sorted(before)[0]
        psutil.Process(victim).send_signal(signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            now = workers()
            if len(now) == 2 and victim not in now and all(map(listening, now)):
                break
            time.sleep(0.2)
        assert len(now) == 2, now
        assert victim not in now
        assert all(map(listening, now)), "the new worker never listened"
        for _ in range(20):  # a new connection each time: either worker may take it
            assert httpx.get(f"{srv.url}/v2/", timeout=10).status_code == 200


def test_big_blobs_come_back_whole_whoever_sends_them(tmp_path: Path) -> None:
    size = 24 * 1024 * 1024 + 7  # above BlobSender's 16 MiB: the worker may stream it
    data = os.urandom(1024 * 1024) * 24 + b"tail!!!"
    assert len(data) == size
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with dtr_server(tmp_path / "data", workers=1) as srv:
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            r = c.post("/v2/big/blob/blobs/uploads/")
            assert r.status_code == 202
            r = c.put(r.headers["location"], params={"digest": digest}, content=data,
                      headers={"Content-Type": "application/octet-stream"})
            assert r.status_code == 201, r.text

        def pull(_: int) -> str:
            with httpx.Client(base_url=srv.url, timeout=60) as x:
                got = x.get(f"/v2/big/blob/blobs/{digest}")
            assert got.status_code == 200
            assert got.headers["content-length"] == str(size)
            return "sha256:" + hashlib.sha256(got.content).hexdigest()

        for i in range(3):  # one at a time: the idle worker streams each itself
            assert pull(i) == digest
        with concurrent.futures.ThreadPoolExecutor(4) as pool:  # one streamed, the rest
            assert list(pool.map(pull, range(8))) == [digest] * 8  # sent by granian
        with httpx.Client(base_url=srv.url, timeout=60) as c:
            part = c.get(f"/v2/big/blob/blobs/{digest}",
                         headers={"Range": f"bytes={size - 9}-{size - 1}"})
            assert part.status_code == 206
            assert part.content == data[-9:]
