// Driver of benches/pageload.sh (read its header first): loads one page, cold and warm, in
// headless Chromium for each row, checks that every load really went through (the app's own
// answers, the row's protocol), and prints the medians of loadEventEnd as a markdown table.
//
// Environment: ROWS_JSON ([{key, name, url, protocol: "h2"|"http/1.1", cookie?}], the first
// two rows being "direct" and "nginx"), COLD and WARM (loads per row), CHROMIUM (the binary),
// SPKI (base64 SHA-256 of the certificate's public key, trusted), RAW (optional: a file for
// every sample, as JSON).

import { writeFileSync } from 'node:fs';
// playwright-core is the browser tests' pinned copy (npm ci --prefix tests/browser). Node looks
// for a bare `playwright-core` only in node_modules above this file, so it is imported by path
// (its package's ESM entry, what `import 'playwright-core'` gives tests/browser/lib.mjs).
import { chromium } from '../tests/browser/node_modules/playwright-core/index.mjs';

const ROWS = JSON.parse(process.env.ROWS_JSON);
const COLD = Number(process.env.COLD || 20);
const WARM = Number(process.env.WARM || 20);
const { CHROMIUM, SPKI, RAW } = process.env;
const ASSETS = 60;
if (!(COLD >= 1 && WARM >= 1)) {
  console.error('pageload: COLD and WARM must be at least 1');
  process.exit(1);
}
const COOKIE = '__Host-aalgate';

function fail(what) {
  console.error(`pageload: ${what}`);
  process.exit(1);
}

const browser = await chromium.launch({
  executablePath: CHROMIUM,
  headless: true,
  // Playwright gives the browser its own --user-data-dir, which the SPKI list needs to apply.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--disable-dev-shm-usage', `--ignore-certificate-errors-spki-list=${SPKI}`],
});

async function newContext(row) {
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  if (row.cookie) {
    // A __Host- cookie: Secure, Path=/, no Domain (playwright's `url` form makes it host-only).
    await ctx.addCookies([{ name: COOKIE, value: row.cookie, url: new URL('/', row.url).href, secure: true, sameSite: 'Lax' }]);
  }
  return ctx;
}

