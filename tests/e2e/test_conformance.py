"""The OCI distribution-spec conformance suite (the April 2026 runner, pinned in
``tests/support/peers.py``) against a live dtr: the embedded default (SQLite +
filesystem), PostgreSQL + MinIO (both with authentication off: the protocol itself), and
the embedded default with authentication on, logging in through the token endpoint.

Every API group is claimed: pull, push, content discovery (tags list, referrers), content
management (blob, manifest and tag deletes), anonymous mount, and the ``1.1+dev`` checks
dtr implements (upload cancel, ``?tag=``, ``Docker-Content-Digest`` on blobs and
manifests). The binary exits 0 on configuration errors, so the verdict comes from
``results.yaml`` (every API and data entry ``Pass``) and ``junit.xml`` (no failure, no
error), never from the exit code alone. Set ``DTR_CONFORMANCE_OUT`` to keep the reports.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.e2e.conftest import server_log_tail
from tests.support.peers import DtrServer, peer

pytestmark = pytest.mark.e2e

#: API switches (``OCI_API_<name>``) dtr claims; all must end up ``true`` in results.yaml.
API_SWITCHES = ["PULL", "PUSH", "TAGS_LIST", "REFERRER", "BLOBS_DELETE", "MANIFESTS_DELETE",
                "TAGS_DELETE", "BLOBS_MOUNT_ANONYMOUS", "BLOBS_UPLOAD_CANCEL",
                "MANIFESTS_TAG_PARAM", "BLOBS_DIGEST_HEADER", "MANIFESTS_DIGEST_HEADER"]
#: The same switches as paths in results.yaml's ``config.apis``.
CONFIG_PATHS = [("pull",), ("push",), ("tags", "list"), ("referrer",), ("blobs", "delete"),
                ("manifests", "delete"), ("tags", "delete"), ("blobs", "mountAnonymous"),
                ("blobs", "uploadCancel"), ("manifests", "tagParam"),
                ("blobs", "digestHeader"), ("manifests", "digestHeader")]
#: Data sets off by default that dtr does not claim: sparse indexes (children absent from
#: the repository) are refused with MANIFEST_BLOB_UNKNOWN, which the spec allows.
EXPECTED_DISABLED = {"Sparse Manifests"}
COUNT_LINE = re.compile(r"^\s*(Disabled|Skip|Pass|FAIL|Error|Total)\.*:\s*(\d+)\s*$")


def conformance_env(registry: str, results: Path) -> dict[str, str]:
    """The runner's environment: nothing ``OCI_*`` inherited, everything dtr claims on."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OCI_")}
    env.update({"OCI_REGISTRY": registry, "OCI_TLS": "disabled", "OCI_VERSION": "1.1",
                "OCI_RESULTS_DIR": str(results), "OCI_REPO1": "conformance/repo1",
                "OCI_REPO2": "conformance/repo2", "OCI_LOG": "warn"})
    env.update({f"OCI_API_{name}": "true" for name in API_SWITCHES})
    return env


def summary_counts(stdout: str) -> dict[str, int]:
    """The Disabled/Skip/Pass/FAIL/Error/Total counts the runner prints."""
    counts: dict[str, int] = {}
    for line in stdout.splitlines():
        m = COUNT_LINE.match(line)
        if m:
            counts.setdefault(m.group(1), int(m.group(2)))
    return counts


def _failing_junit_cases(junit: Path) -> list[str]:
    """``name: first error line`` for every junit test case that did not pass."""
    out: dict[str, str] = {}
    root = ET.parse(junit).getroot()
    for case in root.iter("testcase"):
        if case.get("status") in ("passed", "skipped"):
            continue
        text = (case.findtext("system-out") or "").strip().splitlines()
        out.setdefault(str(case.get("name")), text[0] if text else str(case.get("status")))
    return [f"{name}: {why}" for name, why in out.items()]


