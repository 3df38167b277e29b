"""Audit sinks: the destinations :mod:`dtr.audit.forward` delivers stored events to.

* :class:`StdoutSink` — JSON lines on standard output (container log collectors).
* :class:`SyslogSink` — RFC 5424 messages over TCP with octet-counting framing (RFC 6587),
  or over TLS (RFC 5425).
* :class:`WebhookSink` — CloudEvents 1.0 over HTTP(S), structured mode: one event per
  ``POST`` with ``Content-Type: application/cloudevents+json``. Structured mode, not the
  optional batched mode, because every CloudEvents SDK and HTTP receiver reads it.

Every sink sends each event as its stored row (:func:`event_document`): every column,
``seq``, ``prev_hash`` and ``hash`` included, so a receiver can de-duplicate by ``seq`` and
re-check the hash chain on its own. Delivery is at least once: the forwarder re-sends a batch
whose confirmation it did not get.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import socket
import ssl
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO, Protocol, get_args
from urllib.parse import urlsplit

import httpx

from dtr.audit.chain import COLUMNS, format_time
from dtr.config import AuditSinkSettings, ConfigError, SyslogFacility

Row = Mapping[str, Any]
"""A stored event: the ``audit_event`` columns (:data:`dtr.audit.chain.COLUMNS`)."""

FACILITIES: tuple[str, ...] = get_args(SyslogFacility)
"""RFC 5424 facility names; a name's index is its code."""
SEVERITY = {"allow": 6, "deny": 4, "error": 3}
"""syslog severity by outcome: allow = informational, deny = warning, error = error."""
APP_NAME = "dtr"
EVENT_TYPE = "io.dtr.audit."
"""CloudEvents ``type`` prefix; the event's action follows (``io.dtr.audit.manifest.pushed``)."""


class DeliveryError(Exception):
    """A delivery failed after the first ``delivered`` events of the batch were confirmed
    (the forwarder advances past those and retries the rest).
    """

    def __init__(self, message: str, delivered: int = 0) -> None:
        super().__init__(message)
        self.delivered = delivered


class Sink(Protocol):
    """A destination for audit events.

    Contract:

    * ``deliver(batch)`` sends the events of ``batch`` (rows in ascending ``seq``, no gaps
      within one call) and returns only once the receiver has them: written and flushed
      (stdout), read by the receiver up to an orderly close (syslog), answered 2xx (webhook).
      It raises on any failure — never drops silently. :class:`DeliveryError` with
      ``delivered = k`` says the first ``k`` events did arrive.
    * The same batch may be delivered again (after a failure, a crash or a hand-over between
      replicas): receivers de-duplicate by ``seq`` (the webhook ``id``).
    * ``deliver`` is never called concurrently on one sink.
    * ``aclose()`` releases connections; it is safe to call twice.
    """

    name: str
    """Unique sink name (the key of its delivered position in ``audit_cursor``)."""

    async def deliver(self, batch: Sequence[Row]) -> None:
        """Send ``batch``; raise when the receiver did not confirm all of it."""
        ...

    async def aclose(self) -> None:
        """Release the sink's resources."""
        ...


def event_document(row: Row) -> dict[str, Any]:
    """The JSON form of a stored event: every column in order, ``time`` as RFC 3339 UTC
    text, ``detail`` as an object.
    """
    doc: dict[str, Any] = {}
    for name in COLUMNS:
        value = row[name]
        if name == "time":
            value = format_time(value)
        elif name == "detail":
            value = json.loads(value) if isinstance(value, str) else value
        elif name == "seq":
            value = int(value)
        doc[name] = value
    return doc


def event_json(row: Row) -> str:
    """:func:`event_document` as compact ASCII JSON (one line)."""
    return json.dumps(event_document(row), ensure_ascii=True, separators=(",", ":"))


def tls_context(ca_file: str = "", cert_file: str = "", key_file: str = "", *,
                check_server_name: bool = True) -> ssl.SSLContext:
    """A client TLS context: the chain is verified against ``ca_file`` (else the system
    CAs), TLS 1.2 or later, with an optional client certificate.

    Raises:
        OSError: a file cannot be read. ssl.SSLError: a file is not valid PEM.
    """
    ctx = ssl.create_default_context(cafile=ca_file or None)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = check_server_name
    if cert_file:
        ctx.load_cert_chain(cert_file, key_file or None)
    return ctx


