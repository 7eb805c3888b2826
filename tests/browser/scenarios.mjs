// Real-browser scenarios for aalgate: Debian's headless Chromium, driven with playwright-core,
// with DevTools WebAuthn virtual authenticators (a passkey: ctap2/internal with resident keys
// and user verification; a security key: ctap2/usb with a PIN).
//
// Started by tests/e2e/browser.rs, which runs the gateway and the demo upstream and passes:
//   AALGATE_BIN, AALGATE_CONFIG  the binary and its config (for `aalgate users invite`)
//   PORT                         the gateway's port (auth origin http://localhost:PORT,
//                                app hosts http://ehr.localhost:PORT, http://billing.localhost:PORT
//                                and http://lab.localhost:PORT)
//   OUT                          where screenshots go (one per page shown)
//   CHROMIUM                     the browser binary
// Exits non-zero with a message on the first failed expectation.

import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const { AALGATE_BIN, AALGATE_CONFIG, PORT, OUT, CHROMIUM } = process.env;
const AUTH = `http://localhost:${PORT}`;
const EHR = `http://ehr.localhost:${PORT}`;
const BILLING = `http://billing.localhost:${PORT}`;
const LAB = `http://lab.localhost:${PORT}`;
mkdirSync(OUT, { recursive: true });

let shot = 0;
async function snap(page, name) {
  shot += 1;
  await page.screenshot({ path: join(OUT, `${String(shot).padStart(2, '0')}-${name}.png`), fullPage: true });
}
function check(cond, what) {
  if (!cond) throw new Error(`expectation failed: ${what}`);
  console.log(`ok - ${what}`);
}
function invite(user, aal) {
  const out = execFileSync(AALGATE_BIN, ['users', '--config', AALGATE_CONFIG, 'invite', user, '--display-name', user.toUpperCase(), '--aal', String(aal), '--ttl', '1h'], { encoding: 'utf8' });
  const url = out.trim().split('\n').pop();
  check(url.startsWith(`${AUTH}/.aalgate/enroll?invite=`), `invite URL for ${user} printed`);
  return url;
}
async function withAuthenticator(ctx, options) {
  const page = await ctx.newPage();
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: { protocol: 'ctap2', automaticPresenceSimulation: true, ...options },
  });
  return { page, cdp, authenticatorId };
}
async function signCount(a) {
  const { credentials } = await a.cdp.send('WebAuthn.getCredentials', { authenticatorId: a.authenticatorId });
  return credentials.reduce((n, c) => n + c.signCount, 0);
}
async function text(page) {
  return page.locator('body').innerText();
}
async function click(page, name) {
  // WebAuthn needs the focused tab: each scenario tab comes to the front before it acts.
  await page.bringToFront();
  await page.getByRole('button', { name }).click();
}
// Clicks a button that submits a form, and waits for the page it loads.
async function submit(page, name) {
  await page.bringToFront();
  await Promise.all([page.waitForEvent('load'), page.getByRole('button', { name }).click()]);
}
// Waits for a navigation to `pred(url)` after an action, or fails with the page's status text.
async function landOn(page, pred, what) {
  try {
    await page.waitForURL(pred, { timeout: 15000 });
  } catch (e) {
    const s = await page.locator('#status').innerText().catch(() => '(no status)');
    throw new Error(`${what}: still on ${page.url()} with status "${s}"`);
  }
}

