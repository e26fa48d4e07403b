"""The Microsoft Graph contract stub (idgate_devstack.graph_stub): Graph's documented answer shapes, paging through
@odata.nextLink, errors in Graph's shape, and the control calls; in-process and as the subprocess the stack runs."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from idgate_devstack.graph_stub import GRAPH_AUDIENCE, GraphStub, build_app

USERS = {"oid-alice": ["g-1", "g-2", "g-3"], "oid-bob": []}


def bearer(aud: str = GRAPH_AUDIENCE) -> dict[str, str]:
    def seg(value: object) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return {"authorization": f"Bearer {seg({'alg': 'RS256'})}.{seg({'aud': aud})}.sig"}


pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=build_app(USERS, page_size=2))
    async with httpx.AsyncClient(transport=transport, base_url="http://graph.test") as http:
        yield http


async def test_transitive_member_of_pages_with_next_links(client: httpx.AsyncClient) -> None:
    first = (await client.get("/v1.0/users/oid-alice/transitiveMemberOf?$select=id", headers=bearer())).json()
    assert [e["@odata.type"] for e in first["value"]] == ["#microsoft.graph.directoryRole", "#microsoft.graph.group"]
    second = (await client.get(first["@odata.nextLink"], headers=bearer())).json()
    assert [e["id"] for e in second["value"]] == ["g-2", "g-3"]
    assert "@odata.nextLink" not in second


async def test_get_member_objects(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1.0/users/oid-alice/getMemberObjects", headers=bearer(), json={})
    assert response.json() == {"value": ["g-1", "g-2", "g-3"]}


@pytest.mark.parametrize(
    ("headers", "path", "status", "code"),
    [
        ({}, "/v1.0/users/oid-alice/transitiveMemberOf", 401, "InvalidAuthenticationToken"),
        (bearer("https://api.example"), "/v1.0/users/oid-alice/transitiveMemberOf", 401, "InvalidAuthenticationToken"),
        (bearer(), "/v1.0/users/nobody/transitiveMemberOf", 404, "Request_ResourceNotFound"),
    ],
    ids=["no-token", "not-for-graph", "unknown-user"],
)
async def test_errors_have_graphs_shape(
    client: httpx.AsyncClient, headers: dict[str, str], path: str, status: int, code: str
) -> None:
    response = await client.get(path, headers=headers)
    assert response.status_code == status and response.json()["error"]["code"] == code


async def test_the_stub_can_be_told_to_fail(client: httpx.AsyncClient) -> None:
    await client.post("/__stub/fail", json={"status": 503})
    assert (await client.get("/v1.0/users/oid-alice/transitiveMemberOf", headers=bearer())).status_code == 503
    await client.post("/__stub/fail", json={"status": 0})
    assert (await client.get("/v1.0/users/oid-alice/transitiveMemberOf", headers=bearer())).status_code == 200
    assert len((await client.get("/__echo/requests")).json()) == 2


def test_subprocess_serves_and_records(tmp_path: Path) -> None:
    with GraphStub(USERS, users_file=tmp_path / "users.json") as stub:
        assert stub.graph_url == f"{stub.url}/v1.0"
        answer = httpx.get(f"{stub.graph_url}/users/oid-bob/transitiveMemberOf", headers=bearer(), timeout=5)
        assert answer.json()["value"] == [
            {"@odata.type": "#microsoft.graph.directoryRole", "id": "role-directory-readers"}
        ]
        assert [r["path"] for r in stub.requests()] == ["/v1.0/users/oid-bob/transitiveMemberOf"]
        stub.reset()
        assert stub.requests() == []