def verdict(results: Path, proc: subprocess.CompletedProcess[str]) -> list[str]:
    """Everything wrong with a conformance run; empty means every test passed."""
    problems: list[str] = []
    results_yaml = results / "results.yaml"
    if not results_yaml.exists():
        return [f"no results.yaml in {results} (exit code {proc.returncode}; a configuration "
                "error exits 0)"]
    doc: dict[str, Any] = yaml.safe_load(results_yaml.read_text())
    config = doc.get("config") or {}
    if config.get("tls") != "disabled":
        problems.append(f"config.tls is {config.get('tls')!r}, not 'disabled'")
    apis_cfg = config.get("apis") or {}
    for path in CONFIG_PATHS:
        node: Any = apis_cfg
        for key in path:
            node = node.get(key) if isinstance(node, dict) else None
        if node is not True:
            problems.append(f"config.apis.{'.'.join(path)} is {node!r}: the switch was not "
                            "applied")
    for section in ("apis", "data"):
        entries = doc.get(section) or {}
        if not entries:
            problems.append(f"results.yaml has no {section!r} entries")
        for name, status in sorted(entries.items()):
            expected = "Disabled" if name in EXPECTED_DISABLED else "Pass"
            if status != expected:
                problems.append(f"{section}: {name}: {status} (expected {expected})")
    junit = results / "junit.xml"
    if not junit.exists():
        problems.append("no junit.xml")
    else:
        root = ET.parse(junit).getroot()
        if root.get("failures") not in ("0", None) or root.get("errors") not in ("0", None):
            problems.append(f"junit.xml: {root.get('failures') or 0} failures, "
                            f"{root.get('errors') or 0} errors")
        problems += [f"failed test {c}" for c in _failing_junit_cases(junit)]
    counts = summary_counts(proc.stdout)
    if counts.get("FAIL") or counts.get("Error") or not counts.get("Pass"):
        problems.append(f"summary counts {counts}")
    if "OCI Conformance Result: Pass" not in proc.stdout:
        problems.append("stdout lacks 'OCI Conformance Result: Pass'")
    if proc.returncode != 0:
        problems.append(f"exit code {proc.returncode}")
    return problems


def run_conformance(registry: str, scratch: Path,
                    login: tuple[str, str] | None = None) -> tuple[
                        Path, subprocess.CompletedProcess[str]]:
    """Run the runner from an empty scratch folder (it would load ./oci-conformance.yaml);
    with ``login`` it authenticates through dtr's token endpoint."""
    scratch.mkdir(parents=True, exist_ok=True)
    results = scratch / "results"
    env = conformance_env(registry, results)
    if login:
        env["OCI_USERNAME"], env["OCI_PASSWORD"] = login
    proc = subprocess.run([peer("conformance")], env=env,
                          cwd=scratch, capture_output=True, text=True, timeout=600, check=False)
    return results, proc


def keep_reports(results: Path, proc: subprocess.CompletedProcess[str], label: str) -> None:
    """Copy the reports to ``$DTR_CONFORMANCE_OUT/<label>/`` when that is set."""
    out = os.environ.get("DTR_CONFORMANCE_OUT")
    if not out:
        return
    dest = Path(out) / label
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("results.yaml", "junit.xml", "report.html"):
        if (results / name).exists():
            shutil.copy2(results / name, dest / name)
    (dest / "stdout.txt").write_text(proc.stdout)
    (dest / "stderr.txt").write_text(proc.stderr)


def _failure_report(problems: list[str], proc: subprocess.CompletedProcess[str],
                    server: DtrServer) -> str:
    tree = [line for line in proc.stdout.splitlines()
            if re.search(r": (FAIL|Error|Skip)\s*$", line)]
    stderr = [line for line in proc.stderr.splitlines() if "failed test" in line
              or "level=ERROR" in line or "error" in line.lower()]
    return "\n".join([
        "OCI conformance failed:", *(f"  - {p}" for p in problems[:80]),
        "--- failing entries of the runner's result tree ---", *tree[:80],
        "--- runner stderr (failures) ---", *[s[:600] for s in stderr[:40]],
        "--- runner stdout (tail) ---", *proc.stdout.splitlines()[-30:],
        "--- dtr server log (tail) ---", server_log_tail(server, 40)])


@pytest.mark.parametrize("backend", ["embedded", "pg_minio", "embedded_auth"])
def test_oci_conformance(backend: str, request: pytest.FixtureRequest,
                         tmp_path: Path) -> None:
    server: DtrServer = request.getfixturevalue(backend)
    login = ("admin", server.admin_password) if server.admin_password else None
    results, proc = run_conformance(server.addr, tmp_path / "scratch", login)
    keep_reports(results, proc, backend.replace("_", "-"))
    problems = verdict(results, proc)
    if problems:
        pytest.fail(_failure_report(problems, proc, server), pytrace=False)
    counts = summary_counts(proc.stdout)
    print(f"conformance {backend}: {counts}")
    assert counts["Pass"] == counts["Total"] - counts.get("Disabled", 0)


def test_verdict_catches_a_configuration_error(tmp_path: Path) -> None:
    """The runner exits 0 on a bad configuration; the verdict must still fail it."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    env = conformance_env("127.0.0.1:9", scratch / "results")
    env["OCI_VERSION"] = "9.9"  # unsupported: a configuration error
    proc = subprocess.run([peer("conformance")], env=env, cwd=scratch, capture_output=True,
                          text=True, timeout=60, check=False)
    assert proc.returncode == 0, "the runner's exit-0-on-config-error trap has changed"
    problems = verdict(scratch / "results", proc)
    assert problems
    assert "no results.yaml" in problems[0]
