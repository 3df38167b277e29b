"""Every ``$ dtr …`` example in ``docs/access-control.md`` runs, in order, against a live
registry with the admin CLI, and the decisions the page promises hold afterwards."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import httpx

from tests.support import peers

DOC = Path(__file__).resolve().parents[2] / "docs" / "access-control.md"
BLOCK = re.compile(r"```console\n(.*?)```", re.S)


def examples() -> list[tuple[str, list[str]]]:
    """Each ``$`` command with the output lines the page shows under it."""
    out: list[tuple[str, list[str]]] = []
    for block in BLOCK.findall(DOC.read_text()):
        for line in block.splitlines():
            if line.startswith("$ "):
                out.append((line[2:], []))
            elif line.strip() and out:
                out[-1][1].append(line)
    return out


def run(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run one documented command line (``echo 'x' | dtr …`` feeds stdin)."""
    stdin = None
    if "|" in command:
        feed, command = (part.strip() for part in command.split("|", 1))
        stdin = shlex.split(feed)[1] + "\n"
    argv = shlex.split(command)
    assert argv[0] == "dtr", command
    return subprocess.run([sys.executable, "-m", "dtr", *argv[1:]], input=stdin, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_documented_examples_run_and_mean_what_they_say(tmp_path: Path) -> None:
    cases = examples()
    assert len(cases) >= 15, cases
    with peers.dtr_server(tmp_path / "srv", workers=1, auth=True) as server:
        pat = httpx.post(f"{server.url}/api/v1/tokens", json={"name": "doc-test"},
                         auth=("admin", server.admin_password), timeout=30)
        assert pat.status_code == 201, pat.text
        env = {**server.env, "DTR_CLI_URL": server.url, "DTR_CLI_TOKEN": pat.json()["secret"],
               "DTR_CLI_CONFIG": str(tmp_path / "cli.json")}
        for command, shown in cases:
            r = run(command, env)
            assert r.returncode == 0, f"{command}\n{r.stdout}\n{r.stderr}"
            for line in shown:
                if "(shown once)" in line:
                    continue
                assert line.strip() in r.stdout, f"{command}: {line!r} not in\n{r.stdout}"

        def explain(subject: str, repo: str, action: str) -> bool:
            r = httpx.get(f"{server.url}/api/v1/authz/explain",
                          params={"subject": subject, "repository": repo, "action": action},
                          auth=("admin", server.admin_password), timeout=30)
            assert r.status_code == 200, r.text
            return bool(r.json()["allowed"])

        assert explain("user:alice", "acme/prod/api", "push")
        assert not explain("user:alice", "acme/prod/api", "delete")
        assert not explain("user:alice", "acme/dev/api", "push")
        assert explain("user:carol", "acme/app", "pull")
        assert not explain("user:carol", "acme/secret/x", "pull")
        assert not explain("user:carol", "acme/app", "push")
        assert explain("user:carol", "acme/scan/x", "repo:manage")
        assert explain("robot:robot$acme+ci", "acme/ci/app", "push")
        assert not explain("robot:robot$acme+ci", "acme/prod/api", "push")
        assert explain("user:audrey", "beta/anything", "pull")
        assert not explain("user:audrey", "acme/prod/api", "push")
        assert explain("anonymous", "acme/prod/api", "pull")
        assert not explain("anonymous", "acme/prod/api", "push")
