"""Types of the registered JWT claims idgate relies on, checked before any library reads them.

PyJWT reads time claims with ``int()``: a signed ``exp`` of ``"9999999999"`` (a JSON string) passes as a number and
the token never expires, ``true`` passes as 1. RFC 7519 §2 defines a NumericDate as a JSON numeric value, so idgate
checks the JSON types itself, on the payload, before PyJWT validates anything — one function for access tokens, ID
tokens and logout tokens alike (:func:`idgate.verifier.verify_jws` calls it for all three).

=============================  ==========================================================  =========================
claim                          JSON type                                                   source
=============================  ==========================================================  =========================
``exp`` ``nbf`` ``iat``        number, not a boolean, finite, ``|value| <= 2**53``          RFC 7519 §2, §4.1.4-6;
                               (seconds since the epoch; fractions allowed)                RFC 7493 §2.2 (I-JSON)
``iss`` ``sub`` ``jti``        string                                                      RFC 7519 §4.1.1, .2, .7
``azp`` ``sid``                string                                                      OIDC Core §2; BCL 1.0 §2.4
``client_id``                  string                                                      RFC 9068 §2.2
``aud``                        string, or array of strings                                 RFC 7519 §4.1.3
=============================  ==========================================================  =========================

Order: required claims first — absent or ``null`` is *missing* (``invalid_audience`` for ``aud``,
``invalid_issuer`` for ``iss``, else ``invalid_claims``) —, then every claim of the table that is present must have
its type: anything else, ``null`` included, is ``invalid_claim_type``.

Deliberately not here:

- ``groups`` (the issuer's configured path): a value that is not an array adds no groups and is noted
  ``groups_not_a_list``; a non-string entry is dropped and noted ``group_not_a_string``
  (:func:`idgate.principal.principal_from_claims`). The caller stays authenticated — the token is validly signed
  and its key ``(iss, sub)`` is sound — but gets no privilege from a claim it cannot read: identity and roles come
  only from verified facts of the expected shape, never from a guess (a string is not split).
- ``email_verified``: only the JSON boolean ``true`` means verified; anything else means "not verified", never an
  error (:mod:`idgate.principal`, :mod:`idgate.identity`).
- ``nonce``, ``at_hash``, ``events``: their own checks in :mod:`idgate.sso.oidc` (``invalid_nonce``,
  ``invalid_at_hash``, ``invalid_logout_token``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from idgate.errors import TokenError

NUMERIC_DATE_CLAIMS = ("exp", "nbf", "iat")
STRING_CLAIMS = ("iss", "sub", "jti", "azp", "sid", "client_id")
MAX_NUMERIC_DATE = 2**53  # I-JSON (RFC 7493 §2.2): the integers every JSON implementation reads exactly
_MISSING_REASON = {"aud": "invalid_audience", "iss": "invalid_issuer"}


def is_numeric_date(value: object) -> bool:
    """True for a JSON number (int or float, not bool) that is finite and within ±2**53 seconds."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    return (not isinstance(value, float) or math.isfinite(value)) and abs(value) <= MAX_NUMERIC_DATE


def _is_audience(value: object) -> bool:
    return isinstance(value, str) or (isinstance(value, list) and all(isinstance(a, str) for a in value))


def check_claims(claims: Mapping[str, object], *, require: Sequence[str]) -> None:
    """Check that every claim in ``require`` is present and not null, then the JSON type of every claim of the module
    table that is present.

    Raises:
        TokenError: ``invalid_audience`` / ``invalid_issuer`` / ``invalid_claims`` for a missing required claim;
            ``invalid_claim_type`` for a present claim of the wrong type.
    """
    for name in require:
        if claims.get(name) is None:
            raise TokenError(_MISSING_REASON.get(name, "invalid_claims"), f"missing claim {name}")
    for name in NUMERIC_DATE_CLAIMS:
        if name in claims and not is_numeric_date(claims[name]):
            raise TokenError("invalid_claim_type", f"{name} is not a NumericDate (a JSON number, RFC 7519 §2)")
    for name in STRING_CLAIMS:
        if name in claims and not isinstance(claims[name], str):
            raise TokenError("invalid_claim_type", f"{name} is not a string")
    if "aud" in claims and not _is_audience(claims["aud"]):
        raise TokenError("invalid_claim_type", "aud is neither a string nor an array of strings (RFC 7519 §4.1.3)")