// One navigation to row.url in `page`; returns loadEventEnd (ms) after checking the load.
async function load(page, row, warm) {
  const answers = [];
  const onResponse = (r) => answers.push({ url: r.url(), status: r.status(), redirected: !!r.request().redirectedFrom() });
  page.on('response', onResponse);
  const origin = new URL(row.url).origin;
  let res;
  try {
    res = await page.goto(row.url, { waitUntil: 'load', timeout: 60000 });
  } finally {
    page.off('response', onResponse);
  }
  if (!res) fail(`${row.key}: no response for ${row.url}`);
  // loadEventEnd is set once the load event's handlers have returned.
  const m = await page.evaluate(async () => {
    let nav = performance.getEntriesByType('navigation')[0];
    while (!nav || nav.loadEventEnd === 0) {
      await new Promise((r) => setTimeout(r, 5));
      nav = performance.getEntriesByType('navigation')[0];
    }
    const res = performance.getEntriesByType('resource');
    const probes = [...document.querySelectorAll('.probe')];
    const imgs = [...document.images];
    return {
      loadEventEnd: nav.loadEventEnd,
      nav: { name: nav.name, protocol: nav.nextHopProtocol, status: nav.responseStatus, transfer: nav.transferSize,
        body: nav.encodedBodySize },
      // A new connection has its TCP connect and TLS handshake in the timing of the request that
      // opened it; a reused one none. (Not reliable for the document itself: Chromium may open
      // its connection ahead of the request, at navigation start, and report no connect time.)
      connections: res.filter((e) => e.connectEnd > e.connectStart).length,
      resources: res.map((e) => ({ name: e.name, protocol: e.nextHopProtocol, status: e.responseStatus,
        transfer: e.transferSize, body: e.encodedBodySize })),
      scripts: window.__pageloadScripts || 0,
      styled: probes.filter((p, i) => getComputedStyle(p).width === `${i + 1}px`).length,
      probes: probes.length,
      images: imgs.filter((i) => i.complete && i.naturalWidth > 0).length,
      imageCount: imgs.length,
    };
  });
  const where = `${row.key} ${warm ? 'warm' : 'cold'} load`;
  // Every answer the app's own: no redirect (a 302 to sign-in would load the sign-in page in
  // place of an asset), 200, or 304 when a warm load revalidates.
  const ok = warm ? [200, 304] : [200];
  const bad = answers.filter((a) => !a.url.startsWith(origin) || a.redirected || !ok.includes(a.status));
  if (bad.length) fail(`${where}: answers not from the app: ${JSON.stringify(bad.slice(0, 5))}`);
  if (answers.length !== ASSETS + 1) fail(`${where}: ${answers.length} answers, expected ${ASSETS + 1}: ${JSON.stringify(answers.map((a) => a.url))}`);
  if (m.nav.name !== row.url) fail(`${where}: ended on ${m.nav.name}`);
  if (m.resources.length !== ASSETS) fail(`${where}: ${m.resources.length} resources, expected ${ASSETS}: ${JSON.stringify(m.resources.map((e) => e.name))}`);
  const entries = [m.nav, ...m.resources];
  const wrong = entries.filter((e) => e.protocol !== row.protocol);
  if (wrong.length) fail(`${where}: protocol not ${row.protocol}: ${JSON.stringify(wrong.slice(0, 5))}`);
  // responseStatus is the answer as the page sees it: 200, also for a 304 revalidated from cache.
  const notOk = entries.filter((e) => e.status !== 200);
  if (notOk.length) fail(`${where}: responseStatus not 200: ${JSON.stringify(notOk.slice(0, 5))}`);
  if (m.scripts !== 20 || m.styled !== 20 || m.probes !== 20 || m.images !== 20 || m.imageCount !== 20) {
    fail(`${where}: the page is incomplete: ${m.scripts}/20 scripts ran, ${m.styled}/${m.probes} stylesheets applied, ${m.images}/${m.imageCount} images decoded`);
  }
  if (warm) {
    // Warm: every file was in the cache and revalidated over the network: a 304, headers only
    // (transferSize is then the 304's few hundred bytes, and every file is over 1,000). Playwright
    // gives the document's answer as the cached 200, each asset's as the 304.
    const fetched = entries.filter((e) => !(e.transfer > 0 && e.transfer < 1000));
    const notRevalidated = answers.filter((a) => a.status !== 304 && a.url !== row.url);
    if (fetched.length || notRevalidated.length) {
      fail(`${where}: not revalidated from a warm cache: ${JSON.stringify([...fetched, ...notRevalidated].slice(0, 5))}`);
    }
    // And the connections kept: no asset waited for a new one.
    if (m.connections) fail(`${where}: ${m.connections} new connection(s): the server closed kept ones`);
  } else if (entries.some((e) => !(e.transfer > e.body && e.body >= 1000))) {
    fail(`${where}: not fetched whole: ${JSON.stringify(entries.filter((e) => !(e.transfer > e.body && e.body >= 1000)).slice(0, 5))}`);
  }
  return m.loadEventEnd;
}

let signIn = '';
// The authenticated rows really are: without the cookie, the page and an asset are sent to sign-in.
for (const row of ROWS.filter((r) => r.cookie)) {
  // (ctx.request is Playwright's own HTTP client, outside the browser: it does not read the SPKI flag.)
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true });
  for (const path of ['index.html', 's00.css', 'i00.png']) {
    const url = new URL(path, row.url).href;
    const r = await ctx.request.get(url, { maxRedirects: 0 });
    const to = r.headers().location || '';
    if (![302, 303].includes(r.status()) || !to.includes('/.aalgate/')) {
      fail(`${row.key}: ${url} without a session answered ${r.status()} (Location: ${to}), expected a redirect to sign-in`);
    }
    signIn = `${r.status()} to ${to.replace(/\?.*/, '?…')}`;
  }
  await ctx.close();
}