def _secret(value: str, path: str) -> str:
    return Path(path).expanduser().read_text().strip() if path else value


# -- stdout ------------------------------------------------------------------------------------


class StdoutSink:
    """One JSON line per event on standard output (or ``stream``), flushed per batch.

    Args:
        name: the sink's name.
        stream: a binary stream to write instead of ``sys.stdout``.
    """

    def __init__(self, name: str, stream: BinaryIO | None = None) -> None:
        self.name = name
        self._stream = stream

    async def deliver(self, batch: Sequence[Row]) -> None:
        """Write and flush the batch's lines (in a thread: a slow reader never blocks the
        event loop).
        """
        data = "".join(event_json(row) + "\n" for row in batch).encode("ascii")
        stream = self._stream if self._stream is not None else sys.stdout.buffer
        await asyncio.to_thread(_write_all, stream, data)

    async def aclose(self) -> None:
        """Nothing to release (the stream belongs to the caller)."""


def _write_all(stream: BinaryIO, data: bytes) -> None:
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.flush()  # text written to stdout before this batch goes first
    stream.write(data)
    stream.flush()


# -- syslog ------------------------------------------------------------------------------------


def split_address(address: str, default_port: int) -> tuple[str, int]:
    """``host:port``, ``[v6]:port`` or ``host`` as (host, port).

    Raises:
        ValueError: the port is not a number.
    """
    if address.startswith("["):
        host, _, rest = address[1:].partition("]")
        port = rest.removeprefix(":")
    elif address.count(":") == 1:
        host, _, port = address.partition(":")
    else:
        host, port = address, ""
    return host, int(port) if port else default_port


def _sd_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def _header_token(value: str, limit: int) -> str:
    """An RFC 5424 header field: printable ASCII, at most ``limit`` characters, ``-`` when
    empty.
    """
    text = "".join(c if "!" <= c <= "~" else "_" for c in value)[:limit]
    return text or "-"


class SyslogSink:
    """RFC 5424 syslog over TCP (RFC 6587 octet counting) or TLS (RFC 5425).

    Each message: ``<PRI>1 TIME HOST dtr PID ACTION [SD-ID seq=… outcome=… actor=…] JSON``,
    PRI = facility * 8 + severity (allow → info, deny → warning, error → err), the stored
    event as ASCII JSON for MSG. Each batch goes over a fresh connection that dtr closes
    after the last message (TCP FIN, or TLS ``close_notify``); the receiver's orderly close
    in answer confirms it has read the whole batch. syslog has no acknowledgement of its own,
    so this is the confirmation: a refused, reset or timed-out connection fails the batch.

    Args:
        name: the sink's name.
        address: ``host:port`` of the receiver.
        tls: the client TLS context, or None for plain TCP.
        server_name: the name the receiver's certificate must carry (default: the host).
        facility: the facility name (:data:`FACILITIES`).
        sd_id: the structured-data id.
        timeout: seconds for connecting, sending and the receiver's close.
    """

    def __init__(self, name: str, address: str, *, tls: ssl.SSLContext | None = None,
                 server_name: str = "", facility: str = "authpriv",
                 sd_id: str = "dtr@32473", timeout: float = 10.0) -> None:
        self.name = name
        self.host, self.port = split_address(address, 6514 if tls else 514)
        self.tls = tls
        self.server_name = server_name or self.host
        self.facility = FACILITIES.index(facility)
        self.sd_id = sd_id
        self.timeout = timeout
        self.hostname = _header_token(socket.gethostname(), 255)

    def message(self, row: Row) -> bytes:
        """The RFC 5424 message of ``row`` (without framing)."""
        severity = SEVERITY.get(str(row["outcome"]), 5)
        params = " ".join(f'{key}="{_sd_value(str(value))}"' for key, value in (
            ("seq", int(row["seq"])), ("outcome", row["outcome"]), ("actor", row["actor"])))
        header = (f"<{self.facility * 8 + severity}>1 {format_time(row['time'])} "
                  f"{self.hostname} {APP_NAME} {os.getpid()} "
                  f"{_header_token(str(row['action']), 32)}")
        return f"{header} [{self.sd_id} {params}] {event_json(row)}".encode()

    def frame(self, row: Row) -> bytes:
        """``row`` as an octet-counted frame: ``LENGTH SP MESSAGE``."""
        message = self.message(row)
        return b"%d %s" % (len(message), message)

    async def deliver(self, batch: Sequence[Row]) -> None:
        """Send the batch over one connection and wait for the receiver to close it."""
        payload = b"".join(self.frame(row) for row in batch)
        try:
            await asyncio.to_thread(self._send, payload)
        except OSError as exc:
            raise DeliveryError(f"syslog {self.host}:{self.port}: {exc}") from exc

    def _send(self, payload: bytes) -> None:
        with socket.create_connection((self.host, self.port), timeout=self.timeout) as raw:
            if self.tls is None:
                raw.sendall(payload)
                raw.shutdown(socket.SHUT_WR)
                _await_close(raw)
                return
            with self.tls.wrap_socket(raw, server_hostname=self.server_name) as tls:
                tls.sendall(payload)
                # close_notify, then wait for the receiver's; a receiver that just closes
                # the connection instead has read up to ours too (unread data would have
                # made its close a reset)
                with contextlib.suppress(ssl.SSLEOFError, ssl.SSLZeroReturnError):
                    tls.unwrap()

    async def aclose(self) -> None:
        """Nothing held between batches."""


