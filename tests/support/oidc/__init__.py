"""The OpenID Provider test peer: a real ``oidc-provider`` (npm, panva, OpenID Certified)
process on 127.0.0.1, and the harness that configures it, logs accounts in without a
browser and mints CI workload ID tokens — so dtr's OIDC code (authorization code + PKCE
login, group sync, admin group, keyless CI token exchange) is tested with no mocks.

This package owns ``provider.mjs`` (the Node side), the pinned ``package.json`` and
``package-lock.json`` (installed by ``scripts/install-peers.sh oidc-provider`` into
``~/.cache/dtr/peers/oidc-provider-<version>/``, or ``$DTR_PEERS_DIR``), and
:class:`OpenIDProvider`.

How a login is driven (:meth:`OpenIDProvider.complete_login`): the authorization URL (built
by anyone, e.g. dtr's login endpoint) is fetched with a fresh cookie jar (a new "browser")
and redirects are followed by hand. oidc-provider's built-in *dev interactions* answer with
an HTML form at ``/interaction/<uid>``: the login form (hidden ``prompt=login``) is posted
back with ``login=<account id>`` (any password: dev interactions check none), then the
consent form (hidden ``prompt=consent``) is posted as is; the provider then redirects to the
client's ``redirect_uri`` with ``code``, ``state`` and ``iss`` — that URL is returned, not
fetched. An error the provider sends to the ``redirect_uri`` (e.g. ``error=invalid_request``
for a public client without PKCE) is returned the same way; an error page raises
:class:`OIDCFlowError`.

CI workload tokens (:meth:`OpenIDProvider.workload_token`) come from a test-only grant type
registered in the peer (``WORKLOAD_GRANT``): the token endpoint, authenticated as a built-in
confidential client, returns a genuine ID token for any account and audience, signed by the
provider's current key and verifiable against its JWKS.

The provider keeps sessions, codes and grants in memory: :meth:`OpenIDProvider.restart` (and
what calls it — :meth:`~OpenIDProvider.rotate_keys`, :meth:`~OpenIDProvider.add_client` and a
:meth:`~OpenIDProvider.set_account` introducing a claim name unknown to the running process)
invalidates them; the port, issuer, clients, accounts and keys stay.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx
from joserfc.jwk import RSAKey

from tests.support.peers import PEERS_DIR, ROOT, free_port, wait_http

HERE = Path(__file__).resolve().parent
WORKLOAD_GRANT = "urn:dtr:test:workload-id-token"
"""The test-only grant type that issues an ID token for any account and audience."""
WORKLOAD_CLIENT_ID = "dtr-test-workload-issuer"
DEFAULT_SCOPE = "openid profile email groups"
RESERVED_CLAIMS = frozenset({"sub", "iss", "aud", "exp", "iat", "nbf", "azp", "nonce",
                             "auth_time", "at_hash", "c_hash", "s_hash", "sid", "acr", "amr"})
"""Claims the provider sets itself; accounts and workload tokens may not carry them."""
PROFILE_CLAIMS = ("preferred_username", "name", "given_name", "family_name", "nickname",
                  "picture", "locale", "zoneinfo", "updated_at")
EMAIL_CLAIMS = ("email", "email_verified")
DEFAULT_EXTRA_CLAIMS = (
    # GitHub Actions
    "repository", "repository_id", "repository_owner", "repository_owner_id",
    "repository_visibility", "ref", "ref_type", "ref_protected", "sha", "workflow",
    "workflow_ref", "workflow_sha", "job_workflow_ref", "job_workflow_sha", "environment",
    "actor", "actor_id", "event_name", "run_id", "run_number", "run_attempt", "runner_environment",
    # GitLab CI
    "namespace_id", "namespace_path", "project_id", "project_path", "user_login", "user_email",
    "pipeline_id", "pipeline_source", "job_id", "environment_protected", "deployment_tier",
)
"""Claim names released in every ID token (scope ``openid``) when an account carries them."""
MAX_HOPS = 30


class OIDCFlowError(RuntimeError):
    """The provider answered a login step with something other than a redirect or a form."""


def pkce_pair() -> tuple[str, str]:
    """A fresh PKCE ``(code_verifier, S256 code_challenge)``."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def peer_dir() -> Path:
    """The installed oidc-provider peer folder (holding ``node_modules``); installs it when
    missing or installed from another lockfile."""
    package = json.loads((HERE / "package.json").read_text())
    version = package["dependencies"]["oidc-provider"]
    target = PEERS_DIR / f"oidc-provider-{version}"

    def current() -> bool:
        lock = target / "package-lock.json"
        return ((target / "node_modules/oidc-provider/package.json").is_file()
                and lock.is_file()
                and lock.read_bytes() == (HERE / "package-lock.json").read_bytes())

    if not current():
        subprocess.run([str(ROOT / "scripts/install-peers.sh"), "oidc-provider"], check=True)
    if not current():
        raise RuntimeError(f"oidc-provider {version} is not installed in {target}")
    return target


