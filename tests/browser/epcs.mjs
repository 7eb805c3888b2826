// Per-request signing (`step_up: { per_request: true }`) in headless Chromium with a virtual
// security key, in front of the bundled demo app on `rx.localhost`:
// - every kept form on a per-request route costs exactly one ceremony and is sent exactly once;
//   the next form needs its own;
// - a signature the audit log cannot record (its syslog socket gone) does not count: nothing is
//   sent, the form stays kept, and one more touch sends it once the log is back;
// - a form on a `max_age: 1s` route needs one ceremony, not a loop;
// - a script call gets the 401 JSON; the popup does the ceremony and closes itself; the retry
//   is admitted once, and the call after it is refused again; the signature covers the body,
//   so a retry with another body is refused before the app sees it.
// What the app received for the signed requests (nonce, digest, body) is written to OUT for
// tests/e2e/browser.rs, which checks it against the audit log with `aalgate audit verify`.

import { existsSync, rmSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  AUTH, OUT, PORT, SECURITY_KEY, check, click, invite, landOn, launch, signCount, sleep, snap, text, withAuthenticator,
} from './lib.mjs';

const RX = `http://rx.localhost:${PORT}`;
const { SYSLOG } = process.env;
const { ctx, profile } = await launch();
try {
  const B = await withAuthenticator(ctx, SECURITY_KEY);
  const page = B.page;
  await page.goto(invite('rex', 3));
  await click(page, 'Register a hardware security key');
  await landOn(page, (u) => u.href.startsWith(`${RX}/`) && !u.pathname.startsWith('/.aalgate'), 'after key enrollment');
  check((await text(page)).includes('AAL3'), 'hardware key enrolled at AAL3');

  // 1. A kept form on a per-request route: one ceremony, sent once, shown after the tap.
  async function signInvoice(account) {
    await page.goto(`${RX}/invoices/new`);
    await page.fill('input[name=account]', account);
    await page.fill('input[name=amount]', '12.50');
    const before = await signCount(B);
    await Promise.all([page.waitForURL((u) => u.pathname === '/.aalgate/auth'), page.getByRole('button', { name: 'Save invoice' }).click()]);
    const t = await text(page);
    check(t.includes("Confirm it's you") && t.includes('is kept'), `signing ${account}: the confirmation page says the form is kept`);
    await snap(page, `sign-${account}`);
    await click(page, 'Confirm');
    await landOn(page, (u) => u.href.startsWith(`${RX}/.aalgate/resume`), `signed ${account}`);
    check((await signCount(B)) === before + 1, `signing ${account}: exactly one ceremony`);
    return text(page);
  }
  let t = await signInvoice('RX-1');
  check(t.includes('Saved invoice #1'), 'the signed form reached the app');
  await page.reload();
  check(!(await text(page)).includes('Saved invoice #2'), 'a reload of the answer sends nothing');
  t = await signInvoice('RX-2');
  check(t.includes('Saved invoice #2'), 'the next form needed, and got, its own ceremony');
  await page.goto(`${RX}/invoices`);
  check((await text(page)).includes('2 invoice(s) saved'), 'exactly two invoices: each signed form was sent once');

  // 2. A kept form whose answer shows what the app received: the nonce and digest headers.
  await page.goto(`${RX}/invoices/new`);
  await page.fill('input[name=account]', 'RX-3');
  await page.fill('input[name=amount]', '7');
  await page.evaluate(() => { document.querySelector('form').action = '/echo/sign'; });
  await Promise.all([page.waitForURL((u) => u.pathname === '/.aalgate/auth'), page.getByRole('button', { name: 'Save invoice' }).click()]);
  await click(page, 'Confirm');
  await landOn(page, (u) => u.href.startsWith(`${RX}/.aalgate/resume`), 'signed echo form');
  const echoed = JSON.parse(await page.locator('body').innerText());
  const h = (j, n) => j.headers[n];
  check(h(echoed, 'x-aalgate-request-nonce') && h(echoed, 'x-aalgate-request-digest'), 'the app received the request nonce and digest');
  // The signed identity (the assertion JWT) names the digest too.
  const claims = (j) => JSON.parse(Buffer.from(h(j, 'x-aalgate-assertion').split('.')[1], 'base64url').toString());
  check(claims(echoed).request_digest === h(echoed, 'x-aalgate-request-digest'), 'the assertion carries the request digest');
  check(echoed.body_len === 'account=RX-3&amount=7&note='.length, `the app received the form as typed (${echoed.body_len} bytes)`);
  writeFileSync(join(OUT, 'signed-form.json'), JSON.stringify({
    method: 'POST', url: '/echo/sign', body: 'account=RX-3&amount=7&note=',
    nonce: h(echoed, 'x-aalgate-request-nonce'), digest: h(echoed, 'x-aalgate-request-digest'),
  }));

  // 3. `max_age: 1s`: one ceremony for the form, not a loop.
  await page.goto(`${RX}/payouts/bank-account`);
  await page.fill('input[name=iban]', 'DE00 0000');
  await sleep(1500);
  let before = await signCount(B);
  await Promise.all([page.waitForURL((u) => u.pathname === '/.aalgate/auth'), page.getByRole('button', { name: 'Change payout account' }).click()]);
  await click(page, 'Confirm');
  await landOn(page, (u) => u.href.startsWith(`${RX}/.aalgate/resume`), 'max_age 1s form');
  check((await text(page)).includes('The payout account was changed'), 'max_age: 1s: the form was sent after one ceremony');
  check((await signCount(B)) === before + 1, 'max_age: 1s: exactly one ceremony, no loop');

  // 4. A script call signs its body too: a retry with another body is refused, and the
  //    app never sees it. (The ceremony runs in this tab here; the popup comes next.)
  await page.goto(`${RX}/invoices`);
  const post = (body) => page.evaluate(async (b) => {
    try {
      const r = await fetch('/echo/api', { method: 'POST', headers: { 'content-type': 'application/json' }, body: b });
      return { status: r.status, body: await r.text() };
    } catch (e) { return { status: 0, body: String(e) }; }
  }, body);
  let first = await post('{"rx":5}');
  check(first.status === 401 && JSON.parse(first.body).need === 'step_up', 'a script call on a per-request route gets the 401 JSON');
  before = await signCount(B);
  await page.goto(JSON.parse(first.body).login_url);
  t = await text(page);
  check(t.includes('You are approving') && t.includes('POST /echo/api'), 'the confirmation page names the request being signed');
  await snap(page, 'approve-script-call');
  await click(page, 'Confirm');
  await landOn(page, (u) => u.href === `${RX}/.aalgate/done`, 'script ceremony done');
  check((await signCount(B)) === before + 1, 'one ceremony for the script call');
  const tampered = await post('{"rx":6}');
  check(tampered.status !== 200 && !tampered.body.includes('"rx"'), `a retry with another body is refused (${tampered.status})`);
  const spent = await post('{"rx":5}');
  check(spent.status === 401, 'the grant went with the refused retry');

  // 5. The audit log cannot take the evidence (its syslog socket is gone): the signature does
  //    not count, nothing reaches the app, and the form stays kept. Once the log is back, one
  //    more touch sends it, once.
  unlinkSync(SYSLOG);
  await page.goto(`${RX}/invoices/new`);
  await page.fill('input[name=account]', 'RX-3');
  await page.fill('input[name=amount]', '99');
  await Promise.all([page.waitForURL((u) => u.pathname === '/.aalgate/auth'), page.getByRole('button', { name: 'Save invoice' }).click()]);
  before = await signCount(B);
  await click(page, 'Confirm');
  await page.waitForFunction(() => document.getElementById('status').className === 'error', null, { timeout: 15000 })
    .catch(() => {});
  t = await text(page);
  await snap(page, 'audit-unavailable');
  check(new URL(page.url()).pathname === '/.aalgate/auth' && t.includes('could not be recorded') && t.includes('kept'),
    `with no audit log the signature is refused and the page says the form is kept (${page.url()}: ${t.slice(0, 300)})`);
  const other = await ctx.newPage();
  await other.goto(`${RX}/invoices`);
  check((await text(other)).includes('2 invoice(s) saved'), 'nothing reached the app while the audit log was away');
  await other.close();
  writeFileSync(`${SYSLOG}.restore`, '');
  for (let i = 0; i < 100 && !existsSync(SYSLOG); i++) await sleep(50);
  check(existsSync(SYSLOG), 'the audit log is back');
  // The button now reads "Try again": it runs the ceremony again, never the POST.
  await click(page, 'Try again');
  await landOn(page, (u) => u.href.startsWith(`${RX}/.aalgate/resume`), 'signed RX-3 after the audit log came back');
  check((await text(page)).includes('Saved invoice #3'), 'the kept form was sent after the second touch');
  check((await signCount(B)) === before + 2, 'two ceremonies: the unrecorded one, then the one that counted');
  await page.goto(`${RX}/invoices`);
  check((await text(page)).includes('3 invoice(s) saved'), 'the form was sent exactly once');

  // 6. A script call: 401 JSON, the popup signs and closes, the retry is admitted once.
  await page.goto(`${RX}/invoices`);
  const popupP = ctx.waitForEvent('page');
  const call = page.evaluate(async () => {
    async function aalgateFetch(url, opts) {
      const r = await fetch(url, opts);
      if (r.status !== 401) return r;
      const j = await r.clone().json().catch(() => null);
      if (!j || j.error !== 'authentication_required') return r;
      const w = window.open(j.login_url, 'aalgate', 'width=480,height=640');
      await new Promise((ok) => { const t = setInterval(() => { if (!w || w.closed) { clearInterval(t); ok(); } }, 200); });
      return fetch(url, opts);
    }
    const opts = { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{"rx":4}' };
    const r = await aalgateFetch('/echo/api', opts);
    const again = await fetch('/echo/api', opts);
    return { status: r.status, body: await r.text(), again: again.status, againBody: await again.json() };
  });
  const popup = await popupP;
  await popup.waitForLoadState();
  check(popup.url().startsWith(`${AUTH}/.aalgate/auth`), 'the script call opened the sign-in in a popup');
  // The popup is a new tab: give it an authenticator with the same key (and its counter).
  const { credentials } = await B.cdp.send('WebAuthn.getCredentials', { authenticatorId: B.authenticatorId });
  const P = await withAuthenticator(ctx, SECURITY_KEY, popup);
  for (const c of credentials) await P.cdp.send('WebAuthn.addCredential', { authenticatorId: P.authenticatorId, credential: c });
  before = await signCount(P);
  await snap(popup, 'popup-confirm');
  const closed = popup.waitForEvent('close', { timeout: 15000 });
  await popup.getByRole('button', { name: 'Confirm' }).click();
  await closed;
  const r = await call;
  check(r.status === 200, `the retry after the popup was admitted (${r.status})`);
  const xhr = JSON.parse(r.body);
  check(h(xhr, 'x-aalgate-request-nonce') && h(xhr, 'x-aalgate-request-digest'), 'the retried call carried the request nonce and digest');
  check(claims(xhr).request_digest === h(xhr, 'x-aalgate-request-digest'), "the retried call's assertion carries its digest");
  check(r.again === 401 && r.againBody.need === 'step_up', 'the next call needs its own ceremony');
  check(xhr.body_len === 8, 'the app received the signed body');
  writeFileSync(join(OUT, 'signed-xhr.json'), JSON.stringify({
    method: 'POST', url: '/echo/api', body: '{"rx":4}', nonce: h(xhr, 'x-aalgate-request-nonce'), digest: h(xhr, 'x-aalgate-request-digest'),
  }));

  console.log('epcs scenario passed');
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