def _await_close(sock: socket.socket) -> None:
    """Read until the peer closes (it has then read everything we sent); a reset is a
    failure.

    Raises:
        OSError: the connection was reset or the receiver did not close in time.
    """
    while sock.recv(65536):
        pass
    error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
    if error:
        raise OSError(error, os.strerror(error))


# -- webhook -----------------------------------------------------------------------------------


def subject_of(row: Row) -> str:
    """The CloudEvents ``subject``: ``repository[:tag][@digest]``, else the resource, else
    the actor (may be empty).
    """
    repository = str(row["repository"] or "")
    if repository:
        tag, digest = str(row["tag"] or ""), str(row["digest"] or "")
        return repository + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")
    return str(row["resource"] or row["actor"] or "")


def cloud_event(row: Row, *, source: str, registry_id: str) -> dict[str, Any]:
    """The CloudEvents 1.0 structured-mode envelope of ``row``."""
    event: dict[str, Any] = {
        "specversion": "1.0", "id": f"{registry_id}-{int(row['seq'])}", "source": source,
        "type": EVENT_TYPE + str(row["action"]), "time": format_time(row["time"]),
        "datacontenttype": "application/json"}
    subject = subject_of(row)
    if subject:
        event["subject"] = subject
    event["data"] = event_document(row)
    return event


