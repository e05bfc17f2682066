// A real OpenID Connect server (node `oidc-provider`) for tests/auth_oidc.rs.
//
//   node tests/oidc/server.mjs [PORT]     (PORT 0 or absent: a free port)
//
// Listens on 127.0.0.1 and prints `READY http://127.0.0.1:PORT` (the issuer) as its first
// line on stdout once it serves requests. Exits when its standard input closes, so a test
// that fails or is killed never leaves it running.
//
// What it offers:
// - client `shop-client` (secret `shop-client-secret`): confidential, grant
//   `client_credentials`, `client_secret_basic`, scopes `products:read orders:write`;
// - client `shop-api` (secret `shop-api-secret`): the resource server itself, no grants, used
//   to authenticate at the introspection endpoint;
// - resource `https://api.example.test`: access tokens asked for with `resource=` it are
//   RFC 9068 JWTs (`typ: at+jwt`, `aud` = the resource) signed RS256; without a resource the
//   access token is opaque (validated through introspection);
// - introspection and revocation enabled; signing keys generated at startup (RSA and EC,
//   published in the JWKS); a small in-memory adapter of its own.

import { createServer } from 'node:http';
import { generateKeyPairSync } from 'node:crypto';
import Provider, { errors } from 'oidc-provider';

const RESOURCE = 'https://api.example.test';
const SCOPES = ['products:read', 'orders:write'];
const ISSUING_CLIENT = 'shop-client';
const RESOURCE_SERVER_CLIENT = 'shop-api';

const port = Number.parseInt(process.argv[2] ?? '0', 10);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`usage: node server.mjs [PORT]   (got ${process.argv[2]})`);
  process.exit(2);
}

// Tiny in-memory adapter (the built-in one is an LRU of 1000 entries that warns on start).
const stores = new Map();
class MemoryAdapter {
  constructor(model) {
    this.model = model;
    if (!stores.has(model)) stores.set(model, new Map());
    this.entries = stores.get(model);
  }

  #live(id) {
    const e = this.entries.get(id);
    if (!e) return undefined;
    if (e.expiresAt !== undefined && e.expiresAt <= Date.now()) {
      this.entries.delete(id);
      return undefined;
    }
    return e;
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : undefined;
    this.entries.set(id, { payload, expiresAt });
  }

  async find(id) {
    return this.#live(id)?.payload;
  }

  async findByUid(uid) {
    for (const id of this.entries.keys()) {
      const e = this.#live(id);
      if (e && e.payload.uid === uid) return e.payload;
    }
    return undefined;
  }

  async findByUserCode(userCode) {
    for (const id of this.entries.keys()) {
      const e = this.#live(id);
      if (e && e.payload.userCode === userCode) return e.payload;
    }
    return undefined;
  }

  async consume(id) {
    const e = this.#live(id);
    if (e) e.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    this.entries.delete(id);
  }

  async revokeByGrantId(grantId) {
    for (const store of stores.values()) {
      for (const [id, e] of store) {
        if (e.payload.grantId === grantId) store.delete(id);
      }
    }
  }
}

function signingKeys() {
  const rsa = generateKeyPairSync('rsa', { modulusLength: 2048 }).privateKey.export({ format: 'jwk' });
  const ec = generateKeyPairSync('ec', { namedCurve: 'P-256' }).privateKey.export({ format: 'jwk' });
  return {
    keys: [
      { ...rsa, kid: 'interop-rs256', alg: 'RS256', use: 'sig' },
      { ...ec, kid: 'interop-es256', alg: 'ES256', use: 'sig' },
    ],
  };
}

// The caller of introspection/revocation must be the resource server or the token's client.
function callerMayAsk(ctx, client, token) {
  return client.clientId === RESOURCE_SERVER_CLIENT || client.clientId === token.clientId;
}

// Listen first: the issuer names the port actually bound.
let handler = (_req, res) => {
  res.statusCode = 503;
  res.end();
};
const server = createServer((req, res) => handler(req, res));
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    adapter: MemoryAdapter,
    jwks: signingKeys(),
    scopes: SCOPES,
    clients: [
      {
        client_id: ISSUING_CLIENT,
        client_secret: 'shop-client-secret',
        grant_types: ['client_credentials'],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
        scope: SCOPES.join(' '),
      },
      {
        client_id: RESOURCE_SERVER_CLIENT,
        client_secret: 'shop-api-secret',
        grant_types: [],
        response_types: [],
        redirect_uris: [],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      introspection: { enabled: true, allowedPolicy: callerMayAsk },
      revocation: { enabled: true, allowedPolicy: callerMayAsk },
      resourceIndicators: {
        enabled: true,
        // no `resource` parameter: no resource, hence an opaque token
        defaultResource: (_ctx, _client, oneOf) => oneOf ?? undefined,
        useGrantedResource: () => false,
        getResourceServerInfo: (_ctx, resourceIndicator) => {
          if (resourceIndicator !== RESOURCE) throw new errors.InvalidTarget();
          return {
            scope: SCOPES.join(' '),
            audience: RESOURCE,
            accessTokenFormat: 'jwt',
            accessTokenTTL: 600,
            jwt: { sign: { alg: 'RS256' } },
          };
        },
      },
    },
  });
  provider.on('server_error', (_ctx, err) => console.error('oidc-provider server_error:', err));
  handler = provider.callback();
  console.log(`READY ${issuer}`);
});
server.on('error', (err) => {
  console.error(`oidc server: ${err.message}`);
  process.exit(1);
});

// Exit when the parent goes away (its end of our stdin closes).
process.stdin.on('end', () => process.exit(0));
process.stdin.on('error', () => process.exit(0));
process.stdin.resume();
