// An attacker who knows a user name cannot lock that person out. From the same address as the
// victim (a hospital NAT: everything here is 127.0.0.1), twelve attacker browsers ask for the
// person's sign-in options by user name and send 120 well-formed assertions for the person's
// real credential id, signed by no key of theirs (today's account lockout counted 100). Then the
// person signs in with their genuine passkey in Chromium, at once: admitted.

import { createHash, randomBytes } from 'node:crypto';
import { request } from 'node:http';
import { rmSync } from 'node:fs';
import {
  AUTH, PORT, check, click, invite, landOn, launch, snap, text, withAuthenticator,
} from './lib.mjs';

const EHR = `http://ehr.localhost:${PORT}`;
const PASSKEY = { transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true };

// One raw request to the gateway on 127.0.0.1 with the Host header given (node does not
// resolve *.localhost as Chromium does).
function raw(method, host, path, headers = {}, body = undefined) {
  return new Promise((ok, fail) => {
    const r = request({ host: '127.0.0.1', port: PORT, method, path, headers: { Host: host, ...headers } }, (res) => {
      let data = '';
      res.on('data', (c) => { data += c; });
      res.on('end', () => ok({ status: res.statusCode, headers: res.headers, body: data }));
    });
    r.on('error', fail);
    if (body !== undefined) r.write(body);
    r.end();
  });
}
const b64u = (buf) => Buffer.from(buf).toString('base64url');

const { ctx, profile } = await launch();
try {
  // The person enrolls a passkey.
  const A = await withAuthenticator(ctx, PASSKEY);
  await A.page.goto(invite('lena', 2));
  await click(A.page, 'Create a passkey on this device');
  await landOn(A.page, (u) => u.href.startsWith(`${EHR}/`) && !u.pathname.startsWith('/.aalgate'), 'after enrollment');

  // Each attacker browser, from the same address: a sign-in flow, its binding and token.
  const authHost = `localhost:${PORT}`;
  const rpIdHash = createHash('sha256').update('localhost').digest();
  const statuses = {};
  const count = (k) => { statuses[k] = (statuses[k] || 0) + 1; };
  async function browserOf(n) {
    const app = await raw('GET', `ehr.localhost:${PORT}`, '/chart', { 'Sec-Fetch-Mode': 'navigate' });
    check(app.status === 302, `attacker ${n} is sent to sign in (${app.status})`);
    const loc = new URL(app.headers.location, AUTH);
    const page = await raw('GET', authHost, loc.pathname + loc.search);
    const bind = (page.headers['set-cookie'] || []).map((c) => c.split(';')[0]).find((c) => c.startsWith('aalgate-bind='));
    const csrf = /data-csrf="([^"]+)"/.exec(page.body)?.[1];
    const flow = /data-flow="([^"]+)"/.exec(page.body)?.[1];
    check(bind && csrf && flow, `attacker ${n} has a binding, its token and a flow`);
    const post = (path, json) => raw('POST', authHost, path, {
      Origin: AUTH, 'Sec-Fetch-Site': 'same-origin', 'Content-Type': 'application/json', 'X-Aalgate-Csrf': csrf, Cookie: bind,
    }, JSON.stringify(json));
    return { post, flow };
  }
  // One forged sign-in as `username`: the status of its finish and how long it took.
  async function forged(b, username, i) {
    const start = await b.post('/.aalgate/webauthn/start', { purpose: 'signin', flow: b.flow, username, switch: true });
    if (start.status !== 200) return { status: `start ${start.status}`, ms: 0 };
    const { ceremony, options } = JSON.parse(start.body);
    const id = options.publicKey.allowCredentials[0].id;
    const clientData = Buffer.from(JSON.stringify({ type: 'webauthn.get', challenge: options.publicKey.challenge, origin: AUTH, crossOrigin: false }));
    const counter = Buffer.alloc(4);
    counter.writeUInt32BE(1000 + i);
    const authData = Buffer.concat([rpIdHash, Buffer.from([0x05]), counter]);
    const t = Date.now();
    const finish = await b.post('/.aalgate/webauthn/finish', {
      ceremony,
      response: {
        id, rawId: id, type: 'public-key', extensions: {},
        response: { authenticatorData: b64u(authData), clientDataJSON: b64u(clientData), signature: b64u(randomBytes(72)), userHandle: null },
      },
    });
    return { status: `finish ${finish.status}`, ms: Date.now() - t };
  }
  async function attacker(n) {
    const b = await browserOf(n);
    for (let i = 0; i < 10; i++) count((await forged(b, 'lena', 10 * n + i)).status);
  }
  const t0 = Date.now();
  await Promise.all(Array.from({ length: 12 }, (_, n) => attacker(n)));
  console.log(`attackers: ${JSON.stringify(statuses)} in ${Date.now() - t0} ms`);
  check((statuses['finish 400'] || 0) >= 100, 'at least 100 forged assertions reached the signature check and failed there');
  // A name that exists and one that does not fail alike, after the same wait: the time does
  // not tell which names exist.
  const b = await browserOf(99);
  const known = await forged(b, 'lena', 5000);
  const unknown = await forged(b, 'nobody-here', 5001);
  console.log(`known name: ${JSON.stringify(known)}, unknown name: ${JSON.stringify(unknown)}`);
  check(known.status === 'finish 400' && unknown.status === 'finish 400', 'both refused alike');
  check(unknown.ms >= known.ms / 2, `an unknown name answers as slowly as a known one (${unknown.ms} ms vs ${known.ms} ms)`);

  // The person, at once, from the same address, with their genuine passkey.
  await ctx.clearCookies();
  await A.page.goto(`${EHR}/chart`);
  await landOn(A.page, (u) => u.href.startsWith(`${AUTH}/.aalgate/auth`), 'the person needs to sign in');
  await click(A.page, 'Sign in with a passkey or key');
  await landOn(A.page, (u) => u.href === `${EHR}/chart`, 'the genuine passkey after the attack');
  await snap(A.page, 'signed-in-after-attack');
  check((await text(A.page)).includes('lena'), 'the person is signed in, whatever the attacker did');
  console.log('lockout scenario passed');
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
