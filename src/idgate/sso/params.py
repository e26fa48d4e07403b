"""The parameters of the ``/.idgate/`` endpoints (query strings and url-encoded forms): each name at most once.

RFC 6749 §3.1 and §3.2 (and OIDC Core §3.1.2.1, which inherits them): "Request and response parameters MUST NOT be
included more than once." A repeated parameter is ambiguous: frameworks disagree on which copy wins (Starlette,
PHP and Express take the last, Werkzeug and Go's ``Values.Get`` the first), so whoever can add one copy (a crafted
link, parameter pollution at some hop) could make idgate read another ``state``, ``code``, ``iss``, ``rd``,
``csrf`` or ``logout_token`` than the one a different component looked at. idgate does not pick one: the whole
request is refused with ``RequestError("duplicate_parameter")`` (400), whatever the order of the copies.

Names are compared after percent-decoding (``st%61te`` is ``state``) and case-sensitively (``State`` is another,
ignored parameter), exactly as the handlers read them.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import Iterable

from idgate.errors import RequestError

MAX_FORM_BYTES = 16 * 1024
"""The largest form body read (bytes); a longer one is ``malformed_form``."""
MAX_FORM_FIELDS = 10
"""The most fields a form may carry; more is ``malformed_form``."""


def unique_params(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    """``name -> value`` of already-decoded ``(name, value)`` pairs (e.g. Starlette's ``multi_items()``).

    Raises:
        RequestError: ``duplicate_parameter`` (detail: the name, at most 64 characters) when a name repeats.
    """
    result: dict[str, str] = {}
    for name, value in pairs:
        if name in result:
            raise RequestError("duplicate_parameter", name[:64])
        result[name] = value
    return result


def form_params(body: bytes) -> dict[str, str]:
    """The fields of an ``application/x-www-form-urlencoded`` body (WHATWG URL Standard §5.1), each name once.

    Raises:
        RequestError: ``malformed_form`` for a body over :data:`MAX_FORM_BYTES` bytes, over
            :data:`MAX_FORM_FIELDS` fields or not ASCII; ``duplicate_parameter`` when a name repeats.
    """
    if len(body) > MAX_FORM_BYTES:
        raise RequestError("malformed_form", f"body over {MAX_FORM_BYTES} bytes")
    try:
        pairs = urllib.parse.parse_qsl(body.decode("ascii"), keep_blank_values=True, max_num_fields=MAX_FORM_FIELDS)
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError("malformed_form", type(exc).__name__) from None
    return unique_params(pairs)
