"""The IdP chooser of ``/.idgate/start`` when several IdPs serve browser login (``login.issuers``).

A static page with one link per IdP, ``/.idgate/start?idp=<name>&rd=<return URL>``: no script, no style, no
form, no external resource, served with ``Content-Security-Policy: default-src 'none'; frame-ancestors 'none';
base-uri 'none'; form-action 'none'`` (CSP Level 3), ``X-Content-Type-Options: nosniff``,
``Referrer-Policy: no-referrer`` and ``Cache-Control: no-store``. Every value is HTML-escaped and URL-encoded
(the names are config names ``[a-z][a-z0-9_]*``; the return URL is already :func:`~idgate.sso.redirects.safe_return_to`
output, escaped anyway).
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Sequence

from starlette.responses import HTMLResponse

CHOOSER_HEADERS = {
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "cache-control": "no-store",
}


def chooser_link(prefix: str, name: str, return_to: str) -> str:
    """The (unescaped) start URL that picks IdP ``name`` and keeps ``return_to``."""
    return f"{prefix}/start?" + urllib.parse.urlencode({"idp": name, "rd": return_to})


def chooser_page(*, prefix: str, names: Sequence[str], return_to: str) -> HTMLResponse:
    """The 200 chooser page: one ``<a id="idp-<name>">`` per IdP name, in order."""
    items = "".join(
        f"<li><a id='idp-{html.escape(name, quote=True)}' href='{html.escape(chooser_link(prefix, name, return_to))}'>"
        f"{html.escape(name)}</a></li>"
        for name in names
    )
    doc = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Sign in</title></head>"
        f"<body><h1>Sign in</h1><p>Choose your identity provider:</p><ul>{items}</ul></body></html>"
    )
    return HTMLResponse(doc, 200, headers=CHOOSER_HEADERS)
