"""A real syslog receiver for tests: rsyslog (Debian's ``rsyslog`` + ``rsyslog-gnutls``,
installed by ``scripts/install-peers.sh rsyslog``) run by the test as a foreground process
(``rsyslogd -n -f <conf> -i <pidfile>``) listening on 127.0.0.1 with ``imtcp``, in plain TCP
or TLS (the ``gtls`` driver) mode, writing every message it parsed as one JSON line.

Also the test PKI (:func:`make_pki`): a CA, a server certificate for 127.0.0.1/localhost
issued by it, a client certificate, and an unrelated CA (to show a wrong CA is refused).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import ipaddress
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from tests.support.peers import ROOT, free_port

RSYSLOGD = "/usr/sbin/rsyslogd"
T = TypeVar("T")


# -- PKI ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    """PEM files of the test PKI."""

    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _ca(cn: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(_name(cn))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256()))
    return key, cert


def _leaf(ca_key: ec.EllipticCurvePrivateKey, ca: x509.Certificate, cn: str,
          usage: x509.ObjectIdentifier) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(_name(cn)).issuer_name(ca.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1))
            .not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([
                x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost"),
                x509.DNSName(cn)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return key, cert


def _write(path: Path, cert: x509.Certificate | None = None,
           key: ec.EllipticCurvePrivateKey | None = None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    if key is not None:
        path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
        path.chmod(0o600)
    return path


def make_pki(folder: Path) -> Pki:
    """A fresh CA with a server certificate (127.0.0.1, localhost, ``syslog.test``) and a
    client certificate, and a second, unrelated CA.
    """
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca = _ca("dtr test CA")
    server_key, server = _leaf(ca_key, ca, "syslog.test", ExtendedKeyUsageOID.SERVER_AUTH)
    client_key, client = _leaf(ca_key, ca, "dtr.test", ExtendedKeyUsageOID.CLIENT_AUTH)
    _, other = _ca("some other CA")
    return Pki(ca=_write(folder / "ca.pem", ca),
               server_cert=_write(folder / "server.pem", server),
               server_key=_write(folder / "server.key", key=server_key),
               client_cert=_write(folder / "client.pem", client),
               client_key=_write(folder / "client.key", key=client_key),
               other_ca=_write(folder / "other-ca.pem", other))


# -- rsyslog -----------------------------------------------------------------------------------


def rsyslogd() -> str:
    """The rsyslogd binary, with its TLS driver; installed (Debian packages) if missing."""
    if not (Path(RSYSLOGD).exists() and glob.glob("/usr/lib/*/rsyslog/lmnsd_gtls.so")):
        subprocess.run([str(ROOT / "scripts/install-peers.sh"), "rsyslog"], check=True)
    if not glob.glob("/usr/lib/*/rsyslog/lmnsd_gtls.so"):
        raise RuntimeError("rsyslog-gnutls is not installed and could not be installed")
    return RSYSLOGD


_TEMPLATE = """
template(name="dtrjson" type="list" option.jsonf="on") {
  property(outname="pri" name="pri" format="jsonf")
  property(outname="facility" name="syslogfacility" format="jsonf")
  property(outname="severity" name="syslogseverity" format="jsonf")
  property(outname="version" name="protocol-version" format="jsonf")
  property(outname="timestamp" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}
"""


class Rsyslog:
    """One rsyslogd instance: plain TCP, or TLS when ``pki`` is given (anonymous clients:
    the server authenticates, clients need no certificate).

    The port is chosen once, so :meth:`start` after :meth:`stop` listens on the same one.
    Every message received is a JSON line in :attr:`out` (rsyslog's own parse of it).
    """

    def __init__(self, folder: Path, *, pki: Pki | None = None) -> None:
        self.folder = folder
        self.pki = pki
        self.port = free_port()
        self.out = folder / "received.jsonl"
        self.log = folder / "rsyslogd.log"
        self.conf = folder / "rsyslog.conf"
        self.proc: subprocess.Popen[bytes] | None = None
        folder.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self._config())

    @property
    def address(self) -> str:
        """``127.0.0.1:<port>``."""
        return f"127.0.0.1:{self.port}"

    def _config(self) -> str:
        work = self.folder / "work"
        work.mkdir(exist_ok=True)
        tls = ""
        driver = ""
        if self.pki is not None:
            tls = (f'  DefaultNetstreamDriver="gtls"\n'
                   f'  DefaultNetstreamDriverCAFile="{self.pki.ca}"\n'
                   f'  DefaultNetstreamDriverCertFile="{self.pki.server_cert}"\n'
                   f'  DefaultNetstreamDriverKeyFile="{self.pki.server_key}"\n')
            driver = ' StreamDriver.Name="gtls" StreamDriver.Mode="1" StreamDriver.AuthMode="anon"'
        return (f'global(workDirectory="{work}" maxMessageSize="256k"\n{tls})\n'
                f'module(load="imtcp"{driver})\n'
                f'input(type="imtcp" address="127.0.0.1" port="{self.port}")\n'
                f"{_TEMPLATE}\n"
                f'action(type="omfile" file="{self.out}" template="dtrjson")\n')

    def start(self, timeout: float = 30.0) -> None:
        """Start rsyslogd and wait until it accepts connections."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        pidfile = self.folder / "rsyslogd.pid"
        pidfile.unlink(missing_ok=True)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [rsyslogd(), "-n", "-f", str(self.conf), "-i", str(pidfile)],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rsyslogd exited with {self.proc.returncode}: "
                                   f"{self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection(
                    ("127.0.0.1", self.port), timeout=1):
                return
            time.sleep(0.05)
        raise TimeoutError(f"rsyslogd did not listen on {self.port}: {self.log.read_text()}")

    def stop(self, *, kill: bool = True) -> None:
        """Stop rsyslogd: SIGKILL (a crash) or SIGTERM (an orderly stop)."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        self.proc.wait(timeout=30)

    def messages(self) -> list[dict[str, Any]]:
        """Every dtr message received so far, as rsyslog parsed it."""
        if not self.out.exists():
            return []
        found = []
        for line in complete_lines(self.out):
            if line.strip():
                parsed = json.loads(line)
                if parsed.get("app_name") == "dtr":
                    found.append(parsed)
        return found

    def events(self) -> list[dict[str, Any]]:
        """The audit events received (each message's MSG parsed), in arrival order."""
        return [json.loads(m["msg"]) for m in self.messages()]


@contextlib.contextmanager
def rsyslog(folder: Path, *, pki: Pki | None = None) -> Iterator[Rsyslog]:
    """A started :class:`Rsyslog`, stopped afterwards."""
    server = Rsyslog(folder, pki=pki)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def complete_lines(path: Path) -> list[str]:
    """The lines of ``path`` that end in a newline (a writer may be in the middle of the
    last one).
    """
    return path.read_text().split("\n")[:-1] if path.exists() else []


def wait_for(fetch: Callable[[], T], enough: Callable[[T], bool], timeout: float = 60.0,
             what: str = "") -> T:
    """Poll ``fetch()`` until ``enough`` of its result; return that result."""
    found: list[T] = []

    def check() -> bool:
        found[:] = [fetch()]
        return enough(found[0])

    wait_until(check, timeout, what)
    return found[0]


def wait_until(check: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
    """Poll ``check`` until it returns something truthy (returned); TimeoutError after
    ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what or check}")
        time.sleep(0.1)
