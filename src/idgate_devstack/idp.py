"""Launcher for the test OpenID Provider in ``testidp/`` (npm ``oidc-provider``, run by Node).

Used by pytest fixtures and by ``idgate demo``::

    config = IdpConfig(port=free_port(), tls_cert=certs.cert, tls_key=certs.key, ca_file=certs.ca,
                       redirect_uris=("https://127.0.0.1:8443/oauth2/callback",), test_endpoints=True)
    with TestIdp(config) as idp:
        idp.issuer          # "https://localhost:<port>"
        idp.rotate_keys()   # test-only endpoints (config.test_endpoints=True)

The provider keeps everything in memory: every start is a fresh IdP with fresh signing keys. Built-in users
(any password): ``alice``, ``bob``, ``carol``, ``mallory``, and ``trudy`` (alice's address as her own,
unverified email: ``email_verified: false``; see ``testidp/server.mjs``).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import ssl
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import quote

import httpx

from idgate_devstack.process import StartStop, free_tcp_port, stop_process

__all__ = ["IdpConfig", "KeyRotation", "TestIdp", "find_testidp_dir", "free_port"]

TESTIDP_DIR_ENV = "IDGATE_TESTIDP_DIR"
_POLL_INTERVAL_S = 0.05
_STOP_GRACE_S = 5.0
_NPM_CI_TIMEOUT_S = 600.0
_LOG_TAIL_BYTES = 8000
_START_ATTEMPTS = 2


class _StartHung(RuntimeError):
    """The IdP process is alive but printed no ready line in time."""


def _machine_load() -> str:
    """The 1-minute load average, for start-up errors (empty where /proc is missing)."""
    try:
        return "load average " + Path("/proc/loadavg").read_text().split()[0]
    except (OSError, IndexError):
        return "load average unknown"


def _process_state(pid: int) -> str:
    """Where a Node process that stopped answering is: its state letter (R running, S sleeping, D disk wait …), the
    CPU seconds it used and the kernel function it waits in (``/proc/<pid>/stat`` and ``wchan``). A hung test IdP was
    seen in CI twice without a cause; this says next time whether it spins or blocks."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        cpu = (int(fields[11]) + int(fields[12])) / ticks
        wchan = Path(f"/proc/{pid}/wchan").read_text().strip() or "-"
    except (OSError, IndexError, ValueError):
        return f"node pid {pid}: state unknown"
    return f"node pid {pid}: state {fields[0]}, {cpu:.1f} s CPU, waiting in {wchan}"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 a moment ago (:func:`idgate_devstack.process.free_tcp_port`)."""
    return free_tcp_port()


def find_testidp_dir() -> Path:
    """Locate the ``testidp/`` directory: ``$IDGATE_TESTIDP_DIR``, else the first parent of this file with
    ``testidp/package.json`` (works for a source checkout and an editable install).

    Raises ``RuntimeError`` when neither exists.
    """
    override = os.environ.get(TESTIDP_DIR_ENV)
    if override:
        path = Path(override).resolve()
        if not (path / "package.json").is_file():
            raise RuntimeError(f"{TESTIDP_DIR_ENV}={override} has no package.json")
        return path
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "testidp"
        if (candidate / "package.json").is_file():
            return candidate
    raise RuntimeError(f"cannot find testidp/package.json above {Path(__file__).resolve()}; set {TESTIDP_DIR_ENV}")


def _ensure_node_modules(testidp_dir: Path) -> None:
    """Run ``npm ci --prefix <testidp_dir>`` unless ``oidc-provider`` is installed there already.

    Serialised across processes (pytest-xdist workers) with an flock in the temp directory.
    """
    marker = testidp_dir / "node_modules" / "oidc-provider" / "package.json"
    if marker.is_file():
        return
    digest = hashlib.sha256(str(testidp_dir).encode()).hexdigest()[:16]
    lock_path = Path(tempfile.gettempdir()) / f"idgate-testidp-{digest}.lock"
    with lock_path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if marker.is_file():
            return
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError(f"npm is not on PATH; cannot install {testidp_dir}/node_modules")
        try:
            result = subprocess.run(  # noqa: S603 - fixed argv, no shell
                [npm, "ci", "--prefix", str(testidp_dir), "--no-audit", "--no-fund"],
                capture_output=True,
                text=True,
                timeout=_NPM_CI_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise RuntimeError(f"npm ci --prefix {testidp_dir} failed: {exc!r}") from exc
        if result.returncode != 0 or not marker.is_file():
            raise RuntimeError(
                f"npm ci --prefix {testidp_dir} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
            )


@dataclass(frozen=True, kw_only=True)
class IdpConfig:
    """How to run the test IdP; each field maps to one ``IDP_*`` variable of ``testidp/server.mjs``.

    ``port``: TCP port (``IDP_PORT``). ``host``: bind address (``IDP_HOST``). ``issuer``: issuer URL
    without trailing slash; None means ``https://localhost:<port>`` with TLS, ``http://localhost:<port>``
    without. ``tls_cert``/``tls_key``: PEM paths; both or neither (HTTPS when both). ``ca_file``: PEM trust
    anchor for talking to the IdP (httpx here, ``NODE_EXTRA_CA_CERTS`` for its back-channel logout calls).
    ``redirect_uris``/``post_logout_redirect_uris``: exact URIs of the one static client.
    ``backchannel_logout_uri``: the client's back-channel logout endpoint, if any. ``resources``: resource
    indicators = JWT access-token audiences; the first is the default. ``access_token_ttl``/``id_token_ttl``:
    seconds. ``test_endpoints``: enable ``/test/*`` (never in anything but tests and the demo).
    ``log_file``: where Node's stdout+stderr go (None: a new temp file). ``testidp_dir``: None means
    :func:`find_testidp_dir`. ``node``: the Node executable. ``startup_timeout``: seconds to wait for
    discovery to answer.
    """

    port: int
    host: str = "localhost"
    issuer: str | None = None
    tls_cert: Path | None = None
    tls_key: Path | None = None
    ca_file: Path | None = None
    client_id: str = "idgate"
    client_secret: str = "idgate-test-secret-0123456789abcdef"  # noqa: S105 - test client only
    redirect_uris: tuple[str, ...] = ()
    post_logout_redirect_uris: tuple[str, ...] = ()
    backchannel_logout_uri: str | None = None
    resources: tuple[str, ...] = ("https://api.idgate.test",)
    access_token_ttl: int = 300
    id_token_ttl: int = 300
    test_endpoints: bool = False
    log_file: Path | None = None
    testidp_dir: Path | None = None
    node: str = "node"
    startup_timeout: float = 30.0
    profile: str = "generic"
    """``IDP_PROFILE``: ``generic``, ``keycloak``, ``entra``, ``okta`` or ``google`` (that provider's documented
    token shapes, reproduced on oidc-provider: see ``testidp/server.mjs`` PROFILES)."""

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be 1-65535, got {self.port}")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("set both tls_cert and tls_key, or neither")
        if not self.redirect_uris:
            raise ValueError("redirect_uris must list at least one URI")
        if not self.resources:
            raise ValueError("resources must list at least one resource indicator")
        for name in ("redirect_uris", "post_logout_redirect_uris", "resources"):
            if any("," in uri for uri in getattr(self, name)):
                raise ValueError(f"{name} entries must not contain commas")
        if self.access_token_ttl <= 0 or self.id_token_ttl <= 0:
            raise ValueError("token TTLs must be positive (seconds)")

    @property
    def tls(self) -> bool:
        """True when the IdP serves HTTPS."""
        return self.tls_cert is not None

    @property
    def effective_issuer(self) -> str:
        """The issuer URL the IdP will announce."""
        if self.issuer is not None:
            return self.issuer.rstrip("/")
        return f"{'https' if self.tls else 'http'}://localhost:{self.port}"

    def environ(self) -> dict[str, str]:
        """The ``IDP_*`` (and ``NODE_EXTRA_CA_CERTS``) variables for ``server.mjs``; no other variables."""
        env = {
            "IDP_PORT": str(self.port),
            "IDP_HOST": self.host,
            "IDP_ISSUER": self.effective_issuer,
            "IDP_CLIENT_ID": self.client_id,
            "IDP_CLIENT_SECRET": self.client_secret,
            "IDP_REDIRECT_URIS": ",".join(self.redirect_uris),
            "IDP_POST_LOGOUT_REDIRECT_URIS": ",".join(self.post_logout_redirect_uris),
            "IDP_RESOURCES": ",".join(self.resources),
            "IDP_ACCESS_TOKEN_TTL": str(self.access_token_ttl),
            "IDP_ID_TOKEN_TTL": str(self.id_token_ttl),
            "IDP_TEST_ENDPOINTS": "1" if self.test_endpoints else "0",
            "IDP_PROFILE": self.profile,
        }
        if self.tls_cert is not None and self.tls_key is not None:
            env["IDP_TLS_CERT"] = str(self.tls_cert)
            env["IDP_TLS_KEY"] = str(self.tls_key)
        if self.backchannel_logout_uri is not None:
            env["IDP_BACKCHANNEL_LOGOUT_URI"] = self.backchannel_logout_uri
        if self.ca_file is not None:
            env["NODE_EXTRA_CA_CERTS"] = str(self.ca_file)
        return env

    def verify(self) -> ssl.SSLContext | bool:
        """The httpx ``verify`` value for talking to this IdP (an SSLContext trusting ``ca_file``)."""
        if self.ca_file is not None:
            return ssl.create_default_context(cafile=str(self.ca_file))
        return True


@dataclass(frozen=True, kw_only=True)
class KeyRotation:
    """Result of :meth:`TestIdp.rotate_keys`: the new signer's ``kid`` and all published kids, signer first."""

    kid: str
    published: tuple[str, ...]


@dataclass(kw_only=True)
class _Running:
    process: subprocess.Popen[bytes]
    log: IO[bytes]
    log_offset: int
    client: httpx.Client
    discovery: dict[str, Any] = field(default_factory=dict)


class TestIdp(StartStop):
    """A running test IdP (context manager): starts ``node server.mjs`` and waits for discovery.

    ``start()`` raises ``RuntimeError`` (with the tail of Node's output) if the process dies or discovery
    does not answer within ``config.startup_timeout`` seconds. ``stop()`` sends SIGTERM, then SIGKILL after
    5 s. The ``/test/*`` helpers need ``config.test_endpoints``.
    """

    __test__ = False  # not a pytest test class, despite the name

    def __init__(self, config: IdpConfig) -> None:
        self.config = config
        self.log_file: Path = config.log_file or Path(tempfile.mkstemp(prefix="idgate-testidp-", suffix=".log")[1])
        self._running: _Running | None = None

    # ---------------------------------------------------------------------------------------- lifecycle

    def start(self) -> None:
        """Install npm dependencies if needed, start the IdP and wait until discovery answers.

        A start that hangs (Node alive, no ready line within ``config.startup_timeout`` s: seen on loaded CI
        machines, while the same start takes ~0.5 s otherwise) is killed and tried once more before it raises."""
        if self._running is not None:
            raise RuntimeError("the test IdP is already running")
        testidp_dir = self.config.testidp_dir or find_testidp_dir()
        _ensure_node_modules(testidp_dir)
        for attempt in range(1, _START_ATTEMPTS + 1):
            try:
                self._start_once(testidp_dir)
                return
            except _StartHung:
                if attempt == _START_ATTEMPTS:
                    raise
                with contextlib.suppress(OSError), self.log_file.open("ab") as log:
                    log.write(f"[idgate_devstack] start attempt {attempt} hung; trying again\n".encode())

    def _start_once(self, testidp_dir: Path) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_file.open("ab")
        log_offset = log.tell()
        try:
            process = subprocess.Popen(  # noqa: S603 - fixed argv, no shell
                [self.config.node, str(testidp_dir / "server.mjs")],
                cwd=testidp_dir,
                env={**os.environ, **self.config.environ()},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        except OSError as exc:
            log.close()
            raise RuntimeError(f"cannot start {self.config.node}: {exc!r}") from exc
        client = httpx.Client(verify=self.config.verify(), timeout=5.0)
        self._running = _Running(process=process, log=log, log_offset=log_offset, client=client)
        try:
            self._running.discovery = self._wait_ready(self._running)
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, running: _Running) -> dict[str, Any]:
        """Wait for ``idp ready <issuer>`` in this run's output, then fetch discovery.

        Requiring the ready line (not only discovery) keeps a stale server on the same port from passing
        for ours.
        """
        url = self.issuer + "/.well-known/openid-configuration"
        ready_line = f"idp ready {self.issuer}\n".encode()
        deadline = time.monotonic() + self.config.startup_timeout
        last_error = "no ready line yet"
        while time.monotonic() < deadline:
            if running.process.poll() is not None:
                raise RuntimeError(
                    f"test IdP exited with code {running.process.returncode} before it was ready; "
                    f"output ({self.log_file}):\n{self.log_tail()}"
                )
            if ready_line in self._log_since(running.log_offset):
                try:
                    response = running.client.get(url)
                except httpx.HTTPError as exc:
                    last_error = repr(exc)
                else:
                    if response.status_code == 200:
                        doc: dict[str, Any] = response.json()
                        if doc.get("issuer") != self.issuer:
                            raise RuntimeError(
                                f"discovery at {url} announces issuer {doc.get('issuer')!r}, expected {self.issuer!r}"
                            )
                        return doc
                    last_error = f"discovery answered HTTP {response.status_code}"
            time.sleep(_POLL_INTERVAL_S)
        raise _StartHung(
            f"test IdP not ready after {self.config.startup_timeout} s (last: {last_error}; {_machine_load()}; "
            f"{_process_state(running.process.pid)}); "
            f"output ({self.log_file}):\n{self.log_tail()}"
        )

    def _log_since(self, offset: int) -> bytes:
        with contextlib.suppress(OSError), self.log_file.open("rb") as f:
            f.seek(offset)
            return f.read(_LOG_TAIL_BYTES)
        return b""

    def stop(self) -> None:
        """Stop the IdP: SIGTERM, SIGKILL after 5 s. Idempotent."""
        running, self._running = self._running, None
        if running is None:
            return
        try:
            stop_process(running.process, grace=_STOP_GRACE_S)
        finally:
            running.client.close()
            running.log.close()

    def log_tail(self, max_bytes: int = _LOG_TAIL_BYTES) -> str:
        """The last ``max_bytes`` of Node's output (decoded leniently)."""
        with contextlib.suppress(OSError), self.log_file.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            return f.read().decode("utf-8", "replace")
        return ""

    # --------------------------------------------------------------------------------------- properties

    def _state(self) -> _Running:
        if self._running is None:
            raise RuntimeError("the test IdP is not running")
        return self._running

    @property
    def issuer(self) -> str:
        """Issuer URL, no trailing slash."""
        return self.config.effective_issuer

    @property
    def discovery(self) -> Mapping[str, Any]:
        """The discovery document fetched at start."""
        return self._state().discovery

    @property
    def jwks_uri(self) -> str:
        """The JWKS URL from discovery."""
        uri = self._state().discovery.get("jwks_uri")
        if not isinstance(uri, str):
            raise RuntimeError("the IdP's discovery document has no jwks_uri")
        return uri

    @property
    def http(self) -> httpx.Client:
        """An httpx client that trusts the IdP's certificate (for tests that talk to it directly)."""
        return self._state().client

    def jwks(self) -> dict[str, Any]:
        """Fetch the published JWKS (``{"keys": [...]}``, public RSA JWKs with ``kid``)."""
        response = self._state().client.get(self.jwks_uri)
        response.raise_for_status()
        value: dict[str, Any] = response.json()
        return value

    # ------------------------------------------------------------------------------------ test endpoints

    def _test_call(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        params: Mapping[str, str] | None = None,
    ) -> httpx.Response:
        if not self.config.test_endpoints:
            raise RuntimeError("test endpoints are disabled (IdpConfig.test_endpoints=False)")
        running = self._state()
        try:
            response = running.client.request(method, self.issuer + path, json=body, params=params)
        except httpx.TimeoutException as exc:
            state = _process_state(running.process.pid)
            raise RuntimeError(
                f"{method} {path}: no answer from the test IdP ({exc!r}; {state}; {_machine_load()})"
            ) from exc
        if response.status_code != 200:
            raise RuntimeError(f"{method} {path} answered {response.status_code}: {response.text[:300]}")
        return response

    def rotate_keys(self, *, drop_old: bool = False) -> KeyRotation:
        """Make a new RS256 key the signer; keep publishing the old ones unless ``drop_old``.

        Sessions, grants and refresh tokens survive (one shared store).
        """
        data = self._test_call("POST", "/test/rotate-keys", {"drop_old": drop_old}).json()
        return KeyRotation(kid=data["kid"], published=tuple(data["published"]))

    def sign(self, header: Mapping[str, Any], claims: Mapping[str, Any], key: str = "current") -> str:
        """Sign ``claims`` with the IdP's real private key ``key`` (``"current"`` or a kid, also dropped ones).

        ``header`` may set ``alg`` (RS256/384/512, PS256/384/512; default RS256), ``typ`` (none unless set)
        and ``kid`` (default: the key's kid; any value given, even a bogus one, is kept). Returns a compact
        JWS.
        """
        body = {"header": dict(header), "claims": dict(claims), "key": key}
        token = self._test_call("POST", "/test/sign", body).json().get("token")
        if not isinstance(token, str):
            raise RuntimeError("POST /test/sign returned no token")
        return token

    def public_key_pem(self, kid: str | None = None) -> bytes:
        """The current (or ``kid``'s) public key as SPKI PEM bytes."""
        return self._test_call("GET", "/test/public-key.pem", params={"kid": kid} if kid else None).content

    def set_groups(self, user: str, groups: Sequence[str]) -> None:
        """Replace ``user``'s groups; the next tokens (login or refresh) carry them."""
        self._test_call("POST", f"/test/users/{quote(user, safe='')}/groups", {"groups": list(groups)})
