"""Session fixtures: the real stack on loopback (see e2e_stack.py), started once per test session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import yaml
from e2e_stack import AUDIENCE, AUTH_TIMEOUT_MS, Stack, stack_config

from idgate.devstack.certs import generate_dev_certs
from idgate.devstack.echo import EchoUpstream
from idgate.devstack.haproxy import Haproxy, HaproxySettings, free_tcp_port
from idgate.devstack.idp import IdpConfig, TestIdp
from idgate.devstack.service import IdgateService


@pytest.fixture(scope="session")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    root = tmp_path_factory.mktemp("stack")
    certs = generate_dev_certs(root / "tls")
    https_port = free_tcp_port()
    redirect_uri = f"https://127.0.0.1:{https_port}/.idgate/callback"
    idp_config = IdpConfig(
        port=free_tcp_port(),
        tls_cert=certs.cert,
        tls_key=certs.key,
        ca_file=certs.ca,
        redirect_uris=(redirect_uri,),
        resources=(AUDIENCE,),
        test_endpoints=True,
        log_file=root / "idp.log",
    )
    with TestIdp(idp_config) as idp:
        config_path = root / "idgate.yaml"
        config_path.write_text(yaml.safe_dump(stack_config(idp.issuer, certs.ca)))
        upstreams = {name: EchoUpstream(name) for name in ("app", "grafana", "looker")}
        for upstream in upstreams.values():
            upstream.start()
        idgate = IdgateService(config=config_path, port=free_tcp_port(), log_path=root / "idgate.log")
        settings = HaproxySettings(
            tls_pem=certs.pem,
            https_bind=f"127.0.0.1:{https_port}",
            http_bind=f"127.0.0.1:{free_tcp_port()}",
            stats_bind=f"127.0.0.1:{free_tcp_port()}",
            auth_url=f"{idgate.url}/auth",
            auth_timeout_ms=AUTH_TIMEOUT_MS,
            upstream_app=upstreams["app"].address,
            upstream_grafana=upstreams["grafana"].address,
            upstream_looker=upstreams["looker"].address,
            stats_socket=root / "haproxy.sock",
        )
        try:
            idgate.start()
            with Haproxy(settings, log_path=root / "haproxy.log") as haproxy:
                yield Stack(
                    certs=certs,
                    idp=idp,
                    idgate=idgate,
                    haproxy=haproxy,
                    settings=settings,
                    upstreams=upstreams,
                    redirect_uri=redirect_uri,
                )
        finally:
            idgate.stop()
            for upstream in upstreams.values():
                upstream.stop()


@pytest.fixture
def fresh(stack: Stack) -> Stack:
    """The stack with the upstreams' request records cleared."""
    stack.reset_upstreams()
    return stack
