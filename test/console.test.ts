import assert from 'node:assert/strict';
import { mkdir } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { type Browser, type BrowserContext, chromium, type Page } from 'playwright-core';
import { projectRoot } from '../core/paths.js';
import { createOperatorToken, type OperatorRole } from '../core/registry/index.js';
import { startTestFleet, type EnrolledDevice, type TestFleet } from './support/fleet.js';
import { closed, connectDevice } from './support/mqtt.js';
import { eventually } from './support/wait.js';

/**
 * The ops console end to end, in Debian's headless Chromium driven by playwright-core: an operator
 * logs in with a token, finds a device, revokes it with a reason and a confirmation, and sees the
 * device's live MQTT session cut. Every page is photographed at desktop and phone width into
 * test-artifacts/console/, to be looked at.
 *
 * To extend: add a page to PAGES (it is then photographed at both widths); add a journey as a
 * test that opens `consoleAs(role)` and drives it with the page's visible labels, as an operator would.
 */
const ARTIFACTS = path.join(projectRoot, 'test-artifacts', 'console');
const VIEWPORTS = { desktop: { width: 1280, height: 800 }, phone: { width: 390, height: 844 } };
type Viewport = keyof typeof VIEWPORTS;

let t: TestFleet;
let browser: Browser;
const tokens: Partial<Record<OperatorRole, string>> = {};

