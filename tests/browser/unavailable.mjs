// The session store fails during the tap that would send a kept form (tests/e2e/browser.rs runs
// the gateway on a real Redis and passes its process id as REDIS_PID; SIGSTOP freezes it the way
// a hung store does). First it is frozen before the person presses Continue, then just as the
// authenticator's answer goes to the gateway. Each time the page says the service is
// unavailable, that the form is still kept, and offers "Try again"; once Redis answers, "Try
// again" runs the ceremony (not the POST) and the form reaches the app exactly once.

import { rmSync } from 'node:fs';
import { PORT, check, click, invite, landOn, launch, sleep, snap, text, withAuthenticator } from './lib.mjs';

const PASSKEY = { transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true };
const EHR = `http://ehr.localhost:${PORT}`;
const redis = Number(process.env.REDIS_PID);
const freeze = () => process.kill(redis, 'SIGSTOP');
const thaw = () => process.kill(redis, 'SIGCONT');
const status = (page) => page.locator('#status').innerText();

const { ctx, profile } = await launch();
try {
  const A = await withAuthenticator(ctx, PASSKEY);
  await A.page.goto(invite('nora', 2));
  await click(A.page, 'Create a passkey on this device');
  await landOn(A.page, (u) => u.href.startsWith(`${EHR}/`) && !u.pathname.startsWith('/.aalgate'), 'after enrollment');

  // A form submitted after the idle limit (3 s here) is kept, and the page asks for a tap.
  await A.page.goto(`${EHR}/invoices/new`);
  await A.page.getByLabel('Account').fill('ACME-77');
  await A.page.getByLabel('Amount').fill('12.00');
  await A.page.getByLabel('Note').fill('Store failure during the tap');
  await sleep(4000);
  await A.page.bringToFront();
  await Promise.all([A.page.waitForEvent('load'), A.page.getByRole('button', { name: 'Save invoice' }).click()]);
  check((await text(A.page)).includes('Your form for ehr is kept'), 'the form is kept across the re-authentication');

  // 1. The store hangs before the ceremony starts.
  freeze();
  try {
    await click(A.page, 'Continue');
    await A.page.locator('#status.error').waitFor({ timeout: 15000 });
  } finally {
    thaw();
  }
  await snap(A.page, 'store-down-before-the-tap');
  let s = await status(A.page);
  check(s.includes('temporarily unavailable') && s.includes('Your form for ehr is still kept'), `the page says the service is unavailable and the form is still kept ("${s}")`);
  check(await A.page.getByRole('button', { name: 'Try again' }).isEnabled(), 'the button now reads "Try again" and can be pressed');
  check(A.page.url().includes('/.aalgate/auth?flow='), 'still on the sign-in page: nothing was sent');

  // 2. The store hangs while the authenticator's answer goes to the gateway.
  await A.page.route('**/.aalgate/webauthn/finish', async (route) => {
    freeze();
    await route.continue();
  }, { times: 1 });
  try {
    await click(A.page, 'Try again');
    await A.page.locator('#status.error').waitFor({ timeout: 15000 });
  } finally {
    thaw();
  }
  await snap(A.page, 'store-down-during-the-tap');
  s = await status(A.page);
  check(s.includes('temporarily unavailable') && s.includes('still kept'), `a failure after the tap says the same ("${s}")`);

  // 3. The store answers again: "Try again" signs in and sends the form, once.
  await sleep(500);
  await click(A.page, 'Try again');
  await landOn(A.page, (u) => u.pathname === '/.aalgate/resume', 'kept form resumed after the store came back');
  await A.page.getByText('Saved invoice #1').waitFor({ timeout: 10000 });
  await snap(A.page, 'store-back-form-sent');
  check((await text(A.page)).includes('signed in as nora'), 'the kept form reached the app as nora');
  await A.page.goto(`${EHR}/invoices`);
  check((await text(A.page)).includes('1 invoice(s) saved'), 'the app received the form exactly once');
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
