"""Log a user in at the test IdP with plain httpx (no browser): authorization code flow with PKCE S256.

The flow is the real one a browser goes through: discovery, the authorization endpoint, the IdP's login page
(``testidp/server.mjs``: a form with ``login`` and ``password``), the redirect back towards ``redirect_uri``
and the code exchange at the token endpoint with ``client_secret_basic``. The ``redirect_uri`` itself is never
requested (nothing listens there): the flow stops at the IdP's redirect to it and reads the code from the
``Location`` header. One login takes about 0.1-0.2 s on loopback.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import secrets
import ssl
from dataclasses import dataclass
from html import unescape
from urllib.parse import parse_qs, quote_plus, urljoin, urlsplit

import httpx

__all__ = ["Tokens", "login", "tls_verify"]

_MAX_HOPS = 10
_TIMEOUT_S = 10.0
_FORM_ACTION = re.compile(r"<form\b[^>]*\baction=\"([^\"]*)\"", re.IGNORECASE)


@dataclass(frozen=True, kw_only=True)
class Tokens:
    """Tokens from one code exchange.

    ``access_token`` is a compact JWS (``typ`` ``at+jwt``) when a resource indicator was resolved;
    ``id_token`` is a compact JWS; ``refresh_token`` is opaque; ``expires_in`` is the access token's lifetime
    in seconds as the token endpoint reported it.
    """

    access_token: str
    id_token: str
    refresh_token: str
    expires_in: int


def tls_verify(verify: ssl.SSLContext | str | bool) -> ssl.SSLContext | bool:
    """Turn a CA file path into an ``ssl.SSLContext`` (httpx 0.28 deprecates ``verify=<path>``).

    ``True``/``False``/an existing context are returned unchanged.
    """
    if isinstance(verify, str):
        return ssl.create_default_context(cafile=verify)
    return verify


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _jwt_payload(token: str) -> dict[str, object]:
    """Decode a compact JWS payload WITHOUT verifying it (only to compare the nonce we sent)."""
    try:
        part = token.split(".")[1]
        value = json.loads(base64.urlsafe_b64decode(part + "=" * (-len(part) % 4)))
    except (IndexError, ValueError) as exc:
        raise RuntimeError("login: the ID token is not a compact JWS") from exc
    if not isinstance(value, dict):
        raise RuntimeError("login: the ID token payload is not a JSON object")
    return value


def _is_redirect_target(location: str, redirect_uri: str) -> bool:
    if location == redirect_uri:
        return True
    joiner = "&" if "?" in redirect_uri else "?"
    return location.startswith((redirect_uri + joiner, redirect_uri + "#"))


def _snippet(response: httpx.Response) -> str:
    text = response.text
    return text[:300] + ("..." if len(text) > 300 else "")


def _basic_auth(client_id: str, client_secret: str) -> str:
    # RFC 6749 section 2.3.1: form-urlencode both parts before base64.
    raw = f"{quote_plus(client_id)}:{quote_plus(client_secret)}".encode()
    return "Basic " + base64.b64encode(raw).decode("ascii")


def _discover(client: httpx.Client, issuer: str) -> tuple[str, str]:
    url = issuer.rstrip("/") + "/.well-known/openid-configuration"
    try:
        response = client.get(url)
    except httpx.HTTPError as exc:
        raise RuntimeError(f"login: discovery at {url} failed: {exc!r}") from exc
    if response.status_code != 200:
        raise RuntimeError(f"login: discovery at {url} answered {response.status_code}")
    doc = response.json()
    if doc.get("issuer") != issuer:
        raise RuntimeError(f"login: discovery issuer {doc.get('issuer')!r} is not {issuer!r}")
    auth, token = doc.get("authorization_endpoint"), doc.get("token_endpoint")
    if not isinstance(auth, str) or not isinstance(token, str):
        raise RuntimeError("login: discovery lacks authorization_endpoint or token_endpoint")
    return auth, token


def _authorize(client: httpx.Client, first: httpx.Request, *, username: str, redirect_uri: str) -> str:
    """Walk redirects and the login form; return the ``Location`` that points at ``redirect_uri``."""
    request = first
    posted = False
    for _ in range(_MAX_HOPS):
        response = client.send(request, follow_redirects=False)
        if response.is_redirect:
            location = urljoin(str(response.url), response.headers["location"])
            if _is_redirect_target(location, redirect_uri):
                return location
            request = client.build_request("GET", location)
            continue
        if response.status_code == 401 and posted:
            raise RuntimeError(f"login: the IdP rejected user {username!r}: {_snippet(response)}")
        if response.status_code != 200:
            raise RuntimeError(
                f"login: {response.request.method} {response.url} answered {response.status_code}: {_snippet(response)}"
            )
        match = _FORM_ACTION.search(response.text)
        if match is None or posted:
            raise RuntimeError(f"login: no login form at {response.url}: {_snippet(response)}")
        action = urljoin(str(response.url), unescape(match.group(1)))
        request = client.build_request("POST", action, data={"login": username, "password": "any-password"})
        posted = True
    raise RuntimeError(f"login: more than {_MAX_HOPS} hops without a redirect to {redirect_uri}")


def login(
    *,
    issuer: str,
    client_id: str,
    client_secret: str,
    redirect_uri: str,
    username: str,
    resource: str | None = None,
    scope: str = "openid profile email groups offline_access",
    verify: ssl.SSLContext | str | bool = True,
    http: httpx.Client | None = None,
) -> Tokens:
    """Run the authorization code + PKCE (S256) flow for ``username`` and return the tokens.

    ``issuer`` is the IdP's issuer URL (no trailing slash); ``redirect_uri`` must be registered exactly;
    ``resource`` is the resource indicator (access-token audience) sent to both endpoints, or None for the
    IdP's default resource; ``verify`` is a CA file path, an ``ssl.SSLContext`` or a bool, as for httpx.
    ``http``: an httpx client to use instead of a fresh one (``verify`` is then ignored); its cookie jar keeps
    the IdP session between calls, so a second login may skip the login form and ignore ``username``.
    Checks ``state``, the ``iss`` authorization-response parameter and the ID token's ``nonce``.
    Raises ``RuntimeError`` describing the step that failed (unknown user, error redirect, bad response).
    """
    state = secrets.token_urlsafe(16)
    nonce = secrets.token_urlsafe(16)
    verifier = secrets.token_urlsafe(48)  # 64 characters, within RFC 7636's 43..128
    challenge = _b64url(hashlib.sha256(verifier.encode("ascii")).digest())

    with contextlib.ExitStack() as stack:
        client = http or stack.enter_context(httpx.Client(verify=tls_verify(verify), timeout=_TIMEOUT_S))
        authorization_endpoint, token_endpoint = _discover(client, issuer)
        params = {
            "response_type": "code",
            "client_id": client_id,
            "redirect_uri": redirect_uri,
            "scope": scope,
            "state": state,
            "nonce": nonce,
            "code_challenge": challenge,
            "code_challenge_method": "S256",
        }
        if resource is not None:
            params["resource"] = resource
        try:
            location = _authorize(
                client,
                client.build_request("GET", authorization_endpoint, params=params),
                username=username,
                redirect_uri=redirect_uri,
            )
        except httpx.HTTPError as exc:
            raise RuntimeError(f"login: request to the IdP failed: {exc!r}") from exc

        query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
        if "error" in query:
            raise RuntimeError(
                f"login: the IdP redirected with error={query['error']!r}: {query.get('error_description', '')}"
            )
        if query.get("state") != state:
            raise RuntimeError("login: the state in the redirect does not match the one sent")
        if "iss" in query and query["iss"] != issuer:
            raise RuntimeError(f"login: the redirect's iss {query['iss']!r} is not {issuer!r}")
        code = query.get("code")
        if not code:
            raise RuntimeError(f"login: no code in the redirect to {redirect_uri}")

        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        if resource is not None:
            form["resource"] = resource
        try:
            response = client.post(
                token_endpoint,
                follow_redirects=False,
                data=form,
                headers={"Authorization": _basic_auth(client_id, client_secret)},
            )
        except httpx.HTTPError as exc:
            raise RuntimeError(f"login: token request failed: {exc!r}") from exc

    if response.status_code != 200:
        raise RuntimeError(f"login: token endpoint answered {response.status_code}: {_snippet(response)}")
    body = response.json()
    access_token, id_token = body.get("access_token"), body.get("id_token")
    refresh_token, expires_in = body.get("refresh_token"), body.get("expires_in")
    if not (isinstance(access_token, str) and isinstance(id_token, str) and isinstance(refresh_token, str)):
        raise RuntimeError(f"login: token response lacks a token: keys {sorted(body)}")
    if not isinstance(expires_in, int):
        raise RuntimeError(f"login: token response expires_in is {expires_in!r}")
    if _jwt_payload(id_token).get("nonce") != nonce:
        raise RuntimeError("login: the ID token's nonce does not match the one sent")
    return Tokens(access_token=access_token, id_token=id_token, refresh_token=refresh_token, expires_in=expires_in)
