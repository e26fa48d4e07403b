// idgate test OpenID Provider: a thin harness around panva's `oidc-provider` (pinned in package-lock.json).
//
// FOR TESTS AND THE LOCAL DEMO ONLY. Any password is accepted for the built-in users, and the optional
// /test/* endpoints sign arbitrary claims with the provider's real private key.
//
// Run: IDP_PORT=8443 IDP_REDIRECT_URIS=https://127.0.0.1:8080/callback node testidp/server.mjs
//
// Environment (all optional unless marked):
//   IDP_PORT                        (required) TCP port to listen on
//   IDP_HOST                        bind host, default "localhost"
//   IDP_ISSUER                      default "https://localhost:${IDP_PORT}" ("http://..." when TLS is off)
//   IDP_TLS_CERT, IDP_TLS_KEY       PEM file paths; when both are set the server speaks HTTPS, else HTTP
//   IDP_CLIENT_ID                   default "idgate"
//   IDP_CLIENT_SECRET               default "idgate-test-secret-0123456789abcdef"
//   IDP_REDIRECT_URIS               (required) comma-separated, matched exactly
//   IDP_POST_LOGOUT_REDIRECT_URIS   comma-separated, matched exactly
//   IDP_BACKCHANNEL_LOGOUT_URI      the client's back-channel logout URI (optional)
//   IDP_RESOURCES                   comma-separated resource indicators (JWT access-token audiences),
//                                   default "https://api.idgate.test"; the first one is the default resource
//   IDP_ACCESS_TOKEN_TTL            seconds, default 300
//   IDP_ID_TOKEN_TTL                seconds, default 300
//   IDP_TEST_ENDPOINTS              "1" enables POST /test/rotate-keys, POST /test/sign,
//                                   GET /test/public-key.pem, POST /test/users/<name>/groups
//   IDP_PROFILE                     generic (default) | keycloak | entra | okta | google: reproduce that
//                                   provider's documented token shapes (see PROFILES below). Reproduced, not run.
//
// Prints "idp ready <issuer>" on stdout once listening. Exits 0 on SIGTERM/SIGINT.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';

import Provider, { errors } from 'oidc-provider';
// Internal path (pinned version): one store shared by every Provider instance, so rebuilding the
// provider to rotate signing keys keeps sessions, interactions, grants and refresh tokens.
import { createMemoryAdapter } from 'oidc-provider/lib/adapters/memory_adapter.js';

const OIDC_SCOPES = ['openid', 'profile', 'email', 'groups', 'offline_access'];

