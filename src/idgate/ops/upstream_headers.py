"""Which request header each identity slot becomes at each HAProxy backend (``haproxy/haproxy.cfg``, the
``http-request set-header NAME "%[var(txn.idgate.SLOT)]"`` lines of ``be_<upstream>``). One table for
``idgate explain``; ``tests/unit/ops/test_explain.py`` holds it against the shipped haproxy.cfg."""

from __future__ import annotations

from collections.abc import Mapping

_X_AUTH = {"user": "X-Auth-User", "email": "X-Auth-Email", "name": "X-Auth-Name", "groups": "X-Auth-Groups"}

BACKEND_HEADERS: Mapping[str, Mapping[str, str]] = {
    "app": {
        **_X_AUTH,
        "roles": "X-Auth-Roles",
        "subject": "X-Auth-Subject",
        "issuer": "X-Auth-Issuer",
        "assertion": "X-JWT-Assertion",
    },
    "grafana": {
        "user": "X-WEBAUTH-USER",
        "email": "X-WEBAUTH-EMAIL",
        "name": "X-WEBAUTH-NAME",
        "role": "X-WEBAUTH-ROLE",
        "groups": "X-WEBAUTH-GROUPS",
        "assertion": "X-JWT-Assertion",
    },
    "looker": {**_X_AUTH, "roles": "X-Auth-Roles"},
    "grpc": {
        **{slot: header.lower() for slot, header in _X_AUTH.items()},
        "roles": "x-auth-roles",
        "subject": "x-auth-subject",
        "issuer": "x-auth-issuer",
        "assertion": "x-jwt-assertion",
    },
}
"""upstream name (backend ``be_<name>``) → identity slot → the header HAProxy sets from ``txn.idgate.<slot>``."""


def upstream_headers(upstream: str | None, identity: Mapping[str, str]) -> dict[str, str]:
    """The headers the shipped haproxy.cfg sets for ``identity`` at ``be_<upstream>``; for a backend this table does
    not know, the variables themselves (``txn.idgate.<slot>``)."""
    table = BACKEND_HEADERS.get(upstream or "")
    if table is None:
        return {f"txn.idgate.{slot}": value for slot, value in identity.items() if value}
    return {header: identity[slot] for slot, header in table.items() if identity.get(slot)}
