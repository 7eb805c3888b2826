// A person the app's `allow` does not name (tests/e2e/browser.rs: the EHR allows the group
// `clinical`): after signing in they get the 403 page at once, naming the app by its display
// name and who is signed in, with no sign-in loop and no ceremony; "Sign in as someone else"
// lets a colleague who may use the app take over on the same workstation.
// Both people enroll a passkey on the same (virtual) authenticator; the colleague signs in
// with the user-name path, so the key offers their credential.

import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { AALGATE_BIN, AALGATE_CONFIG, PORT, check, click, landOn, launch, signCount, snap, text, withAuthenticator } from './lib.mjs';

const PASSKEY = { transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true };
const EHR = `http://ehr.localhost:${PORT}`;
function invite(user, groups) {
  const args = ['users', '--config', AALGATE_CONFIG, 'invite', user, '--display-name', user.toUpperCase(), '--ttl', '1h'];
  for (const g of groups) args.push('--group', g);
  const out = execFileSync(AALGATE_BIN, args, { encoding: 'utf8' });
  return out.trim().split('\n').pop();
}

const { ctx, profile } = await launch();
try {
  const A = await withAuthenticator(ctx, PASSKEY);
  // nora (clinical) enrolls; then bill (no group) enrolls on the same workstation.
  await A.page.goto(invite('nora', ['clinical']));
  await click(A.page, 'Create a passkey on this device');
  await landOn(A.page, (u) => u.href.startsWith(`${EHR}/`) && !u.pathname.startsWith('/.aalgate'), 'nora after enrollment');
  check((await text(A.page)).includes('signed in as nora'), 'nora, in clinical, uses the EHR');
  await A.page.goto(invite('bill', []));
  await click(A.page, 'Create a passkey on this device');
  await A.page.waitForURL((u) => u.href.startsWith(`${EHR}/`), { timeout: 15000 });
  await A.page.getByText('does not have access').waitFor({ timeout: 10000 });
  await snap(A.page, 'forbidden');
  const t = await text(A.page);
  check(t.includes('Your account does not have access to Legacy EHR. If you need it, ask IT.'), 'the 403 page names the app by its display name and says what to do');
  check(t.includes('You are signed in as BILL (bill)'), 'the 403 page names who is signed in');
  check(await A.page.getByRole('link', { name: 'Sign out' }).isVisible(), 'the 403 page offers to sign out too (a shared workstation)');
  const before = await signCount(A);
  await A.page.reload();
  check((await text(A.page)).includes('does not have access') && !A.page.url().includes('/.aalgate/auth'), 'no sign-in loop: the same page again');
  check((await signCount(A)) === before, 'no ceremony was asked for');

  // A colleague who may use the EHR takes over from the 403 page.
  await A.page.getByRole('link', { name: 'Sign in as someone else' }).click();
  await landOn(A.page, (u) => u.pathname === '/.aalgate/auth', 'the switch-user sign-in page');
  await A.page.click('summary');
  await A.page.fill('#username', 'nora');
  await click(A.page, 'Continue with security key');
  await landOn(A.page, (u) => u.href.startsWith(`${EHR}/`) && !u.pathname.startsWith('/.aalgate'), 'nora after the switch');
  await snap(A.page, 'switched-to-a-colleague');
  check((await text(A.page)).includes('signed in as nora'), 'after the switch nora uses the EHR on the same workstation');
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
