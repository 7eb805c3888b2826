// Sign-in through the hospital's identity provider (a real oidc-provider, tests/e2e/oidc.rs),
// with aalgate's own passkey on top where the provider's login is not enough:
// - alice (invited by IT, no key yet) logs in at the provider with MFA: AAL2, straight to the EHR;
// - a replayed callback and a made-up state are refused; an AAL3 route asks for a hardware key;
// - a back-channel logout from the provider ends her open tab's session within a second;
// - with `silent_login`, a plain sign-in rides the provider's session; after "switch user"
//   the provider must ask for a login again (never silently the previous clinician);
// - bob logs in with a password only (AAL1): aalgate asks for his own passkey, no second sign-in;
// - carol, whom the directory does not know, gets a clear page, not an account;
// - dan is created on first sign-in as a member of the `jit` group;
// - aalgate's sign-out ends the provider's session too (RP-initiated logout).
// Env (beyond lib.mjs): OP (the provider's base URL).

import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { AALGATE_BIN, AALGATE_CONFIG, AUTH, PORT, check, click, invite, landOn, launch, sleep, snap, text, withAuthenticator } from './lib.mjs';

const { OP } = process.env;
const PASSKEY = { transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true };
const EHR = `http://ehr.localhost:${PORT}`;
const inEhr = (u) => u.href.startsWith(`${EHR}/`) && !u.pathname.startsWith('/.aalgate');
const atProvider = (u) => u.href.startsWith(`${OP}/interaction/`);
const logins = async () => (await (await fetch(`${OP}/test/logins`)).json()).logins;

async function providerLogin(page, who, what) {
  await landOn(page, atProvider, `${what}: the provider's login form`);
  await page.fill('#username', who);
  await page.getByRole('button', { name: 'Log in' }).click();
}

