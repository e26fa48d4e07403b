"""Point HAProxy's requests at one idgate replica (Runtime API), and walk a browser login one hop at a time.

Used by tests/e2e/test_replica_failover.py to make ``/.idgate/start`` land on one replica and
``/.idgate/callback`` on another, through the real HAProxy.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import httpx
from stack import Stack

_FORM_ACTION = re.compile(r"<form[^>]*action=\"([^\"]+)\"", re.IGNORECASE)
HTML = {"accept": "text/html", "sec-fetch-mode": "navigate"}


def haproxy_command(stack: Stack, line: str) -> str:
    """One Runtime API command on the stack's stats socket; HAProxy's answer (text)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(str(stack.settings.stats_socket))
        sock.sendall(line.encode() + b"\n")
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).decode()


def server_names(stack: Stack) -> list[str]:
    """HAProxy's server names of the replicas, in ``stack.replicas`` order (``idgate``, ``idgate2``, ...)."""
    return ["idgate"] + [f"idgate{n}" for n in range(2, len(stack.replicas) + 1)]


@contextmanager
def only_replica(stack: Stack, index: int, backend: str = "be_idgate") -> Iterator[None]:
    """While inside, ``backend`` sends every request to replica ``index`` (the others are in maintenance)."""
    names = server_names(stack)
    for n, name in enumerate(names):
        if n != index:
            assert haproxy_command(stack, f"disable server {backend}/{name}").strip() == ""
    try:
        yield
    finally:
        for name in names:
            haproxy_command(stack, f"enable server {backend}/{name}")


def walk_login(
    client: httpx.Client,
    stack: Stack,
    path: str,
    *,
    before: Callable[[str], None] = lambda url: None,
    username: str = "alice",
) -> tuple[httpx.Response, list[str]]:
    """Navigate to ``path`` (or an absolute https URL) like a browser through idgate's login and the IdP's form,
    calling ``before(url)`` before each request (to re-route HAProxy between hops); returns the final response and
    every URL requested. ``client`` keeps the cookies and must not follow redirects."""
    url, urls = (path if path.startswith("https://") else stack.url + path), []
    for _ in range(20):
        before(url)
        urls.append(url)
        response = client.get(url, headers=HTML)
        if response.status_code in (301, 302, 303, 307, 308):
            url = str(response.request.url.join(response.headers["location"]))
            continue
        action = _FORM_ACTION.search(response.text) if response.status_code == 200 else None
        if action and "/interaction/" in str(response.request.url):
            target = str(response.request.url.join(action.group(1)))
            response = client.post(target, data={"login": username, "password": "pw"}, headers=HTML)
            if response.status_code in (301, 302, 303, 307, 308):
                url = str(response.request.url.join(response.headers["location"]))
                continue
        return response, urls
    raise AssertionError(f"login did not settle: {urls}")


def served_by(stack: Stack, path_prefix: str) -> list[str]:
    """The ``be_idgate`` server of every HAProxy log line whose request path starts with ``path_prefix``, in order."""
    pattern = re.compile(r" be_idgate/(\S+) .*\"GET " + re.escape(path_prefix))
    return [m.group(1) for m in map(pattern.search, stack.haproxy.log_text().splitlines()) if m]
