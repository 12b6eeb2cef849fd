import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { projectRoot } from '../core/paths.js';
import { createOperatorToken } from '../core/registry/index.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';
import { run } from './support/openssl.js';

/** The fleet's clock runs `offset` ahead of real time, so expiry and last-use times are stepped, not waited for. */
let offset = 0;
const clock = () => new Date(Date.now() + offset);
let t: TestFleet;
before(async () => {
  t = await startTestFleet({ clock });
});
after(() => t?.close());

const FLEET = path.join(projectRoot, 'dist', 'cli', 'fleet.js');
const fleet = (...args: string[]) =>
  run(process.execPath, [FLEET, ...args], { env: { ...process.env, DATABASE_URL: t.config.databaseUrl, FLEET_DATA_DIR: t.dataDir, LOG_LEVEL: 'warn' } });
const lastLine = (text: string) => text.trimEnd().split('\n').at(-1) ?? '';

const newToken = (role: 'admin' | 'operator' | 'viewer', extra: { ttlMs?: number; name?: string } = {}) =>
  createOperatorToken(t.fleet.db.pool, { name: extra.name ?? `t-${role}`, role, actor: 'test', now: clock(), ttlMs: extra.ttlMs });

const canRead = async (token: string) => (await t.api('GET', '/v1/devices/nobody', { token })).status;

describe('operator tokens: list, revoke, expiry, last use', () => {
  test('GET /v1/tokens and DELETE /v1/tokens/{id} are for admins only', async () => {
    const operator = await newToken('operator');
    const viewer = await newToken('viewer');
    for (const token of [operator.token, viewer.token]) {
      assert.equal((await t.api('GET', '/v1/tokens', { token })).status, 403);
      assert.equal((await t.api('DELETE', `/v1/tokens/${operator.id}`, { token })).status, 403);
    }
    assert.equal((await t.api('GET', '/v1/tokens')).status, 401);
    assert.equal((await t.api('DELETE', `/v1/tokens/${operator.id}`)).status, 401);
    assert.equal(await canRead(operator.token), 404, 'the refused revocation left the token working');
  });

  test('the list shows every token with role, expiry and last use, and never a token or its hash', async () => {
    const expiring = await newToken('viewer', { ttlMs: 3_600_000, name: 'ci-reader' });
    const res = await t.api('GET', '/v1/tokens', { token: t.adminToken });
    assert.equal(res.status, 200, res.text);
    const listed = res.json.tokens.find((x: { id: string }) => x.id === expiring.id);
    assert.deepEqual(Object.keys(listed).sort(), ['createdAt', 'createdBy', 'expiresAt', 'id', 'lastUsedAt', 'name', 'revokedAt', 'revokedBy', 'role']);
    assert.equal(listed.role, 'viewer');
    assert.equal(listed.name, 'ci-reader');
    assert.equal(listed.expiresAt, expiring.expiresAt!.toISOString());
    assert.equal(listed.lastUsedAt, null);

    const { rows } = await t.fleet.db.pool.query(`SELECT encode(token_hash, 'hex') AS hex, encode(token_hash, 'base64') AS b64 FROM operator_tokens`);
    assert.ok(rows.length >= 2);
    for (const { hex, b64 } of rows) {
      assert.ok(!res.text.toLowerCase().includes(hex), 'no hash in hex');
      assert.ok(!res.text.includes(b64), 'no hash in base64');
      assert.ok(!res.text.includes(Buffer.from(hex, 'hex').toString('base64url')), 'no hash in base64url');
    }
    assert.ok(!res.text.includes(t.adminToken) && !res.text.includes(expiring.token), 'no token');
    assert.doesNotMatch(res.text, /fleet_op_|hash/i);
  });

  test('a revoked token is refused from its next request on; revoking twice answers the same', async () => {
    const victim = await newToken('operator');
    assert.equal(await canRead(victim.token), 404);
    const revoked = await t.api('DELETE', `/v1/tokens/${victim.id}`, { token: t.adminToken });
    assert.equal(revoked.status, 200, revoked.text);
    assert.ok(revoked.json.revokedAt);
    assert.match(revoked.json.revokedBy, /^operator:[0-9a-f]{12}$/);
    const refused = await t.api('GET', '/v1/devices/nobody', { token: victim.token });
    assert.equal(refused.status, 401);
    assert.match(refused.json.detail, /revoked/);
    const again = await t.api('DELETE', `/v1/tokens/${victim.id}`, { token: t.adminToken });
    assert.equal(again.status, 200);
    assert.equal(again.json.revokedAt, revoked.json.revokedAt);
    assert.equal((await t.api('DELETE', '/v1/tokens/0123456789ab', { token: t.adminToken })).json.code, 'token_not_found');
    const audit = await t.fleet.db.pool.query(`SELECT count(*)::int AS n FROM audit_log WHERE action = 'operator_token.revoked' AND details->>'tokenId' = $1`, [victim.id]);
    assert.equal(audit.rows[0].n, 1, 'audited once');
  });

  test('a token with a ttl works until it expires, then is refused', async () => {
    const shortLived = await newToken('viewer', { ttlMs: 3_600_000 });
    try {
      offset = 3_600_000 - 1_000;
      assert.equal(await canRead(shortLived.token), 404);
      offset = 3_600_000;
      const refused = await t.api('GET', '/v1/devices/nobody', { token: shortLived.token });
      assert.equal(refused.status, 401);
      assert.match(refused.json.detail, /expired/);
    } finally {
      offset = 0;
    }
  });

  test('last use is recorded, at most once a minute per token', async () => {
    const busy = await newToken('viewer');
    const lastUsed = async () => (await t.fleet.db.pool.query('SELECT last_used_at FROM operator_tokens WHERE id = $1', [busy.id])).rows[0].last_used_at as Date | null;
    try {
      offset = 10 * 60_000;
      const first = clock();
      await canRead(busy.token);
      const recorded = await lastUsed();
      assert.ok(recorded && recorded.getTime() >= first.getTime(), 'the first use is recorded');
      offset += 59_000;
      await canRead(busy.token);
      assert.equal((await lastUsed())!.getTime(), recorded!.getTime(), 'not rewritten within the minute');
      offset += 2_000;
      await canRead(busy.token);
      assert.ok((await lastUsed())!.getTime() >= recorded!.getTime() + 60_000, 'rewritten after a minute');
    } finally {
      offset = 0;
    }
  });
});

