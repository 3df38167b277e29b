"""A real CloudEvents webhook receiver for tests, run as its own process.

As a script (``python -P tests/support/webhook_receiver.py --port P --out FILE …``; ``-P``
keeps ``tests/support/http.py`` from shadowing the standard library) it serves
HTTP (or HTTPS with ``--cert``/``--key``) on 127.0.0.1 and appends every accepted CloudEvent
to ``FILE`` as one JSON line ``{"headers": {...}, "event": {...}}``. It answers 500 to the
first ``--fail-first K`` POSTs and to the first POST of each event ``--fail-seq S,…`` (to
exercise retries), 401 when ``--token`` or
``--hmac-secret`` is set and the request does not carry it, 415 to anything but a
structured-mode CloudEvent, and 204 otherwise. ``GET /health`` answers 200.

As a module, :class:`WebhookReceiver` starts, kills and restarts that process on one port.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

CONTENT_TYPE = "application/cloudevents+json"


# -- the receiving process ---------------------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    lock = threading.Lock()
    failures_left = [args.fail_first]
    fail_once = {int(seq) for seq in args.fail_seq.split(",") if seq}
    out = Path(args.out)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *a: Any) -> None:
            return

        def _answer(self, status: int, body: bytes = b"") -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            self._answer(200 if self.path == "/health" else 404, b"ok")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if args.token and self.headers.get("Authorization") != f"Bearer {args.token}":
                return self._answer(401, b"bad token")
            if args.hmac_secret:
                want = "sha256=" + hmac.new(args.hmac_secret.encode(), body,
                                            hashlib.sha256).hexdigest()
                if not hmac.compare_digest(want, self.headers.get("X-Dtr-Signature", "")):
                    return self._answer(401, b"bad signature")
            if not self.headers.get("Content-Type", "").startswith(CONTENT_TYPE):
                return self._answer(415, b"not a structured-mode CloudEvent")
            with lock:
                if failures_left[0] > 0:
                    failures_left[0] -= 1
                    return self._answer(500, b"failing on purpose")
                event = json.loads(body)
                if event["data"]["seq"] in fail_once:
                    fail_once.discard(event["data"]["seq"])
                    return self._answer(500, b"failing this event once")
                headers = {k.lower(): v for k, v in self.headers.items()}
                with out.open("a") as f:
                    f.write(json.dumps({"headers": headers, "event": event}) + "\n")
                    f.flush()
                    os.fsync(f.fileno())
            return self._answer(204)

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    if args.cert:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(args.cert, args.key)
        if args.client_ca:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(args.client_ca)
        server.socket = ctx.wrap_socket(server.socket, server_side=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    server.serve_forever()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--fail-first", type=int, default=0)
    parser.add_argument("--fail-seq", default="")
    parser.add_argument("--token", default="")
    parser.add_argument("--hmac-secret", default="")
    parser.add_argument("--cert", default="")
    parser.add_argument("--key", default="")
    parser.add_argument("--client-ca", default="")
    serve(parser.parse_args())


# -- the test side -----------------------------------------------------------------------------


class WebhookReceiver:
    """Runs this file as a separate process on a fixed port (kept across restarts).

    Args:
        folder: where the output and log files go.
        cert, key: serve HTTPS with this certificate.
        client_ca: with ``cert``: require a client certificate issued by this CA.
        token, hmac_secret: require this bearer token / signature key.
    """

    def __init__(self, folder: Path, *, cert: Path | None = None, key: Path | None = None,
                 client_ca: Path | None = None, token: str = "",
                 hmac_secret: str = "") -> None:
        from tests.support.peers import free_port  # noqa: PLC0415 - not in the server

        folder.mkdir(parents=True, exist_ok=True)
        self.folder = folder
        self.port = free_port()
        self.out = folder / "received.jsonl"
        self.log = folder / "receiver.log"
        self.options = [f"--token={token}", f"--hmac-secret={hmac_secret}"]
        if cert is not None:
            self.options += [f"--cert={cert}", f"--key={key}"]
        if client_ca is not None:
            self.options.append(f"--client-ca={client_ca}")
        self.tls = cert is not None
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where to POST (``https://localhost:<port>/events`` with TLS)."""
        if self.tls:
            return f"https://localhost:{self.port}/events"
        return f"http://127.0.0.1:{self.port}/events"

    def start(self, *, fail_first: int = 0, fail_seq: tuple[int, ...] = (),
              timeout: float = 30.0) -> None:
        """Start the process (answering 500 to its first ``fail_first`` POSTs and to the
        first POST of each event in ``fail_seq``) and wait until it listens.
        """
        assert self.proc is None or self.proc.poll() is not None, "already running"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-P", __file__, f"--port={self.port}", f"--out={self.out}",
                 f"--fail-first={fail_first}",
                 f"--fail-seq={','.join(map(str, fail_seq))}", *self.options],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"webhook receiver exited: {self.log.read_text()}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise TimeoutError("webhook receiver did not listen")

    def stop(self) -> None:
        """Kill the process (SIGKILL: it gets no chance to finish anything)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def received(self) -> list[dict[str, Any]]:
        """Every accepted request so far: ``{"headers": …, "event": …}``, in order."""
        if not self.out.exists():
            return []
        # only whole lines: the receiver may be writing the last one right now
        lines = self.out.read_text().split("\n")[:-1]
        return [json.loads(line) for line in lines if line]

    def events(self) -> list[dict[str, Any]]:
        """The audit events received (each CloudEvent's ``data``), in arrival order."""
        return [r["event"]["data"] for r in self.received()]


@contextlib.contextmanager
def webhook_receiver(folder: Path, **options: Any) -> Iterator[WebhookReceiver]:
    """A started :class:`WebhookReceiver`, killed afterwards."""
    receiver = WebhookReceiver(folder, **options)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


if __name__ == "__main__":
    main()
