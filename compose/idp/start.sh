#!/bin/sh
# Starts the project's test OpenID Provider (testidp/server.mjs, FOR TESTS AND DEMOS ONLY) in the `idp` service of
# compose/docker-compose.yml (image node:20-slim).
#
# ../testidp is mounted read-only at /src/testidp; the three files the IdP needs are copied to /app and its pinned
# dependencies installed from the lockfile (npm ci; the npm cache is a volume, so later starts need no network).
# Nothing is written into your checkout: its own testidp/node_modules is never touched.
#
# The OIDC client secret is read from the file the one-shot `certs` service generated ($IDP_CLIENT_SECRET_FILE, the
# same file idgate's client_secret_file names), so it never appears in the compose file or `docker inspect`'s Config.
set -eu

mkdir -p /app
cp /src/testidp/package.json /src/testidp/package-lock.json /src/testidp/server.mjs /app/
npm ci --prefix /app --omit=dev --no-audit --no-fund --prefer-offline

IDP_CLIENT_SECRET="$(cat "$IDP_CLIENT_SECRET_FILE")"
export IDP_CLIENT_SECRET
unset IDP_CLIENT_SECRET_FILE

cd /app
exec node server.mjs
