"""Fuzz targets: one function per parser of hostile input, ``target(data: bytes) -> None``, asserting its contract.

Plain Python, no atheris: ``scripts/fuzz TARGET SECONDS`` drives a target under atheris (``atheris_main.py``) and
``test_fuzz_replay.py`` replays every corpus file through every target in the default test run. A target raises
(``AssertionError`` or the unexpected exception itself) exactly when the contract is broken; every documented
refusal is swallowed. The contracts:

- ``spop``: the SPOP codec (``idgate.spoe.spop``) raises only ``SpopError`` with a known status; a decoded frame
  re-encodes to bytes that decode to the same frame; a HELLO negotiates or raises ``SpopError``; a NOTIFY's
  messages give ``MessageError`` or facts (``idgate.spoe.adapter.facts_from_args``), whose host and path
  canonicalise or raise ``RequestError``. Input: the 4-byte length prefix, then the frame.
- ``jws``: ``split_compact_jws`` raises only ``TokenError`` (``token_too_large``, ``invalid_token``); the whole
  verifier raises only ``TokenError`` with a documented 401 reason code, and a principal it returns has a short
  subject and unique non-empty string groups. Input: a token, or ``{header JSON}\\n{payload JSON}``, which the
  target signs (ES256, a key of this process) so the claims reach PyJWT and ``principal_from_claims``.
- ``cookies``: ``SessionCookies.decode`` never raises and gives a payload or a documented reason; a payload it
  returns round-trips; ``without_cookies`` never raises and returns only input pairs, none with the prefix.
  Input: a ``Cookie`` header (UTF-8); seeds hold cookies sealed with :data:`COOKIE_KEY`.
- ``redirects``: ``safe_return_to`` returns the default or printable ASCII that is either a path starting with a
  single ``/`` (never ``//`` or ``/\\``) or a URL whose origin is allowed; the WHATWG parser (``ada-url``, when
  installed) agrees: joined to the site's URL, the answer stays on the site or an allowed origin. It is a fixed
  point. ``canonical_origin`` returns None or a canonical origin.
- ``config``: YAML bytes in a file → ``load_config`` gives a ``Config`` or ``ConfigError``, nothing else; a
  ``Config`` summarises.
- ``identity``: ``render_identity`` for every profile gives printable ASCII values (no CR/LF); decoding the
  groups gives back exactly the groups without ``,`` or control characters. Input: fields split on ``0xFF``
  (never in UTF-8): user, email, name, subject, issuer, then groups.
"""

from __future__ import annotations

import atexit
import base64
import os
import quopri
import re
import shutil
import tempfile
import urllib.parse
from collections.abc import Callable, Coroutine, Mapping
from pathlib import Path
from typing import Any, Final

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from idgate.config import IssuerConfig, UpstreamConfig
from idgate.config_load import load_config, summarize
from idgate.errors import ConfigError, MessageError, RequestError, SpopError, TokenError
from idgate.facts import canonical_host, canonical_path
from idgate.identity import render_identity
from idgate.jwks import VerificationKey
from idgate.principal import MAX_GROUPS, Principal
from idgate.spoe import spop
from idgate.spoe.adapter import MESSAGE, REQUIRED_ARGS, facts_from_args
from idgate.spoe.agent import message_args
from idgate.sso.cookies import CookieJarSettings, KeyRing, SessionCookies, without_cookies
from idgate.sso.redirects import MAX_RETURN_TO, canonical_origin, safe_return_to
from idgate.verifier import TrustedIssuer, Verifier, split_compact_jws

try:  # the WHATWG URL parser (test extra); the redirects target checks it when it is there
    import ada_url
except ImportError:  # pragma: no cover - the test extra installs it
    ada_url = None

Target = Callable[[bytes], None]


def _expect(reason: str, allowed: frozenset[str] | set[str]) -> None:
    """A refusal's reason code must be one the contract documents."""
    assert reason in allowed, reason


def _text(data: bytes) -> str:
    """Fuzz bytes as the text a header or SPOP STRING can carry: any Unicode, invalid UTF-8 replaced."""
    return data.decode("utf-8", "replace")


# --- spop -----------------------------------------------------------------------------------------------------------

_STATUSES = frozenset(int(s) for s in spop.Status)
_BIG = 1 << 32


