// A real OpenID Connect provider for the tests: panva's certified `oidc-provider`, on loopback,
// with a plain login form of its own (the interaction) and test accounts whose logins carry
// different `amr`/`acr` and groups. It stands in for the hospital's Entra ID, Okta or Keycloak.
//
// Env: PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, BACKCHANNEL_URI; with CLIENT_KEY_FILE (a PEM
// private key), the client authenticates with private_key_jwt and that key's public half.
// Prints "listening" when ready. Test control (loopback only):
//   POST /test/backchannel?sub=ACCOUNT  sends a back-channel logout token for ACCOUNT.
//   GET  /test/logout-token?sub=ACCOUNT a logout token for ACCOUNT, not sent (for replays).
//   GET  /test/logins                   how many times the login form was submitted, as JSON.

import { createPublicKey, generateKeyPairSync, randomUUID } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const { PORT, CLIENT_ID, CLIENT_SECRET, REDIRECT_URI, BACKCHANNEL_URI, CLIENT_KEY_FILE } = process.env;
const ISSUER = `http://127.0.0.1:${PORT}`;

// preferred_username, e-mail, groups and how the person logs in (amr/acr).
const ACCOUNTS = {
  alice: { amr: ['pwd', 'mfa'], acr: 'urn:mercy:mfa', groups: ['clinical', 'Night Shift'], email: 'alice@mercy.example' },
  bob: { amr: ['pwd'], acr: 'urn:mercy:pwd', groups: ['clinical'], email: 'bob@mercy.example' },
  carol: { amr: ['pwd', 'mfa'], acr: 'urn:mercy:mfa', groups: ['clinical'], email: 'carol@mercy.example' },
  dan: { amr: ['pwd', 'mfa'], acr: 'urn:mercy:mfa', groups: ['clinical', 'new-staff'], email: 'dan@mercy.example' },
  // A provider asserting a method name the gateway uses internally (break-glass).
  eve: { amr: ['pwd', 'mfa', 'breakglass', 'hwk'], acr: 'urn:mercy:mfa', groups: ['visitors'], email: 'eve@mercy.example' },
  // Another provider account whose user name is alice's (a reused name).
  'alice-2': { username: 'alice', amr: ['pwd', 'mfa'], acr: 'urn:mercy:mfa', groups: ['clinical'], email: 'alice2@mercy.example' },
};

const key = (type, opts, alg) => {
  const { privateKey } = generateKeyPairSync(type, opts);
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg, use: 'sig' };
};

const client = {
  client_id: CLIENT_ID,
  client_secret: CLIENT_SECRET,
  redirect_uris: [REDIRECT_URI],
  backchannel_logout_uri: BACKCHANNEL_URI,
  backchannel_logout_session_required: false,
  grant_types: ['authorization_code'],
  response_types: ['code'],
  token_endpoint_auth_method: 'client_secret_basic',
};
if (CLIENT_KEY_FILE) {
  const pub = createPublicKey(readFileSync(CLIENT_KEY_FILE)).export({ format: 'jwk' });
  delete client.client_secret;
  client.token_endpoint_auth_method = 'private_key_jwt';
  client.jwks = { keys: [{ ...pub, kid: 'aalgate-1', use: 'sig' }] };
}

let logins = 0;
const provider = new Provider(ISSUER, {
  clients: [client],
  jwks: { keys: [key('rsa', { modulusLength: 2048 }, 'RS256'), key('ec', { namedCurve: 'P-256' }, 'ES256')] },
  pkce: { required: () => true },
  conformIdTokenClaims: false,
  claims: {
    // The login's methods and time in every ID token, as Entra ID, Okta and Keycloak send them.
    openid: ['sub', 'preferred_username', 'groups', 'acr', 'amr', 'auth_time'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  features: {
    devInteractions: { enabled: false },
    backchannelLogout: { enabled: true },
    rpInitiatedLogout: { enabled: true },
  },
  cookies: { keys: ['test-only-cookie-key'] },
  // The client is first-party: no consent screen.
  async loadExistingGrant(ctx) {
    const id = ctx.oidc.result?.consent?.grantId || ctx.oidc.session.grantIdFor(ctx.oidc.client.clientId);
    if (id) return ctx.oidc.provider.Grant.find(id);
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope('openid profile email');
    await grant.save();
    return grant;
  },
  async findAccount(ctx, sub) {
    const a = ACCOUNTS[sub];
    if (!a) return undefined;
    return {
      accountId: sub,
      async claims() {
        return { sub, preferred_username: a.username || sub, name: sub.toUpperCase(), email: a.email, email_verified: true, groups: a.groups };
      },
    };
  },
  interactions: { url: (ctx, interaction) => `/interaction/${interaction.uid}` },
  // The back-channel logout goes to the gateway on loopback, which the provider's SSRF guard
  // would refuse.
  fetch: (url, { dispatcher, ...options }) => globalThis.fetch(url, options),
  ttl: { Session: 3600, Interaction: 600, Grant: 3600, AuthorizationCode: 60, IdToken: 300 },
});
provider.proxy = false;

const callback = provider.callback();
const page = (title, body) => `<!doctype html><html><head><title>${title}</title></head><body><h1>${title}</h1>${body}</body></html>`;

createServer(async (req, res) => {
  try {
    const url = new URL(req.url, ISSUER);
    const m = url.pathname.match(/^\/interaction\/([\w-]+)(\/login)?$/);
    if (m && req.method === 'GET') {
      const details = await provider.interactionDetails(req, res);
      res.setHeader('content-type', 'text/html');
      res.end(page('Mercy Health SSO', `<p>prompt: ${details.prompt.name}</p>
        <form method="post" action="/interaction/${m[1]}/login">
          <label for="username">Username</label><input id="username" name="username" autocomplete="off">
          <button type="submit">Log in</button></form>`));
      return;
    }
    if (m && m[2] && req.method === 'POST') {
      let body = '';
      for await (const chunk of req) body += chunk;
      const username = new URLSearchParams(body).get('username');
      const a = ACCOUNTS[username];
      if (!a) {
        res.statusCode = 400;
        res.end(page('Unknown account', ''));
        return;
      }
      logins += 1;
      await provider.interactionFinished(req, res, { login: { accountId: username, amr: a.amr, acr: a.acr } }, { mergeWithLastSubmission: false });
      return;
    }
    if (url.pathname === '/test/backchannel' && req.method === 'POST') {
      const client = await provider.Client.find(CLIENT_ID);
      await client.backchannelLogout(url.searchParams.get('sub'), url.searchParams.get('sid') || undefined);
      res.end('sent');
      return;
    }
    if (url.pathname === '/test/logout-token') {
      // The token backchannelLogout would send, handed to the test instead (for replays).
      const client = await provider.Client.find(CLIENT_ID);
      const t = new provider.IdToken({ sub: url.searchParams.get('sub') }, { client, ctx: undefined });
      t.mask = { sub: null };
      t.set('events', { 'http://schemas.openid.net/event/backchannel-logout': {} });
      t.set('jti', randomUUID());
      res.end(await t.issue({ use: 'logout' }));
      return;
    }
    if (url.pathname === '/test/logins') {
      res.setHeader('content-type', 'application/json');
      res.end(JSON.stringify({ logins }));
      return;
    }
    callback(req, res);
  } catch (e) {
    res.statusCode = 500;
    res.end(String(e && e.stack || e));
  }
}).listen(Number(PORT), '127.0.0.1', () => console.log('listening'));