@dataclass(frozen=True)
class OIDCClient:
    """A client registered at the provider."""

    client_id: str
    redirect_uris: tuple[str, ...]
    secret: str | None = None
    """``None``: a public client (``token_endpoint_auth_method=none``, PKCE S256 required)."""
    id_token_ttl: int | None = None
    """ID-token lifetime in seconds for this client (``None``: the provider default)."""
    require_pkce: bool | None = None
    """Force PKCE on or off (``None``: required for public clients only)."""
    grant_types: tuple[str, ...] = ("authorization_code",)

    def metadata(self) -> dict[str, Any]:
        """The client's entry in the peer's config file."""
        meta: dict[str, Any] = {
            "client_id": self.client_id,
            "redirect_uris": list(self.redirect_uris),
            "grant_types": list(self.grant_types),
            "response_types": ["code"] if "authorization_code" in self.grant_types else [],
            "id_token_ttl": self.id_token_ttl,
            "require_pkce": self.require_pkce,
        }
        if self.secret is None:
            meta["token_endpoint_auth_method"] = "none"
        else:
            meta["client_secret"] = self.secret
            meta["token_endpoint_auth_method"] = "client_secret_basic"
        return meta


@dataclass
class _Form:
    action: str
    method: str
    fields: dict[str, str] = field(default_factory=dict)


