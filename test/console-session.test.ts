import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createOperatorToken, type OperatorRole } from '../core/registry/index.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';
import type { HttpResult } from './support/http.js';
import { capturingLogger } from './support/log.js';
import { manualTime, type ManualTime } from './support/time.js';

/**
 * The console's session, tried as an attacker would with plain HTTPS requests: a wrong or revoked
 * token, a cookie sent by another site's page (no CSRF token, a wrong one, a foreign Origin), a
 * session outliving its token, its idle limit or its lifetime, a viewer acting. Time is the test's
 * own, so expiry is stepped to, never waited for.
 */
const COOKIE = '__Host-fleet_session';
const MINUTE = 60_000;

let t: TestFleet;
let time: ManualTime;
const logs = capturingLogger();
/** Every secret the test saw, to prove none of them reached a log line. */
const secrets: string[] = [];

before(async () => {
  time = manualTime();
  t = await startTestFleet({ time, log: logs.log });
  secrets.push(t.adminToken);
});
after(() => t?.close());

async function tokenFor(role: OperatorRole, ttlMs?: number) {
  const created = await createOperatorToken(t.fleet.db.pool, { name: `console-${role}`, role, actor: 'test', now: time.clock(), ttlMs });
  secrets.push(created.token);
  return created;
}

const origin = () => new URL(t.apiUrl).origin;

interface Session {
  id: string;
  csrf: string;
  setCookie: string;
}

async function login(token: string, headers: Record<string, string> = {}): Promise<HttpResult> {
  return t.api('POST', '/console/login', { json: { token }, headers: { origin: origin(), ...headers } });
}

async function openSession(token: string): Promise<Session> {
  const res = await login(token);
  assert.equal(res.status, 204, res.text);
  const setCookie = [res.headers['set-cookie'] ?? []].flat().find((c) => c.startsWith(`${COOKIE}=`));
  assert.ok(setCookie, 'the login sets the session cookie');
  const id = setCookie.slice(COOKIE.length + 1).split(';')[0]!;
  secrets.push(id);
  const session = await t.api('GET', '/v1/session', { headers: { cookie: `${COOKIE}=${id}` } });
  assert.equal(session.status, 200, session.text);
  return { id, csrf: session.json.csrfToken, setCookie };
}

/** A request carrying the session cookie, as a browser sends it; `csrf` and `origin` only when given. */
function withCookie(s: Session, method: string, path: string, o: { csrf?: string; origin?: string; json?: unknown } = {}) {
  const headers: Record<string, string> = { cookie: `${COOKIE}=${s.id}` };
  if (o.csrf !== undefined) headers['x-csrf-token'] = o.csrf;
  if (o.origin !== undefined) headers.origin = o.origin;
  return t.api(method, path, { headers, json: o.json });
}

function assertProblem(res: HttpResult, status: number, code: string): void {
  assert.equal(res.status, status, res.text);
  assert.equal(res.headers['content-type'], 'application/problem+json');
  assert.equal(res.json.code, code, res.text);
}

const deviceStatus = async (id: string) => (await t.api('GET', `/v1/devices/${id}`, { token: t.adminToken })).json.status;

