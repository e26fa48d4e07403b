"""The decision cache inside HAProxy, idgate's half: which allows HAProxy may reuse, for how long, and the entry.

HAProxy owns the entries, idgate owns their content (README "The decision cache in HAProxy"). HAProxy keys an entry
by ``sha256`` over everything an allow depends on (method, Host, normalised path, every Authorization and Cookie
value); on an allow that :func:`seal` judges cacheable, idgate's answer carries two more variables, ``cache_ttl``
(whole seconds > 0) and ``cache_entry``, which HAProxy stores with ``set-map`` and, on a later hit, turns back into
the same ``txn.idgate.*`` variables without asking idgate.

Entry format (one map value; ``|`` cannot occur inside a field)::

    <expires_at>|<sub tag>|<sid tag>|<idp_sid tag>|<status>|<decision>|<reason>|<upstream>|<user>|…|<cookie>

``expires_at``: epoch seconds (integer; HAProxy compares it with its ``date`` fetch: valid while ``date`` is
smaller). The tags (:func:`tag`, 16 hex digits, empty when the answer has none) name the revocation keys of
:mod:`idgate.sso.session` (``sub:<iss>|<sub>``, ``sid:<sid>``, ``idp_sid:<iss>|<idp sid>``) the answer would end
with, so a purge can find an entry without reading a credential. Then one field per :data:`CACHED_VARIABLES`, each
value base64url without padding (RFC 4648 §5; HAProxy: ``field(N,|),ub64dec``), empty for "not set".

Cacheable (:func:`cache_ttl`): an explicit allow of an authenticated caller only (a public route's allow is never
marked: its key would hold any credential a caller makes up, one entry per request), never an answer with
``Set-Cookie`` (a refreshed, touched or re-issued session), a redirect, a challenge or a ``Retry-After``; the time to
live is the smallest of ``cache.max_ttl_seconds``, the credential's own bound (token ``exp``; the session's refresh
point, idle and absolute timeouts and next touch: :class:`~idgate.authn.Authenticated` ``reusable_until``) and the
signed assertion's ``exp``, all minus now; below one second it is not cacheable.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from idgate.facts import ALLOW_SLOTS, Decision

CACHED_VARIABLES = ("status", "decision", "reason", "upstream", *ALLOW_SLOTS)
"""The ``txn.idgate.<name>`` variables an entry restores, in entry order (after the head fields)."""
TAG_KINDS = ("sub", "sid", "idp_sid")
"""The revocation-key kinds an entry is tagged with, in entry order."""
HEAD_FIELDS = 1 + len(TAG_KINDS)
"""Fields before the first variable: the expiry and the tags. HAProxy's ``field()`` counts from 1, so variable
``CACHED_VARIABLES[i]`` is field ``HEAD_FIELDS + 1 + i``."""


_ENTRY = re.compile(
    r"[0-9]{1,12}" + r"\|(?:[0-9a-f]{16})?" * len(TAG_KINDS) + r"\|[A-Za-z0-9_-]*" * len(CACHED_VARIABLES)
)


@dataclass(frozen=True, kw_only=True, slots=True)
class CacheEntry:
    """One decoded entry: ``expires_at`` (epoch seconds), ``tags`` (kind → tag, :data:`TAG_KINDS`; missing: none)
    and ``variables`` (name → value for each set variable of :data:`CACHED_VARIABLES`)."""

    expires_at: int
    tags: Mapping[str, str]
    variables: Mapping[str, str]


def tag(revocation_key: str) -> str:
    """The purge tag of a revocation key (``sid:…``, ``sub:<iss>|<sub>``, ``idp_sid:<iss>|<sid>``): the first 16 hex
    digits of its SHA-256. A collision only purges a foreign entry too (a miss, never an allow)."""
    return hashlib.sha256(revocation_key.encode("utf-8")).hexdigest()[:16]


def _b64(value: str) -> str:
    return base64.urlsafe_b64encode(value.encode("utf-8")).rstrip(b"=").decode("ascii")


def _unb64(value: str) -> str:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode("utf-8")


def answer_variables(decision: Decision) -> dict[str, str]:
    """The :data:`CACHED_VARIABLES` an allow sets (empty values are "not set", as both adapters treat them)."""
    values = {
        "status": str(decision.status),
        "decision": "allow" if decision.allow else "deny",
        "reason": ",".join(decision.reasons),
        "upstream": decision.upstream or "",
        **{slot: decision.identity.get(slot, "") for slot in ALLOW_SLOTS},
    }
    return {name: value for name, value in values.items() if value}


def encode_entry(*, expires_at: int, revocation_keys: tuple[str, ...], variables: Mapping[str, str]) -> str:
    """The map value for an entry (module docstring). Keys of unknown kinds carry no tag."""
    tags = {kind: "" for kind in TAG_KINDS}
    for key in revocation_keys:
        kind = key.partition(":")[0]
        if kind in tags:
            tags[kind] = tag(key)
    fields = [str(int(expires_at)), *tags.values(), *(_b64(variables.get(name, "")) for name in CACHED_VARIABLES)]
    return "|".join(fields)


def decode_entry(value: str) -> CacheEntry | None:
    """Parse :func:`encode_entry` output; None for anything else (never raises)."""
    if not _ENTRY.fullmatch(value):
        return None
    fields = value.split("|")
    try:
        values = [_unb64(f) for f in fields[HEAD_FIELDS:]]
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return CacheEntry(
        expires_at=int(fields[0]),
        tags={kind: t for kind, t in zip(TAG_KINDS, fields[1:HEAD_FIELDS], strict=True) if t},
        variables={name: v for name, v in zip(CACHED_VARIABLES, values, strict=True) if v},
    )


def jwt_expiry(token: str) -> float | None:
    """The ``exp`` of a compact JWT idgate minted itself (no verification: it is idgate's own assertion); None when
    unreadable."""
    try:
        payload = token.split(".")[1]
        exp = json.loads(_unb64(payload)).get("exp")
    except (IndexError, ValueError, AttributeError, binascii.Error):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def cache_ttl(decision: Decision, *, reusable_until: float, now: float, max_ttl_seconds: int) -> int:
    """Whole seconds HAProxy may reuse ``decision`` for; 0: not cacheable (module docstring).

    ``reusable_until``: epoch seconds until which the credential's answer stays the same (``math.inf`` for a public
    route, 0 when it must not be reused); ``now``: epoch seconds."""
    if (
        not decision.allow
        or decision.set_cookies
        or decision.location is not None
        or decision.www_authenticate is not None
        or decision.retry_after is not None
    ):
        return 0
    bounds = [float(max_ttl_seconds), reusable_until - now]
    assertion = decision.identity.get("assertion")
    if assertion:
        exp = jwt_expiry(assertion)
        bounds.append(exp - now if exp is not None else 0.0)
    ttl = min(bounds)
    return max(0, math.floor(ttl)) if math.isfinite(ttl) else 0


def seal(
    decision: Decision,
    *,
    reusable_until: float,
    revocation_keys: tuple[str, ...],
    now: float,
    max_ttl_seconds: int,
) -> Decision:
    """``decision`` with ``cache_ttl`` and ``cache_entry`` filled when it is cacheable (:func:`cache_ttl`), else
    ``decision`` unchanged. The entry expires at ``floor(now) + ttl``, never after the bound."""
    ttl = cache_ttl(decision, reusable_until=reusable_until, now=now, max_ttl_seconds=max_ttl_seconds)
    if ttl <= 0:
        return decision
    entry = encode_entry(
        expires_at=math.floor(now) + ttl, revocation_keys=revocation_keys, variables=answer_variables(decision)
    )
    return decision.with_cache(ttl=ttl, entry=entry)
