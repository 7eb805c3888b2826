// A real app under a path behind aalgate, in headless Chromium: Trac 1.6 (PyPI) served by
// tracd under /env, whose cookies are `Path=/env` and whose forms carry a double-submit CSRF
// token (`__FORM_TOKEN` field + `trac_form_token` cookie). A new ticket is filled in, the idle
// timeout passes, the form is submitted, one tap: exactly one ticket exists and the browser
// shows Trac's ticket page (Trac answers the POST with 303).
//
// Started by tests/e2e/browser.rs, which runs tracd and the gateway and passes:
//   AALGATE_BIN, AALGATE_CONFIG, PORT, OUT, CHROMIUM  as for scenarios.mjs
//   TRAC                       the app's origin through the gateway (http://trac.localhost:PORT)
//   TRAC_DIRECT                tracd itself (for the CSV report, past the gateway)

import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { AALGATE_BIN, AALGATE_CONFIG, AUTH, check, landOn, launch, sleep, snap } from './lib.mjs';

const { TRAC, TRAC_DIRECT } = process.env;
async function tickets(summary) {
  const csv = await (await fetch(`${TRAC_DIRECT}/env/report/1?format=csv`)).text();
  return csv.split('\n').filter((l) => l.includes(summary)).length;
}

const { ctx, profile } = await launch();
try {
  const page = await ctx.newPage();
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: { protocol: 'ctap2', transport: 'internal', hasResidentKey: true, hasUserVerification: true, isUserVerified: true, automaticPresenceSimulation: true },
  });
  const out = execFileSync(AALGATE_BIN, ['users', '--config', AALGATE_CONFIG, 'invite', 'nora', '--display-name', 'Nora N.', '--ttl', '1h'], { encoding: 'utf8' });
  await page.goto(out.trim().split('\n').pop());
  await page.getByRole('button', { name: 'Create a passkey on this device' }).click();
  await landOn(page, (u) => u.href.startsWith(`${TRAC}/`) && !u.pathname.startsWith('/.aalgate'), 'enrolled, on Trac');

  await page.goto(`${TRAC}/env/newticket`);
  const cookies = await ctx.cookies(`${TRAC}/env/newticket`);
  check(cookies.some((c) => c.name === 'trac_form_token' && c.path === '/env'), "Trac's CSRF cookie is scoped to Path=/env");
  const summary = `Chest pain follow-up ${Date.now()}`;
  await page.locator('#field-summary').fill(summary);
  await page.locator('#field-description').fill('Patient MRN 0012345: recheck in 2 weeks.');
  await snap(page, 'trac-newticket');
  await sleep(4000); // past the route's 3 s idle limit
  await Promise.all([page.waitForEvent('load'), page.locator('input[name="submit"]').click()]);
  await snap(page, 'trac-reauth');
  check(page.url().startsWith(`${AUTH}/.aalgate/auth?flow=`), 'the idle submit asks for one tap');
  check((await page.locator('body').innerText()).includes('is kept'), 'the page says the form is kept');
  await page.getByRole('button', { name: /^(Continue|Sign in with a passkey)/ }).first().click();
  await landOn(page, (u) => /\/env\/ticket\/\d+$/.test(u.pathname), "Trac's ticket page after the tap");
  await snap(page, 'trac-ticket-created');
  const t = await page.locator('body').innerText();
  check(t.includes(summary) && !t.includes('Missing or invalid form token'), "Trac created the ticket (its form token matched its Path=/env cookie)");
  check((await tickets(summary)) === 1, 'exactly one ticket exists');
  await page.reload();
  check((await tickets(summary)) === 1, 'a reload creates nothing more');
  console.log('trac scenario passed');
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