const profile = mkdtempSync(join(tmpdir(), 'aalgate-chromium-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1024, height: 768 },
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
try {
  // Each tab has its own authenticator: A nora's passkey, B nora's security key, C omar's passkey.
  const A = await withAuthenticator(ctx, { transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true });
  const B = await withAuthenticator(ctx, { transport: 'usb', hasResidentKey: false, hasUserVerification: true, isUserVerified: true });
  const C = await withAuthenticator(ctx, { transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true });

  // 1. Invite, enroll a passkey, land on the protected app.
  await A.page.goto(invite('nora', 2));
  await snap(A.page, 'enroll-page');
  check((await text(A.page)).includes('Set up sign-in'), 'enrollment page shown');
  await click(A.page, 'Create a passkey on this device');
  await landOn(A.page, (u) => u.href.startsWith(`${EHR}/`) && !u.pathname.startsWith('/.aalgate'), 'after enrollment');
  await snap(A.page, 'enrolled-landed');
  let t = await text(A.page);
  check(t.includes('signed in as nora') && t.includes('AAL2'), 'enrolled passkey: signed in as nora at AAL2 on the app host');

  // 2. One tap per session, not per app: the second app host gets its session by handoff.
  const before = await signCount(A);
  await A.page.goto(`${BILLING}/invoices`);
  await landOn(A.page, (u) => u.href === `${BILLING}/invoices`, 'second app');
  await snap(A.page, 'second-app-sso');
  check((await text(A.page)).includes('signed in as nora'), 'second app host signed in without a ceremony');
  check((await signCount(A)) === before, 'no authenticator use for the second app');
  const cookies = await ctx.cookies();
  const ours = cookies.filter((c) => c.name === 'aalgate');
  check(ours.length === 3 && ours.every((c) => !c.domain.startsWith('.') && c.httpOnly), 'one host-only cookie per host (auth origin, ehr, billing), none shared');

  // 3. A second invite at AAL3 enrolls the hardware key (attested, allow-listed).
  await B.page.goto(invite('nora', 3));
  check(!(await text(B.page)).includes('Create a passkey'), 'AAL3 invite offers only a hardware key');
  await click(B.page, 'Register a hardware security key');
  await landOn(B.page, (u) => u.href.startsWith(`${EHR}/`) && !u.pathname.startsWith('/.aalgate'), 'after key enrollment');
  check((await text(B.page)).includes('AAL3'), 'hardware key enrollment reaches AAL3');
  const list = execFileSync(AALGATE_BIN, ['users', '--config', AALGATE_CONFIG, 'list'], { encoding: 'utf8' });
  check(/kind=passkey\taal=aal2/.test(list) && /kind=security_key\taal=aal3\taaguid=01020304-0506-0708-0102-030405060708/.test(list), 'users list shows both credentials with kind, AAL and AAGUID');

  // 4. Logout: the app's own sign-out button (its form carries the logout token the gateway
  // gives the app) ends every host in one click.
  await A.page.goto(`${EHR}/`);
  await submit(A.page, 'Sign out');
  await snap(A.page, 'signed-out');
  check((await text(A.page)).includes('You are signed out'), 'signed out');
  for (const host of [EHR, BILLING]) {
    await A.page.goto(`${host}/invoices`);
    check(A.page.url().startsWith(`${AUTH}/.aalgate/auth?flow=`) && (await text(A.page)).includes('Sign in'), `${host} needs sign-in after logout`);
  }

  // 5. Usernameless sign-in with the passkey: AAL2. Then an AAL3 route asks for a step-up.
  // An attacker planted a well-formed session cookie on every host first (fixation).
  // 43 base64url characters, the last with its two spare bits zero: exactly what the gateway
  // accepts as a session id, so only sign-in's own choice can replace it.
  const PLANT = 'fixatedfixatedfixatedfixatedfixatedfixatedA';
  check(PLANT.length === 43 && Buffer.from(PLANT, 'base64url').toString('base64url') === PLANT, 'the planted cookie is a well-formed session id');
  await ctx.addCookies([AUTH, EHR, BILLING].map((url) => ({ name: 'aalgate', value: PLANT, url })));
  const sessionCookie = async (url) => (await ctx.cookies(url)).find((c) => c.name === 'aalgate')?.value;
  await snap(A.page, 'signin-page');
  // The user-name fallback: Enter in its field submits it (empty here, so the page says so).
  await A.page.click('summary');
  await A.page.focus('#username');
  await A.page.keyboard.press('Enter');
  check((await A.page.textContent('#status')).includes('Enter your user name first'), 'Enter in the user-name field submits the user-name sign-in');
  await click(A.page, 'Sign in with a passkey or key');
  await landOn(A.page, (u) => u.href === `${BILLING}/invoices`, 'usernameless sign-in');
  check((await text(A.page)).includes('signed in as nora'), 'usernameless passkey sign-in lands on the kept URL');
  const afterLogin = await sessionCookie(BILLING);
  check(afterLogin && afterLogin !== PLANT, 'fixation: the planted cookie is replaced by a new id at login');
  await A.page.goto(`${EHR}/`);
  check((await text(A.page)).includes('signed in as nora'), 'first app host handed off too');
  await A.page.goto(`${EHR}/admin/`);
  await snap(A.page, 'step-up-page');
  check(A.page.url().startsWith(`${AUTH}/.aalgate/auth?flow=`) && (await text(A.page)).includes('hardware security key'), 'AAL2 session on an AAL3 route: step-up asks for the hardware key');
  const stepUpUrl = A.page.url();
  const beforeStepUp = await sessionCookie(EHR);
  check(beforeStepUp && beforeStepUp !== PLANT, 'fixation: the planted cookie on the second app host is replaced too');
  // The browser offers only the hardware key (allowCredentials). A client that answers the
  // step-up challenge with the passkey anyway is refused by the gateway.
  await A.page.bringToFront();
  const forged = await A.page.evaluate(async () => {
    const main = document.querySelector('main');
    const post = async (path, body) => {
      const r = await fetch(path, { method: 'POST', headers: { 'content-type': 'application/json', 'x-aalgate-csrf': main.dataset.csrf }, body: JSON.stringify(body) });
      return { status: r.status, body: await r.json() };
    };
    const dec = (s) => { s = s.replace(/-/g, '+').replace(/_/g, '/'); while (s.length % 4) s += '='; return Uint8Array.from(atob(s), (c) => c.charCodeAt(0)); };
    const enc = (b) => btoa(String.fromCharCode(...new Uint8Array(b))).replace(/\+/g, '-').replace(/\//g, '_').replace(/=+$/, '');
    const begun = await post('/.aalgate/webauthn/start', { purpose: 'signin', flow: main.dataset.flow });
    const offered = begun.body.options.publicKey.allowCredentials.length;
    const pk = begun.body.options.publicKey;
    pk.challenge = dec(pk.challenge);
    delete pk.allowCredentials;
    const c = await navigator.credentials.get({ publicKey: pk });
    const response = { id: c.id, rawId: enc(c.rawId), type: c.type, extensions: {}, response: {
      authenticatorData: enc(c.response.authenticatorData), clientDataJSON: enc(c.response.clientDataJSON),
      signature: enc(c.response.signature), userHandle: c.response.userHandle ? enc(c.response.userHandle) : null } };
    const done = await post('/.aalgate/webauthn/finish', { ceremony: begun.body.ceremony, response });
    return { offered, status: done.status, error: done.body.error };
  });
  check(forged.offered === 1, 'step-up offers only the one hardware key');
  check(forged.status === 400 && forged.error === 'signin_failed', `a passkey assertion for the AAL3 step-up is refused (${forged.status} ${forged.error})`);
  await A.page.reload();
  check(A.page.url() === stepUpUrl && (await text(A.page)).includes('Confirm'), 'still on the step-up page');
  await B.page.goto(stepUpUrl);
  await click(B.page, 'Confirm');
  await landOn(B.page, (u) => u.href === `${EHR}/admin/`, 'step-up with the key');
  await snap(B.page, 'step-up-done');
  t = await text(B.page);
  check(t.includes('Admin') && t.includes('signed in as nora'), 'step-up with the hardware key lands on the AAL3 page');
  const afterStepUp = await sessionCookie(EHR);
  check(afterStepUp && afterStepUp !== beforeStepUp && afterStepUp !== PLANT, 'fixation: the step-up issues a new session id');

  // 6. Idle timeout (3 s on /invoices in the test policy), one tap, same page. The finish
  // request is kept to replay it afterwards.
  await new Promise((r) => setTimeout(r, 4000));
  let finish = null;
  A.page.on('request', (req) => {
    if (req.url().endsWith('/.aalgate/webauthn/finish')) finish = { body: req.postData(), csrf: req.headers()['x-aalgate-csrf'] };
  });
  await A.page.goto(`${EHR}/invoices`);
  await snap(A.page, 'reauth-page');
  check((await text(A.page)).includes('Continue where you were') && (await text(A.page)).includes('Not NORA?'), 'idle timeout: tap-to-resume page, naming its person');
  await click(A.page, 'Continue');
  await landOn(A.page, (u) => u.href === `${EHR}/invoices`, 'tap to resume');
  await snap(A.page, 'resumed');
  check((await text(A.page)).includes('Invoices'), 'one tap: back on the same page');

  // 7. The captured assertion replayed: refused.
  check(finish !== null, 'finish request captured');
  await A.page.goto(`${AUTH}/.aalgate/logout`);
  const replay = await A.page.evaluate(async (f) => {
    const r = await fetch('/.aalgate/webauthn/finish', { method: 'POST', headers: { 'content-type': 'application/json', 'x-aalgate-csrf': f.csrf }, body: f.body });
    return { status: r.status, body: await r.json() };
  }, finish);
  check(replay.status === 400 && replay.body.error === 'ceremony_expired', `replayed assertion refused (${replay.status} ${replay.body.error})`);

  // 7b. A form submitted after the idle timeout is kept, and sent once after one tap.
  const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
  await A.page.goto(`${EHR}/invoices/new`);
  await A.page.getByLabel('Account').fill('ACME-42');
  await A.page.getByLabel('Amount').fill('99.00');
  await A.page.getByLabel('Note').fill('Follow-up visit, MRN 0012345');
  await sleep(4000);
  await submit(A.page, 'Save invoice');
  await snap(A.page, 'form-kept-reauth');
  check(A.page.url().startsWith(`${AUTH}/.aalgate/auth?flow=`) && !A.page.url().includes('invoices'), 'submitting after the idle timeout asks for one tap; the URL carries nothing of the form');
  check(!(await A.page.content()).includes('ACME-42'), 'the sign-in page shows nothing of the form');
  await click(A.page, 'Continue');
  await landOn(A.page, (u) => u.pathname === '/.aalgate/resume', 'kept form resumed');
  await A.page.getByText('Saved invoice #1').waitFor({ timeout: 10000 });
  await snap(A.page, 'form-kept-sent');
  check((await text(A.page)).includes('signed in as nora'), 'the kept form reached the app as nora, with the result page shown');
  await A.page.reload();
  check((await text(A.page)).includes('already sent'), 'a refresh sends nothing again');
  await A.page.goBack();
  await A.page.goto(`${EHR}/invoices`);
  check((await text(A.page)).includes('1 invoice(s) saved'), 'the app received the form exactly once');
  // Over the limit (4 KiB in this test): not kept, a clear page, the app never sees a part.
  await A.page.goto(`${EHR}/invoices/new`);
  await A.page.getByLabel('Note').fill('x'.repeat(5000));
  await sleep(4000);
  await submit(A.page, 'Save invoice');
  await click(A.page, 'Continue');
  await landOn(A.page, (u) => u.pathname === '/.aalgate/resume', 'too large resumed');
  await snap(A.page, 'form-too-large');
  check((await text(A.page)).includes('too large to keep'), 'a form over the limit: asked to submit again');
  await A.page.goto(`${EHR}/invoices`);
  check((await text(A.page)).includes('1 invoice(s) saved'), 'nothing of the large form reached the app');

  // 7c. The attack: a page on another site auto-submits a form to the app while nora is signed
  // in. The browser sends no Lax cookie with a cross-site POST, and the sign-in that follows is
  // silent (her session on the auth origin is good enough). The app must receive nothing.
  // A page on another site that auto-submits a form to `action` as soon as it loads.
  const crossSite = async (page, action) => {
    const evil = createServer((req, res) => {
      res.writeHead(200, { 'content-type': 'text/html' });
      res.end(`<!doctype html><form id="f" method="post" action="${action}"><input name="account" value="EVIL-1"><input name="amount" value="1"><input name="note" value="attacker"></form><script>document.getElementById('f').submit()</script>`);
    });
    await new Promise((r) => evil.listen(0, '127.0.0.1', r));
    try {
      await page.goto(`http://127.0.0.1:${evil.address().port}/`);
      await landOn(page, (u) => u.origin !== `http://127.0.0.1:${evil.address().port}`, 'the cross-site form leaves the attacker page');
    } finally {
      evil.close();
    }
  };
  await crossSite(A.page, `${EHR}/invoices`);
  await landOn(A.page, (u) => u.pathname === '/.aalgate/resume', 'the cross-site form ends on a gateway page');
  await snap(A.page, 'cross-site-form-not-sent');
  t = await text(A.page);
  check(t.includes('Form not sent') && t.includes('another site'), 'a cross-site form is not sent, and the page says why');
  await A.page.goto(`${EHR}/invoices`);
  check((await text(A.page)).includes('1 invoice(s) saved'), 'the cross-site form never reached the app');

  // 7d. The multi-host variant: an app host nora never visited (lab.) gets her session by a
  // silent handoff from the auth origin; the form that caused it is still not sent.
  check(!(await ctx.cookies(LAB)).some((c) => c.name === 'aalgate'), 'no session cookie on the lab host yet');
  await crossSite(A.page, `${LAB}/invoices`);
  await landOn(A.page, (u) => u.pathname === '/.aalgate/resume', 'the cross-site form to a new host ends on a gateway page');
  await snap(A.page, 'cross-site-handoff-not-sent');
  t = await text(A.page);
  check(A.page.url().startsWith(`${LAB}/`) && t.includes('Form not sent') && t.includes('another site'), 'through the handoff to a new host: not sent, and the page says why');
  await A.page.goto(`${EHR}/invoices`);
  check((await text(A.page)).includes('1 invoice(s) saved'), 'the cross-site form to the new host never reached the app');

  // 7e. No live session: the cross-site form leads to an ordinary sign-in page; one tap signs
  // nora in, and the page after it says the form was not sent.
  await A.page.goto(`${AUTH}/.aalgate/logout`);
  await submit(A.page, 'Sign out');
  check((await text(A.page)).includes('You are signed out'), 'signed out before the attack');
  await crossSite(A.page, `${EHR}/invoices`);
  await landOn(A.page, (u) => u.href.startsWith(`${AUTH}/.aalgate/auth?flow=`), 'the cross-site form without a session');
  check((await text(A.page)).includes('Sign in'), 'with no session, the cross-site form leads to the sign-in page');
  check(!(await text(A.page)).includes('is kept'), 'the sign-in page does not claim to keep the form');
  await click(A.page, 'Sign in with a passkey or key');
  await landOn(A.page, (u) => u.pathname === '/.aalgate/resume', 'after the tap');
  await snap(A.page, 'cross-site-tap-not-sent');
  t = await text(A.page);
  check(t.includes('Form not sent') && t.includes('another site'), 'after the tap: the form was not sent, and the page says why');
  await A.page.goto(`${EHR}/invoices`);
  t = await text(A.page);
  check(t.includes('1 invoice(s) saved') && t.includes('signed in as nora'), 'the tap signed nora in, and the form never reached the app');

  // 8. Switch user on a shared workstation: omar signs in; nora's session ends everywhere.
  await C.page.goto(invite('omar', 2));
  await click(C.page, 'Create a passkey on this device');
  await landOn(C.page, (u) => u.href.startsWith(`${EHR}/`) && !u.pathname.startsWith('/.aalgate'), 'omar enrolled');
  await C.page.goto(`${EHR}/.aalgate/switch`);
  await snap(C.page, 'switch-user');
  check((await text(C.page)).includes('Switch user'), 'switch-user page shown although a session exists');
  // Sign nora back in on this browser first, then switch to omar.
  await A.page.goto(`${BILLING}/.aalgate/switch`);
  await click(A.page, 'Sign in with a passkey or key');
  await landOn(A.page, (u) => u.href === `${BILLING}/`, 'nora back');
  check((await text(A.page)).includes('signed in as nora'), 'nora signed in again');
  await C.page.goto(`${EHR}/.aalgate/switch`);
  await click(C.page, 'Sign in with a passkey or key');
  await landOn(C.page, (u) => u.href === `${EHR}/`, 'switched');
  check((await text(C.page)).includes('signed in as omar'), 'switched to omar');
  // omar has only a passkey: an AAL3 page says at once that it needs a hardware key, with
  // nothing to tap.
  await C.page.goto(`${EHR}/admin/`);
  await snap(C.page, 'no-hardware-key');
  t = await text(C.page);
  check(t.includes('Hardware key needed') && t.includes('Ask IT') && (await C.page.locator('button[data-action]').count()) === 0, 'no hardware key: said before any tap, with what to do');
  await C.page.goto(`${BILLING}/invoices`);
  t = await text(C.page);
  check(t.includes('signed in as omar') && !t.includes('nora'), "nora's session on the other app host ended too");
  // A form omar started is never sent as someone else. He goes idle with the form open; his
  // second tab's GET ends the idle session first, and only then does he submit the form.
  await C.page.goto(`${EHR}/invoices/new`);
  await C.page.getByLabel('Note').fill('omar was here');
  await sleep(4000);
  const D = await ctx.newPage();
  await D.goto(`${EHR}/invoices`);
  check(D.url().startsWith(`${AUTH}/.aalgate/auth?flow=`) && (await text(D)).includes('Continue where you were'), "omar's second tab: the idle session asks to continue");
  await D.close();
  await submit(C.page, 'Save invoice');
  const omarReauth = C.page.url();
  check(omarReauth.startsWith(`${AUTH}/.aalgate/auth?flow=`), "omar's idle form asks to continue");
  check((await text(C.page)).includes('is kept'), "the form is kept for omar, although his second tab ended the session");
  await A.page.goto(omarReauth);
  await click(A.page, 'Sign in as someone else');
  await landOn(A.page, (u) => u.pathname === '/.aalgate/resume', 'another person resumes');
  check((await text(A.page)).includes('Form discarded'), 'another person signing in discards the kept form');
  await A.page.goto(`${EHR}/invoices`);
  check((await text(A.page)).includes('1 invoice(s) saved') && (await text(A.page)).includes('signed in as nora'), 'the discarded form never reached the app');

  // 9. User verification fails: a clear message, not a hang.
  await A.cdp.send('WebAuthn.setUserVerified', { authenticatorId: A.authenticatorId, isUserVerified: false });
  await A.page.goto(`${EHR}/.aalgate/switch`);
  await click(A.page, 'Sign in with a passkey or key');
  await A.page.waitForFunction(() => document.getElementById('status').className === 'error', null, { timeout: 15000 });
  await snap(A.page, 'uv-false');
  t = await A.page.locator('#status').innerText();
  check(t.includes('Not confirmed') && t.includes('try again'), 'UV false: clear failure message');
  check(await A.page.getByRole('button', { name: 'Sign in with a passkey or key' }).isEnabled(), 'the button works again');

  // 10. Pages before sign-in show no URL or route; a narrow screen still fits.
  // An expired sign-in link on the auth origin (no app of its own): "Go back" returns to the
  // page the person came from.
  await A.page.goto(`${EHR}/static/style.css`);
  await A.page.goto(`${AUTH}/.aalgate/auth?flow=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA`);
  await snap(A.page, 'expired-link-go-back');
  await click(A.page, 'Go back');
  await A.page.waitForURL(`${EHR}/static/style.css`, { timeout: 10000 });
  check(A.page.url() === `${EHR}/static/style.css`, 'an expired sign-in link: Go back returns to the page before');
  // A sign-out form without the token (an app that does not use it) asks to confirm first.
  await A.page.goto(`${AUTH}/.aalgate/logout`);
  await snap(A.page, 'logout-confirm');
  check((await text(A.page)).includes('Sign out of every application'), 'sign-out without the token asks to confirm');
  await submit(A.page, 'Sign out');
  check((await text(A.page)).includes('You are signed out'), 'signed out on the auth origin');
  await A.page.setViewportSize({ width: 320, height: 640 });
  await A.page.goto(`${EHR}/patients/MRN-0012345/chart?note=secret`);
  await snap(A.page, 'narrow-signin');
  t = await A.page.content();
  check(!t.includes('MRN-0012345') && !t.includes('patients') && !t.includes('secret'), 'sign-in page reveals no path or query');
  const overflow = await A.page.evaluate(() => document.documentElement.scrollWidth > window.innerWidth);
  check(!overflow, 'readable at 320 px without horizontal scrolling');
  await A.page.keyboard.press('Tab');
  const focused = await A.page.evaluate(() => document.activeElement && document.activeElement.tagName);
  check(['BUTTON', 'SUMMARY', 'INPUT'].includes(focused), `keyboard focus reaches a control (${focused})`);
  // 11. Compliance: the enrollment report, and recovery that is never weaker than enrollment.
  const cli = (...args) => {
    try {
      return { code: 0, out: execFileSync(AALGATE_BIN, [...args, '--config', AALGATE_CONFIG], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'] }) };
    } catch (e) {
      return { code: e.status, out: String(e.stdout) };
    }
  };
  invite('pat', 2);
  let rep = cli('report', 'enrollment', '--format', 'json');
  let r = JSON.parse(rep.out);
  const row = (u) => r.users.find((x) => x.user === u);
  check(rep.code === 0 && r.summary.mfa_percent === 100, 'enrollment report: every active user has MFA (exit 0)');
  check(row('nora').max_aal === 'aal3' && row('nora').passkeys === 1 && row('nora').security_keys === 1 && row('nora').last_login, 'nora: a passkey and a hardware key, AAL3, last login');
  check(row('omar').max_aal === 'aal2' && row('pat').status === 'invited', 'omar at AAL2; pat invited');
  const reset = cli('users', 'reset', 'nora');
  check(reset.code === 0 && reset.out.includes('/.aalgate/enroll?invite='), 'users reset prints a new invite');
  rep = cli('report', 'enrollment', '--format', 'csv');
  check(rep.code === 1 && rep.out.includes('nora,active,0,0,,'), 'after the reset nora has no MFA: the report exits 1');
  await A.page.goto(reset.out.trim());
  t = await text(A.page);
  check(t.includes('hardware security key') && !t.includes('Create a passkey'), "nora's new invite needs an AAL3 hardware key, like her enrollment");
  // 12. A person proofed for AAL2 who registers an attested hardware key: the key, and the
  // session it starts, stay at AAL2 (never above the level IT proofed the person for).
  await B.page.goto(invite('pia', 2));
  await click(B.page, 'Register a hardware security key');
  await landOn(B.page, (u) => u.href.startsWith(`${EHR}/`) && !u.pathname.startsWith('/.aalgate'), "after pia's key enrollment");
  t = await text(B.page);
  check(t.includes('signed in as pia') && t.includes('AAL2') && !t.includes('AAL3'), `pia's hardware key, enrolled on an AAL2 invite, signs her in at AAL2, not above: ${t.slice(0, 200)}`);
  console.log('all browser scenarios passed');
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
