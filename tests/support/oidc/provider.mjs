// The OpenID Provider test peer: panva's oidc-provider (OpenID Certified), configured from
// the JSON file named on argv and listening on 127.0.0.1 only. Started and driven by
// tests/support/oidc/__init__.py (which documents the flows); test-only, never shipped.
//
// Config file (written by the harness):
//   issuer            "http://127.0.0.1:<port>"
//   port              <port>
//   accounts_file     JSON {"<sub>": {claim: value, ...}}, re-read at every request
//   jwks_file         JSON {"keys": [private JWKs]}; the first key signs
//   clients           oidc-provider client metadata, plus the harness-only fields
//                     "id_token_ttl" (seconds) and "require_pkce" (boolean)
//   claims            scope -> claim names released by that scope
//   id_token_ttl      default ID-token lifetime (seconds)
//   workload          {"grant_type", "default_ttl"}: the test-only grant that issues an ID
//                     token for any account and audience (CI workload identity)
import { randomBytes, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';

import Provider, { errors } from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

// The claims an account may not carry: the provider sets them itself.
const RESERVED = new Set(['iss', 'aud', 'exp', 'iat', 'nbf', 'azp', 'nonce', 'auth_time',
  'at_hash', 'c_hash', 's_hash', 'sid', 'acr', 'amr']);

function readAccounts() {
  // Read at every request, so a test may rewrite the file between logins.
  return JSON.parse(readFileSync(config.accounts_file, 'utf8'));
}

function accountClaims(id) {
  const accounts = readAccounts();
  if (!Object.hasOwn(accounts, id)) return undefined;
  const claims = { ...accounts[id] };
  for (const name of RESERVED) delete claims[name];
  return { ...claims, sub: id };
}

const idTokenTtl = new Map();
const pkceRequired = new Map();
const clients = config.clients.map((entry) => {
  const { id_token_ttl: ttl, require_pkce: pkce, ...metadata } = entry;
  if (ttl !== undefined && ttl !== null) idTokenTtl.set(metadata.client_id, ttl);
  if (pkce !== undefined && pkce !== null) pkceRequired.set(metadata.client_id, pkce);
  return metadata;
});

const { keys } = JSON.parse(readFileSync(config.jwks_file, 'utf8'));

const provider = new Provider(config.issuer, {
  clients,
  jwks: { keys },
  claims: config.claims,
  // Without this, scope-requested claims go to the userinfo endpoint only whenever an access
  // token is issued too (the normal code flow); the tests want them in the ID token.
  conformIdTokenClaims: false,
  cookies: { keys: [randomBytes(32).toString('base64url')] },
  features: {
    devInteractions: { enabled: true },
  },
  pkce: {
    required(ctx, client) {
      if (pkceRequired.has(client.clientId)) return pkceRequired.get(client.clientId);
      return client.clientAuthMethod === 'none';
    },
  },
  ttl: {
    AccessToken: 3600,
    AuthorizationCode: 60,
    Grant: 3600,
    IdToken(ctx, token, client) {
      return idTokenTtl.get(client.clientId) ?? config.id_token_ttl;
    },
    Interaction: 600,
    RefreshToken: 86400,
    Session: 3600,
  },
  async findAccount(ctx, id) {
    if (accountClaims(id) === undefined) return undefined;
    return {
      accountId: id,
      async claims() {
        return accountClaims(id) ?? { sub: id };
      },
    };
  },
  async renderError(ctx, out) {
    // Plain JSON instead of the HTML error page: the harness reports it verbatim.
    ctx.type = 'json';
    ctx.body = out;
  },
});

// Test-only grant: an ID token for `account` (its stored claims merged with the JSON object
// `workload_claims`) with audience `audience`, like a CI system's workload identity token. The token
// is signed by the provider's current key (published in its JWKS) like every other ID token.
async function workloadGrant(ctx) {
  const { account, audience, ttl, workload_claims: claims } = ctx.oidc.params;
  if (!account) throw new errors.InvalidRequest('missing account');
  if (!audience) throw new errors.InvalidRequest('missing audience');
  let extra = {};
  if (claims) {
    try {
      extra = JSON.parse(claims);
    } catch {
      throw new errors.InvalidRequest('workload_claims is not JSON');
    }
    if (extra === null || typeof extra !== 'object' || Array.isArray(extra)) {
      throw new errors.InvalidRequest('workload_claims must be a JSON object');
    }
  }
  const stored = accountClaims(account);
  if (stored === undefined && !claims) {
    const description = `unknown account ${account}`;
    throw Object.assign(new errors.InvalidGrant(description), { error_description: description });
  }
  const lifetime = ttl ? Number(ttl) : config.workload.default_ttl;
  if (!Number.isInteger(lifetime) || lifetime <= 0) {
    throw new errors.InvalidRequest('ttl must be a positive integer');
  }
  const payload = { jti: randomUUID(), ...stored, ...extra, sub: account };
  for (const name of RESERVED) delete payload[name];

  // The ID token's audience is the client it is issued to: a transient client whose
  // client_id is the requested audience (the same signing algorithm as the caller).
  const audienceClient = new provider.Client({
    client_id: audience,
    grant_types: [],
    response_types: [],
    redirect_uris: [],
    token_endpoint_auth_method: 'none',
    id_token_signed_response_alg: ctx.oidc.client.idTokenSignedResponseAlg,
  }, ctx);
  const token = new provider.IdToken({}, { ctx, client: audienceClient });
  for (const [name, value] of Object.entries(payload)) token.set(name, value);
  const now = Math.floor(Date.now() / 1000);
  const idToken = await token.issue({ use: 'idtoken', expiresAt: now + lifetime });

  ctx.body = {
    id_token: idToken,
    issued_token_type: 'urn:ietf:params:oauth:token-type:id_token',
    token_type: 'N_A',
    expires_in: lifetime,
  };
}

provider.registerGrantType(config.workload.grant_type, workloadGrant,
  ['account', 'audience', 'ttl', 'workload_claims']);

for (const event of ['server_error', 'authorization.error', 'grant.error',
  'interaction.error', 'userinfo.error', 'jwks.error', 'discovery.error']) {
  provider.on(event, (ctx, err) => {
    console.error(`oidc-provider ${event}: ${err?.name}: ${err?.message} ${err?.error_description ?? ''}`);
  });
}

const server = provider.listen(config.port, '127.0.0.1', () => {
  console.log(`oidc-provider listening on ${config.issuer}`);
});
server.on('error', (err) => {
  console.error(`oidc-provider cannot listen: ${err.message}`);
  process.exit(1);
});
for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => process.exit(0));
}