def _spop_error(exc: SpopError) -> None:
    """A refusal the agent can send: a known status and an AGENT-DISCONNECT that encodes (as the agent builds it)."""
    assert exc.status in _STATUSES, exc.status
    message = spop.status_message(exc).encode("utf-8")[:200].decode("utf-8", "ignore")  # as agent.disconnect cuts it
    wire = spop.encode_frame(spop.AgentDisconnect(status_code=spop.Status(exc.status), message=message))
    assert len(wire) - 4 <= spop.MIN_FRAME_SIZE, len(wire)  # the size every peer accepts


def fuzz_spop(data: bytes) -> None:
    try:
        length = spop.frame_length(data[:4], spop.MAX_FRAME_SIZE)
        assert 0 <= length <= spop.MAX_FRAME_SIZE
    except SpopError as exc:
        _spop_error(exc)
    body = data[4:]
    try:
        header, offset = spop.decode_header(body)
    except SpopError as exc:
        _spop_error(exc)
        return
    assert 0 < offset <= len(body)
    if header.type == spop.FrameType.NOTIFY:  # the agent's hot path decodes NOTIFY directly
        try:
            _notify(spop.decode_notify(header, body, offset))
        except SpopError as exc:
            _spop_error(exc)
    try:
        frame = spop.decode_payload(header, body, offset)
    except SpopError as exc:
        _spop_error(exc)
        return
    _round_trip(frame)
    if isinstance(frame, spop.HaproxyHello):
        try:
            answer = spop.negotiate(frame, max_frame_size=spop.MAX_FRAME_SIZE)
        except SpopError as exc:
            _spop_error(exc)
        else:
            assert spop.MIN_FRAME_SIZE <= answer.max_frame_size <= spop.MAX_FRAME_SIZE
            assert answer.version == spop.SPOP_VERSION


def _round_trip(frame: spop.Frame) -> None:
    try:
        wire = spop.encode_frame(frame)
    except ValueError:
        return  # a decoded value our encoder types differently (a negative max-frame-size as UINT32): not a codec bug
    assert spop.decode_wire(wire, max_frame_size=_BIG) == frame, (frame, wire)


def _notify(notify: spop.Notify) -> None:
    expected = {MESSAGE: REQUIRED_ARGS}
    for message in notify.messages:
        try:
            args = message_args(message.name, message.args, expected)
        except MessageError as exc:
            _expect(exc.reason, {"duplicate_argument", "unknown_message", "missing_argument"})
            continue
        facts = facts_from_args(args)
        if facts is None:
            continue
        for canonical in (canonical_host, canonical_path):
            try:
                canonical(facts.host if canonical is canonical_host else facts.path)
            except RequestError as exc:
                _expect(exc.reason, {"invalid_host", "invalid_path"})


# --- jws ------------------------------------------------------------------------------------------------------------

JWS_ISSUER: Final = "https://idp.fuzz.test"
JWS_AUDIENCE: Final = "https://api.fuzz.test"
_TOKEN_REASONS = frozenset(
    {
        *("invalid_token", "invalid_signature", "expired", "not_yet_valid", "invalid_audience", "invalid_issuer"),
        *("unknown_kid", "alg_not_allowed", "forbidden_header", "unsupported_crit", "invalid_typ"),
        *("invalid_claims", "token_too_large", "keys_unavailable"),
    }
)
_EC_KEY = ec.generate_private_key(ec.SECP256R1())


class _Keys:
    """A JWKS cache stand-in: kid ``gone`` is unknown, any other kid is this process's EC key."""

    async def get_key(self, kid: str | None) -> VerificationKey:
        if kid == "gone":
            raise TokenError("unknown_kid", "no key")
        return VerificationKey(kid=kid, key=_EC_KEY.public_key(), algorithms=frozenset({"ES256"}))


