// The OpenID provider of the single sign-on tests: the certified `oidc-provider` package over
// HTTPS, with one client and test users (password, groups) from a JSON file. Its login page
// checks passwords (a wrong one shows the form again, as real providers do) and has a Cancel
// button (the login then ends with `error=access_denied`). Consent is implied for the one
// client, as for a first-party application.
//
// node idp.mjs CONFIG.json  (CONFIG: modules, port, issuer, cert, key, client_id,
// client_secret, redirect_uri, users: {name: {password, groups}})
import fs from 'node:fs';
import https from 'node:https';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

const cfg = JSON.parse(fs.readFileSync(process.argv[2], 'utf8'));
const { default: Provider } = await import(
  pathToFileURL(path.join(cfg.modules, 'oidc-provider', 'lib', 'index.js')).href
);

const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

const provider = new Provider(cfg.issuer, {
  clients: [
    {
      client_id: cfg.client_id,
      client_secret: cfg.client_secret,
      redirect_uris: [cfg.redirect_uri],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  claims: {
    openid: ['sub'],
    profile: ['preferred_username', 'name'],
    email: ['email'],
    groups: ['groups'],
  },
  // The ID token carries the scopes' claims (the gateway reads groups from it).
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: false } },
  async findAccount(_ctx, id) {
    const u = cfg.users[id];
    if (!u) return undefined;
    return {
      accountId: id,
      async claims() {
        return { sub: id, preferred_username: id, name: id, email: `${id}@example.test`, groups: u.groups };
      },
    };
  },
  async loadExistingGrant(ctx) {
    const { Grant } = ctx.oidc.provider;
    const id = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (id) return Grant.find(id);
    const grant = new Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile email groups');
    await grant.save();
    return grant;
  },
  interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
  cookies: { keys: ['portcullis-test-idp-cookie-key'] },
  ttl: { Session: 600, Interaction: 600, Grant: 600, AccessToken: 600, IdToken: 600, AuthorizationCode: 120 },
});
provider.proxy = false;

const form = (uid, error) => `<!doctype html><html><head><meta charset="utf-8"><title>Test IdP sign-in</title></head>
<body><h1>Test IdP</h1>${error ? `<p id="error">${esc(error)}</p>` : ''}
<form method="post" action="/interaction/${esc(uid)}/login">
<input id="login" name="login" autocomplete="off"><input id="password" name="password" type="password">
<button id="submit" type="submit">Sign in</button></form>
<form method="post" action="/interaction/${esc(uid)}/abort"><button id="cancel" type="submit">Cancel</button></form>
</body></html>`;

async function body(req) {
  let data = '';
  for await (const chunk of req) {
    data += chunk;
    if (data.length > 8192) break;
  }
  return new URLSearchParams(data);
}

provider.use(async (ctx, next) => {
  const m = ctx.path.match(/^\/interaction\/([^/]+)(\/(login|abort))?$/);
  if (!m) return next();
  const details = await provider.interactionDetails(ctx.req, ctx.res);
  if (ctx.method === 'GET' && !m[2]) {
    ctx.type = 'html';
    ctx.body = form(details.uid);
    return undefined;
  }
  if (ctx.method === 'POST' && m[3] === 'abort') {
    return provider.interactionFinished(ctx.req, ctx.res, {
      error: 'access_denied',
      error_description: 'the user cancelled the sign-in',
    }, { mergeWithLastSubmission: false });
  }
  if (ctx.method === 'POST' && m[3] === 'login') {
    const p = await body(ctx.req);
    const login = p.get('login') || '';
    const user = cfg.users[login];
    if (!user || user.password !== p.get('password')) {
      console.log(`login failed for ${JSON.stringify(login)}`);
      ctx.status = 200;
      ctx.type = 'html';
      ctx.body = form(details.uid, 'Invalid user name or password.');
      return undefined;
    }
    console.log(`login ok for ${login}`);
    return provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: login } }, { mergeWithLastSubmission: false });
  }
  return next();
});

const server = https.createServer(
  { cert: fs.readFileSync(cfg.cert), key: fs.readFileSync(cfg.key) },
  provider.callback(),
);
server.listen(cfg.port, '127.0.0.1', () => console.log(`idp listening on ${cfg.issuer}`));
