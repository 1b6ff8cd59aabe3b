// Drives sovmeshd's Settings -> Network page in Debian's chromium with
// playwright-core; run by tests/integration/test_network_page.py, which
// passes one JSON argument:
//   {url, artifacts, peers: [names], joinCode, joinAddr, joinName, removePeer,
//    keepPeer, foreignUrl, expectBudget: true|false, flOffUrl?}
// Prints one JSON object of findings on stdout; exits non-zero on the
// first failed check, naming it.
import { chromium } from 'playwright-core';
import fs from 'node:fs';
import path from 'node:path';

const cfg = JSON.parse(process.argv[2]);
const out = {};
const T = 150000; // generous: slow busy CI machines (chromium under load)

function check(cond, what) {
  if (!cond) throw new Error('check failed: ' + what);
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
  args: ['--no-sandbox', '--disable-gpu', '--disable-background-networking',
    '--disable-component-update', '--disable-sync', '--no-first-run'],
});
const consoleErrors = [];
try {
  fs.mkdirSync(cfg.artifacts, { recursive: true });
  const shot = (name) => path.join(cfg.artifacts, name);

  // --- desktop, with the key ---
  const ctx = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push(m.text()); });
  page.on('pageerror', (e) => consoleErrors.push(String(e)));
  page.setDefaultTimeout(T);
  await page.goto(cfg.url);
  await page.waitForSelector('body[data-loaded="1"]');
  out.hashAfterLoad = await page.evaluate(() => location.hash);
  check(out.hashAfterLoad === '', 'the key is wiped from the address bar');
  out.readonlyHidden = await page.locator('#readonly').isHidden();
  check(out.readonlyHidden, 'with the key, the read-only notice is hidden');
  out.nodeName = await page.locator('#node-name').textContent();
  out.nodeFp = await page.locator('#node-fp').textContent();

  // Both paired peers, connected.
  for (const name of cfg.peers) {
    const card = page.locator(`#peers li[data-peer="${name}"]`);
    await card.locator('.peer-state', { hasText: '🟢 Connected' }).waitFor();
  }
  out.peerCards = await page.locator('#peers li').evaluateAll((els) =>
    els.map((e) => ({ name: e.dataset.peer, text: e.innerText })));

  // Budget and statistics.
  await page.locator(cfg.expectBudget ? '#budget .bar' : '#budget-off').waitFor();
  out.budgetText = await page.locator('#budget').innerText();
  out.stats = await page.locator('#stats [data-stat]').evaluateAll((els) =>
    Object.fromEntries(els.map((e) => [e.dataset.stat, e.querySelector('dd').textContent])));
  await page.screenshot({ path: shot('desktop.png'), fullPage: true });

  // Generate a pairing code: a code and a countdown.
  await page.getByRole('button', { name: 'Generate Pairing Code' }).click();
  await page.locator('#offer').waitFor({ state: 'visible' });
  out.code = (await page.locator('#code').textContent()).trim();
  out.countdown = (await page.locator('#countdown').textContent()).trim();
  check(out.code.length >= 6, 'a pairing code is shown: ' + out.code);
  check(/^\d+:\d\d$/.test(out.countdown), 'a countdown m:ss is shown: ' + out.countdown);

  // Show the QR code (an SVG) and screenshot it for `sovmesh pair scan`.
  await page.getByRole('button', { name: 'Show QR Code' }).click();
  const qr = page.locator('#qr-img');
  await qr.waitFor({ state: 'visible' });
  await page.waitForFunction(() => {
    const i = document.getElementById('qr-img');
    return i.complete && i.naturalWidth > 0;
  });
  out.qrSrcPrefix = (await qr.getAttribute('src')).slice(0, 26);
  check(out.qrSrcPrefix.startsWith('data:image/svg+xml'), 'the QR code is an SVG');
  await qr.screenshot({ path: shot('qr.png') });

  // Add Peer by the code another node issued.
  await page.getByLabel('Pairing code from the other device').fill(cfg.joinCode);
  await page.getByLabel('Address (host:port, optional)').fill(cfg.joinAddr);
  await page.getByRole('button', { name: 'Add Peer' }).click();
  await page.locator('#status', { hasText: 'Paired with' }).waitFor();
  out.joinStatus = await page.locator('#status').textContent();
  await page.locator(`#peers li[data-peer="${cfg.joinName}"]`).waitFor();

  // Remove a peer: Escape cancels; then confirm with the keyboard.
  const victim = page.locator(`#peers li[data-peer="${cfg.removePeer}"]`);
  await victim.getByRole('button', { name: 'Remove peer ' + cfg.removePeer }).click();
  const dlg = page.locator('dialog#confirm');
  await dlg.waitFor({ state: 'visible' });
  out.dialogFocus = await page.evaluate(() => document.activeElement.id);
  check(out.dialogFocus === 'confirm-cancel', 'the dialog focuses Cancel first');
  await page.keyboard.press('Escape');
  await dlg.waitFor({ state: 'hidden' });
  check(await victim.count() === 1, 'Escape keeps the peer');
  await victim.getByRole('button', { name: 'Remove peer ' + cfg.removePeer }).click();
  await dlg.waitFor({ state: 'visible' });
  await page.keyboard.press('Tab'); // Cancel -> Remove
  out.dialogFocus2 = await page.evaluate(() => document.activeElement.id);
  check(out.dialogFocus2 === 'confirm-ok', 'Tab reaches Remove');
  await page.keyboard.press('Enter');
  await victim.waitFor({ state: 'detached' });
  await page.locator('#status', { hasText: 'Removed' }).waitFor();
  out.peersAfter = await page.locator('#peers li').evaluateAll((els) =>
    els.map((e) => e.dataset.peer));
  await page.screenshot({ path: shot('desktop-after.png'), fullPage: true });
  out.ariaLive = await page.locator('#status').getAttribute('aria-live');
  await ctx.close();

  // --- phone width, without the key: read-only, no horizontal scroll ---
  const phone = await browser.newContext({
    viewport: { width: 390, height: 844 }, deviceScaleFactor: 2, isMobile: true, hasTouch: true,
  });
  const pp = await phone.newPage();
  pp.setDefaultTimeout(T);
  await pp.goto(cfg.url.split('#')[0]);
  await pp.waitForSelector('body[data-loaded="1"]');
  await pp.locator(`#peers li[data-peer="${cfg.keepPeer}"]`).waitFor();
  out.phoneReadonly = await pp.locator('#readonly').isVisible();
  out.phoneGenDisabled = await pp.locator('#gen-code').isDisabled();
  out.phoneWidths = await pp.evaluate(() => ({
    scroll: document.documentElement.scrollWidth, client: document.documentElement.clientWidth,
  }));
  check(out.phoneWidths.scroll <= out.phoneWidths.client, 'no horizontal scroll at 390 px');
  await pp.screenshot({ path: shot('phone.png'), fullPage: true });
  if (cfg.flOffUrl) {
    // A node with federated learning off says so instead of a budget bar.
    await pp.goto(cfg.flOffUrl);
    await pp.waitForSelector('body[data-loaded="1"]');
    out.flOffText = await pp.locator('#budget-off').textContent();
  }
  await phone.close();

  // --- another origin's page must not read or change anything ---
  const fctx = await browser.newContext();
  const fp = await fctx.newPage();
  fp.setDefaultTimeout(T);
  await fp.goto(cfg.foreignUrl);
  await fp.waitForFunction(() => window.__done === true);
  out.foreign = await fp.evaluate(() => window.__result);
  await fctx.close();
} catch (e) {
  out.error = String(e && e.stack || e);
} finally {
  out.consoleErrors = consoleErrors;
  await browser.close();
}
process.stdout.write(JSON.stringify(out) + '\n');
process.exit(out.error ? 1 : 0);
