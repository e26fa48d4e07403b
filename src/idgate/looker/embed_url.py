"""Looker's signed embed URL, built exactly as Looker's "Signed embedding" page documents it (pure, no I/O).

The URL is ``<url>/login/embed/<percent-encoded target>?nonce=…&time=…&…&signature=…`` where every value is
JSON (strings quoted, lists as arrays, ``force_logout_login`` a JSON boolean), and ``signature`` is
``base64(HMAC-SHA1(embed secret, string to sign))`` over the UTF-8 of these lines joined by ``\\n``, in order:

    host[:port]        (Looker as the browser reaches it, no scheme)
    /login/embed/<percent-encoded target>
    nonce, time, session_length, external_user_id, permissions, models, group_ids     (always; ``[]``)
    external_group_id                                                                 (only when sent)
    user_attributes, access_filters                                                   (always; ``{}``)

idgate always sends ``group_ids``, ``user_attributes`` and ``access_filters`` (empty when the policy grants none),
as in the documented example string; a verifier signs an optional line only when its parameter is present.

``first_name``, ``last_name`` and ``force_logout_login`` are sent but not signed (as documented). Looker accepts a
URL once (the nonce) and only while ``time`` is within 5 minutes of its clock.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import quote

from idgate.errors import RequestError

MAX_TARGET_CHARS = 2000
_TARGET = re.compile(r"^/embed/[A-Za-z0-9._~!$&'()*+,;=:@%/?\-]*$")


@dataclass(frozen=True, kw_only=True, slots=True)
class EmbedUser:
    """The embed user Looker creates or updates: ids, names and access (Looker's URL parameter names)."""

    external_user_id: str
    first_name: str
    last_name: str
    permissions: tuple[str, ...]
    models: tuple[str, ...]
    group_ids: tuple[int, ...] = ()
    external_group_id: str | None = None
    user_attributes: Mapping[str, str] = field(default_factory=dict)
    access_filters: Mapping[str, Mapping[str, str]] = field(default_factory=dict)


def as_json(value: object) -> str:
    """One parameter value as Looker reads it: compact JSON, non-ASCII kept as UTF-8 (percent-encoded in the URL)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def external_user_id(issuer: str, subject: str) -> str:
    """A stable Looker ``external_user_id`` for the principal (``iss``, ``sub``): ``idgate-`` + 40 hex digits of
    SHA-256 over the JSON pair, so neither an email change nor a second IdP with the same ``sub`` can take over
    another user's Looker account (OIDC Core §5.7: only iss + sub is stable and unique)."""
    digest = hashlib.sha256(as_json([issuer, subject]).encode()).hexdigest()
    return "idgate-" + digest[:40]


def check_target(target: str | None) -> str:
    """The embed target (``/embed/dashboards/42``, a query allowed) or RequestError ``bad_target``: it must start
    with ``/embed/``, carry no scheme, host, fragment, backslash, ``..`` segment or non-ASCII, and be at most
    :data:`MAX_TARGET_CHARS` long."""
    if target is None or len(target) > MAX_TARGET_CHARS or not _TARGET.match(target):
        raise RequestError("bad_target", "the target must be a Looker path starting with /embed/")
    path = target.split("?", 1)[0]
    if "/../" in path + "/" or "/./" in path + "/" or "//" in path or "%2f" in path.lower() or "%2e" in path.lower():
        raise RequestError("bad_target", "the target path must be normalised")
    return target


def embed_path(target: str) -> str:
    """``/login/embed/`` + the target percent-encoded whole (``/`` and ``?`` too), the second line signed."""
    return "/login/embed/" + quote(target, safe="")


def embed_params(
    *, user: EmbedUser, nonce: str, now: int, session_length: int, force_logout_login: bool
) -> list[tuple[str, str]]:
    """The URL parameters (without ``signature``) in Looker's documented order; values are JSON text."""
    params = [
        ("nonce", as_json(nonce)),
        ("time", as_json(now)),
        ("session_length", as_json(session_length)),
        ("external_user_id", as_json(user.external_user_id)),
        ("permissions", as_json(list(user.permissions))),
        ("models", as_json(list(user.models))),
    ]
    params.append(("group_ids", as_json(list(user.group_ids))))
    if user.external_group_id is not None:
        params.append(("external_group_id", as_json(user.external_group_id)))
    params.append(("user_attributes", as_json(dict(user.user_attributes))))
    params.append(("access_filters", as_json({k: dict(v) for k, v in user.access_filters.items()})))
    params += [
        ("first_name", as_json(user.first_name)),
        ("last_name", as_json(user.last_name)),
        ("force_logout_login", as_json(force_logout_login)),
    ]
    return params


SIGNED_PARAMS = (
    "nonce",
    "time",
    "session_length",
    "external_user_id",
    "permissions",
    "models",
    "group_ids",
    "external_group_id",
    "user_attributes",
    "access_filters",
)
"""The signed parameters in signing order (an optional one is a line only when present)."""


def string_to_sign(*, host: str, path: str, params: Mapping[str, str]) -> str:
    """Looker's string to sign: ``host``, ``path`` (:func:`embed_path`) and the present :data:`SIGNED_PARAMS`
    values (JSON text, as in the URL), joined by ``\\n``."""
    return "\n".join([host, path, *(params[name] for name in SIGNED_PARAMS if name in params)])


def sign(secret: str, text: str) -> str:
    """``base64(HMAC-SHA1(secret, UTF-8 text))``, Looker's embed signature."""
    return base64.b64encode(hmac.new(secret.encode(), text.encode(), hashlib.sha1).digest()).decode()


def signed_embed_url(
    *,
    url: str,
    host: str,
    secret: str,
    target: str,
    user: EmbedUser,
    now: int,
    session_length: int,
    force_logout_login: bool = True,
    nonce: str | None = None,
) -> str:
    """The signed embed login URL for ``user`` opening ``target`` (checked by :func:`check_target`).

    ``url`` is Looker's base (``https://looker.example.com``), ``host`` its host[:port]; ``now`` is seconds since
    the epoch; ``nonce`` defaults to 32 random hex digits. Raises RequestError ``bad_target``.
    """
    path = embed_path(check_target(target))
    params = embed_params(
        user=user,
        nonce=nonce if nonce is not None else secrets.token_hex(16),
        now=now,
        session_length=session_length,
        force_logout_login=force_logout_login,
    )
    signature = sign(secret, string_to_sign(host=host, path=path, params=dict(params)))
    query = "&".join(f"{name}={quote(value, safe='')}" for name, value in [*params, ("signature", signature)])
    return f"{url}{path}?{query}"
