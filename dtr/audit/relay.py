"""The audit relay: one process of ``dtr serve`` chains the events every worker records on
their own (pulls, denials, failed logins, tokens issued), instead of a writer thread in
each worker.

Why a process: a worker's writer thread shares the worker's GIL with its event loop.
While the loop is busy serving, the thread gets the GIL back only when the loop lets go of
it, so every one of its statements waits and the hand-overs cost both threads CPU; a
recorded pull cost its worker ~185 µs of CPU this way, against ~40 µs for the same work
done without the contention (measured on the embedded default, docs/performance.md).

* Workers (:class:`RelayClient`) turn each event into a :class:`~dtr.audit.chain.Entry`
  (stamped with its request context, clipped, its detail canonical) and send them in
  datagrams of up to :data:`PER_DATAGRAM` entries, at most :data:`LINGER` s after the
  first, on a Unix socket in a private folder (a datagram per event would wake the relay
  for every pull).
* The relay (:func:`serve_relay`, ``python -m dtr.audit.relay SOCKET``) reads them and
  feeds its own :class:`~dtr.audit.recorder.AuditRecorder`, which chains them in group
  commits like a worker's writer does.
* ``dtr serve`` starts it (:class:`RelayProcess`) before the workers, restarts it if it
  exits, and stops it after the workers are gone; the relay then reads what is left in
  the socket and writes it before exiting.

Nothing is lost when the relay is not there: a datagram the socket refuses (no relay,
buffer full) is written by the worker's own writer instead. Only fail-open recording uses
the relay; failing closed, a worker waits for its own commit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from dtr.audit.chain import TEXT_FIELDS, Entry

log = logging.getLogger("dtr.audit")
SOCKET_ENV = "_DTR_AUDIT_RELAY_SOCKET"
"""Set by ``dtr serve`` for its workers: the relay's socket."""
PER_DATAGRAM = 32
"""Most entries one datagram carries (worst case ~80 KB, within a Unix socket's buffer)."""
LINGER = 0.05
"""Seconds a worker keeps an entry before sending it with those that follow (the writer
gathers for longer anyway: ``dtr.audit.recorder.LINGER``)."""
RETRY_SECONDS = 1.0
"""How long a worker writes its events itself after finding no relay, before trying
again."""
_FIELDS = 2 + len(TEXT_FIELDS)


def encode(entries: Sequence[Entry]) -> bytes:
    """One datagram: a JSON array of ``[time, detail, *texts]`` per entry (UTF-8; a lone
    surrogate in a text is carried as its ``surrogatepass`` bytes).
    """
    rows = [[e.time, e.detail, *e.texts] for e in entries]
    try:
        return _encode(rows)
    except UnicodeEncodeError:  # a lone surrogate: the standard library can carry it
        body = json.dumps(rows, ensure_ascii=False, separators=(",", ":"))
        return body.encode("utf-8", "surrogatepass")


def decode(data: bytes) -> list[Entry]:
    """The entries of a datagram made by :func:`encode`.

    Raises:
        ValueError: not such a datagram (TypeError: not even a list).
    """
    try:
        items = _decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError):  # surrogates, or malformed: the
        # standard library carries the one and names the other
        return _decode_slowly(data)
    return [Entry(tuple(item[2:]), float(item[0]), item[1]) for item in items]


def _decode_slowly(data: bytes) -> list[Entry]:
    items = json.loads(data.decode("utf-8", "surrogatepass"))
    if not isinstance(items, list):
        raise TypeError("not a list of entries")
    out = []
    for item in items:
        if (not isinstance(item, list) or len(item) != _FIELDS
                or type(item[0]) not in (int, float)
                or not all(type(v) is str for v in item[1:])):
            raise ValueError("malformed entry")
        out.append(Entry(tuple(item[2:]), float(item[0]), item[1]))
    return out


_encode = msgspec.json.Encoder().encode
_ROW: Any = tuple[(float, str, *(str,) * len(TEXT_FIELDS))]  # type: ignore[misc]
_decode = msgspec.json.Decoder(list[_ROW]).decode
"""msgspec's encoder and typed decoder: the same JSON as the standard library's, at a
seventh of the cost to write and a third to read (32 pull entries: 45 against 6 µs, 62
against 23 µs); the standard library is the fallback for lone surrogates and for the
errors of malformed datagrams."""


