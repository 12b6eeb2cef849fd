import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createLogger, type Logger } from '../core/log.js';
import { createOperatorToken } from '../core/registry/index.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';
import type { HttpResult } from './support/http.js';
import { scrapedValue } from './support/prometheus.js';

/**
 * Rate limits per address and per credential, and backoff after failed authentication, all answered
 * 429 problem+json with Retry-After. Every fleet here runs on one clock that stands still unless a
 * test steps it, so no test waits for a limit to lift and none depends on how fast requests run.
 */
let offset = 0;
const base = Date.now();
const clock = () => new Date(base + offset);
const step = (seconds: number) => (offset += seconds * 1000);

/** A real pino logger whose JSON lines are kept, to check what was said and that no secret was. */
function capturingLogger(): { log: Logger; lines: () => Record<string, any>[]; raw: string[] } {
  const raw: string[] = [];
  const log = createLogger('info', { write: (line: string) => void raw.push(line) });
  return { log, raw, lines: () => raw.map((line) => JSON.parse(line)) };
}

function assertThrottled(res: HttpResult, code: string, retryAfter?: number): void {
  assert.equal(res.status, 429, res.text);
  assert.equal(res.headers['content-type'], 'application/problem+json');
  assert.equal(res.json.code, code);
  assert.equal(res.json.type, `urn:fleet-auth:problem:${code}`);
  const header = Number(res.headers['retry-after']);
  assert.ok(Number.isInteger(header) && header >= 1, `Retry-After: ${res.headers['retry-after']}`);
  if (retryAfter !== undefined) assert.equal(header, retryAfter);
  assert.equal(res.json.retryAfter, header);
}

const metric = (t: TestFleet, name: string, labels: Record<string, string>) => scrapedValue(t.fleet.metricsPort, name, labels);

const basic = (user: string, password: string) => `Basic ${Buffer.from(`${user}:${password}`).toString('base64')}`;
const unknownOperatorToken = () => `fleet_op_${randomBytes(32).toString('base64url')}`;

describe('per address', () => {
  let t: TestFleet;
  before(async () => {
    t = await startTestFleet({ clock, env: { FLEET_API_RATE: '1', FLEET_API_BURST: '5' } });
  });
  after(() => t?.close());

  test('past its burst an address gets 429 with Retry-After, on any route, until its allowance refills', async () => {
    for (let i = 0; i < 5; i++) assert.equal((await t.api('GET', '/pki/ca.pem')).status, 200);
    assertThrottled(await t.api('GET', '/healthz'), 'rate_limited', 1);
    assertThrottled(await t.api('POST', '/v1/devices', { token: t.adminToken, json: { id: 'addr-1' } }), 'rate_limited', 1);
    assert.ok((await metric(t, 'fleet_api_throttled_total', { limit: 'address' })) >= 2);
    step(1);
    assert.equal((await t.api('GET', '/healthz')).status, 200, 'one more a second');
    assertThrottled(await t.api('GET', '/healthz'), 'rate_limited');
    step(5);
    for (let i = 0; i < 5; i++) assert.equal((await t.api('GET', '/healthz')).status, 200, 'the burst is back after a quiet spell');
  });
});

describe('per credential', () => {
  let t: TestFleet;
  before(async () => {
    t = await startTestFleet({ clock, env: { FLEET_API_CREDENTIAL_RATE: '1', FLEET_API_CREDENTIAL_BURST: '3' } });
  });
  after(() => t?.close());

  test('one operator token used too often is slowed; another token from the same address is not', async () => {
    const busy = await createOperatorToken(t.fleet.db.pool, { name: 'busy', role: 'viewer', actor: 'test', now: new Date() });
    const calm = await createOperatorToken(t.fleet.db.pool, { name: 'calm', role: 'viewer', actor: 'test', now: new Date() });
    for (let i = 0; i < 3; i++) assert.equal((await t.api('GET', '/v1/devices/none', { token: busy.token })).status, 404);
    assertThrottled(await t.api('GET', '/v1/devices/none', { token: busy.token }), 'rate_limited', 1);
    assert.equal((await t.api('GET', '/v1/devices/none', { token: calm.token })).status, 404);
    step(1);
    assert.equal((await t.api('GET', '/v1/devices/none', { token: busy.token })).status, 404);
  });

  test('one enrollment token tried too often is slowed, before it is looked up', async () => {
    step(3); // the admin token registering them has its own allowance
    const token = await t.register('cred-enroll');
    const other = await t.register('cred-enroll-2');
    for (let i = 0; i < 3; i++) assert.equal((await t.api('POST', '/v1/enrollments', { json: { token, csr: 'garbage' } })).status, 400);
    assertThrottled(await t.api('POST', '/v1/enrollments', { json: { token, csr: 'garbage' } }), 'rate_limited');
    assert.equal((await t.api('POST', '/v1/enrollments', { json: { token: other, csr: 'garbage' } })).status, 400, 'another token is not slowed');
    const batch = await t.api('POST', '/v1/enrollments/batch', { json: { enrollments: [{ token, csr: 'garbage' }] } });
    assert.equal(batch.json.results[0].status, 429, 'in a batch too');
    step(2);
  });

  test('one device id guessed at over EST with ever new passwords is slowed', async () => {
    step(3);
    await t.register('cred-est');
    const attempt = () =>
      t.api('POST', '/.well-known/est/simpleenroll', {
        body: 'x',
        headers: { 'content-type': 'application/pkcs10', authorization: basic('cred-est', `fleet_enroll_${randomBytes(8).toString('hex')}`) },
      });
    for (let i = 0; i < 3; i++) assert.equal((await attempt()).status, 401);
    assertThrottled(await attempt(), 'rate_limited');
    assert.ok((await metric(t, 'fleet_api_throttled_total', { limit: 'credential' })) >= 3);
  });
});