before(async () => {
  await mkdir(ARTIFACTS, { recursive: true });
  t = await startTestFleet();
  for (const role of ['operator', 'viewer'] as const) {
    tokens[role] = (await createOperatorToken(t.fleet.db.pool, { name: `console ${role}`, role, actor: 'test', now: new Date() })).token;
  }
  tokens.admin = t.adminToken;
  browser = await chromium.launch({
    executablePath: '/usr/bin/chromium',
    args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});
after(async () => {
  await browser?.close();
  await t?.close();
});

interface Console {
  page: Page;
  context: BrowserContext;
  /** Script errors and console errors (a CSP violation is one) the page produced. */
  errors: string[];
  shot(name: string): Promise<void>;
}

/** A fresh browser profile at the console's address; the fleet's certificate is not in its trust store, hence ignoreHTTPSErrors. */
async function openConsole(viewport: Viewport = 'desktop'): Promise<Console> {
  const context = await browser.newContext({ ignoreHTTPSErrors: true, viewport: VIEWPORTS[viewport], baseURL: t.apiUrl });
  const page = await context.newPage();
  const errors: string[] = [];
  page.on('pageerror', (error) => errors.push(error.message));
  page.on('console', (message) => {
    // Chromium logs every failed request. Expected here: the 401 of the page asking whether it has a
    // session before login. Tests that open a missing device on purpose do not check `errors`.
    if (message.type() === 'error' && !/status of 401\b/.test(message.text())) errors.push(message.text());
  });
  await page.goto('/');
  return {
    page,
    context,
    errors,
    shot: (name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}-${viewport}.png`), fullPage: true }).then(() => undefined),
  };
}

async function logIn(c: Console, token: string): Promise<void> {
  await c.page.getByLabel('Operator token').fill(token);
  await c.page.getByRole('button', { name: 'Log in' }).click();
  await c.page.getByRole('button', { name: 'Log out' }).waitFor();
}

async function consoleAs(role: OperatorRole, viewport: Viewport = 'desktop'): Promise<Console> {
  const c = await openConsole(viewport);
  await logIn(c, tokens[role]!);
  return c;
}

/** A device enrolled now, and its page open in the console as `role`. */
async function onDevicePage(id: string, role: OperatorRole = 'operator'): Promise<Console> {
  await t.enroll(id);
  const c = await consoleAs(role);
  await c.page.goto(`/console#/devices/${encodeURIComponent(id)}`);
  await heading(c).filter({ hasText: id }).waitFor();
  return c;
}

const deviceRow = (c: Console, id: string) => c.page.getByRole('link', { name: id, exact: true });
const heading = (c: Console) => c.page.getByRole('heading', { level: 1 });

async function connectOverMqtt(id: string, device: EnrolledDevice) {
  const session = await connectDevice(t.fleet.broker.port, id, { ca: t.rootPem, cert: device.certificatePem, key: device.identity.keyPem });
  assert.equal(session.outcome, 'connected', `${id} connects`);
  await eventually(async () => (await t.api('GET', `/v1/devices/${id}`, { token: t.adminToken })).json.connected === true, `${id} shown connected`);
  return session.client;
}

describe('an operator in the console', () => {
  test('logs in, finds a device by search, revokes it with a reason and a confirmation, and its MQTT session is cut', async () => {
    const id = 'line3-sensor-0042';
    const client = await connectOverMqtt(id, await t.enroll(id));

    const c = await openConsole();
    assert.match(c.page.url(), /\/console$/, 'the root redirects to the console');
    await heading(c).filter({ hasText: 'fleet-auth console' }).waitFor();
    await c.shot('login');
    await logIn(c, tokens.operator!);
    assert.ok(!(await c.page.content()).includes(tokens.operator!), 'the token is not kept in the page');
    assert.equal(await c.page.evaluate(() => document.cookie), '', 'no cookie a script can read');
    const [cookie] = await c.context.cookies();
    assert.deepEqual([cookie?.name, cookie?.httpOnly, cookie?.secure, cookie?.sameSite], ['__Host-fleet_session', true, true, 'Strict'], 'as the browser keeps it');

    await c.page.getByRole('link', { name: 'Devices' }).click();
    await c.page.getByRole('searchbox', { name: 'Search' }).fill(id);
    await c.page.getByRole('button', { name: 'Search' }).click();
    await deviceRow(c, id).click();
    await heading(c).filter({ hasText: id }).waitFor();
    await c.page.getByText('online', { exact: true }).first().waitFor();
    await c.shot('device');

    await c.page.getByRole('button', { name: 'Revoke…' }).click();
    const dialog = c.page.getByRole('dialog', { name: `Revoke ${id}?` });
    await dialog.getByLabel('Reason').selectOption('keyCompromise');
    await c.shot('revoke-confirm');
    await dialog.getByRole('button', { name: 'Revoke device' }).click();

    await closed(client);
    await c.page.getByText(/^Revoked\. 1 certificate\(s\) revoked/).waitFor();
    const state = c.page.locator('.device-state');
    await state.getByText('revoked', { exact: true }).waitFor();
    // The broker records the disconnect a moment later; the page follows the event stream (GET
    // /v1/events) and shows it without a reload.
    await state.getByText('offline', { exact: true }).waitFor({ timeout: 30_000 });
    assert.equal(await c.page.getByRole('button', { name: 'Revoke…' }).count(), 0, 'no more actions on a revoked device');
    const api = await t.api('GET', `/v1/devices/${id}`, { token: t.adminToken });
    assert.equal(api.json.status, 'revoked');
    assert.equal(api.json.certificates[0].revocationReason, 1, 'revoked for the reason chosen (keyCompromise)');
    await c.shot('device-revoked');
    assert.deepEqual(c.errors, []);
    await c.context.close();
  });

  test('the confirmation is reachable by keyboard: Escape cancels, and it refuses to revoke without a reason', async () => {
    const id = 'keyboard-target';
    const c = await onDevicePage(id);
    const revoke = c.page.getByRole('button', { name: 'Revoke…' });
    await revoke.focus();
    await c.page.keyboard.press('Enter');
    const dialog = c.page.getByRole('dialog', { name: `Revoke ${id}?` });
    await dialog.waitFor();
    assert.equal(await dialog.getByLabel('Reason').evaluate((el) => el === document.activeElement), true, 'focus moves into the dialog');
    await c.page.keyboard.press('Escape');
    await dialog.waitFor({ state: 'hidden' });

    await revoke.focus();
    await c.page.keyboard.press('Enter');
    await dialog.getByRole('button', { name: 'Revoke device' }).focus();
    await c.page.keyboard.press('Enter');
    assert.ok(await dialog.isVisible(), 'without a reason the dialog stays open');
    await c.page.keyboard.press('Escape');
    assert.equal((await t.api('GET', `/v1/devices/${id}`, { token: t.adminToken })).json.status, 'active', 'nothing was revoked');
    assert.deepEqual(c.errors, []);
    await c.context.close();
  });

  test('suspends and resumes a device', async () => {
    const id = 'suspend-target';
    const c = await onDevicePage(id);
    await c.page.getByRole('button', { name: 'Suspend…' }).click();
    await c.page.getByRole('dialog').getByRole('button', { name: 'Suspend device' }).click();
    await c.page.locator('.device-state').getByText('suspended', { exact: true }).waitFor();
    await c.page.getByRole('button', { name: 'Resume' }).click();
    await c.page.locator('.device-state').getByText('active', { exact: true }).waitFor();
    assert.equal((await t.api('GET', `/v1/devices/${id}`, { token: t.adminToken })).json.status, 'active');
    await c.context.close();
  });
});

describe('role and refusals', () => {
  test('a viewer sees no action it may not take', async () => {
    const c = await onDevicePage('viewer-sees', 'viewer');
    await c.page.getByText('Your role (viewer) may read devices but not change them.').waitFor();
    assert.equal(await c.page.getByRole('button', { name: /Revoke|Suspend|Resume/ }).count(), 0);
    await c.context.close();
  });

  test('a refusal is shown as its problem, readably', async () => {
    const c = await consoleAs('operator');
    await c.page.goto('/console#/devices/no-such-device');
    const alert = c.page.getByRole('alert');
    await alert.getByText('Not Found (404)').waitFor();
    await alert.getByText('no device no-such-device is registered').waitFor();
    await c.context.close();
  });

  test('a wrong token is refused at login with the reason, and no session starts', async () => {
    const c = await openConsole();
    await c.page.getByLabel('Operator token').fill('fleet_op_not-a-real-token');
    await c.page.getByRole('button', { name: 'Log in' }).click();
    await c.page.getByRole('alert').getByText('the operator token is not known').waitFor();
    assert.equal(await c.page.getByRole('button', { name: 'Log out' }).count(), 0);
    await c.shot('login-refused');
    await c.context.close();
  });

  test('logging out ends the session: a reload asks for the token again', async () => {
    const c = await consoleAs('viewer');
    await c.page.getByRole('button', { name: 'Log out' }).click();
    await c.page.getByLabel('Operator token').waitFor();
    await c.page.reload();
    await c.page.getByLabel('Operator token').waitFor();
    await c.context.close();
  });
});

describe('attacker-controlled values', () => {
  const MARKUP = '<img src=x onerror="window.__pwned=1">';

  test('metadata, profile and a device id in the address render as text; no markup or script runs', async () => {
    const res = await t.api('POST', '/v1/devices', { token: t.adminToken, json: { id: 'markup-carrier', profile: '<b>bold</b>', metadata: { note: MARKUP, '<i>key</i>': 'v' } } });
    assert.equal(res.status, 201, res.text);
    const c = await consoleAs('operator');
    await c.page.goto('/console#/devices/markup-carrier');
    await c.page.getByText(MARKUP, { exact: true }).waitFor();
    await c.page.getByText('<b>bold</b>', { exact: true }).waitFor();
    await c.page.getByText('<i>key</i>', { exact: true }).waitFor();
    assert.equal(await c.page.locator('main img, main b, main i').count(), 0, 'no element was made from the data');

    await c.page.goto(`/console#/devices/${encodeURIComponent(MARKUP)}`);
    await heading(c).filter({ hasText: MARKUP }).waitFor();
    await c.page.getByRole('alert').waitFor();
    assert.equal(await c.page.locator('main img').count(), 0);
    assert.equal(await c.page.evaluate(() => (window as unknown as { __pwned?: number }).__pwned), undefined, 'no script ran');
    await c.context.close();
  });
});

describe('the pages at desktop and phone width', () => {
  /** Each page of the console, how to reach it and what shows it is there. Add new pages here. */
  const PAGES: { name: string; hash: string; heading: RegExp }[] = [
    { name: 'summary', hash: '#/', heading: /Fleet summary/ },
    { name: 'devices', hash: '#/devices', heading: /Devices/ },
    { name: 'device', hash: '#/devices/photo-device', heading: /photo-device/ },
    { name: 'expiry', hash: '#/expiry', heading: /Certificates expiring/ },
    { name: 'audits', hash: '#/audits', heading: /Audits/ },
    { name: 'audit-log', hash: '#/audit-log', heading: /Audit log/ },
  ];

  before(async () => {
    const res = await t.api('POST', '/v1/devices', {
      token: t.adminToken,
      json: { id: 'photo-device', profile: 'mcu-p256', metadata: { line: '3', firmware: '1.4.2', site: 'Lyon assembly hall B' } },
    });
    assert.equal(res.status, 201, res.text);
  });

  for (const viewport of Object.keys(VIEWPORTS) as Viewport[]) {
    test(`every page renders at ${viewport} width, without a script error or a page wider than the screen`, async () => {
      const c = await openConsole(viewport);
      await c.page.getByLabel('Operator token').waitFor();
      await c.shot('login');
      await logIn(c, tokens.admin!);
      for (const p of PAGES) {
        await c.page.goto(`/console${p.hash}`);
        await heading(c).filter({ hasText: p.heading }).waitFor();
        // The page's own requests have answered once nothing is "loading" in any region.
        await c.page.waitForLoadState('networkidle');
        assert.equal(await c.page.getByText(/not served by this server/i).count(), 0, `${p.name} reads a route this server serves`);
        const overflow = await c.page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
        assert.ok(overflow <= 0, `${p.name} is ${overflow}px wider than the ${viewport} screen`);
        await c.shot(p.name);
      }
      assert.deepEqual(c.errors, []);
      await c.context.close();
    });
  }
});

describe('how the console is served', () => {
  test('GET / redirects to /console', async () => {
    const res = await t.api('GET', '/');
    assert.equal(res.status, 302);
    assert.equal(res.headers.location, '/console');
  });

  test('the page and its assets carry a strict CSP, nosniff and no framing; nothing inline, nothing from elsewhere', async () => {
    const page = await t.api('GET', '/console');
    assert.equal(page.status, 200);
    assert.match(String(page.headers['content-type']), /^text\/html/);
    const csp = String(page.headers['content-security-policy']);
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self'(;|$)/);
    assert.match(csp, /style-src 'self'(;|$)/);
    assert.match(csp, /frame-ancestors 'none'/);
    assert.doesNotMatch(csp, /unsafe-inline|unsafe-eval/);
    assert.equal(page.headers['x-content-type-options'], 'nosniff');
    assert.doesNotMatch(page.text, /<script(?![^>]*\bsrc=)[^>]*>/, 'no inline script');
    assert.doesNotMatch(page.text, /\sstyle=|<style/, 'no inline style');
    assert.doesNotMatch(page.text, /https?:\/\//, 'nothing from another server');
    for (const asset of ['app.js', 'style.css']) {
      const res = await t.api('GET', `/console/assets/${asset}`);
      assert.equal(res.status, 200, asset);
      assert.equal(res.headers['x-content-type-options'], 'nosniff');
      assert.equal(res.headers['cache-control'], 'no-cache');
      const again = await t.api('GET', `/console/assets/${asset}`, { headers: { 'if-none-match': String(res.headers.etag) } });
      assert.equal(again.status, 304, `${asset} revalidates`);
    }
  });

  test('serves only its own files', async () => {
    for (const p of ['/console/assets/../../package.json', '/console/assets/..%2F..%2Fpackage.json', '/console/assets/index.html', '/console/assets/nope.js', '/console/assets/console.ts']) {
      const res = await t.api('GET', p);
      assert.equal(res.status, 404, p);
      assert.equal(res.headers['content-type'], 'application/problem+json', p);
    }
  });

  test('the console routes are in the OpenAPI document, tagged', async () => {
    const doc = (await t.api('GET', '/openapi.json')).json;
    for (const [p, method] of [['/console/login', 'post'], ['/console/logout', 'post'], ['/v1/session', 'get'], ['/console', 'get'], ['/', 'get']] as const) {
      assert.deepEqual(doc.paths[p]?.[method]?.tags, ['console'], `${method} ${p}`);
    }
  });
});
