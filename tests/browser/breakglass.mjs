// Break-glass in a real browser: a wrong code, then the sealed code with a name and reason;
// the emergency session reaches only routes that allow it. Run by tests/e2e/breakglass.rs with
// PORT, OUT, CHROMIUM and CODE (the sealed code). Prints `ECHO <json>`: what the app received.

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const { PORT, OUT, CHROMIUM, CODE } = process.env;
const EHR = `http://ehr.localhost:${PORT}`;
mkdirSync(OUT, { recursive: true });
function check(cond, what) {
  if (!cond) throw new Error(`expectation failed: ${what}`);
  console.log(`ok - ${what}`);
}
async function submit(page, name) {
  await Promise.all([page.waitForEvent('load'), page.getByRole('button', { name }).click()]);
}

const profile = mkdtempSync(join(tmpdir(), 'aalgate-bg-'));
const ctx = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
});
try {
  const page = await ctx.newPage();
  await page.goto(`${EHR}/.aalgate/breakglass`);
  await page.screenshot({ path: join(OUT, 'bg-1-form.png'), fullPage: true });
  check((await page.locator('h1').innerText()) === 'Emergency access', 'break-glass form shown');
  await page.getByLabel('Emergency code').fill('WRONG-WRONG-WRONG-WRONG-WRONG-WRONG-WRONG-WRONG');
  await page.getByLabel('Your full name').fill('Dr. Ada Example');
  await page.getByLabel('Reason').fill('Cardiac arrest in bay 4, badge reader down');
  await submit(page, 'Start emergency access');
  await page.screenshot({ path: join(OUT, 'bg-2-wrong.png'), fullPage: true });
  check((await page.locator('#status').innerText()).includes('not valid'), 'a wrong code is refused with a clear message');
  await page.getByLabel('Emergency code').fill(CODE.toLowerCase());
  await page.getByLabel('Your full name').fill('Dr. Ada Example');
  await page.getByLabel('Reason').fill('Cardiac arrest in bay 4, badge reader down');
  await submit(page, 'Start emergency access');
  await page.screenshot({ path: join(OUT, 'bg-3-in.png'), fullPage: true });
  check(page.url() === `${EHR}/` && (await page.locator('body').innerText()).includes('signed in as breakglass:'), 'the sealed code opens an emergency session on the app');
  const admin = await page.goto(`${EHR}/admin/`);
  await page.screenshot({ path: join(OUT, 'bg-4-admin-refused.png'), fullPage: true });
  check(admin.status() === 403, 'a route without `breakglass: allow` is refused');
  await page.goto(`${EHR}/echo/who`);
  console.log(`ECHO ${await page.locator('body').innerText()}`);
  // The same code again: single use.
  await page.goto(`${EHR}/.aalgate/breakglass`);
  await page.getByLabel('Emergency code').fill(CODE);
  await page.getByLabel('Your full name').fill('Someone Else');
  await page.getByLabel('Reason').fill('test');
  await submit(page, 'Start emergency access');
  check((await page.locator('#status').innerText()).includes('not valid'), 'the code works once');
  console.log('all break-glass browser steps passed');
} finally {
  await ctx.close();
  rmSync(profile, { recursive: true, force: true });
}