class _FormParser(HTMLParser):
    """The first ``<form>`` of a page: its action, method and named inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.form: _Form | None = None
        self._inside = False
        self._done = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "form" and not self._done:
            self.form = _Form(values.get("action", ""), values.get("method", "get").lower())
            self._inside = True
        elif tag == "input" and self._inside and self.form is not None and "name" in values:
            self.form.fields[values["name"]] = values.get("value", "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "form" and self._inside:
            self._inside = False
            self._done = True


def _first_form(html: str) -> _Form | None:
    parser = _FormParser()
    parser.feed(html)
    return parser.form


def _new_key() -> dict[str, Any]:
    key = RSAKey.generate_key(2048, parameters={"use": "sig", "alg": "RS256"}, private=True)
    key.ensure_kid()
    return dict(key.as_dict(private=True))


class OpenIDProvider:
    """A real oidc-provider process on ``127.0.0.1:<port>`` (issuer ``http://127.0.0.1:<port>``).

    Configure clients and accounts before or after :meth:`start`; use it as a context manager
    (``with OpenIDProvider() as op:``) or call :meth:`start`/:meth:`stop` from a fixture.
    """

    def __init__(self, workdir: Path | None = None, *, id_token_ttl: int = 3600,
                 workload_ttl: int = 300, extra_claims: Iterable[str] = DEFAULT_EXTRA_CLAIMS,
                 groups_scope: str | None = "groups", start_timeout: float = 30.0) -> None:
        """Prepare (not start) a provider.

        Args:
            workdir: folder for the config, accounts, keys and log (default: a temp folder,
                removed by :meth:`close`).
            id_token_ttl: default ID-token lifetime (seconds).
            workload_ttl: default lifetime of :meth:`workload_token` tokens (seconds).
            extra_claims: claim names released in every ID token when the account has them
                (besides the standard profile/email claims and ``groups``).
            groups_scope: the scope releasing ``groups``; ``None`` releases it always.
            start_timeout: seconds to wait for the discovery document at (re)start.
        """
        self._own_workdir = workdir is None
        self.workdir = Path(tempfile.mkdtemp(prefix="dtr-oidc-")) if workdir is None else workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.id_token_ttl = id_token_ttl
        self.workload_ttl = workload_ttl
        self.groups_scope = groups_scope
        self.start_timeout = start_timeout
        self._extra_claims = list(dict.fromkeys(extra_claims))
        self._keys: list[dict[str, Any]] = [_new_key()]
        self._accounts: dict[str, dict[str, Any]] = {}
        self._workload_secret = secrets.token_urlsafe(24)
        self._clients: dict[str, OIDCClient] = {
            WORKLOAD_CLIENT_ID: OIDCClient(WORKLOAD_CLIENT_ID, (), self._workload_secret,
                                           grant_types=(WORKLOAD_GRANT,)),
        }
        self._proc: subprocess.Popen[bytes] | None = None
        self._metadata: dict[str, Any] | None = None
        self._released: frozenset[str] = frozenset()
        self._write_accounts()

    # -- addresses ---------------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """``http://127.0.0.1:<port>`` (no trailing slash), fixed for this object's life."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def discovery_url(self) -> str:
        """The OpenID Connect discovery document's URL."""
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def log_path(self) -> Path:
        """The node process's stdout and stderr (appended across restarts)."""
        return self.workdir / "provider.log"

    @property
    def running(self) -> bool:
        """Whether the node process is alive."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The node process id (changes at every restart)."""
        return self._proc.pid if self._proc is not None else None

    @property
    def kids(self) -> list[str]:
        """The key ids in the JWKS; the first one signs new tokens."""
        return [str(k["kid"]) for k in self._keys]

    @property
    def clients(self) -> dict[str, OIDCClient]:
        """The registered clients by client_id (including the workload issuer)."""
        return dict(self._clients)

    def metadata(self) -> dict[str, Any]:
        """The discovery document (fetched once per start)."""
        if self._metadata is None:
            self._require_running()
            resp = httpx.get(self.discovery_url, timeout=10, trust_env=False)
            resp.raise_for_status()
            self._metadata = resp.json()
        return self._metadata

    def jwks(self) -> dict[str, Any]:
        """The public JWKS the provider serves now (fetched at every call)."""
        resp = httpx.get(self.metadata()["jwks_uri"], timeout=10, trust_env=False)
        resp.raise_for_status()
        result: dict[str, Any] = resp.json()
        return result

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        """Start the node process and wait for its discovery document."""
        if self.running:
            return
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("the oidc-provider peer needs Node.js 20+ (node not on PATH)")
        runtime = self.workdir / "runtime"
        runtime.mkdir(exist_ok=True)
        # ESM ignores NODE_PATH: `import 'oidc-provider'` resolves from the script's folder,
        # so the script runs from a folder whose node_modules is the installed peer's.
        modules = runtime / "node_modules"
        if modules.is_symlink() or modules.exists():
            modules.unlink()
        modules.symlink_to(peer_dir() / "node_modules", target_is_directory=True)
        shutil.copyfile(HERE / "provider.mjs", runtime / "provider.mjs")
        config = self._write_config()
        env = {k: v for k, v in os.environ.items()
               if k not in {"NODE_OPTIONS", "NODE_PATH", "NODE_ENV"}}
        with self.log_path.open("ab") as log:
            log.write(f"--- start {time.strftime('%H:%M:%S')} ---\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                [node, str(runtime / "provider.mjs"), str(config)], cwd=runtime, env=env,
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self._metadata = None
        try:
            wait_http(self.discovery_url, self.start_timeout, self._proc)
        except Exception as exc:
            self.stop()
            raise RuntimeError(f"oidc-provider did not start: {exc}\n{self.log_tail()}") from exc

    def stop(self) -> None:
        """Stop the node process (SIGTERM, then SIGKILL after 10 s); idempotent."""
        proc, self._proc = self._proc, None
        self._metadata = None
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()

    def restart(self) -> None:
        """Stop and start again on the same port with the current configuration; sessions,
        codes and grants are lost."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop, and remove the work folder if this object created it."""
        self.stop()
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def log_tail(self, lines: int = 60) -> str:
        """The last lines of the node process's log (for failure messages)."""
        if not self.log_path.exists():
            return "(no oidc-provider log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    # -- configuration -----------------------------------------------------------------

    def add_client(self, client_id: str, redirect_uris: Sequence[str], *,
                   secret: str | None = None, id_token_ttl: int | None = None,
                   require_pkce: bool | None = None,
                   grant_types: Sequence[str] = ("authorization_code",)) -> OIDCClient:
        """Register a client (``secret=None``: public, PKCE S256 required); restarts a
        running provider."""
        if client_id == WORKLOAD_CLIENT_ID:
            raise ValueError(f"{client_id} is reserved for workload tokens")
        client = OIDCClient(client_id, tuple(redirect_uris), secret, id_token_ttl,
                            require_pkce, tuple(grant_types))
        self._clients[client_id] = client
        if self.running:
            self.restart()
        return client

    def set_account(self, sub: str, **claims: Any) -> None:
        """Create or replace account ``sub`` with ``claims`` (e.g. ``preferred_username``,
        ``email``, ``groups=[...]``, ``repository``); the provider reads the file at every
        request, so the next login or token sees it. A claim name the running process does
        not release yet restarts it."""
        bad = RESERVED_CLAIMS & claims.keys()
        if bad:
            raise ValueError(f"reserved claims cannot be set on an account: {sorted(bad)}")
        self._accounts[sub] = json.loads(json.dumps(claims))
        self._write_accounts()
        if self.running and not claims.keys() <= self._released:
            self.restart()

    def remove_account(self, sub: str) -> None:
        """Delete account ``sub`` (it can no longer log in or get workload tokens)."""
        self._accounts.pop(sub, None)
        self._write_accounts()

    def account(self, sub: str) -> dict[str, Any]:
        """A copy of account ``sub``'s claims."""
        result: dict[str, Any] = json.loads(json.dumps(self._accounts[sub]))
        return result

    def rotate_keys(self, *, keep_old: bool = False) -> str:
        """Add a new signing key (it signs from now on) and drop the old ones unless
        ``keep_old``; restarts a running provider. Returns the new key id."""
        key = _new_key()
        self._keys = [key, *self._keys] if keep_old else [key]
        if self.running:
            self.restart()
        return str(key["kid"])

    # -- flows -------------------------------------------------------------------------

    def authorization_url(self, client_id: str, redirect_uri: str, *,
                          scope: str = DEFAULT_SCOPE, state: str | None = None,
                          nonce: str | None = None, code_challenge: str | None = None,
                          code_challenge_method: str = "S256", **params: str) -> str:
        """An authorization-code request URL (``code_challenge`` omitted when ``None``)."""
        query: dict[str, str] = {"response_type": "code", "client_id": client_id,
                                 "redirect_uri": redirect_uri, "scope": scope}
        if state is not None:
            query["state"] = state
        if nonce is not None:
            query["nonce"] = nonce
        if code_challenge is not None:
            query["code_challenge"] = code_challenge
            query["code_challenge_method"] = code_challenge_method
        query.update(params)
        return f"{self.metadata()['authorization_endpoint']}?{urlencode(query)}"

    def complete_login(self, authorize_url: str, account: str) -> str:
        """Run the whole browser side of an authorization request as ``account`` (login and
        consent, over plain HTTP with a fresh cookie jar) and return the URL the provider
        redirects to (the client's ``redirect_uri`` with ``code``/``state``/``iss``, or with
        ``error``), without fetching it."""
        self._require_running()
        if account not in self._accounts:
            raise KeyError(f"no account {account!r}: call set_account first")
        with httpx.Client(timeout=15, trust_env=False, follow_redirects=False) as http:
            resp = http.get(authorize_url)
            for _ in range(MAX_HOPS):
                if resp.is_redirect:
                    location = urljoin(str(resp.url), resp.headers["location"])
                    if not self._is_own(location):
                        return location
                    resp = http.get(location)
                    continue
                form = _first_form(resp.text) if resp.status_code == 200 else None
                if form is None:
                    break
                action = urljoin(str(resp.url), form.action)
                if not self._is_own(action):
                    raise OIDCFlowError(f"response_mode=form_post to {action} is not supported")
                fields = dict(form.fields)
                prompt = fields.get("prompt")
                if prompt == "login":
                    fields.update(login=account, password="any")  # dev logins check no password
                elif prompt != "consent":
                    raise OIDCFlowError(f"unknown interaction prompt {prompt!r} at {resp.url}")
                resp = http.post(action, data=fields)
            raise OIDCFlowError(f"login stuck at {resp.url} ({resp.status_code}): "
                                f"{resp.text[:2000]}\n{self.log_tail(20)}")

    def login(self, client_id: str, redirect_uri: str, account: str, *,
              scope: str = DEFAULT_SCOPE, state: str | None = None, nonce: str | None = None,
              code_challenge: str | None = None) -> str:
        """Log ``account`` in at ``client_id`` (see :meth:`complete_login`) and return the
        authorization code; raises :class:`OIDCFlowError` on an error redirect or a state
        mismatch."""
        state = state if state is not None else secrets.token_urlsafe(12)
        url = self.authorization_url(client_id, redirect_uri, scope=scope, state=state,
                                     nonce=nonce, code_challenge=code_challenge)
        redirected = self.complete_login(url, account)
        params = {k: v[0] for k, v in parse_qs(urlsplit(redirected).query).items()}
        if "error" in params:
            raise OIDCFlowError(f"authorization failed: {params}")
        if params.get("state") != state:
            raise OIDCFlowError(f"state mismatch in {redirected}")
        return params["code"]

    def workload_token(self, account: str, audience: str, ttl: int | None = None,
                       **claims: Any) -> str:
        """A CI workload ID token: ``sub=account``, ``aud=audience``, the account's stored
        claims (if any) overridden by ``claims`` (a ``jti`` too), lifetime ``ttl`` seconds
        (default ``workload_ttl``), signed by the current key. An unknown account needs
        ``claims``."""
        self._require_running()
        bad = RESERVED_CLAIMS & claims.keys()
        if bad:
            raise ValueError(f"reserved claims cannot be set on a workload token: {sorted(bad)}")
        data = {"grant_type": WORKLOAD_GRANT, "account": account, "audience": audience}
        if ttl is not None:
            data["ttl"] = str(ttl)
        if claims:
            data["workload_claims"] = json.dumps(claims)
        resp = httpx.post(self.metadata()["token_endpoint"], data=data, timeout=15,
                          auth=(WORKLOAD_CLIENT_ID, self._workload_secret), trust_env=False)
        if resp.status_code != 200:
            raise OIDCFlowError(f"workload token refused ({resp.status_code}): {resp.text}")
        return str(resp.json()["id_token"])

    # -- forged tokens (refusal tests) --------------------------------------------------

    def workload_claims(self, account: str, audience: str, ttl: int | None = None,
                        **claims: Any) -> dict[str, Any]:
        """The claims :meth:`workload_token` would sign (``iss``, ``sub``, ``aud``, ``iat``,
        ``exp``, ``jti``, the account's stored claims, then ``claims``), for :meth:`sign`.
        Unlike :meth:`workload_token`, ``claims`` may override reserved ones (``nbf``,
        ``iss``, ``exp``…): that is what forging is for."""
        now = int(time.time())
        lifetime = self.workload_ttl if ttl is None else ttl
        base: dict[str, Any] = {"jti": secrets.token_urlsafe(12),
                                **self._accounts.get(account, {})}
        base.update({"iss": self.issuer, "sub": account, "aud": audience, "iat": now,
                     "exp": now + lifetime})
        base.update(claims)
        return base

    def sign(self, claims: dict[str, Any], *, kid: str | None = None,
             key: dict[str, Any] | None = None, alg: str = "RS256") -> str:
        """A compact JWS of ``claims`` signed with the provider's current private key (or
        the published key ``kid``, or any private JWK ``key``, whose own ``kid`` goes in the
        header unless ``kid`` is given) — to forge tokens the provider would never issue:
        not yet valid, for another issuer, signed by a key it does not publish."""
        from joserfc import jwt as jose_jwt  # noqa: PLC0415 - only forging tests need it
        from joserfc.jwk import import_key  # noqa: PLC0415

        if key is None:
            key = next((k for k in self._keys if kid is None or k["kid"] == kid), None)
            if key is None:
                raise KeyError(f"the provider has no key {kid!r}")
        header = {"alg": alg, "typ": "JWT", "kid": kid or key.get("kid", "")}
        return jose_jwt.encode(header, claims, import_key(key))

    @staticmethod
    def foreign_key() -> dict[str, Any]:
        """A fresh RSA private JWK (with a ``kid``) that no provider publishes."""
        return _new_key()

    # -- internals ---------------------------------------------------------------------

    def _require_running(self) -> None:
        if not self.running:
            raise RuntimeError(f"oidc-provider is not running\n{self.log_tail(20)}")

    def _is_own(self, url: str) -> bool:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}" == self.issuer

    def _claims_config(self) -> dict[str, list[str]]:
        known = {*PROFILE_CLAIMS, *EMAIL_CLAIMS, "groups"}
        seen = {name for claims in self._accounts.values() for name in claims}
        extra = [*self._extra_claims, *sorted(seen - known - set(self._extra_claims))]
        openid = ["sub", *extra]
        config = {"openid": openid, "profile": list(PROFILE_CLAIMS),
                  "email": list(EMAIL_CLAIMS)}
        if self.groups_scope is None:
            openid.append("groups")
        else:
            config.setdefault(self.groups_scope, []).append("groups")
        return config

    def _write_config(self) -> Path:
        claims = self._claims_config()
        self._released = frozenset(name for names in claims.values() for name in names)
        _write_json(self.workdir / "jwks.json", {"keys": self._keys})
        config = {
            "issuer": self.issuer,
            "port": self.port,
            "accounts_file": str(self.workdir / "accounts.json"),
            "jwks_file": str(self.workdir / "jwks.json"),
            "clients": [c.metadata() for c in self._clients.values()],
            "claims": claims,
            "id_token_ttl": self.id_token_ttl,
            "workload": {"grant_type": WORKLOAD_GRANT, "default_ttl": self.workload_ttl},
        }
        path = self.workdir / "config.json"
        _write_json(path, config)
        return path

    def _write_accounts(self) -> None:
        _write_json(self.workdir / "accounts.json", self._accounts)


def _write_json(path: Path, value: Any) -> None:
    """Write ``value`` atomically (the provider may be reading the file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(value, indent=1))
    os.replace(tmp, path)