describe('login', () => {
  test('an operator token opens a session: an HttpOnly, Secure, SameSite=Strict __Host- cookie, and nothing of the token in the answer', async () => {
    const { token } = await tokenFor('operator');
    const res = await login(token);
    assert.equal(res.status, 204, res.text);
    assert.equal(res.text, '');
    const cookie = [res.headers['set-cookie'] ?? []].flat().find((c) => c.startsWith(`${COOKIE}=`))!;
    const attributes = cookie.split(';').slice(1).map((a) => a.trim().toLowerCase());
    for (const expected of ['path=/', 'secure', 'httponly', 'samesite=strict']) assert.ok(attributes.includes(expected), `${expected} in ${cookie}`);
    assert.ok(!attributes.some((a) => a.startsWith('domain=')), '__Host- cookies carry no Domain');
    assert.ok(!JSON.stringify(res.headers).includes(token), 'the token is not echoed');

    const id = cookie.slice(COOKIE.length + 1).split(';')[0]!;
    secrets.push(id);
    assert.ok(!id.includes(token) && id.length >= 40, 'the session id is fresh randomness, not the token');
    const session = await t.api('GET', '/v1/session', { headers: { cookie: `${COOKIE}=${id}` } });
    assert.equal(session.status, 200);
    assert.equal(session.json.operator.role, 'operator');
    assert.match(session.json.csrfToken, /^[\w-]{40,}$/);
    assert.notEqual(session.json.csrfToken, id);
    assert.equal(session.headers['cache-control'], 'no-store');
    assert.ok(!session.text.includes(token) && !session.text.includes(id), 'neither token nor session id comes back');
  });

  test('the registry keeps only a hash of the session id', async () => {
    const { token } = await tokenFor('viewer');
    const s = await openSession(token);
    const { rows } = await t.fleet.db.pool.query('SELECT * FROM operator_sessions');
    const everything = JSON.stringify(rows.map((r) => Object.values(r).map((v) => (Buffer.isBuffer(v) ? v.toString('hex') : String(v)))));
    assert.ok(!everything.includes(s.id), 'the id is not stored as it is');
    const hash = createHash('sha256').update(s.id).digest();
    assert.ok(rows.some((r) => Buffer.isBuffer(r.id_hash) && r.id_hash.equals(hash)), 'its SHA-256 is');
  });

  test('a wrong, unknown, revoked or expired token gets 401 and no cookie', async () => {
    const revoked = await tokenFor('admin');
    assert.equal((await t.api('DELETE', `/v1/tokens/${revoked.id}`, { token: t.adminToken })).status, 200);
    const expiring = await tokenFor('admin', 5 * MINUTE);
    time.advance(5 * MINUTE);
    const cases: [string, string][] = [
      ['not a token', 'operator_token_unknown'],
      [`fleet_op_${randomBytes(32).toString('base64url')}`, 'operator_token_unknown'],
      [revoked.token, 'operator_token_revoked'],
      [expiring.token, 'operator_token_expired'],
    ];
    for (const [token, why] of cases) {
      const res = await login(token);
      assertProblem(res, 401, 'unauthorized');
      assert.equal(res.headers['set-cookie'], undefined, why);
      assert.ok(!res.text.includes(token), 'the refusal does not repeat the token');
    }
    const reasons = logs.lines().filter((l) => l.msg === 'authentication failed' && l.path === '/console/login').map((l) => l.reason);
    assert.deepEqual(reasons.slice(-4), cases.map(([, why]) => why), 'each refusal counted against the throttle, with its reason');
  });

  test('a login sent from another site is refused, even with a good token', async () => {
    const { token } = await tokenFor('operator');
    const res = await login(token, { origin: 'https://evil.example' });
    assertProblem(res, 403, 'cross_origin_request');
    assert.equal(res.headers['set-cookie'], undefined);
  });

  test('a malformed login is 400, without echoing what was sent', async () => {
    const res = await t.api('POST', '/console/login', { json: { token: 'x'.repeat(300) + 'SECRETISH' } });
    assertProblem(res, 400, 'validation_failed');
    assert.ok(!res.text.includes('SECRETISH'));
  });
});

describe('cross-site requests with the session cookie', () => {
  let s: Session;
  before(async () => {
    s = await openSession((await tokenFor('operator')).token);
  });

  test('reads need no CSRF token: GET works with the cookie alone', async () => {
    await t.enroll('csrf-read');
    assert.equal((await withCookie(s, 'GET', '/v1/devices/csrf-read')).status, 200);
  });

  test('a change without X-CSRF-Token, with a wrong one, or from a foreign Origin is 403 and changes nothing', async () => {
    await t.enroll('csrf-target');
    const attempts: [string, { csrf?: string; origin?: string }, string][] = [
      ['no token', {}, 'csrf_token_invalid'],
      ['a wrong token', { csrf: 'A'.repeat(43) }, 'csrf_token_invalid'],
      ["another session's token", { csrf: (await openSession((await tokenFor('operator')).token)).csrf }, 'csrf_token_invalid'],
      ['a foreign Origin', { csrf: s.csrf, origin: 'https://evil.example' }, 'cross_origin_request'],
      ['Origin null (a sandboxed page)', { csrf: s.csrf, origin: 'null' }, 'cross_origin_request'],
      ['the right host over plain HTTP', { csrf: s.csrf, origin: origin().replace('https:', 'http:') }, 'cross_origin_request'],
    ];
    for (const [what, o, code] of attempts) {
      for (const action of ['revoke', 'suspend']) {
        const res = await withCookie(s, 'POST', `/v1/devices/csrf-target/${action}`, { ...o, json: action === 'revoke' ? { reason: 'keyCompromise' } : undefined });
        assertProblem(res, 403, code);
        assert.equal(await deviceStatus('csrf-target'), 'active', `${action} with ${what} changed nothing`);
      }
    }
    const done = await withCookie(s, 'POST', '/v1/devices/csrf-target/suspend', { csrf: s.csrf, origin: origin() });
    assert.equal(done.status, 200, done.text);
    const resumed = await withCookie(s, 'POST', '/v1/devices/csrf-target/resume', { csrf: s.csrf });
    assert.equal(resumed.status, 200, 'a client that sends no Origin still passes with the token');
  });

  test('a viewer session reads but cannot revoke, CSRF token or not', async () => {
    const viewer = await openSession((await tokenFor('viewer')).token);
    await t.enroll('viewer-target');
    assert.equal((await withCookie(viewer, 'GET', '/v1/devices/viewer-target')).status, 200);
    const res = await withCookie(viewer, 'POST', '/v1/devices/viewer-target/revoke', { csrf: viewer.csrf, origin: origin(), json: { reason: 'keyCompromise' } });
    assertProblem(res, 403, 'forbidden');
    assert.equal(await deviceStatus('viewer-target'), 'active');
  });

  test('a bearer token wins over a cookie and needs no CSRF token', async () => {
    await t.enroll('bearer-target');
    const res = await t.api('POST', '/v1/devices/bearer-target/suspend', { token: t.adminToken, headers: { cookie: `${COOKIE}=${s.id}` } });
    assert.equal(res.status, 200, res.text);
    const session = await t.api('GET', '/v1/session', { token: t.adminToken });
    assert.equal(session.json.operator.role, 'admin');
    assert.equal(session.json.csrfToken, null);
  });
});