const { ctx, profile } = await launch();
try {
  const A = await withAuthenticator(ctx, PASSKEY);
  const page = A.page;
  let callback = null;
  page.on('request', (r) => { if (r.url().includes('/.aalgate/oidc/callback')) callback = r.url(); });

  // bob enrolls a passkey (IT's invite), then the workstation is cleared for the next person.
  await page.goto(invite('bob', 2));
  await click(page, 'Create a passkey on this device');
  await landOn(page, inEhr, 'bob after enrollment');
  await ctx.clearCookies();
  // alice is invited by IT but has not enrolled anything: the provider vouches for her.
  invite('alice', 2);

  await page.goto(`${EHR}/`);
  await landOn(page, (u) => u.pathname === '/.aalgate/auth', 'the sign-in page');
  await snap(page, 'sign-in-page-with-sso');
  const sso = page.getByRole('link', { name: 'Sign in with Mercy Health SSO' });
  check(await sso.isVisible(), 'the sign-in page offers the hospital SSO by its display name');
  await sso.click();
  await landOn(page, atProvider, 'the provider');
  await snap(page, 'provider-login');
  await providerLogin(page, 'alice', 'alice');
  await landOn(page, inEhr, 'alice after SSO');
  check((await text(page)).includes('signed in as alice'), 'an MFA login at the provider (amr mfa, mapped to aal2) opens an aal2 route');
  await snap(page, 'alice-in-the-ehr');

  // The same callback again (a replayed code and state), and a state nobody started.
  check(callback !== null, 'the callback was seen');
  let r = await page.goto(callback);
  check(r.status() === 410 && (await text(page)).includes('not valid any more'), 'a replayed callback is refused');
  await snap(page, 'replayed-callback');
  r = await page.goto(`${AUTH}/.aalgate/oidc/callback?state=${'A'.repeat(43)}.made-up&code=stolen`);
  check(r.status() === 410, 'a callback with a state this browser never started is refused');
  r = await page.goto(`${AUTH}/.aalgate/oidc/callback?state=nonsense&code=stolen`);
  check(r.status() === 400, 'a malformed state is refused');

  // AAL3 needs aalgate's own attested hardware key: the provider is never enough.
  await page.goto(`${EHR}/orders`);
  await page.getByText('hardware security key').first().waitFor({ timeout: 10000 });
  check(!(await page.getByRole('link', { name: /Mercy Health SSO/ }).count()), 'an aal3 route does not offer the provider');
  await snap(page, 'aal3-asks-for-a-hardware-key');

  // A route whose requests the person's own key must sign: a provider login, however strong,
  // never admits one (a fresh browser goes there first, so the flow is a sign-in).
  for (const domain of ['localhost', 'ehr.localhost']) await ctx.clearCookies({ domain });
  await page.goto(`${EHR}/sign`);
  await page.getByRole('link', { name: 'Sign in with Mercy Health SSO' }).click();
  await providerLogin(page, 'alice', 'alice, for a signed request');
  await page.waitForLoadState();
  await sleep(500);
  check(!(new URL(page.url()).pathname === '/sign' && (await text(page)).includes('signed in as alice')), `a provider login does not admit a request the key must sign (on ${page.url()})`);
  await snap(page, 'per-request-needs-the-key');
  await page.goto(`${EHR}/`);
  check((await text(page)).includes('signed in as alice'), 'alice is still signed in through the provider');

  // A form sent after the idle limit is kept; its flow is never silent at the provider (even
  // with silent_login): the provider asks for a login, and then the form is sent at once.
  await page.goto(`${EHR}/invoices/new`);
  await page.getByLabel('Account').fill('ACME-77');
  await page.getByLabel('Amount').fill('12.00');
  await page.getByLabel('Note').fill('Kept across a provider sign-in');
  await sleep(4000);
  await Promise.all([page.waitForEvent('load'), page.getByRole('button', { name: 'Save invoice' }).click()]);
  check((await text(page)).includes('is kept'), 'the form is kept across the re-authentication');
  await snap(page, 'kept-form-offers-sso');
  const loginsBefore = await logins();
  await page.getByRole('link', { name: 'Sign in with Mercy Health SSO' }).click();
  await landOn(page, atProvider, 'the provider, for the kept form');
  check((await text(page)).includes('prompt: login'), 'a flow that keeps a form makes the provider ask for a login');
  await providerLogin(page, 'alice', 'alice with a kept form');
  await page.getByText('Saved invoice #1').waitFor({ timeout: 15000 });
  check((await logins()) === loginsBefore + 1 && (await text(page)).includes('signed in as alice'), 'after a new provider login the kept form reached the app as alice');

  // silent_login: a plain first sign-in on a cleared browser rides the provider's live
  // session (no login form).
  await sleep(2500); // the provider's login is now older than /notes' max_age (2 s)
  for (const domain of ['localhost', 'ehr.localhost']) await ctx.clearCookies({ domain });
  const before = await logins();
  await page.goto(`${EHR}/`);
  await page.getByRole('link', { name: 'Sign in with Mercy Health SSO' }).click();
  await landOn(page, inEhr, 'alice, silently');
  check((await text(page)).includes('signed in as alice') && (await logins()) === before, 'with silent_login a plain sign-in uses the provider session without a form');
  // That login is as old as the provider's session: it does not pass a fresh-confirmation route.
  await page.goto(`${EHR}/notes`);
  check(new URL(page.url()).pathname === '/.aalgate/auth', `a silent provider sign-in is not a fresh confirmation (on ${page.url()})`);
  await page.goto(`${EHR}/`);

  // The provider ends alice's session (e.g. IT disabled her there): her open tab's next click
  // goes to sign-in within a second.
  const sent = await fetch(`${OP}/test/backchannel?sub=alice`, { method: 'POST' });
  check(sent.status === 200, `the provider's back-channel logout was accepted (${sent.status} ${await sent.text()})`);
  await sleep(1100);
  await page.reload();
  await landOn(page, (u) => u.pathname === '/.aalgate/auth', 'sign-in after the back-channel logout');
  check((await text(page)).includes('Sign in'), 'after the provider logged alice out, the next click asks to sign in');
  await snap(page, 'after-back-channel-logout');

  // Shared workstation: after "switch user" the provider must ask again.
  await page.goto(`${EHR}/.aalgate/switch`);
  await page.getByRole('link', { name: 'Sign in with Mercy Health SSO' }).click();
  await landOn(page, atProvider, 'the provider after switch user');
  check((await text(page)).includes('prompt: login'), 'after switch user the provider is told to ask for a login (prompt=login), never silently the previous clinician');
  await snap(page, 'switch-user-asks-the-provider-again');
  await providerLogin(page, 'bob', 'bob');
  // bob's provider login is a password only (aal1): his own passkey adds the rest.
  await landOn(page, (u) => u.pathname === '/.aalgate/auth', "bob's step-up page");
  check((await text(page)).includes("Confirm it's you"), 'an aal1 provider login on an aal2 route asks for the passkey');
  await snap(page, 'bob-passkey-step-up-after-sso');
  await click(page, 'Confirm');
  await landOn(page, inEhr, 'bob after the step-up');
  check((await text(page)).includes('signed in as bob'), "bob reaches the EHR with his own passkey on top of the provider's login, with no second sign-in");

  // carol: the provider knows her, the directory does not.
  await page.goto(`${EHR}/.aalgate/switch`);
  await page.getByRole('link', { name: 'Sign in with Mercy Health SSO' }).click();
  await providerLogin(page, 'carol', 'carol');
  await page.getByText('not set up for access').first().waitFor({ timeout: 10000 });
  check((await text(page)).includes('signed in at Mercy Health SSO as carol'), 'an unknown person gets a clear page, not an account');
  await snap(page, 'unknown-person');

  // dan: created on first sign-in as a member of the jit group.
  await page.goto(`${EHR}/.aalgate/switch`);
  await page.getByRole('link', { name: 'Sign in with Mercy Health SSO' }).click();
  await providerLogin(page, 'dan', 'dan');
  await landOn(page, inEhr, 'dan after SSO');
  check((await text(page)).includes('signed in as dan'), 'a member of the jit group is created on first sign-in');
  const users = execFileSync(AALGATE_BIN, ['users', '--config', AALGATE_CONFIG, 'list'], { encoding: 'utf8' });
  check(users.includes('dan') && !users.includes('carol'), 'dan is in the directory, carol is not');

  // Another provider account with alice's user name: alice is bound to her own account.
  await page.goto(`${EHR}/.aalgate/switch`);
  await page.getByRole('link', { name: 'Sign in with Mercy Health SSO' }).click();
  await providerLogin(page, 'alice-2', 'a second account named alice');
  await page.getByText('not the one').first().waitFor({ timeout: 10000 }).catch(() => {});
  check(!(await text(page)).includes('signed in as alice') && (await text(page)).includes('not the one'), 'another provider account with the same user name is refused');
  await snap(page, 'reused-user-name');

  // eve's provider asserts amr values aalgate uses itself ("breakglass", "hwk"): they mean
  // nothing here. She is not in `clinical`, so the EHR refuses her, break-glass routes too.
  invite('eve', 2);
  await page.goto(`${EHR}/.aalgate/switch`);
  await page.getByRole('link', { name: 'Sign in with Mercy Health SSO' }).click();
  await providerLogin(page, 'eve', 'eve');
  await landOn(page, (u) => u.href.startsWith(`${EHR}/`), 'eve back at the EHR');
  await snap(page, 'eve-after-sso');
  const chart = await page.goto(`${EHR}/chart/1`);
  check(chart.status() === 403 && !(await text(page)).includes('signed in as eve'), `a provider's amr "breakglass" opens no emergency access (${chart.status()})`);

  // RP-initiated logout: aalgate's sign-out ends the provider's session too, so the next
  // sign-in on this workstation asks the provider for a login (even with silent_login).
  await page.goto(`${EHR}/.aalgate/logout`);
  await click(page, 'Sign out');
  await landOn(page, (u) => u.href.startsWith(`${OP}/session/end`), "the provider's sign-out page");
  await snap(page, 'provider-sign-out');
  await page.getByRole('button', { name: 'Yes, sign me out' }).click();
  await page.getByText('Sign-out Success').first().waitFor({ timeout: 10000 }).catch(() => {});
  await page.goto(`${EHR}/`);
  await page.getByRole('link', { name: 'Sign in with Mercy Health SSO' }).click();
  await landOn(page, atProvider, 'the provider after the sign-out');
  check((await text(page)).includes('Log in'), "after aalgate's sign-out the provider's session is over too: it asks for a login");
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
