"""``dtr serve --tls-cert --tls-key`` serves HTTPS directly; the token realm follows."""

from __future__ import annotations

import datetime as dt
import ipaddress
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.support import peers


def self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.UTC)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "tls.crt", folder / "tls.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def test_serves_https_with_the_given_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    port = peers.free_port()
    env = peers.dtr_env(tmp_path / "data", auth=True)
    peers.dtr("db", "upgrade", env=env)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen([sys.executable, "-m", "dtr", "serve", "--port", str(port),
                             "--workers", "1", "--tls-cert", str(cert), "--tls-key", str(key)],
                            env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        url = f"https://127.0.0.1:{port}"
        with httpx.Client(verify=ssl.create_default_context(cafile=str(cert)), timeout=5) as client:
            for _ in range(300):
                try:
                    r = client.get(f"{url}/v2/")
                    break
                except httpx.HTTPError:
                    if proc.poll() is not None:
                        raise
                    time.sleep(0.1)
            assert r.status_code == 401
            assert f'realm="{url}/auth/token"' in r.headers["www-authenticate"]
            tok = client.get(f"{url}/auth/token", auth=("admin", peers.ADMIN_PASSWORD))
            assert tok.status_code == 200
            ok = client.get(f"{url}/v2/",
                            headers={"Authorization": f"Bearer {tok.json()['token']}"})
            assert ok.status_code == 200
        try:
            httpx.get(f"http://127.0.0.1:{port}/v2/", timeout=3)
            plain_ok = True
        except httpx.HTTPError:
            plain_ok = False
        assert not plain_ok, "plain HTTP must not be served on the TLS port"
    finally:
        peers._stop(proc)
        log.close()