def signature(secret: str, body: bytes) -> str:
    """The ``X-Dtr-Signature`` value: ``sha256=`` + hex HMAC-SHA256 of the body."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class _QuietRequests(logging.Filter):
    """Drops httpx's INFO line for each request to a webhook sink (one log line per
    forwarded event would double the log volume); failures are logged by the forwarder.
    """

    def __init__(self, url: str) -> None:
        super().__init__()
        self.url = url

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        return not (record.levelno <= logging.INFO and len(args) > 1
                    and str(args[1]) == self.url)


class WebhookSink:
    """CloudEvents over HTTP(S): one ``POST`` per event, in order; any 2xx confirms it.

    Args:
        name: the sink's name.
        url: where events are POSTed.
        tls: the client TLS context for ``https://`` (default: system CAs).
        server_name: the name the server's certificate must carry (default: the URL's host).
        source: the CloudEvents ``source`` (a URI reference naming this registry).
        registry_id: the prefix of every event ``id`` (``<registry_id>-<seq>``).
        headers: extra headers.
        token: a bearer token (``Authorization: Bearer …``), or empty.
        hmac_secret: the key of the ``X-Dtr-Signature`` header, or empty for none.
        timeout: seconds per request.
    """

    def __init__(self, name: str, url: str, *, tls: ssl.SSLContext | None = None,
                 server_name: str = "", source: str = "/dtr", registry_id: str = "dtr",
                 headers: Mapping[str, str] | None = None, token: str = "",
                 hmac_secret: str = "", timeout: float = 10.0) -> None:
        self.name = name
        self.url = url
        self.source = source
        self.registry_id = registry_id
        self.hmac_secret = hmac_secret
        self._headers = {"Content-Type": "application/cloudevents+json; charset=utf-8",
                         **(headers or {})}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        host = urlsplit(url).hostname or ""
        self._extensions = ({"sni_hostname": server_name}
                            if server_name and server_name != host else {})
        self._client = httpx.AsyncClient(verify=tls if tls is not None else True,
                                         timeout=timeout, follow_redirects=False)
        self._quiet = _QuietRequests(url)
        logging.getLogger("httpx").addFilter(self._quiet)

    def body(self, row: Row) -> bytes:
        """The request body of ``row``: its CloudEvent as JSON."""
        event = cloud_event(row, source=self.source, registry_id=self.registry_id)
        return json.dumps(event, ensure_ascii=False, separators=(",", ":")).encode()

    async def deliver(self, batch: Sequence[Row]) -> None:
        """POST each event in order; stop at the first that is not answered 2xx."""
        for done, row in enumerate(batch):
            body = self.body(row)
            headers = dict(self._headers)
            if self.hmac_secret:
                headers["X-Dtr-Signature"] = signature(self.hmac_secret, body)
            try:
                answer = await self._client.post(self.url, content=body, headers=headers,
                                                 extensions=self._extensions)
            except (httpx.HTTPError, OSError) as exc:  # OSError: TLS alerts after the handshake
                raise DeliveryError(f"webhook {self.url}: {exc!r}", done) from exc
            if not answer.is_success:
                raise DeliveryError(f"webhook {self.url} answered HTTP {answer.status_code} "
                                    f"to event {int(row['seq'])}", done)

    async def aclose(self) -> None:
        """Close the HTTP connection pool."""
        logging.getLogger("httpx").removeFilter(self._quiet)
        await self._client.aclose()


# -- from the settings -------------------------------------------------------------------------


def build_sink(settings: AuditSinkSettings, *, source: str, registry_id: str) -> Sink:
    """The sink ``settings`` describe (files are read here, so a missing one fails at start).

    Args:
        settings: one entry of ``audit.sinks``.
        source: the CloudEvents ``source`` of this registry.
        registry_id: the CloudEvents ``id`` prefix of this registry.

    Raises:
        ConfigError: a CA, certificate, key or secret file cannot be read or is not valid
            PEM, or the address is malformed.
    """
    s = settings
    if s.type == "stdout":
        return StdoutSink(s.name)
    try:
        secure = (s.type == "syslog" and s.tls) or s.url.startswith("https://")
        tls = (tls_context(s.ca_file, s.cert_file, s.key_file,
                           check_server_name=s.check_server_name) if secure else None)
        if s.type == "syslog":
            return SyslogSink(s.name, s.address, tls=tls, server_name=s.server_name,
                              facility=s.facility, sd_id=s.sd_id, timeout=s.timeout_seconds)
        return WebhookSink(s.name, s.url, tls=tls, server_name=s.server_name, source=source,
                           registry_id=registry_id, headers=s.headers,
                           token=_secret(s.token, s.token_file),
                           hmac_secret=_secret(s.hmac_secret, s.hmac_secret_file),
                           timeout=s.timeout_seconds)
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        files = ", ".join(f"{key} {value}" for key, value in (
            ("ca_file", s.ca_file), ("cert_file", s.cert_file), ("key_file", s.key_file),
            ("token_file", s.token_file), ("hmac_secret_file", s.hmac_secret_file)) if value)
        raise ConfigError(f"audit.sinks.{s.name}: {exc}"
                          + (f" (files: {files})" if files else "")) from exc