describe('fleet token create --ttl | list | revoke', () => {
  test('creates an expiring token, lists it without secrets, and revokes it so the API refuses it at once', async () => {
    const created = await fleet('token', 'create', '--role', 'operator', '--name', 'night-shift', '--ttl', '12h');
    assert.equal(created.code, 0, created.stderr);
    const token = lastLine(created.stdout);
    assert.match(token, /^fleet_op_/);
    assert.match(created.stderr, /expires at \d{4}-/);
    assert.equal(await canRead(token), 404, 'the new token works');

    const listed = await fleet('token', 'list');
    assert.equal(listed.code, 0, listed.stderr);
    const line = listed.stdout.split('\n').find((l) => l.includes('night-shift'));
    assert.ok(line, listed.stdout);
    const [id, role, status] = line.split(/\s+/);
    assert.match(id!, /^[0-9a-f]{12}$/);
    assert.equal(role, 'operator');
    assert.equal(status, 'active');
    assert.ok(!listed.stdout.includes('fleet_op_'), 'no token is listed');

    const revoked = await fleet('token', 'revoke', id!);
    assert.equal(revoked.code, 0, revoked.stderr);
    assert.equal(await canRead(token), 401, 'refused from the next request on');
    assert.match((await fleet('token', 'list')).stdout, new RegExp(`${id}\\s+operator\\s+revoked`));

    const bad = await fleet('token', 'create', '--role', 'viewer', '--ttl', 'soon');
    assert.equal(bad.code, 1);
    assert.match(bad.stderr, /duration/);
  });
});