class RelayClient:
    """A worker's side of the relay: gathers entries for up to :data:`LINGER` s or
    :data:`PER_DATAGRAM` entries, then sends them; what cannot be sent goes to
    ``fallback`` (the worker's own writer).

    Args:
        path: the relay's socket.
        fallback: takes entries the relay did not (called on the event loop).
    """

    def __init__(self, path: str, fallback: Callable[[list[Entry]], None]) -> None:
        self.path = path
        self.fallback = fallback
        self.sent = 0
        self.fell_back = 0
        self._pending: list[Entry] = []
        self._timer: asyncio.TimerHandle | None = None
        self._sock: socket.socket | None = None
        self._down_until = 0.0

    def add(self, entry: Entry) -> None:
        """Queue ``entry``; sent with others within :data:`LINGER` s."""
        self._pending.append(entry)
        if len(self._pending) >= PER_DATAGRAM:
            self.send()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(LINGER, self.send)

    def send(self) -> None:
        """Send every queued entry now (what the relay does not take goes to fallback)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, []
        for start in range(0, len(pending), PER_DATAGRAM):
            part = pending[start:start + PER_DATAGRAM]
            if self._send(part):
                self.sent += len(part)
            else:
                self.fell_back += len(part)
                self.fallback(part)

    def _send(self, part: list[Entry]) -> bool:
        if self._down_until and time.monotonic() < self._down_until:
            return False
        try:
            if self._sock is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sock.setblocking(False)
                try:
                    sock.connect(self.path)
                except OSError:
                    sock.close()
                    raise
                self._sock = sock
            self._sock.send(encode(part))
        except BlockingIOError:  # the relay is behind: this part is written here
            return False
        except (OSError, UnicodeError) as exc:
            if not self._down_until:
                log.warning("audit relay %s unreachable (%s): this worker writes its "
                            "events itself until it is back", self.path, exc)
            self._down_until = time.monotonic() + RETRY_SECONDS
            self.close()
            return False
        if self._down_until:
            log.info("audit relay %s reachable again", self.path)
            self._down_until = 0.0
        return True

    def close(self) -> None:
        """Close the socket (the next send reconnects)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None


# -- the relay process ---------------------------------------------------------------------

async def serve_relay(path: str, accept: Callable[[list[Entry]], None],
                      stop: asyncio.Event, *, parent: int | None = None) -> int:
    """Read datagrams on a new Unix socket at ``path`` and pass their entries to
    ``accept`` until ``stop`` is set (or ``parent`` is no longer this process's parent);
    then read what is left in the socket, remove it and return the number of malformed
    datagrams dropped.
    """
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setblocking(False)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    sock.bind(path)
    os.chmod(path, 0o600)
    dropped = [0]

    def drain() -> None:
        while True:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                return
            try:
                entries = decode(data)
            except (ValueError, TypeError) as exc:  # UnicodeError is a ValueError
                dropped[0] += 1
                log.warning("audit relay: dropped a malformed datagram (%s)", exc)
                continue
            accept(entries)

    loop.add_reader(sock.fileno(), drain)
    try:
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            if parent is not None and os.getppid() != parent:
                log.warning("audit relay: dtr serve is gone; writing what is left")
                break
    finally:
        loop.remove_reader(sock.fileno())
        drain()
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
    return dropped[0]


async def _relay_main(path: str, parent: int) -> None:
    from dtr.audit.recorder import AuditRecorder  # noqa: PLC0415
    from dtr.config import resolved_settings  # noqa: PLC0415
    from dtr.db.database import Database  # noqa: PLC0415

    settings = resolved_settings()
    db = Database(settings.database_url, pool_size=2, echo=settings.database.echo)
    recorder = AuditRecorder(db, max_pending=settings.audit.max_pending)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    received = [0]

    def accept(entries: list[Entry]) -> None:
        received[0] += len(entries)
        recorder.accept(entries)

    dropped = 0
    log.info("audit relay listening on %s", path)
    try:
        dropped = await serve_relay(path, accept, stop, parent=parent)
    finally:
        await recorder.aclose()
        await db.close()
        with contextlib.suppress(OSError):  # the private folder, once the relay is done
            os.rmdir(os.path.dirname(path))
    log.info("audit relay stopped: %d events received, %d lost to the database, %d "
             "malformed datagrams dropped", received[0], recorder.dropped, dropped)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m dtr.audit.relay SOCKET PARENT_PID`` (started by ``dtr serve``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s - %(asctime)s - "
                        "%(name)s - audit relay - %(message)s")
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # dtr serve stops it after its workers
    asyncio.run(_relay_main(args[0], int(args[1])))
    return 0


class RelayProcess:
    """``dtr serve``'s handle on the relay: starts it in a private folder, restarts it
    when it exits, stops it (after the workers).

    Args:
        env: the environment of the relay (with the resolved settings).
    """

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self.folder = Path(tempfile.mkdtemp(prefix="dtr-audit-"))
        self.path = str(self.folder / "relay.sock")
        self.restarts = 0
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watch: threading.Thread | None = None

    def start(self, wait: float = 15.0) -> None:
        """Start the relay and wait (up to ``wait`` s) until its socket is there."""
        self._spawn()
        deadline = time.monotonic() + wait
        while not os.path.exists(self.path) and time.monotonic() < deadline:
            assert self._proc is not None
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        self._watch = threading.Thread(target=self._watchdog, name="dtr-audit-relay",
                                       daemon=True)
        self._watch.start()

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(  # noqa: S603 - this interpreter, our module
            [sys.executable, "-m", "dtr.audit.relay", self.path, str(os.getpid())],
            env=self.env, start_new_session=True)

    def _watchdog(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            code = proc.wait()
            if self._stopping.is_set():
                return
            self.restarts += 1
            log.error("audit relay exited (status %s); restarting it (workers write their "
                      "events themselves meanwhile)", code)
            if self._stopping.wait(1.0):
                return
            self._spawn()

    def stop(self, timeout: float = 60.0) -> None:
        """Let the relay write what it holds, then remove its folder."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("audit relay did not stop within %.0f s; killing it", timeout)
                proc.kill()
                proc.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