describe('how a session ends', () => {
  test("revoking the operator's token ends its sessions at once", async () => {
    const operator = await tokenFor('operator');
    const s = await openSession(operator.token);
    assert.equal((await t.api('DELETE', `/v1/tokens/${operator.id}`, { token: t.adminToken })).status, 200);
    const res = await withCookie(s, 'GET', '/v1/session');
    assertProblem(res, 401, 'unauthorized');
    assert.match(res.json.detail, /revoked/);
    assertProblem(await withCookie(s, 'POST', '/v1/devices/anything/suspend', { csrf: s.csrf }), 401, 'unauthorized');
  });

  test("the token's own expiry ends the session too", async () => {
    const operator = await tokenFor('operator', 20 * MINUTE);
    const s = await openSession(operator.token);
    time.advance(10 * MINUTE);
    assert.equal((await withCookie(s, 'GET', '/v1/session')).status, 200);
    time.advance(10 * MINUTE);
    const res = await withCookie(s, 'GET', '/v1/session');
    assertProblem(res, 401, 'unauthorized');
    assert.match(res.json.detail, /expired/);
  });

  test('a session left idle for 30 minutes ends; one in use lasts 12 hours and no longer', async () => {
    const idle = await openSession((await tokenFor('viewer')).token);
    const busy = await openSession((await tokenFor('viewer')).token);
    time.advance(29 * MINUTE);
    assert.equal((await withCookie(idle, 'GET', '/v1/session')).status, 200, 'used within the idle limit');
    time.advance(30 * MINUTE);
    assertProblem(await withCookie(idle, 'GET', '/v1/session'), 401, 'unauthorized');

    // `busy` was last used at login, 59 minutes ago: it ended too. A fresh one, used every 20 minutes:
    assertProblem(await withCookie(busy, 'GET', '/v1/session'), 401, 'unauthorized');
    const kept = await openSession((await tokenFor('viewer')).token);
    for (let elapsed = 0; elapsed < 12 * 60 - 20; elapsed += 20) {
      time.advance(20 * MINUTE);
      assert.equal((await withCookie(kept, 'GET', '/v1/session')).status, 200, `in use after ${elapsed + 20} minutes`);
    }
    time.advance(20 * MINUTE);
    const res = await withCookie(kept, 'GET', '/v1/session');
    assertProblem(res, 401, 'unauthorized');
    assert.match(res.json.detail, /log in again/);
  });

  test('logout needs the CSRF token, then deletes the session and clears the cookie', async () => {
    const s = await openSession((await tokenFor('operator')).token);
    assertProblem(await withCookie(s, 'POST', '/console/logout'), 403, 'csrf_token_invalid');
    assert.equal((await withCookie(s, 'GET', '/v1/session')).status, 200, 'a forged logout ended nothing');
    const res = await withCookie(s, 'POST', '/console/logout', { csrf: s.csrf, origin: origin() });
    assert.equal(res.status, 204);
    const cleared = [res.headers['set-cookie'] ?? []].flat().find((c) => c.startsWith(`${COOKIE}=`));
    assert.match(String(cleared), /Max-Age=0/i);
    assertProblem(await withCookie(s, 'GET', '/v1/session'), 401, 'unauthorized');
  });

  test('no log line holds a token or a session id', () => {
    const all = logs.lines().map((l) => l.raw).join('\n');
    assert.ok(secrets.length > 10);
    for (const secret of secrets) assert.ok(!all.includes(secret), 'a secret reached the log');
  });
});

describe('login throttling', () => {
  let strict: TestFleet;
  before(async () => {
    strict = await startTestFleet({ env: { FLEET_API_AUTH_FAILURES: '3', FLEET_API_CREDENTIAL_BURST: '3', FLEET_API_CREDENTIAL_RATE: '0.001' } });
  });
  after(() => strict?.close());

  test('one token tried too often at login is throttled, like anywhere else', async () => {
    const { token } = await createOperatorToken(strict.fleet.db.pool, { name: 'burst', role: 'viewer', actor: 'test', now: new Date() });
    for (let i = 0; i < 3; i++) assert.equal((await strict.api('POST', '/console/login', { json: { token } })).status, 204);
    assertProblem(await strict.api('POST', '/console/login', { json: { token } }), 429, 'rate_limited');
  });

  test('failed logins past the free ones lock the address out, the right token too', async () => {
    for (let i = 0; i < 4; i++) assertProblem(await strict.api('POST', '/console/login', { json: { token: `fleet_op_wrong${i}` } }), 401, 'unauthorized');
    const res = await strict.api('POST', '/console/login', { json: { token: strict.adminToken } });
    assertProblem(res, 429, 'too_many_failed_attempts');
  });
});
