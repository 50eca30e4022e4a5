// A real OpenID Provider for the OIDC login tests: panva's certified
// oidc-provider on 127.0.0.1 (an ephemeral port), with its development
// login form (any password) and these accounts:
//   alice  groups ["portcullis-owners"]
//   olga   groups ["portcullis-operators"]
//   mallory groups ["staff"]          (no admin role is mapped to her)
// One confidential client, `portcullis`, whose secret is argv[2]. Its
// redirect URIs are the gateway's two callbacks on any loopback port (the
// gateway's ports are ephemeral): the provider's documented recipe of
// overriding `redirectUriAllowed`. Prints `LISTENING <port>` when ready.
import http from 'node:http';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

// argv[3]: where install_provider.sh installed it (ES modules ignore NODE_PATH).
const { default: Provider } = await import(
  pathToFileURL(path.join(process.argv[3], 'node_modules/oidc-provider/lib/index.js')).href,
);

const secret = process.argv[2];
const groups = {
  alice: ['portcullis-owners'],
  olga: ['portcullis-operators'],
  mallory: ['staff'],
};
const CALLBACKS = ['/console/login/callback', '/oauth2/authorize/callback'];

const server = http.createServer();
await new Promise((resolve) => server.listen(0, '127.0.0.1', resolve));
const port = server.address().port;
const issuer = `http://127.0.0.1:${port}`;

const provider = new Provider(issuer, {
  clients: [{
    client_id: 'portcullis',
    client_secret: secret,
    redirect_uris: CALLBACKS.map((p) => `https://127.0.0.1:1${p}`),
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
    groups: ['groups'],
  },
  scopes: ['openid', 'email', 'profile', 'groups'],
  // The ID token carries the claims its scopes ask for (the gateway reads
  // them there, not at the userinfo endpoint).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.com`, email_verified: true, name: id, groups: groups[id] ?? [] };
      },
    };
  },
});
provider.proxy = false;

const { Client } = provider;
const allowed = Client.prototype.redirectUriAllowed;
Client.prototype.redirectUriAllowed = function redirectUriAllowed(value) {
  try {
    const url = new URL(value);
    if (url.protocol === 'https:' && url.hostname === '127.0.0.1' && CALLBACKS.includes(url.pathname) && !url.search) {
      return true;
    }
  } catch { /* not a URL */ }
  return allowed.call(this, value);
};

server.on('request', provider.callback());
process.stdout.write(`LISTENING ${port}\n`);
