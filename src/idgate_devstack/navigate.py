"""Navigate like a browser with httpx: follow idgate's login redirects and the test IdP's login form.

Used by ``idgate demo --check`` and by the end-to-end tests (Chromium drives the same flow in tests/browser).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass

import httpx


@dataclass(frozen=True, kw_only=True)
class BrowserLogin:
    """The outcome of :func:`browser_login`: the final response, the hops, and where the time went (seconds)."""

    response: httpx.Response
    hops: list[str]
    saw_login_form: bool
    idgate_seconds: float  # /.idgate/start + /.idgate/callback + the first /auth-gated hop, as seen by the client
    total_seconds: float


_FORM_ACTION = re.compile(r"<form[^>]*action=\"([^\"]+)\"", re.IGNORECASE)


def browser_login(client: httpx.Client, path: str, *, site: str, username: str = "alice") -> BrowserLogin:
    """Navigate to ``path`` on ``site`` (or to an absolute https URL) like a browser (``Accept: text/html``),
    following redirects by hand through idgate's login, the IdP's login form (posted for ``username``, any
    password) and back. ``client`` keeps the cookies; it must trust the sites' CA and not follow redirects."""
    url = path if path.startswith("https://") else site + path
    hops: list[str] = []
    idgate_seconds = 0.0
    saw_form = False
    started = time.perf_counter()
    headers = {"accept": "text/html", "sec-fetch-mode": "navigate"}
    response = client.get(url, headers=headers)
    idgate_seconds += response.elapsed.total_seconds()
    for _ in range(20):
        hops.append(f"{response.status_code} {response.request.url.path}")
        if response.status_code in (301, 302, 303, 307, 308):
            url = str(response.request.url.join(response.headers["location"]))
            response = client.get(url, headers=headers)
            if url.startswith(site):
                idgate_seconds += response.elapsed.total_seconds()
            continue
        action = _FORM_ACTION.search(response.text) if response.status_code == 200 else None
        if action and "/interaction/" in str(response.request.url):
            saw_form = True
            target = str(response.request.url.join(action.group(1)))
            response = client.post(target, data={"login": username, "password": "pw"}, headers=headers)
            continue
        break
    return BrowserLogin(
        response=response,
        hops=hops,
        saw_login_form=saw_form,
        idgate_seconds=idgate_seconds,
        total_seconds=time.perf_counter() - started,
    )
