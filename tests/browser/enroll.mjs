// Enrolls a passkey for one person in Chromium and signs them in on two app hosts (the second
// by the silent handoff), then prints the session cookie of each host as `COOKIE <host> <value>`
// for tests/e2e/browser.rs, which goes on with raw requests. APPS: the two hosts, comma-separated.

import { rmSync } from 'node:fs';
import { PORT, check, click, invite, landOn, launch, text, withAuthenticator } from './lib.mjs';

const PASSKEY = { transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true };
const [first, second] = process.env.APPS.split(',');
const { ctx, profile } = await launch();
try {
  const A = await withAuthenticator(ctx, PASSKEY);
  await A.page.goto(invite('tess', 2));
  await click(A.page, 'Create a passkey on this device');
  await landOn(A.page, (u) => !u.pathname.startsWith('/.aalgate'), 'after enrollment');
  for (const host of [first, second]) {
    await A.page.goto(`http://${host}:${PORT}/`);
    await landOn(A.page, (u) => u.hostname === host && u.pathname === '/', `${host}, by the handoff if need be`);
    check((await text(A.page)).includes('tess'), `signed in on ${host}`);
  }
  for (const c of await ctx.cookies()) {
    if (c.name === 'aalgate' && (c.domain === first || c.domain === second)) console.log(`COOKIE ${c.domain} ${c.value}`);
  }
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
