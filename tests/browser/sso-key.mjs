// The gateway as a `private_key_jwt` client (tests/e2e/oidc.rs): alice, invited by IT, signs in
// through the provider (the token endpoint accepted the gateway's signed assertion). With
// `enroll_after_sso`, the first step-up she cannot pass offers a passkey, enrolled without an
// IT invite on the strength of that fresh aal2 login; the passkey then confirms the next one.
// Env (beyond lib.mjs): OP (the provider's base URL).

import { rmSync } from 'node:fs';
import { AUTH, PORT, check, click, invite, landOn, launch, sleep, snap, text, withAuthenticator } from './lib.mjs';

const { OP } = process.env;
const EHR = `http://ehr.localhost:${PORT}`;
const PASSKEY = { transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true };

const { ctx, profile } = await launch();
try {
  const { page } = await withAuthenticator(ctx, PASSKEY);
  const refused = await page.request.post(`${AUTH}/.aalgate/oidc/enroll`, { form: { flow: 'x' } });
  check(refused.status() === 403, `no enrollment without the step-up page's form (${refused.status()})`);
  invite('alice', 2);
  await page.goto(`${EHR}/`);
  await page.getByRole('link', { name: 'Sign in with Mercy Health SSO' }).click();
  await landOn(page, (u) => u.href.startsWith(`${OP}/interaction/`), "the provider's login form");
  await page.fill('#username', 'alice');
  await page.getByRole('button', { name: 'Log in' }).click();
  await landOn(page, (u) => u.href.startsWith(`${EHR}/`) && !u.pathname.startsWith('/.aalgate'), 'alice after SSO');
  const began = Date.now();
  await snap(page, 'signed-in-with-private-key-jwt');
  check((await text(page)).includes('signed in as alice'), 'a private_key_jwt client signs people in');

  // /notes wants a confirmation within 2 s; alice has no key yet.
  await sleep(2100);
  await page.goto(`${EHR}/notes`);
  await landOn(page, (u) => u.pathname === '/.aalgate/auth', 'the step-up page');
  await snap(page, 'step-up-offers-a-passkey');
  await page.getByRole('button', { name: 'Create a passkey on this device' }).click();
  await landOn(page, (u) => u.pathname === '/.aalgate/enroll', 'the enrollment page');
  await snap(page, 'enroll-after-sso');
  // The link is worth nothing in another browser (a shared workstation's history, say).
  const other = await launch();
  try {
    const { page: p2 } = await withAuthenticator(other.ctx, PASSKEY);
    await p2.goto(page.url());
    await click(p2, 'Create a passkey on this device');
    await p2.locator('#status.error').waitFor({ timeout: 15000 });
    check(new URL(p2.url()).pathname === '/.aalgate/enroll', 'the enrollment link does not work in another browser');
  } finally {
    await other.ctx.close();
    rmSync(other.profile, { recursive: true, force: true });
  }
  await click(page, 'Create a passkey on this device');
  await landOn(page, (u) => u.href === `${EHR}/notes`, 'the notes after enrolling');
  check((await text(page)).includes('signed in as alice'), 'after enrolling she lands where she was going');

  // (The enrollment's flow admits its own request once, even after max_age: the first visit
  // may spend that admission.)
  for (let i = 0; i < 2 && !new URL(page.url()).pathname.startsWith('/.aalgate/auth'); i++) {
    await sleep(2100);
    await page.goto(`${EHR}/notes`);
  }
  await landOn(page, (u) => u.pathname === '/.aalgate/auth', 'the next step-up');
  check((await text(page)).includes("Confirm it's you"), 'the next step-up asks for the new passkey');
  await click(page, 'Confirm');
  await landOn(page, (u) => u.href === `${EHR}/notes`, 'the notes after the passkey');
  check((await text(page)).includes('signed in as alice'), 'the passkey enrolled after SSO confirms the step-up');
  // The step-up continued the provider session: it ends 40 s after the provider sign-in.
  await sleep(Math.max(0, began + 41000 - Date.now()));
  await page.goto(`${EHR}/`);
  check(new URL(page.url()).pathname === '/.aalgate/auth', `a passkey added after SSO never starts the session's clock again (on ${page.url()})`);

  // That passkey rides on the provider: it never signs in alone, so removing alice at the
  // provider (and ending her sessions) ends her access here too.
  for (const domain of ['localhost', 'ehr.localhost']) await ctx.clearCookies({ domain });
  await page.goto(`${EHR}/`);
  await landOn(page, (u) => u.pathname === '/.aalgate/auth', 'the sign-in page');
  await page.locator('#status').evaluate((n) => { n.textContent = ''; });
  await click(page, 'Sign in with a passkey or key');
  await page.locator('#status.error').waitFor({ timeout: 15000 });
  check(new URL(page.url()).pathname === '/.aalgate/auth', 'a passkey added after SSO does not sign in on its own');
  await snap(page, 'passkey-after-sso-is-no-first-factor');
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
