"""The OIDC relying-party side: authorization code + PKCE S256, code exchange, refresh, ID/logout token checks.

authlib supplies the protocol pieces (random tokens, the S256 challenge, the authorization request URI); the HTTP
calls go through our ``httpx.AsyncClient``; tokens are checked by :func:`idgate.verifier.verify_jws` with the
issuer's pinned algorithms and JWKS cache — never with algorithms from discovery.

Sources: OIDC Core 1.0 §3.1.2 (authorization request), §3.1.3.7 (ID token validation: iss, aud, azp, exp, iat,
nonce) and §3.2.2.9/§3.3.2.11 (at_hash); RFC 7636 (PKCE); RFC 9207 (``iss`` in the authorization response);
RFC 6749 §2.3.1 (client_secret_basic), §6 (refresh); OIDC RP-Initiated Logout 1.0 §2; OIDC Back-Channel Logout
1.0 §2.4 and §2.6 (logout token validation).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from authlib.common.security import generate_token
from authlib.oauth2.rfc6749.parameters import prepare_grant_uri
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from idgate.config import LoginConfig
from idgate.errors import KeysUnavailable, ProviderError, TokenError
from idgate.verifier import TokenKind, TrustedIssuer, verify_jws

BACKCHANNEL_EVENT = "http://schemas.openid.net/event/backchannel-logout"
_HASH_OF_ALG = {"256": hashlib.sha256, "384": hashlib.sha384, "512": hashlib.sha512}


def same_text(a: str, b: str) -> bool:
    """Constant-time string equality that never raises (``compare_digest`` refuses non-ASCII ``str``)."""
    return hmac.compare_digest(a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass"))


@dataclass(frozen=True, kw_only=True, slots=True)
class LoginState:
    """One login attempt, kept in the short-lived login-state cookie. ``created_at`` in epoch seconds."""

    state: str
    nonce: str
    code_verifier: str
    return_to: str
    redirect_uri: str
    created_at: float
    idp: str = ""  # the issuers[] name the login was started at (mix-up defence); "" in a pre-multi-IdP cookie

    def to_bytes(self) -> bytes:
        return json.dumps(
            [self.state, self.nonce, self.code_verifier, self.return_to, self.redirect_uri, self.created_at, self.idp]
        ).encode()

    @classmethod
    def from_bytes(cls, raw: bytes) -> LoginState | None:
        try:
            fields = json.loads(raw)
            s, n, v, r, u, t, *rest = fields
        except (ValueError, TypeError, RecursionError):
            return None
        idp = rest[0] if len(rest) == 1 else None if rest else ""
        if not all(isinstance(x, str) for x in (s, n, v, r, u, idp)) or not isinstance(t, int | float):
            return None
        assert isinstance(idp, str)
        return cls(state=s, nonce=n, code_verifier=v, return_to=r, redirect_uri=u, created_at=float(t), idp=idp)


@dataclass(frozen=True, kw_only=True, slots=True)
class TokenSet:
    """A token endpoint answer. ``expires_in`` in seconds (None when the IdP did not say)."""

    access_token: str
    id_token: str | None
    refresh_token: str | None
    expires_in: float | None


def unverified_issuer(token: str) -> str | None:
    """The ``iss`` of a compact JWS's payload, read WITHOUT verification (only to pick which issuer's keys must
    verify it); None for anything that is not such a token (never raises)."""
    parts = token.split(".")
    if len(parts) != 3 or len(parts[1]) > 65536:
        return None
    try:
        payload: Any = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, RecursionError):
        return None
    iss = payload.get("iss") if isinstance(payload, dict) else None
    return iss if isinstance(iss, str) else None


def at_hash_matches(alg: str, access_token: str, at_hash: str) -> bool:
    """OIDC Core §3.3.2.11: base64url of the left half of the hash (SHA-2 size of ``alg``) of the access token.

    EdDSA (Ed25519) uses SHA-512, as the OpenID Foundation's token-hash guidance says.
    """
    hasher = hashlib.sha512 if alg == "EdDSA" else _HASH_OF_ALG.get(alg[-3:])
    if hasher is None:
        return False
    digest = hasher(access_token.encode("ascii")).digest()
    expected = base64.urlsafe_b64encode(digest[: len(digest) // 2]).rstrip(b"=").decode()
    return same_text(expected, at_hash)


class OidcClient:
    """The relying party for one issuer (the ``login.issuer`` of the config)."""

    def __init__(
        self,
        *,
        trusted: TrustedIssuer,
        login: LoginConfig,
        http: httpx.AsyncClient,
        dev_mode: bool,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``clock`` (epoch seconds) judges the age of logout tokens; PyJWT checks exp/nbf/iat on the real clock."""
        cfg = trusted.config
        if cfg.client_id is None or cfg.client_secret is None:
            raise ValueError("the login issuer needs client_id and client_secret")
        self._trusted = trusted
        self._login = login
        self._http = http
        self._dev_mode = dev_mode
        self._clock = clock
        self._client_id = cfg.client_id
        secret = cfg.client_secret.get_secret_value()
        basic = f"{urllib.parse.quote(self._client_id, safe='')}:{urllib.parse.quote(secret, safe='')}"
        self._basic = "Basic " + base64.b64encode(basic.encode()).decode()
        self._metadata: dict[str, Any] | None = None

    @property
    def client_id(self) -> str:
        return self._client_id

    @property
    def name(self) -> str:
        """The issuers[] name of this IdP (what ``?idp=`` and ``/.idgate/callback/<name>`` carry)."""
        return self._trusted.config.name

    @property
    def issuer(self) -> str:
        """The issuer URL (exact ``iss`` of its tokens)."""
        return self._trusted.config.issuer

    async def metadata(self) -> Mapping[str, Any]:
        """The issuer's discovery document (fetched once; ``issuer`` must match exactly, endpoints https).

        Raises:
            ProviderError: ``idp_unavailable`` (transient) or ``bad_metadata``.
        """
        if self._metadata is None:
            issuer = self._trusted.config.issuer
            url = issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = await self._json("GET", url)
            if not isinstance(doc, dict) or doc.get("issuer") != issuer:
                raise ProviderError("bad_metadata", "discovery issuer mismatch", transient=False)
            for key in ("authorization_endpoint", "token_endpoint"):
                if not self._url_ok(doc.get(key)):
                    raise ProviderError("bad_metadata", f"{key} missing or not https", transient=False)
            self._metadata = doc
        return self._metadata

    def url_ok(self, url: object) -> bool:
        """True for an https URL (http too in dev_mode): an endpoint from discovery idgate may call."""
        return self._url_ok(url)

    def _url_ok(self, url: object) -> bool:
        return isinstance(url, str) and (url.startswith("https://") or (self._dev_mode and url.startswith("http://")))

    def new_login(self, *, return_to: str, redirect_uri: str, now: float) -> LoginState:
        """Fresh one-time ``state``, ``nonce`` and PKCE ``code_verifier`` (authlib's CSPRNG tokens), recording this
        IdP's name."""
        return LoginState(
            idp=self.name,
            state=generate_token(32),
            nonce=generate_token(32),
            code_verifier=generate_token(64),
            return_to=return_to,
            redirect_uri=redirect_uri,
            created_at=now,
        )

    async def authorization_url(self, login: LoginState) -> str:
        """The authorization request (OIDC Core §3.1.2.1) with PKCE S256 and, if configured, a resource."""
        meta = await self.metadata()
        extra: dict[str, str] = {}
        if self._login.resource:
            extra["resource"] = self._login.resource
        uri: str = prepare_grant_uri(
            meta["authorization_endpoint"],
            self._client_id,
            "code",
            redirect_uri=login.redirect_uri,
            scope=" ".join(self._login.scopes),
            state=login.state,
            nonce=login.nonce,
            code_challenge=create_s256_code_challenge(login.code_verifier),
            code_challenge_method="S256",
            **extra,
        )
        return uri

    async def check_response_issuer(self, iss: str | None) -> None:
        """RFC 9207: when the IdP advertises ``iss`` in authorization responses, it must be there and match.

        Raises:
            ProviderError: ``issuer_mismatch``.
        """
        meta = await self.metadata()
        advertised = meta.get("authorization_response_iss_parameter_supported") is True
        if (advertised or iss is not None) and iss != self._trusted.config.issuer:
            raise ProviderError("issuer_mismatch", "iss in the authorization response", transient=False)

    async def exchange_code(self, *, code: str, login: LoginState) -> TokenSet:
        """Redeem an authorization code (with the PKCE verifier). Raises ProviderError."""
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": login.redirect_uri,
            "code_verifier": login.code_verifier,
        }
        if self._login.resource:
            form["resource"] = self._login.resource
        return await self._token(form)

    async def refresh(self, refresh_token: str) -> TokenSet:
        """Refresh grant (RFC 6749 §6). Raises ProviderError: ``invalid_grant`` (not transient) ends the session."""
        form = {"grant_type": "refresh_token", "refresh_token": refresh_token}
        if self._login.resource:
            form["resource"] = self._login.resource
        return await self._token(form)

    async def _token(self, form: dict[str, str]) -> TokenSet:
        meta = await self.metadata()
        doc = await self._json("POST", meta["token_endpoint"], data=form, headers={"authorization": self._basic})
        if not isinstance(doc, dict) or not isinstance(doc.get("access_token"), str):
            raise ProviderError("bad_token_response", "no access_token", transient=False)
        expires_in = doc.get("expires_in")
        return TokenSet(
            access_token=doc["access_token"],
            id_token=doc.get("id_token") if isinstance(doc.get("id_token"), str) else None,
            refresh_token=doc.get("refresh_token") if isinstance(doc.get("refresh_token"), str) else None,
            expires_in=float(expires_in) if isinstance(expires_in, int | float) else None,
        )

    async def _json(self, method: str, url: str, **kw: Any) -> Any:
        try:
            response = await self._http.request(method, url, timeout=self._trusted.config.jwks.timeout_seconds, **kw)
        except httpx.HTTPError as exc:
            raise ProviderError("idp_unavailable", type(exc).__name__, transient=True) from None
        if response.status_code >= 500:
            raise ProviderError("idp_unavailable", f"HTTP {response.status_code}", transient=True)
        try:
            doc = response.json()
        except (ValueError, RecursionError):
            raise ProviderError("bad_response", f"HTTP {response.status_code}, not JSON", transient=True) from None
        if response.status_code != 200:
            error = doc.get("error") if isinstance(doc, dict) else None
            reason = error if error in ("invalid_grant", "invalid_client", "invalid_request") else "idp_error"
            raise ProviderError(reason, f"HTTP {response.status_code}", transient=False)
        return doc

    async def verify_id_token(self, token: str, *, nonce: str | None, access_token: str | None) -> dict[str, Any]:
        """OIDC Core §3.1.3.7: signature (pinned alg), iss, aud ∋ client_id, azp, exp, iat, nonce, at_hash.

        ``nonce`` None skips the nonce check (refresh responses, §12.2). Raises TokenError; ProviderError
        (transient, ``keys_unavailable`` …) when the issuer's keys cannot be had now.
        """
        claims = await self._verify(token, kind="id", require=("iss", "sub", "aud", "exp", "iat"))
        aud = claims["aud"]
        needs_azp = (isinstance(aud, list) and len(aud) > 1) or "azp" in claims
        if needs_azp and claims.get("azp") != self._client_id:
            raise TokenError("invalid_audience", "azp is not our client_id")
        if nonce is not None and not same_text(str(claims.get("nonce", "")), nonce):
            raise TokenError("invalid_nonce", "nonce does not match the login attempt")
        at_hash = claims.get("at_hash")
        if access_token is not None and at_hash is not None:
            alg = json.loads(base64.urlsafe_b64decode(token.split(".")[0] + "=="))["alg"]
            if not isinstance(at_hash, str) or not at_hash_matches(alg, access_token, at_hash):
                raise TokenError("invalid_at_hash", "at_hash does not match the access token")
        return claims

    @property
    def logout_token_window_seconds(self) -> float:
        """How long after its ``iat`` a logout token is accepted: ``login.logout_token_max_age_seconds`` plus the
        issuer's leeway (seconds)."""
        return self._login.logout_token_max_age_seconds + self._trusted.config.leeway_seconds

    def logout_replay_until(self, claims: Mapping[str, Any]) -> float:
        """The end of a verified logout token's acceptance window (epoch seconds): its ``jti`` must be remembered
        until then, and no longer — after it the token is refused by its age."""
        return float(claims["iat"]) + self.logout_token_window_seconds

    async def verify_logout_token(self, token: str) -> dict[str, Any]:
        """Back-Channel Logout 1.0 §2.6: a logout+jwt with the backchannel event, sid and/or sub, no nonce, a string
        ``jti``, and an ``iat`` at most :attr:`logout_token_window_seconds` old (``exp`` is optional, so the age
        bounds a captured token's use; the RP "MAY reject Logout Tokens with iat too far away", as mod_auth_openidc
        does). Replays of the ``jti`` are the caller's (:mod:`idgate.sso.routes`).

        Raises:
            TokenError: ``invalid_logout_token``, ``logout_token_too_old``, or any reason of
                :func:`idgate.verifier.verify_jws` (``invalid_claim_type``, ``expired``, ``not_yet_valid`` …).
            ProviderError: (transient) when the issuer's keys cannot be had now.
        """
        claims = await self._verify(token, kind="logout", require=("iss", "aud", "iat", "jti", "events"))
        events = claims.get("events")
        if not isinstance(events, dict) or BACKCHANNEL_EVENT not in events or "nonce" in claims:
            raise TokenError("invalid_logout_token", "not a back-channel logout token")
        if not isinstance(claims.get("sid"), str) and not isinstance(claims.get("sub"), str):
            raise TokenError("invalid_logout_token", "neither sid nor sub")
        if self._clock() > self.logout_replay_until(claims):
            raise TokenError("logout_token_too_old", f"iat is more than {self.logout_token_window_seconds:g} s ago")
        return claims

    async def _verify(self, token: str, *, kind: TokenKind, require: tuple[str, ...]) -> dict[str, Any]:
        """Raises TokenError, or ProviderError (transient) when the issuer's keys cannot be had now: the IdP is
        unavailable, the token is not at fault (a refresh keeps the session; a callback is a 503)."""
        try:
            return await verify_jws(token, self._trusted, kind=kind, audiences=(self._client_id,), require=require)
        except KeysUnavailable as exc:
            raise ProviderError(exc.reason, exc.detail, transient=True) from None

    async def end_session_url(self, *, id_token_hint: str | None, state: str | None = None) -> str | None:
        """RP-Initiated Logout request URL, or None when the IdP has no ``end_session_endpoint``."""
        meta = await self.metadata()
        endpoint = meta.get("end_session_endpoint")
        if not self._url_ok(endpoint):
            return None
        params = {"client_id": self._client_id}
        if id_token_hint:
            params["id_token_hint"] = id_token_hint
        if self._login.post_logout_redirect_uri:
            params["post_logout_redirect_uri"] = self._login.post_logout_redirect_uri
        if state:
            params["state"] = state
        sep = "&" if "?" in str(endpoint) else "?"
        return f"{endpoint}{sep}{urllib.parse.urlencode(params)}"
