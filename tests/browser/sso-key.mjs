// The gateway as a `private_key_jwt` client (tests/e2e/oidc.rs): alice, invited by IT, signs in
// through the provider; the token endpoint accepted the gateway's signed assertion.
// Env (beyond lib.mjs): OP (the provider's base URL).

import { rmSync } from 'node:fs';
import { PORT, check, invite, landOn, launch, snap, text } from './lib.mjs';

const { OP } = process.env;
const EHR = `http://ehr.localhost:${PORT}`;

const { ctx, profile } = await launch();
try {
  const page = await ctx.newPage();
  invite('alice', 2);
  await page.goto(`${EHR}/`);
  await page.getByRole('link', { name: 'Sign in with Mercy Health SSO' }).click();
  await landOn(page, (u) => u.href.startsWith(`${OP}/interaction/`), "the provider's login form");
  await page.fill('#username', 'alice');
  await page.getByRole('button', { name: 'Log in' }).click();
  await landOn(page, (u) => u.href.startsWith(`${EHR}/`) && !u.pathname.startsWith('/.aalgate'), 'alice after SSO');
  await snap(page, 'signed-in-with-private-key-jwt');
  check((await text(page)).includes('signed in as alice'), 'a private_key_jwt client signs people in');
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