// Provider profiles: the documented shapes of each IdP's tokens, reproduced on oidc-provider (not the IdP itself).
//   scopes        the scopes the provider knows; `strictScopes` answers invalid_scope for any other (Keycloak,
//                 Entra ID, Okta and Google all refuse unknown scopes; generic oidc-provider ignores them)
//   atTyp         the access token's JWS `typ` (undefined: none); only `generic` sends RFC 9068 `at+jwt`
//   atFormat      'jwt' or 'opaque' (Google's access tokens are opaque)
// Keycloak: realm roles only in the access token (`realm_access.roles`), `aud: account`, `azp`; the ID token has no
//   groups; userinfo answers its JWT access tokens, with `groups` (a Group Membership mapper added to userinfo)
//   (https://www.keycloak.org/docs/latest/server_admin/#_protocol-mappers).
// Entra ID: `groups` in ID and access tokens, replaced by `_claim_names`/`_claim_sources` (groups overage) above
//   ENTRA_GROUPS_LIMIT groups (200 in a real JWT; 2 here), `oid`; app-only tokens by client credentials with
//   scope https://graph.microsoft.com/.default (https://learn.microsoft.com/entra/identity-platform/id-token-claims-reference).
// Okta: `groups` only when the `groups` scope is asked for, access tokens without `typ`
//   (https://developer.okta.com/docs/guides/customize-tokens-groups-claim/).
// Google: no groups at all, `hd` for Workspace users, opaque access tokens
//   (https://developers.google.com/identity/openid-connect/openid-connect#an-id-tokens-payload).
const ENTRA_GROUPS_LIMIT = 2;
const GRAPH_RESOURCE = 'https://graph.microsoft.com'; // the aud of app-only Graph tokens (client credentials)
const PROFILES = {
  generic: { scopes: OIDC_SCOPES, strictScopes: false, atTyp: 'at+jwt', atFormat: 'jwt' },
  keycloak: { scopes: ['openid', 'profile', 'email', 'offline_access'], strictScopes: true, atTyp: 'JWT', atFormat: 'jwt' },
  entra: { scopes: ['openid', 'profile', 'email', 'offline_access'], strictScopes: true, atTyp: 'JWT', atFormat: 'jwt' },
  okta: { scopes: OIDC_SCOPES, strictScopes: true, atTyp: undefined, atFormat: 'jwt' },
  google: { scopes: ['openid', 'profile', 'email'], strictScopes: true, atTyp: undefined, atFormat: 'opaque' },
};
const SIGN_ALGS = new Set(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512']);
const MAX_BODY_BYTES = 64 * 1024;

// ---------------------------------------------------------------------------------------------- config

function fail(message) {
  process.stderr.write(`testidp: ${message}\n`);
  process.exit(2);
}

function list(value) {
  return (value ?? '').split(',').map((s) => s.trim()).filter(Boolean);
}

function positiveInt(name, fallback) {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw);
  if (!Number.isInteger(n) || n <= 0) fail(`${name} must be a positive integer (seconds), got ${JSON.stringify(raw)}`);
  return n;
}

function profileNamed(name) {
  if (!Object.hasOwn(PROFILES, name)) fail(`IDP_PROFILE must be one of ${Object.keys(PROFILES).join(', ')}`);
  return { name, ...PROFILES[name] };
}

function readConfig(env) {
  const port = Number(env.IDP_PORT);
  if (!env.IDP_PORT || !Number.isInteger(port) || port <= 0 || port > 65535) {
    fail('IDP_PORT is required (1-65535)');
  }
  const tlsCert = env.IDP_TLS_CERT || undefined;
  const tlsKey = env.IDP_TLS_KEY || undefined;
  if (Boolean(tlsCert) !== Boolean(tlsKey)) fail('set both IDP_TLS_CERT and IDP_TLS_KEY, or neither');
  const tls = Boolean(tlsCert && tlsKey);
  const issuer = (env.IDP_ISSUER || `${tls ? 'https' : 'http'}://localhost:${port}`).replace(/\/$/, '');
  const issuerUrl = URL.parse(issuer);
  if (!issuerUrl || (issuerUrl.pathname !== '/' && issuerUrl.pathname !== '')) {
    fail(`IDP_ISSUER must be an absolute URL without a path, got ${JSON.stringify(issuer)}`);
  }
  const redirectUris = list(env.IDP_REDIRECT_URIS);
  if (redirectUris.length === 0) fail('IDP_REDIRECT_URIS is required (comma-separated)');
  const resources = list(env.IDP_RESOURCES ?? 'https://api.idgate.test');
  if (resources.length === 0) fail('IDP_RESOURCES must list at least one resource indicator');
  return {
    port,
    host: env.IDP_HOST || 'localhost',
    issuer,
    tls: tls ? { cert: fs.readFileSync(tlsCert), key: fs.readFileSync(tlsKey) } : undefined,
    clientId: env.IDP_CLIENT_ID || 'idgate',
    clientSecret: env.IDP_CLIENT_SECRET || 'idgate-test-secret-0123456789abcdef',
    redirectUris,
    postLogoutRedirectUris: list(env.IDP_POST_LOGOUT_REDIRECT_URIS),
    backchannelLogoutUri: env.IDP_BACKCHANNEL_LOGOUT_URI || undefined,
    resources,
    accessTokenTtl: positiveInt('IDP_ACCESS_TOKEN_TTL', 300),
    idTokenTtl: positiveInt('IDP_ID_TOKEN_TTL', 300),
    testEndpoints: env.IDP_TEST_ENDPOINTS === '1',
    profile: profileNamed(env.IDP_PROFILE || 'generic'),
  };
}

