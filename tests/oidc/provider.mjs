// A real OpenID provider on loopback for the end-to-end tests (issue #14): the certified
// `oidc-provider` package, configured from a JSON file the test harness writes
// (`tests/src/oidc.rs`), with a minimal non-interactive login and consent step.
//
// Usage: node provider.mjs <config.json>   (or PHR_OIDC_CONFIG=<config.json>)
//
// Rules:
// - It listens on 127.0.0.1 only, over HTTPS with the certificate and key named by `tls`
//   (PEM files the harness makes, signed by its own test CA: the gateway trusts issuers over
//   HTTPS only), on `port` from the config (0 = any free port), and prints exactly one line to
//   stdout once listening: {"issuer":"https://127.0.0.1:PORT"}. Nothing else goes to stdout;
//   diagnostics go to stderr.
// - Its signing key (RS256) is generated at start and never written anywhere: every run is a
//   separate issuer with a separate key, which is what "a token from another issuer" needs.
//   The public half is served at /jwks.
// - Accounts and clients come only from the config file: an unknown `login_hint` or account
//   is refused with 400, never mapped to some default person.
// - Login is non-interactive: GET /interaction/:uid logs in the account named by the
//   authorization request's `login_hint`; without one it serves a plain HTML form (no
//   JavaScript) that POSTs `account` to /interaction/:uid/login. Consent is given
//   automatically for exactly what the client asked (scopes, claims, the API resource).
// - Access tokens for the API resource (`api.audience`) are JWTs (resource indicators,
//   `accessTokenFormat: 'jwt'`) with `aud`, `scope` and the account's claims; ID tokens carry
//   the account's claims for the scopes asked (`conformIdTokenClaims: false`).
// - Token lifetimes come from `ttl` (seconds), so a test can make tokens expire quickly.
//
// Config shape (every field but `accounts` and `clients` is optional):
// {
//   "port": 0,
//   "tls": { "cert": "/tmp/…/cert.pem", "key": "/tmp/…/key.pem" },
//   "accounts": [{ "sub": "owner-ana", "claims": { "phr_person": "ana", "roles": ["owner"] } }],
//   "clients": [ /* oidc-provider client metadata: client_id, client_secret, redirect_uris… */ ],
//   "api": { "audience": "https://phr.test/api", "scope": "phr:read phr:write" },
//   "ttl": { "AccessToken": 60, "AuthorizationCode": 60, "IdToken": 60, … },
//   "claims": { "phr": ["phr_person", "phr_practitioner", "roles"] }
// }

import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import https from 'node:https';
import process from 'node:process';

import Provider from 'oidc-provider';

function fail(message) {
  process.stderr.write(`oidc provider: ${message}\n`);
  process.exit(2);
}

function loadConfig() {
  const path = process.argv[2] ?? process.env.PHR_OIDC_CONFIG;
  if (!path) fail('usage: node provider.mjs <config.json> (or PHR_OIDC_CONFIG)');
  let config;
  try {
    config = JSON.parse(readFileSync(path, 'utf8'));
  } catch (err) {
    fail(`cannot read config ${path}: ${err.message}`);
  }
  if (!Array.isArray(config.accounts) || config.accounts.length === 0) {
    fail('config: "accounts" must be a non-empty array');
  }
  if (!Array.isArray(config.clients) || config.clients.length === 0) {
    fail('config: "clients" must be a non-empty array');
  }
  if (typeof config.tls?.cert !== 'string' || typeof config.tls?.key !== 'string') {
    fail('config: "tls" must name a PEM "cert" and "key"');
  }
  for (const account of config.accounts) {
    if (typeof account.sub !== 'string' || account.sub === '') {
      fail('config: every account needs a non-empty "sub"');
    }
  }
  return config;
}

// stdout carries the one issuer line only: oidc-provider's own notices (console.log/info)
// go to stderr, and a reader that stopped reading stdout must not crash the provider.
console.log = console.error;
console.info = console.error;
process.stdout.on('error', () => {});

const config = loadConfig();
const port = Number.isInteger(config.port) ? config.port : 0;
const accounts = new Map(config.accounts.map((a) => [a.sub, a.claims ?? {}]));
const api = config.api ?? { audience: 'https://phr.test/api', scope: 'phr:read phr:write' };
const scopeClaims = config.claims ?? { phr: ['phr_person', 'phr_practitioner', 'roles'] };

// The issuer needs the port, which is only known once the socket is bound: bind first, then
// build the provider and hand it the requests.
let server;
try {
  server = https.createServer({
    cert: readFileSync(config.tls.cert),
    key: readFileSync(config.tls.key),
  });
} catch (err) {
  fail(`cannot read the TLS certificate or key: ${err.message}`);
}
await new Promise((resolve, reject) => {
  server.once('error', reject);
  server.listen(port, '127.0.0.1', resolve);
});
const issuer = `https://127.0.0.1:${server.address().port}`;

const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: randomBytes(8).toString('hex'),
  alg: 'RS256',
  use: 'sig',
};

// Only the account's own configured claims, for the claims the grant allows.
function accountClaims(sub) {
  return { sub, ...accounts.get(sub) };
}

