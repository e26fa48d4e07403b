# idgate, the auth service: `idgate serve --config /etc/idgate/idgate.yaml` as a non-root user.
#
#   docker build -t idgate:local .
#   docker run --rm -v "$PWD/my-idgate.yaml:/etc/idgate/idgate.yaml:ro" -p 127.0.0.1:9180:9180 idgate:local
#
# Mount the config at /etc/idgate/idgate.yaml (or pass `idgate serve --config PATH`); give secrets as files
# (client_secret_file, sessions.keys_file, assertion.keys_file) or environment variables (*_env), never inline.
# Listens where the config's server.host/port (HTTP: /auth, /.idgate/*, /healthz, /readyz, /metrics) and spoa.host/port
# (SPOE agent) say: set host 0.0.0.0 in a container. compose/docker-compose.yml runs it with HAProxy and friends.
# The image also serves the demo tools (python -m idgate_devstack.echo, ...), which the compose stack uses; the `grpc`
# extra (grpcio) is installed for the gRPC demo service, python -m idgate_devstack.grpc_echo serve (and its `call`).

FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# a fixed uid/gid, so files mounted or generated for idgate (the compose stack's secrets) can be given to it
RUN groupadd --system --gid 10001 idgate \
    && useradd --system --uid 10001 --gid idgate --home-dir /nonexistent --no-create-home \
       --shell /usr/sbin/nologin idgate

# only what the build needs (see .dockerignore): the package metadata, its README and the source
WORKDIR /build
COPY pyproject.toml README.md ./
COPY src ./src
RUN pip install ".[speed,grpc]" \
    && rm -rf /build

WORKDIR /
# numeric, so that Kubernetes can check runAsNonRoot without a runAsUser (deploy/kubernetes sets 10001 anyway)
USER 10001:10001
EXPOSE 9180 9181

# /readyz is 200 once every issuer's signing keys were fetched (the default port 9180; override with --health-cmd)
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9180/readyz', timeout=3)"]

CMD ["idgate", "serve", "--config", "/etc/idgate/idgate.yaml"]