const samples = Object.fromEntries(ROWS.map((r) => [r.key, { cold: [], warm: [] }]));
// Cold: a new context per load (empty cache, no connections), rows in turn.
for (let i = 0; i < COLD; i++) {
  for (const row of ROWS) {
    const ctx = await newContext(row);
    const page = await ctx.newPage();
    samples[row.key].cold.push(await load(page, row, false));
    await ctx.close();
  }
}
// Warm: one context and tab per row, loaded once (not measured), then loaded again and again;
// the rows take turns, each keeping its connections and cache between its loads.
const warmPages = {};
for (const row of ROWS) {
  const ctx = await newContext(row);
  warmPages[row.key] = await ctx.newPage();
  await load(warmPages[row.key], row, false);
}
for (let i = 0; i < WARM; i++) {
  for (const row of ROWS) samples[row.key].warm.push(await load(warmPages[row.key], row, true));
}
await browser.close();

if (RAW) writeFileSync(RAW, JSON.stringify({ rows: ROWS.map(({ cookie, ...r }) => r), samples }, null, 1));

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const n = s.length;
  return n % 2 ? s[(n - 1) / 2] : (s[n / 2 - 1] + s[n / 2]) / 2;
};
const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  const pos = (s.length - 1) * q;
  const lo = Math.floor(pos);
  return s[lo] + (s[Math.ceil(pos)] - s[lo]) * (pos - lo);
};
const med = Object.fromEntries(ROWS.map((r) => [r.key, { cold: median(samples[r.key].cold), warm: median(samples[r.key].warm) }]));
const ref = med.nginx;
const f0 = (x) => x.toFixed(0);
const f1 = (x) => x.toFixed(1);
const f2 = (x) => x.toFixed(2);
const spread = (xs) => `${f1(quantile(xs, 0.25))}–${f1(quantile(xs, 0.75))}`;
console.log();
console.log(`Checked on every load: 61 answers from the app, none redirected (200, or 304 for each asset when warm),`
  + ' 20/20 scripts run, stylesheets applied and images decoded, nextHopProtocol as in the table; warm loads'
  + ` revalidated every file over kept connections. Without the cookie, aalgate answers the page and its assets ${signIn}.`);
console.log();
console.log(`Median loadEventEnd over ${COLD} cold and ${WARM} warm loads per row (1 HTML + ${ASSETS} assets; warm: every file revalidated, 304).`);
console.log();
console.log('| row | protocol | median cold ms | cold p25–p75 | median warm ms | warm p25–p75 | cold × nginx | warm × nginx |');
console.log('|---|---|---|---|---|---|---|---|');
for (const row of ROWS) {
  const s = samples[row.key];
  const m = med[row.key];
  console.log(`| ${row.name} | ${row.protocol} | ${f1(m.cold)} | ${spread(s.cold)} | ${f1(m.warm)} | ${spread(s.warm)} | ${f2(m.cold / ref.cold)} | ${f2(m.warm / ref.warm)} |`);
}
const h2 = med['aalgate-h2'];
const met = (x) => (x <= 1.1 ? 'met' : 'missed');
const pct = (x) => `${x >= 1 ? '+' : ''}${f0((x - 1) * 100)}%`;
console.log();
console.log(`aalgate h2 within 10% of nginx h2: cold ${met(h2.cold / ref.cold)} (${pct(h2.cold / ref.cold)}), warm ${met(h2.warm / ref.warm)} (${pct(h2.warm / ref.warm)}); overall ${met(Math.max(h2.cold / ref.cold, h2.warm / ref.warm))}`);
