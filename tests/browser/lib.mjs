// Helpers shared by the browser scenarios: screenshots, checks, invites, virtual authenticators.

import { execFileSync } from 'node:child_process';
import { mkdtempSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

export const { AALGATE_BIN, AALGATE_CONFIG, PORT, OUT, CHROMIUM } = process.env;
export const AUTH = `http://localhost:${PORT}`;
mkdirSync(OUT, { recursive: true });

let shot = 0;
export async function snap(page, name) {
  shot += 1;
  await page.screenshot({ path: join(OUT, `${String(shot).padStart(2, '0')}-${name}.png`), fullPage: true });
}
export function check(cond, what) {
  if (!cond) throw new Error(`expectation failed: ${what}`);
  console.log(`ok - ${what}`);
}
export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
export function invite(user, aal) {
  const out = execFileSync(AALGATE_BIN, ['users', '--config', AALGATE_CONFIG, 'invite', user, '--display-name', user.toUpperCase(), '--aal', String(aal), '--ttl', '1h'], { encoding: 'utf8' });
  const url = out.trim().split('\n').pop();
  check(url.startsWith(`${AUTH}/.aalgate/enroll?invite=`), `invite URL for ${user} printed`);
  return url;
}
// A virtual authenticator on `page` (a new tab when none is given).
export async function withAuthenticator(ctx, options, page) {
  page = page || await ctx.newPage();
  const cdp = await ctx.newCDPSession(page);
  await cdp.send('WebAuthn.enable', { enableUI: false });
  const { authenticatorId } = await cdp.send('WebAuthn.addVirtualAuthenticator', {
    options: { protocol: 'ctap2', automaticPresenceSimulation: true, ...options },
  });
  return { page, cdp, authenticatorId };
}
export const SECURITY_KEY = { transport: 'usb', hasResidentKey: false, hasUserVerification: true, isUserVerified: true };
export async function signCount(a) {
  const { credentials } = await a.cdp.send('WebAuthn.getCredentials', { authenticatorId: a.authenticatorId });
  return credentials.reduce((n, c) => n + c.signCount, 0);
}
export async function text(page) {
  return page.locator('body').innerText();
}
export async function click(page, name) {
  // WebAuthn needs the focused tab: each tab comes to the front before it acts.
  await page.bringToFront();
  await page.getByRole('button', { name }).click();
}
// Waits for a navigation to `pred(url)` after an action, or fails with the page's status text.
export async function landOn(page, pred, what) {
  try {
    await page.waitForURL(pred, { timeout: 15000 });
  } catch (e) {
    const s = await page.locator('#status').innerText().catch(() => '(no status)');
    const body = await page.locator('body').innerText().catch(() => '');
    throw new Error(`${what}: still on ${page.url()} with status "${s}"; the page says: ${body.slice(0, 600)}`);
  }
}
export async function launch() {
  const profile = mkdtempSync(join(tmpdir(), 'aalgate-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1024, height: 768 },
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage'],
  });
  return { ctx, profile };
}