describe('backoff after failed authentication', () => {
  let t: TestFleet;
  const captured = capturingLogger();
  const wrongTokens = Array.from({ length: 8 }, unknownOperatorToken);
  before(async () => {
    t = await startTestFleet({ clock, log: captured.log, env: { FLEET_API_AUTH_FAILURES: '3', FLEET_API_AUTH_BACKOFF_MAX: '1m' } });
  });
  after(() => t?.close());

  test('after the free failures an address waits 1 s, then 2 s, …, even with a good token; public routes stay open', async () => {
    const guess = (i: number) => t.api('GET', '/v1/devices/x', { token: wrongTokens[i] });
    for (let i = 0; i < 3; i++) assert.equal((await guess(i)).status, 401, 'free failures');
    assert.equal((await guess(3)).status, 401, 'the fourth failure is answered, and locks the address');
    assertThrottled(await t.api('GET', '/v1/devices/x', { token: t.adminToken }), 'too_many_failed_attempts', 1);
    assertThrottled(await t.api('POST', '/v1/enrollments', { json: { token: 'fleet_enroll_x', csr: 'x' } }), 'too_many_failed_attempts', 1);
    assert.equal((await t.api('GET', '/pki/ca.pem')).status, 200, 'CA certificates, CRLs and OCSP are not credentialed');

    step(1);
    assert.equal((await guess(4)).status, 401);
    assertThrottled(await guess(5), 'too_many_failed_attempts', 2);
    step(2);
    assert.equal((await t.api('GET', '/v1/devices/x', { token: t.adminToken })).status, 404, 'a good token works once the wait is over');
    assert.equal((await guess(6)).status, 401);
    assertThrottled(await t.api('GET', '/v1/devices/x', { token: t.adminToken }), 'too_many_failed_attempts', 4);

    step(60);
    assert.equal((await guess(7)).status, 401, 'after a quiet spell as long as the longest wait, failures start over');
    assert.equal((await t.api('GET', '/v1/devices/x', { token: t.adminToken })).status, 404);
    assert.ok((await metric(t, 'fleet_api_throttled_total', { limit: 'backoff' })) >= 4);
  });

  test('each failed attempt is logged with address and reason, never the secret, and counted', async () => {
    const failures = captured.lines().filter((l) => l.msg === 'authentication failed');
    assert.equal(failures.length, 7, 'the seven wrong tokens answered 401 (a throttled request is not an attempt)');
    for (const line of failures) {
      assert.equal(line.level, 40);
      assert.match(line.address, /^(::ffff:)?127\.0\.0\.1$/);
      assert.equal(line.reason, 'operator_token_unknown');
      assert.equal(line.path, '/v1/devices/x');
    }
    const revoked = await createOperatorToken(t.fleet.db.pool, { name: 'gone', role: 'viewer', actor: 'test', now: new Date() });
    await t.api('DELETE', `/v1/tokens/${revoked.id}`, { token: t.adminToken });
    step(120);
    assert.equal((await t.api('GET', '/v1/devices/x', { token: revoked.token })).status, 401);
    assert.equal(captured.lines().at(-1)?.reason, 'operator_token_revoked');
    assert.equal((await t.api('GET', '/v1/devices/x')).status, 401);
    assert.equal(captured.lines().at(-1)?.reason, 'operator_token_missing');

    for (const line of captured.raw) {
      for (const secret of [...wrongTokens, t.adminToken, revoked.token]) assert.ok(!line.includes(secret), `a log line carries a token: ${line}`);
      assert.doesNotMatch(line, /fleet_op_|fleet_enroll_/);
    }
    assert.equal(await metric(t, 'fleet_api_auth_failures_total', { reason: 'operator_token_unknown' }), 7);
    assert.equal(await metric(t, 'fleet_api_auth_failures_total', { reason: 'operator_token_revoked' }), 1);
  });
});