const provider = new Provider(issuer, {
  clients: config.clients,
  jwks: { keys: [signingKey] },
  cookies: { keys: [randomBytes(32).toString('hex')] },
  claims: { openid: ['sub'], ...scopeClaims },
  conformIdTokenClaims: false,
  ttl: config.ttl ?? {},
  routes: { jwks: '/jwks' },
  async findAccount(_ctx, sub) {
    if (!accounts.has(sub)) return undefined;
    return { accountId: sub, claims: async () => accountClaims(sub) };
  },
  // The account's claims in JWT access tokens too, so a resource server (the gateway) can bind
  // a token to a person or practitioner without calling userinfo.
  async extraTokenClaims(_ctx, token) {
    if (!token.accountId || !accounts.has(token.accountId)) return undefined;
    const { sub: _sub, ...claims } = accountClaims(token.accountId);
    return claims;
  },
  interactions: {
    url: (_ctx, interaction) => `/interaction/${interaction.uid}`,
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      // A client asking no resource gets an opaque token for userinfo; asking the API gets a
      // JWT for it. The token endpoint reuses the resource granted at authorization.
      defaultResource: (_ctx, _client, oneOf) => oneOf,
      useGrantedResource: () => true,
      getResourceServerInfo(_ctx, resourceIndicator) {
        if (resourceIndicator !== api.audience) {
          throw new Provider.errors.InvalidTarget(`unknown resource ${resourceIndicator}`);
        }
        return {
          audience: api.audience,
          scope: api.scope,
          accessTokenFormat: 'jwt',
          ...(config.ttl?.AccessToken ? { accessTokenTTL: config.ttl.AccessToken } : {}),
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
});
// oidc-provider's dev key warning is not emitted since the key is given.
provider.on('server_error', (_ctx, err) => {
  process.stderr.write(`oidc provider: server error: ${err?.stack ?? err}\n`);
});

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

function escapeHtml(s) {
  return String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function loginForm(uid, clientId) {
  const buttons = [...accounts.keys()]
    .map((sub) => `<button type="submit" name="account" value="${escapeHtml(sub)}" id="login-${escapeHtml(sub)}">${escapeHtml(sub)}</button>`)
    .join('\n');
  return `<!doctype html>
<html><head><title>Sign in</title></head><body>
<h1>Sign in to ${escapeHtml(clientId)}</h1>
<form method="post" action="/interaction/${escapeHtml(uid)}/login">
${buttons}
</form>
</body></html>`;
}

async function finishLogin(req, res, sub) {
  if (!accounts.has(sub)) {
    send(res, 400, 'text/plain; charset=utf-8', `unknown account: ${sub}\n`);
    return;
  }
  await provider.interactionFinished(req, res, { login: { accountId: sub } }, {
    mergeWithLastSubmission: false,
  });
}

// Consent for exactly what the prompt says is missing (the oidc-provider example's rule).
async function finishConsent(req, res, details) {
  const { prompt, params, session } = details;
  const grant = details.grantId
    ? await provider.Grant.find(details.grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  const missing = prompt.details;
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const grantId = await grant.save();
  const consent = details.grantId ? {} : { grantId };
  await provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
}

async function interaction(req, res, url) {
  const parts = url.pathname.split('/').filter(Boolean); // interaction, uid, [login]
  let details;
  try {
    details = await provider.interactionDetails(req, res);
  } catch (err) {
    send(res, 400, 'text/plain; charset=utf-8', `no interaction: ${err.message}\n`);
    return;
  }
  if (details.uid !== parts[1]) {
    send(res, 400, 'text/plain; charset=utf-8', 'interaction mismatch\n');
    return;
  }
  const prompt = details.prompt.name;
  if (req.method === 'POST' && parts[2] === 'login' && prompt === 'login') {
    const form = await readForm(req);
    await finishLogin(req, res, form.get('account') ?? '');
    return;
  }
  if (req.method !== 'GET' || parts.length !== 2) {
    send(res, 405, 'text/plain; charset=utf-8', 'method not allowed\n');
    return;
  }
  if (prompt === 'login') {
    const hint = details.params.login_hint;
    if (typeof hint === 'string' && hint !== '') {
      await finishLogin(req, res, hint);
    } else {
      send(res, 200, 'text/html; charset=utf-8', loginForm(details.uid, details.params.client_id));
    }
    return;
  }
  if (prompt === 'consent') {
    await finishConsent(req, res, details);
    return;
  }
  send(res, 400, 'text/plain; charset=utf-8', `unsupported prompt: ${prompt}\n`);
}

const callback = provider.callback();
server.on('request', (req, res) => {
  const url = new URL(req.url, issuer);
  // One line per request on stderr, so tests can count what the gateway fetched (its JWKS).
  process.stderr.write(`oidc provider: request ${req.method} ${url.pathname}\n`);
  if (url.pathname.startsWith('/interaction/')) {
    interaction(req, res, url).catch((err) => {
      process.stderr.write(`oidc provider: interaction failed: ${err?.stack ?? err}\n`);
      if (!res.headersSent) send(res, 500, 'text/plain; charset=utf-8', 'interaction failed\n');
      else res.end();
    });
    return;
  }
  callback(req, res);
});

// The harness kills the process on drop; a closed stdin (the harness gone) ends it too.
process.stdin.on('end', () => process.exit(0));
process.stdin.resume();
process.stdout.write(`${JSON.stringify({ issuer })}\n`);