_VERIFIER = Verifier(
    issuers={
        JWS_ISSUER: TrustedIssuer(
            config=IssuerConfig(
                name="fuzz",
                issuer=JWS_ISSUER,
                discovery=False,
                jwks_uri=JWS_ISSUER + "/jwks",
                audiences=(JWS_AUDIENCE,),
                algorithms=("ES256", "RS256"),
                require_at_jwt_typ=False,
                max_token_bytes=8192,
            ),
            keys=_Keys(),  # type: ignore[arg-type]
        )
    }
)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def sign_es256(header: bytes, payload: bytes) -> str:
    """A compact JWS of the raw JSON bytes, signed with this process's key (so any claims reach PyJWT)."""
    signing_input = f"{_b64(header)}.{_b64(payload)}"
    r, s = decode_dss_signature(_EC_KEY.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    return f"{signing_input}.{_b64(r.to_bytes(32, 'big') + s.to_bytes(32, 'big'))}"


def _run(coro: Coroutine[Any, Any, Principal]) -> Principal:
    """Drive a coroutine that never really waits (the key stand-in answers at once)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    coro.close()
    raise AssertionError("the verifier waited on something")


def fuzz_jws(data: bytes) -> None:
    if data.startswith(b"{"):
        header, _, payload = data.partition(b"\n")
        token = sign_es256(header, payload)
    else:
        token = _text(data)
    try:
        parsed_header, parsed_payload, signature = split_compact_jws(token, max_bytes=8192)
    except TokenError as exc:
        _expect(exc.reason, {"token_too_large", "invalid_token"})
    else:
        assert isinstance(parsed_header, dict) and isinstance(parsed_payload, dict)
        assert token.count(".") == 2 and "." not in signature
    try:
        principal = _run(_VERIFIER.verify(token))
    except TokenError as exc:
        _expect(exc.reason, _TOKEN_REASONS)
        return
    assert principal.issuer == JWS_ISSUER
    assert isinstance(principal.subject, str) and 0 < len(principal.subject) <= 255
    assert all(isinstance(g, str) and g for g in principal.groups)
    assert len(set(principal.groups)) == len(principal.groups) <= MAX_GROUPS
    assert isinstance(principal.expires_at, float)


# --- cookies --------------------------------------------------------------------------------------------------------

COOKIE_KEY: Final = bytes(range(32))
"""The key the cookie seeds are sealed with (a fuzz-only key)."""
COOKIE_SETTINGS: Final = CookieJarSettings(name="__Host-idgate", max_chunks=4, chunk_size=64)
COOKIE_JAR: Final = SessionCookies(ring=KeyRing(keys=[COOKIE_KEY]), settings=COOKIE_SETTINGS, purpose=b"session")
_COOKIE_REASONS = frozenset(
    {"no_cookie", "duplicate_cookie", "too_many_chunks", "missing_chunk", "too_large", "invalid_cookie"}
)


def cookie_header(set_cookies: list[str]) -> str:
    """The ``Cookie`` header a browser sends back for ``Set-Cookie`` values (deletions left out)."""
    return "; ".join(line.split(";", 1)[0] for line in set_cookies if not line.endswith("Max-Age=0"))


def fuzz_cookies(data: bytes) -> None:
    header = _text(data)
    payload, reason = COOKIE_JAR.decode(header)
    if payload is None:
        assert reason in _COOKIE_REASONS, reason
    else:
        assert reason is None
        assert COOKIE_JAR.decode(cookie_header(COOKIE_JAR.encode(payload, max_age=60))) == (payload, None)
    for prefix in ("__Host-idgate", "__Host-idgate-login"):
        rewritten = without_cookies(header, prefix=prefix)
        if rewritten is None:
            continue
        pairs = [p for p in rewritten.split("; ")]
        original = {p.strip(" \t") for p in header.split(";")}
        assert all(p and p in original and not p.startswith(prefix) for p in pairs) or rewritten == "", rewritten
        assert "\r" not in rewritten or "\r" in header


# --- redirects ------------------------------------------------------------------------------------------------------

SITE: Final = "https://app.example"
ALLOWED_ORIGINS: Final = frozenset(
    {SITE, "https://grafana.example.com", "https://127.0.0.1:8443", "https://[::1]:8443", "http://legacy.example:8080"}
)
_DEFAULT: Final = "/fallback"
_PRINTABLE = re.compile(r"[\x21-\x7e]+")


def _whatwg_origin(url: str) -> str:
    """scheme://host[:port] as the WHATWG parser sees ``url`` resolved against the site."""
    assert ada_url is not None
    return str(ada_url.URL(url, SITE + "/somewhere/page").origin)


def fuzz_redirects(data: bytes) -> None:
    value = _text(data)
    result = safe_return_to(value, allowed_origins=ALLOWED_ORIGINS, default=_DEFAULT)
    origin = canonical_origin(value)
    assert origin is None or canonical_origin(origin) == origin, origin
    if result == _DEFAULT:
        return
    assert _PRINTABLE.fullmatch(result) and len(result) <= 3 * MAX_RETURN_TO, result
    assert "\\" not in result, result
    if result.startswith("/"):
        assert not result.startswith("//"), result
    else:
        assert canonical_origin(result) in ALLOWED_ORIGINS, result
    if len(result) <= MAX_RETURN_TO:  # escaping " < > ` lengthens a value: a 2048-character one may not fit again
        assert safe_return_to(result, allowed_origins=ALLOWED_ORIGINS, default=_DEFAULT) == result, result
    if ada_url is not None:
        for url in (result, value):
            assert _whatwg_origin(url) in ALLOWED_ORIGINS, (value, result, _whatwg_origin(url))


# --- config ---------------------------------------------------------------------------------------------------------

_CONFIG_HOME = Path(tempfile.mkdtemp(prefix="idgate-fuzz-config-"))
"""``config/`` holds the fuzzed file; ``.run/demo/`` the files ``config/demo.yaml`` names, so seeds validate."""
atexit.register(shutil.rmtree, _CONFIG_HOME, ignore_errors=True)
CONFIG_ENVIRON: Final[Mapping[str, str]] = {
    "IDGATE_CLIENT_SECRET": "fuzz-client-secret-0123456789",
    "IDGATE_SESSION_KEYS": base64.b64encode(bytes(range(32))).decode("ascii"),
}


def _config_home() -> Path:
    secrets = _CONFIG_HOME / ".run" / "demo" / "secrets"
    if not secrets.is_dir():
        secrets.mkdir(parents=True)
        (_CONFIG_HOME / ".run" / "demo" / "tls").mkdir(parents=True)
        (_CONFIG_HOME / ".run" / "demo" / "tls" / "ca.pem").write_text("not read by the loader\n")
        (secrets / "client_secret").write_text(CONFIG_ENVIRON["IDGATE_CLIENT_SECRET"] + "\n")
        (secrets / "session_keys").write_text(CONFIG_ENVIRON["IDGATE_SESSION_KEYS"] + "\n")
        (_CONFIG_HOME / "config").mkdir()
    return _CONFIG_HOME / "config" / f"fuzz-{os.getpid()}.yaml"


def fuzz_config(data: bytes) -> None:
    path = _config_home()
    path.write_bytes(data)
    try:
        config = load_config(path, environ=CONFIG_ENVIRON)
    except ConfigError as exc:
        problems = exc.problems
    else:
        assert isinstance(summarize(config), str)
        return
    assert problems and all(isinstance(p, str) and p for p in problems), problems


# --- identity -------------------------------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEADER_SAFE = re.compile(r"[\x20-\x7e]*")
_NOTES = frozenset(
    {f"{slot}_dropped_control_char" for slot in ("user", "email", "name", "role", "subject", "issuer")}
    | {"groups_entry_dropped", "roles_entry_dropped"}
)
_UPSTREAMS = (
    UpstreamConfig(profile="generic", user_from="username"),
    UpstreamConfig(profile="looker", user_from="email"),
    UpstreamConfig(profile="grafana", user_from="subject"),
)


def decode_listed(value: str, *, profile: str) -> list[str]:
    """What an upstream reads from a rendered list slot: split on ``,``, then decode each entry."""
    if value == "":
        return []
    if profile == "grafana":
        return [quopri.decodestring(item.encode("ascii")).decode("utf-8") for item in value.split(",")]
    return [urllib.parse.unquote(item, errors="strict") for item in value.split(",")]


def fuzz_identity(data: bytes) -> None:
    fields = [_text(part) for part in data.split(b"\xff")]
    fields += [""] * (5 - len(fields))
    user, email, name, subject, issuer = (f or None for f in fields[:5])
    groups = tuple(dict.fromkeys(g for g in fields[5:] if g))
    principal = Principal(
        issuer=issuer or "https://idp.example",
        subject=subject or "sub",
        username=user,
        email=email,
        name=name,
        groups=groups,
        expires_at=0.0,
    )
    roles = groups[:3]
    for upstream in _UPSTREAMS:
        identity = render_identity(principal, upstream, roles)
        assert set(identity.notes) <= _NOTES, identity.notes
        for slot, value in identity.values.items():
            assert _HEADER_SAFE.fullmatch(value), (slot, value)
        for slot, items in (("groups", groups), ("roles", roles)):
            kept = [g for g in items if "," not in g and not _CONTROL.search(g)]
            assert decode_listed(identity.values[slot], profile=upstream.profile) == kept, (slot, items)
            assert (f"{slot}_entry_dropped" in identity.notes) == (len(kept) != len(items))


TARGETS: Final[Mapping[str, Target]] = {
    "spop": fuzz_spop,
    "jws": fuzz_jws,
    "cookies": fuzz_cookies,
    "redirects": fuzz_redirects,
    "config": fuzz_config,
    "identity": fuzz_identity,
}
"""Target name (``scripts/fuzz TARGET``, ``corpus/TARGET/``) → function."""
