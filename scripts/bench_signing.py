"""What the signing gate adds to a tag push: one ``dtr serve`` (embedded default) with
``prod/**`` protected by a cosign key, and an unprotected ``dev/**``. Each round pushes a
fresh image by digest to both repositories, signs the ``prod`` one (a cosign legacy
``.sig`` tag, verified on arrival, so the digest is TRUSTED before the measurement), then
times the tag push (``PUT /v2/<repo>/manifests/v<n>`` with the same bytes) in each
repository, alternating which goes first. Writes p50/p95/p99 and the p99 difference between
the markers in ``docs/performance.md`` (issue 5: at most 20 ms at p99).

Usage: ``uv run python scripts/bench_signing.py [--rounds N] [--no-write]``
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from dtr.signing import cosign  # noqa: E402
from tests.support import peers  # noqa: E402
from tests.unit.signing import material as m  # noqa: E402

OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
BEGIN, END = "<!-- bench-signing:start -->", "<!-- bench-signing:end -->"
PROTECTED, OPEN = "prod/app", "dev/app"


def digest(data: bytes) -> str:
    """The sha256 digest of ``data``."""
    return "sha256:" + hashlib.sha256(data).hexdigest()


class Registry:
    """A tiny OCI client over one keep-alive connection."""

    def __init__(self, url: str) -> None:
        self.http = httpx.Client(base_url=url, timeout=60)

    def blob(self, repo: str, data: bytes) -> dict[str, object]:
        """Push ``data`` monolithically; its descriptor fields."""
        d = digest(data)
        r = self.http.post(f"/v2/{repo}/blobs/uploads/", params={"digest": d}, content=data,
                           headers={"Content-Type": "application/octet-stream"})
        if r.status_code != 201:
            raise RuntimeError(f"blob push: {r.status_code} {r.text}")
        return {"digest": d, "size": len(data)}

    def manifest(self, repo: str, reference: str, body: bytes) -> float:
        """PUT a manifest; the seconds it took. Raises unless 201."""
        start = time.perf_counter()
        r = self.http.put(f"/v2/{repo}/manifests/{reference}", content=body,
                          headers={"Content-Type": OCI_MANIFEST})
        took = time.perf_counter() - start
        if r.status_code != 201:
            raise RuntimeError(f"manifest {repo}:{reference}: {r.status_code} {r.text}")
        return took

    def image(self, repo: str, n: int) -> bytes:
        """A fresh single-layer image manifest (blobs pushed)."""
        config = json.dumps({"architecture": "amd64", "os": "linux", "n": n}).encode()
        layer = os.urandom(1024)
        return json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **self.blob(repo, config)},
            "layers": [{"mediaType": LAYER, **self.blob(repo, layer)}]}).encode()

    def sign(self, repo: str, key: m.PrivateKey, subject: str) -> None:
        """Push a cosign legacy signature tag for ``subject``."""
        payload = m.simple_payload(subject)
        body = json.dumps({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, **self.blob(repo, b"{}")},
            "layers": [{"mediaType": cosign.SIMPLE_SIGNING, **self.blob(repo, payload),
                        "annotations": {cosign.SIGNATURE_ANNOTATION: base64.b64encode(
                            m.cosign_sign(key, payload)).decode()}}]}).encode()
        self.manifest(repo, subject.replace(":", "-") + ".sig", body)


def pct(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, in milliseconds."""
    ordered = sorted(values)
    return 1000 * ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(rounds: int, log: Callable[[str], None]) -> dict[str, list[float]]:
    """Start the server and measure; per repository, the tag push times in seconds."""
    key = m.new_key("p256")
    times: dict[str, list[float]] = {PROTECTED: [], OPEN: []}
    with tempfile.TemporaryDirectory(prefix="dtr-bench-signing-") as tmp:
        base = Path(tmp)
        config = base / "dtr.yaml"
        config.write_text(json.dumps({"signing": {"policies": [{
            "name": "prod", "repositories": "prod/**",
            "keys": [{"pem": m.public_pem(key).decode(), "name": "ci"}]}]}}))
        (base / "data").mkdir()
        with peers.dtr_server(base / "data", args=("--config", str(config))) as srv:
            reg = Registry(srv.url)
            for n in range(rounds):
                bodies = {}
                for repo in (PROTECTED, OPEN):
                    body = reg.image(repo, n)
                    reg.manifest(repo, digest(body), body)
                    bodies[repo] = body
                reg.sign(PROTECTED, key, digest(bodies[PROTECTED]))
                order = (PROTECTED, OPEN) if n % 2 == 0 else (OPEN, PROTECTED)
                for repo in order:
                    took = reg.manifest(repo, f"v{n}", bodies[repo])
                    if n >= 10:  # the first rounds warm the workers up
                        times[repo].append(took)
                if n % 100 == 0:
                    log(f"round {n}/{rounds}")
    return times


def report(times: dict[str, list[float]]) -> str:
    """The markdown section."""
    rows = []
    for label, repo in (("unprotected (`dev/**`)", OPEN), ("protected (`prod/**`)", PROTECTED)):
        t = times[repo]
        rows.append(f"| {label} | {len(t)} | {pct(t, 0.5):.2f} | {pct(t, 0.95):.2f} | "
                    f"{pct(t, 0.99):.2f} | {1000 * statistics.fmean(t):.2f} |")
    delta = pct(times[PROTECTED], 0.99) - pct(times[OPEN], 0.99)
    return "\n".join([
        BEGIN,
        f"Generated by `make bench-signing` on {time.strftime('%Y-%m-%d %H:%M %Z')} "
        f"({os.cpu_count()} cores): tag pushes of a signed digest (one cached verified cosign "
        "signature) in a protected repository against tag pushes in an unprotected one, "
        "same server, same images, alternating order.",
        "",
        "| tag push | samples | p50 ms | p95 ms | p99 ms | mean ms |",
        "|---|---:|---:|---:|---:|---:|",
        *rows,
        "",
        f"The gate adds **{delta:+.2f} ms at p99** (budget: 20 ms).",
        END])


def write(section: str, path: Path) -> None:
    """Replace the section between the markers in ``path`` (append it when missing)."""
    text = path.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + section + rest.split(END, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n## Signing gate: tag push overhead\n\n" + section + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=410)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args(argv)

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    times = run(args.rounds, log)
    section = report(times)
    print(section)
    if not args.no_write:
        write(section, ROOT / "docs" / "performance.md")
        log("wrote docs/performance.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