// ------------------------------------------------------------------------------------------------ users

function makeUsers() {
  const users = new Map();
  const add = (username, email, name, groups, emailVerified = true) =>
    users.set(username, { username, email, name, groups, emailVerified });
  add('alice', 'alice@example.test', 'Alice Admin', ['grafana-admins', 'staff', 'looker-analysts']);
  add('bob', 'bob@example.test', 'Bob Builder', ['staff']);
  add('carol', 'carol@example.test', 'Carol NoGroups', []);
  // Hostile group names: a comma and a CR/LF header-injection attempt, passed through verbatim.
  add('mallory', 'mallory@example.test', 'Mallory', ['viewers,admin', 'ops\r\nX-Auth-Roles: admin']);
  // "nOAuth": her own account, with alice's address typed into a user-editable email the IdP never verified.
  add('trudy', 'alice@example.test', 'Trudy Unverified', ['staff'], false);
  return users;
}

function userClaims(user, profile = PROFILES.generic) {
  const claims = {
    sub: user.username,
    email: user.email,
    email_verified: user.emailVerified,
    name: user.name,
    preferred_username: user.username,
    groups: [...user.groups],
  };
  if (profile.name === 'keycloak') delete claims.groups; // realm roles: access token only
  if (profile.name === 'google') {
    delete claims.groups;
    if (claims.email.endsWith('@example.test')) claims.hd = 'example.test';
  }
  if (profile.name === 'entra') {
    claims.oid = `oid-${user.username}`;
    if (user.groups.length > ENTRA_GROUPS_LIMIT) {
      delete claims.groups;
      claims._claim_names = { groups: 'src1' };
      claims._claim_sources = {
        src1: { endpoint: `https://graph.windows.net/tenant/users/${claims.oid}/getMemberObjects` },
      };
    }
  }
  return claims;
}

// Claims a provider puts in its JWT access tokens (besides iss, sub, aud, exp, iat, jti, client_id, scope).
function accessTokenClaims(user, profile, clientId) {
  const all = userClaims(user, profile);
  const pick = (...names) => Object.fromEntries(names.filter((n) => Object.hasOwn(all, n)).map((n) => [n, all[n]]));
  switch (profile.name) {
    case 'keycloak':
      return { ...pick('email', 'email_verified', 'name', 'preferred_username'), azp: clientId,
        realm_access: { roles: [...user.groups] } };
    case 'entra':
      return pick('oid', 'name', 'preferred_username', 'groups', '_claim_names', '_claim_sources');
    default:
      return pick('email', 'email_verified', 'name', 'preferred_username', 'groups');
  }
}

// ------------------------------------------------------------------------------------------ signing keys

class SigningKeys {
  // All keys ever generated stay usable by /test/sign (kid -> key), even once dropped from the JWKS.
  #all = new Map();

  // Published kids, the signer first.
  published = [];

