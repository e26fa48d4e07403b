"""The one error tree of idgate.

::

    IdgateError
    ├── ConfigError            bad configuration; ``problems`` lists every problem found, not just the first
    ├── KeySetError            a JWKS could not be fetched or parsed (the cache keeps serving last good keys)
    ├── KeysUnavailable        an issuer's keys cannot be had now: a token can be neither accepted nor refused
    │                          (503 + ``Retry-After``; ``reason``, ``retry_after`` seconds)
    ├── RequestError           the request facts are malformed (400): ambiguous path, bad host, two Authorization
    ├── CredentialError        a request's credential is unusable; ``reason`` is a stable ASCII reason code
    │   └── TokenError         a bearer token failed verification (RFC 6750 §3.1 ``invalid_token`` family)
    ├── ProviderError          the OpenID Provider refused (``transient`` False, e.g. invalid_grant) or could not
    │                          be reached / answered garbage (``transient`` True)
    ├── SpopError              an SPOP protocol violation by the peer; ``status`` is the SPOP status code the agent
    │                          sends in AGENT-DISCONNECT (HAProxy ``doc/SPOE.txt`` §3.4)
    ├── MessageError           one SPOE message cannot be answered (unknown, missing or duplicated argument): the
    │                          agent denies that NOTIFY and keeps the connection
    └── CookieTooLarge         a sealed payload does not fit the cookie size cap (also a ``ValueError``)

Reason codes are part of the public contract: they appear in audit logs, in ``X-Idgate-Reason``, in
``WWW-Authenticate`` error descriptions and in gRPC ``grpc-message``. They are short, ASCII, snake_case.
"""

from __future__ import annotations


class IdgateError(Exception):
    """Base class of every error idgate raises on purpose."""


class ConfigError(IdgateError):
    """The configuration is invalid. ``problems`` holds one human-readable line per problem (never a secret)."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = tuple(problems)
        super().__init__(f"{len(problems)} configuration problem(s):\n" + "\n".join(f"  - {p}" for p in problems))


class KeySetError(IdgateError):
    """A JSON Web Key Set could not be fetched or parsed (RFC 7517 §5)."""


class RequestError(IdgateError):
    """The request itself is malformed or ambiguous; answered 400. ``reason`` is the reason code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class CredentialError(IdgateError):
    """A credential in the request is unusable. ``reason`` is the reason code, ``detail`` a short explanation."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class TokenError(CredentialError):
    """A bearer token failed verification.

    Reason codes: ``invalid_token`` (malformed, bad signature, wrong type), ``expired``, ``not_yet_valid``,
    ``invalid_audience``, ``invalid_issuer``, ``unknown_kid``, ``alg_not_allowed``, ``forbidden_header``
    (``jku``/``x5u``/``jwk``/``x5c``), ``unsupported_crit``, ``invalid_typ``, ``invalid_claims``,
    ``invalid_claim_type`` (a registered claim of the wrong JSON type, :mod:`idgate.claims`), ``token_too_large``.
    (Keys that cannot be had are :class:`KeysUnavailable`, not a verdict on the token.)
    """


class KeysUnavailable(IdgateError):
    """The issuer's keys cannot be had right now, so the token can be neither accepted nor refused.

    A server-side outage: answered 503 with ``Retry-After: <retry_after>`` (RFC 9110 §15.6.4, §10.2.3; gRPC
    UNAVAILABLE), never 401 — ``invalid_token`` tells a client to throw away a token that may well be valid.
    ``reason``: ``keys_unavailable`` (no key set was ever fetched, or the last fetch failed) or
    ``unknown_kid_pending`` (the kid is not in the keys held and no fetch begun after the token arrived has looked
    yet: the next refetch may not start yet).
    ``retry_after``: whole seconds, at least 1.
    """

    def __init__(self, reason: str, detail: str = "", *, retry_after: int) -> None:
        self.reason = reason
        self.detail = detail
        self.retry_after = max(1, retry_after)
        super().__init__(f"{reason}: {detail}" if detail else reason)


class ProviderError(IdgateError):
    """The OpenID Provider refused a request or failed. ``reason``: e.g. ``invalid_grant``, ``idp_unavailable``."""

    def __init__(self, reason: str, detail: str = "", *, transient: bool) -> None:
        self.reason = reason
        self.detail = detail
        self.transient = transient
        super().__init__(f"{reason}: {detail}" if detail else reason)


class SpopError(IdgateError):
    """A protocol violation. ``status`` is the SPOP status code (``idgate.spoe.spop.Status``) to send in
    AGENT-DISCONNECT; ``detail`` a short explanation (``idgate.spoe.spop.status_message`` joins both)."""

    def __init__(self, status: int, detail: str = "") -> None:
        self.status = status
        self.detail = detail
        super().__init__(f"SPOP status {int(status)}: {detail}" if detail else f"SPOP status {int(status)}")


class MessageError(IdgateError):
    """Raised by an SPOA handler to deny one message; ``reason`` (ASCII snake_case) goes to the deny actions."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class CookieTooLarge(IdgateError, ValueError):
    """The payload, once sealed, does not fit in ``max_chunks`` cookies of ``chunk_size`` bytes."""