  rotate({ dropOld = false } = {}) {
    const { privateKey, publicKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
    const kid = `k-${crypto.randomBytes(6).toString('hex')}`;
    this.#all.set(kid, { kid, privateKey, publicKey });
    this.published = dropOld ? [kid] : [kid, ...this.published];
    return kid;
  }

  get currentKid() {
    return this.published[0];
  }

  get(kid) {
    return this.#all.get(kid === 'current' || kid === undefined ? this.currentKid : kid);
  }

  // Private JWKs for the Provider's `jwks` option; the first one signs everything the provider issues.
  providerJwks() {
    return {
      keys: this.published.map((kid) => ({
        ...this.#all.get(kid).privateKey.export({ format: 'jwk' }),
        kid,
        alg: 'RS256',
        use: 'sig',
      })),
    };
  }
}

function b64url(input) {
  return Buffer.from(input).toString('base64url');
}

// Compact JWS over arbitrary header and claims with an RSA key (RS* or PS*).
function signJws(key, header, claims) {
  const alg = header.alg ?? 'RS256';
  if (!SIGN_ALGS.has(alg)) throw new HttpError(400, 'invalid_request', `alg must be one of ${[...SIGN_ALGS].join(', ')}`);
  const fullHeader = { alg, ...(Object.hasOwn(header, 'kid') ? {} : { kid: key.kid }), ...header };
  const input = `${b64url(JSON.stringify(fullHeader))}.${b64url(JSON.stringify(claims))}`;
  const hash = `sha${alg.slice(2)}`;
  const keyArg = alg.startsWith('PS')
    ? { key: key.privateKey, padding: crypto.constants.RSA_PKCS1_PSS_PADDING, saltLength: Number(alg.slice(2)) / 8 }
    : key.privateKey;
  const signature = crypto.sign(hash, Buffer.from(input), keyArg);
  return `${input}.${signature.toString('base64url')}`;
}

// ---------------------------------------------------------------------------------------------- provider

function escapeHtml(value) {
  return String(value).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  // No external resources: the test network is closed and browsers would retry fonts forever.
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>${escapeHtml(title)}</title>
<style>body{font-family:sans-serif;max-width:24rem;margin:3rem auto}label,input,button{display:block;margin:.4rem 0}
.error{color:#b00}</style></head>
<body><h1>${escapeHtml(title)}</h1>
${body}
</body></html>`;
}

function buildProvider(cfg, { keys, users, adapter, cookieKeys }) {
  const ttl = (seconds) => () => seconds;
  const { profile } = cfg;
  const resourceServerInfo = (resource) => ({
    scope: '',
    audience: resource,
    accessTokenTTL: cfg.accessTokenTtl,
    accessTokenFormat: profile.atFormat,
    ...(profile.atFormat === 'jwt' ? { jwt: { sign: { alg: 'RS256' } } } : {}),
  });
  const scopeClaims = {
    openid: ['sub'],
    profile: ['name', 'preferred_username'],
    email: ['email', 'email_verified'],
    groups: ['groups'],
  };
  if (profile.name === 'keycloak' || profile.name === 'google') delete scopeClaims.groups;
  if (profile.name === 'google') scopeClaims.openid.push('hd');
  if (profile.name === 'entra') {
    delete scopeClaims.groups;
    scopeClaims.openid.push('oid', 'groups'); // Entra sends groups without a scope (group claims of the app)
  }

  const client = {
    client_id: cfg.clientId,
    client_secret: cfg.clientSecret,
    client_name: 'idgate (test client)',
    application_type: 'web',
    grant_types: ['authorization_code', 'refresh_token', ...(profile.name === 'entra' ? ['client_credentials'] : [])],
    response_types: ['code'],
    redirect_uris: cfg.redirectUris,
    post_logout_redirect_uris: cfg.postLogoutRedirectUris,
    token_endpoint_auth_method: 'client_secret_basic',
    id_token_signed_response_alg: 'RS256',
    ...(cfg.backchannelLogoutUri
      ? { backchannel_logout_uri: cfg.backchannelLogoutUri, backchannel_logout_session_required: true }
      : {}),
  };

  const provider = new Provider(cfg.issuer, {
    adapter,
    clients: [client],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    jwks: keys.providerJwks(),
    cookies: { keys: cookieKeys },
    responseTypes: ['code'],
    scopes: profile.scopes, // OIDC scopes only: a resource scope here would loop every login into consent
    claims: scopeClaims,
    formats: {
      customizers: {
        // The provider's access token header and audience (oidc-provider signs RFC 9068 at+jwt by default).
        async jwt(_ctx, _token, jwt) {
          jwt.header = { typ: profile.atTyp };
          if (profile.name === 'keycloak') jwt.payload.aud = 'account';
        },
      },
    },
    conformIdTokenClaims: false, // let scope claims (groups) into the ID token
    pkce: { required: () => true }, // v9 supports S256 only
    clockTolerance: 5,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: profile.name === 'entra' },
      rpInitiatedLogout: { enabled: true, logoutSource, postLogoutSuccessSource },
      backchannelLogout: { enabled: true },
      revocation: { enabled: true, allowedPolicy: async (ctx, cl, token) => token.clientId === cl.clientId },
      resourceIndicators: {
        enabled: true,
        defaultResource: async (ctx, _client, oneOf) => {
          if (profile.name === 'entra' && ctx.oidc.params?.grant_type === 'client_credentials') return GRAPH_RESOURCE;
          return oneOf ? oneOf[0] : cfg.resources[0];
        },
        useGrantedResource: async () => true,
        getResourceServerInfo: async (ctx, resource) => {
          const graph = profile.name === 'entra' && resource === GRAPH_RESOURCE
            && ctx.oidc.params?.grant_type === 'client_credentials';
          if (!cfg.resources.includes(resource) && !graph) throw new errors.InvalidTarget();
          return resourceServerInfo(resource);
        },
      },
    },
    async findAccount(_ctx, sub) {
      const user = users.get(sub);
      if (!user) return undefined;
      return { accountId: sub, claims: async () => userClaims(user, profile) };
    },
    // Identity claims copied into JWT access tokens; read at issue time, so /test/users/<name>/groups
    // changes show up in the next token (also on refresh).
    async extraTokenClaims(_ctx, token) {
      const user = token.accountId ? users.get(token.accountId) : undefined;
      if (!user) return undefined;
      return accessTokenClaims(user, profile, cfg.clientId);
    },
    issueRefreshToken: async (_ctx, cl) => cl.grantTypeAllowed('refresh_token'),
    // Auto-consent: the grant always holds every OIDC scope and every configured resource.
    async loadExistingGrant(ctx) {
      const { oidc } = ctx;
      const grantId = oidc.result?.consent?.grantId || oidc.session.grantIdFor(oidc.client.clientId);
      let grant = grantId ? await oidc.provider.Grant.find(grantId) : undefined;
      if (grant && grant.accountId !== oidc.session.accountId) grant = undefined;
      grant ||= new oidc.provider.Grant({ clientId: oidc.client.clientId, accountId: oidc.session.accountId });
      grant.addOIDCScope(profile.scopes.join(' '));
      for (const resource of cfg.resources) grant.addResourceScope(resource, '');
      await grant.save();
      return grant;
    },
    interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
    clientBasedCORS: () => false,
    // oidc-provider passes an SSRF-guarding undici dispatcher that refuses loopback/private addresses;
    // everything in the test stack lives on loopback, so back-channel logout calls drop it.
    fetch: (url, { dispatcher: _ssrfGuard, ...options }) => globalThis.fetch(url, options),
    async renderError(ctx, out) {
      ctx.type = 'html';
      const rows = Object.entries(out).map(([k, v]) => `<p><b>${escapeHtml(k)}</b>: ${escapeHtml(v)}</p>`);
      ctx.body = page('Error', rows.join('\n'));
    },
    ttl: {
      AccessToken: ttl(cfg.accessTokenTtl),
      AuthorizationCode: ttl(60),
      IdToken: ttl(cfg.idTokenTtl),
      RefreshToken: ttl(24 * 3600),
      Interaction: ttl(600),
      Session: ttl(24 * 3600),
      Grant: ttl(24 * 3600),
      ClientCredentials: ttl(cfg.accessTokenTtl),
      DeviceCode: ttl(600),
      BackchannelAuthenticationRequest: ttl(600),
      PreAuthorizedCode: ttl(600),
    },
  });

  for (const event of ['server_error', 'authorization.error', 'grant.error', 'end_session.error',
    'backchannel.error', 'refresh_token.error']) {
    provider.on(event, (_ctx, err) => {
      const cause = err?.cause ? ` (cause: ${err.cause?.code ?? ''} ${err.cause?.message ?? err.cause})` : '';
      process.stderr.write(`testidp: ${event}: ${err?.name}: ${err?.message} ${err?.error_description ?? ''}${cause}\n`);
    });
  }
  return provider;
}

async function logoutSource(ctx, form) {
  // The provider's form (id "op.logoutForm") plus a "yes" button; submitted automatically.
  // No element may have id="submit": it would shadow form.submit().
  ctx.body = page('Sign out', `${form}
<button type="submit" form="op.logoutForm" name="logout" value="yes">Sign out</button>
<script>
  const f = document.getElementById('op.logoutForm');
  const i = document.createElement('input'); i.type = 'hidden'; i.name = 'logout'; i.value = 'yes';
  f.appendChild(i); f.submit();
</script>`);
}

async function postLogoutSuccessSource(ctx) {
  ctx.body = page('Signed out', '<p id="signed-out">You are signed out.</p>');
}

// ------------------------------------------------------------------------------------------ http helpers

class HttpError extends Error {
  constructor(status, error, description) {
    super(description);
    this.status = status;
    this.error = error;
  }
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, 'invalid_request', 'body too large');
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

async function readJson(req, { optional = false } = {}) {
  const text = await readBody(req);
  if (text.trim() === '') {
    if (optional) return {};
    throw new HttpError(400, 'invalid_request', 'JSON body required');
  }
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    throw new HttpError(400, 'invalid_request', 'body is not valid JSON');
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    throw new HttpError(400, 'invalid_request', 'body must be a JSON object');
  }
  return value;
}

function send(res, status, contentType, body, headers = {}) {
  res.writeHead(status, {
    'Content-Type': contentType,
    'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store',
    ...headers,
  });
  res.end(body);
}

function sendJson(res, status, value) {
  send(res, status, 'application/json; charset=utf-8', JSON.stringify(value));
}

function requireMethod(req, method) {
  if (req.method !== method) throw new HttpError(405, 'invalid_request', `use ${method}`);
}

// ------------------------------------------------------------------------------------------ login pages

function loginForm(uid, { error, login = '' } = {}) {
  const err = error ? `<p class="error" id="login-error">${escapeHtml(error)}</p>` : '';
  return page('Sign in', `${err}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" id="login-form" autocomplete="off">
  <label for="login">Username</label>
  <input id="login" name="login" type="text" value="${escapeHtml(login)}" autofocus required>
  <label for="password">Password</label>
  <input id="password" name="password" type="password">
  <button type="submit" id="sign-in">Sign in</button>
</form>`);
}

async function handleInteraction(req, res, state, parts) {
  const provider = state.provider;
  const [uid, action] = parts;
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    throw new HttpError(400, 'invalid_request', `no interaction in progress (${err.message}); start again`);
  }
  if (details.uid !== uid) throw new HttpError(400, 'invalid_request', 'interaction mismatch; start again');
  const { prompt, params } = details;

  if (prompt.name === 'consent') {
    // Not expected (loadExistingGrant grants everything), but never block on a consent page.
    const grant = new provider.Grant({ clientId: params.client_id, accountId: details.session.accountId });
    grant.addOIDCScope(state.cfg.profile.scopes.join(' '));
    for (const resource of state.cfg.resources) grant.addResourceScope(resource, '');
    const grantId = await grant.save();
    await provider.interactionFinished(req, res, { consent: { grantId } }, { mergeWithLastSubmission: true });
    return;
  }
  if (prompt.name !== 'login') throw new HttpError(400, 'invalid_request', `unsupported prompt ${prompt.name}`);

  if (action === undefined) {
    requireMethod(req, 'GET');
    send(res, 200, 'text/html; charset=utf-8', loginForm(uid, { login: params.login_hint ?? '' }));
    return;
  }
  if (action !== 'login') throw new HttpError(404, 'not_found', 'no such page');
  requireMethod(req, 'POST');
  const form = new URLSearchParams(await readBody(req));
  const login = form.get('login') ?? '';
  // Any password is accepted for a known user; an unknown one gets the form again (HTTP 401).
  if (!state.users.has(login)) {
    send(res, 401, 'text/html; charset=utf-8', loginForm(uid, { error: `unknown user ${login}`, login }));
    return;
  }
  await provider.interactionFinished(
    req, res,
    { login: { accountId: login, amr: ['pwd'] } },
    { mergeWithLastSubmission: false },
  );
}

// The provider's answer to an authorization request naming a scope it does not know (Keycloak, Entra ID, Okta and
// Google: error=invalid_scope back at the client's redirect URI). True when it answered.
function refuseUnknownScope(res, url, cfg) {
  const scopes = (url.searchParams.get('scope') ?? '').split(' ').filter(Boolean);
  const unknown = scopes.filter((scope) => !cfg.profile.scopes.includes(scope));
  if (unknown.length === 0) return false;
  const redirectUri = url.searchParams.get('redirect_uri') ?? '';
  if (!cfg.redirectUris.includes(redirectUri)) {
    sendJson(res, 400, { error: 'invalid_scope', error_description: `unknown scope ${unknown.join(' ')}` });
    return true;
  }
  const target = new URL(redirectUri);
  target.searchParams.set('error', 'invalid_scope');
  target.searchParams.set('error_description', `Invalid scopes: ${unknown.join(' ')}`);
  if (url.searchParams.has('state')) target.searchParams.set('state', url.searchParams.get('state'));
  target.searchParams.set('iss', cfg.issuer);
  res.writeHead(302, { Location: target.toString(), 'Cache-Control': 'no-store' });
  res.end();
  return true;
}

// Keycloak answers userinfo for its own JWT access tokens (oidc-provider does not: JWT access tokens are for
// resource servers), with the claims of the scopes plus `groups` (the Group Membership mapper's "Add to userinfo").
function keycloakUserinfo(req, res, state) {
  const [scheme, token] = (req.headers.authorization ?? '').split(' ');
  const parts = scheme === 'Bearer' && token ? token.split('.') : [];
  if (parts.length !== 3) {
    send(res, 401, 'application/json', JSON.stringify({ error: 'invalid_token' }), { 'WWW-Authenticate': 'Bearer' });
    return;
  }
  let header;
  let claims;
  try {
    header = JSON.parse(Buffer.from(parts[0], 'base64url').toString('utf8'));
    claims = JSON.parse(Buffer.from(parts[1], 'base64url').toString('utf8'));
  } catch {
    sendJson(res, 401, { error: 'invalid_token' });
    return;
  }
  const key = state.keys.published.includes(header.kid) ? state.keys.get(header.kid) : undefined;
  const signed = key && header.alg === 'RS256'
    && crypto.verify('sha256', Buffer.from(`${parts[0]}.${parts[1]}`), key.publicKey, Buffer.from(parts[2], 'base64url'));
  const user = signed && claims.iss === state.cfg.issuer && claims.exp > Date.now() / 1000 ? state.users.get(claims.sub) : undefined;
  if (!user) {
    sendJson(res, 401, { error: 'invalid_token' });
    return;
  }
  sendJson(res, 200, userClaims(user, PROFILES.generic));
}

// ------------------------------------------------------------------------------------------ test routes

async function handleTest(req, res, state, url, parts) {
  const [name, ...rest] = parts;
  if (name === 'rotate-keys' && rest.length === 0) {
    requireMethod(req, 'POST');
    const body = await readJson(req, { optional: true });
    const kid = state.keys.rotate({ dropOld: body.drop_old === true });
    setProvider(state);
    sendJson(res, 200, { kid, published: [...state.keys.published] });
    return;
  }
  if (name === 'sign' && rest.length === 0) {
    requireMethod(req, 'POST');
    const body = await readJson(req);
    const header = body.header ?? {};
    const claims = body.claims ?? {};
    const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
    if (!isObject(header) || !isObject(claims)) {
      throw new HttpError(400, 'invalid_request', 'header and claims must be JSON objects');
    }
    const key = state.keys.get(body.key ?? 'current');
    if (!key) throw new HttpError(404, 'not_found', `no key ${body.key}`);
    sendJson(res, 200, { token: signJws(key, header, claims), kid: key.kid });
    return;
  }
  if (name === 'public-key.pem' && rest.length === 0) {
    requireMethod(req, 'GET');
    const key = state.keys.get(url.searchParams.get('kid') || 'current');
    if (!key) throw new HttpError(404, 'not_found', `no key ${url.searchParams.get('kid')}`);
    send(res, 200, 'application/x-pem-file', key.publicKey.export({ type: 'spki', format: 'pem' }));
    return;
  }
  if (name === 'users' && rest.length === 2 && rest[1] === 'groups') {
    requireMethod(req, 'POST');
    const user = state.users.get(rest[0]);
    if (!user) throw new HttpError(404, 'not_found', `no user ${rest[0]}`);
    const body = await readJson(req);
    if (!Array.isArray(body.groups) || !body.groups.every((g) => typeof g === 'string')) {
      throw new HttpError(400, 'invalid_request', 'groups must be a JSON array of strings');
    }
    user.groups = [...body.groups];
    sendJson(res, 200, { user: user.username, groups: user.groups });
    return;
  }
  throw new HttpError(404, 'not_found', 'no such test endpoint');
}

// ------------------------------------------------------------------------------------------------ main

// (Re)build the provider from the current keys; the shared adapter keeps all stateful data.
function setProvider(state) {
  state.provider = buildProvider(state.cfg, state);
  state.callback = state.provider.callback();
}

function main() {
  const cfg = readConfig(process.env);
  const state = {
    cfg,
    users: makeUsers(),
    keys: new SigningKeys(),
    adapter: createMemoryAdapter(5),
    cookieKeys: [crypto.randomBytes(32).toString('base64url')],
    provider: undefined,
    callback: undefined,
  };
  state.keys.rotate();
  setProvider(state);

  async function handler(req, res) {
    const url = new URL(req.url, cfg.issuer);
    const parts = url.pathname.split('/').filter(Boolean).map(decodeURIComponent);
    try {
      if (parts[0] === 'interaction' && parts.length >= 2 && parts.length <= 3) {
        await handleInteraction(req, res, state, parts.slice(1));
      } else if (cfg.profile.name === 'keycloak' && url.pathname === '/me') {
        keycloakUserinfo(req, res, state);
      } else if (cfg.profile.strictScopes && url.pathname === '/auth' && refuseUnknownScope(res, url, cfg)) {
        // answered: invalid_scope
      } else if (parts[0] === 'test' && cfg.testEndpoints) {
        await handleTest(req, res, state, url, parts.slice(1));
      } else {
        // The provider of the moment (rebuilt on key rotation); Koa answers everything else.
        await state.callback(req, res);
      }
    } catch (err) {
      if (res.headersSent) {
        res.destroy(err);
        return;
      }
      if (err instanceof HttpError) {
        sendJson(res, err.status, { error: err.error, error_description: err.message });
      } else {
        process.stderr.write(`testidp: internal error: ${err?.stack ?? err}\n`);
        sendJson(res, 500, { error: 'server_error', error_description: String(err?.message ?? err) });
      }
    }
  }

  const server = cfg.tls
    ? https.createServer({ cert: cfg.tls.cert, key: cfg.tls.key }, handler)
    : http.createServer(handler);
  server.on('error', (err) => fail(`cannot listen on ${cfg.host}:${cfg.port}: ${err.message}`));
  server.listen(cfg.port, cfg.host, () => {
    process.stdout.write(`idp ready ${cfg.issuer}\n`);
  });

  const stop = (signal) => {
    process.stderr.write(`testidp: ${signal}, shutting down\n`);
    server.close(() => process.exit(0));
    server.closeAllConnections();
    setTimeout(() => process.exit(0), 1000).unref();
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}

main();
