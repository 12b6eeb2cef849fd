import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createOperatorToken } from '../core/registry/index.js';
import { cliBesideFleet } from './support/cli.js';
import { startTestFleet } from './support/fleet.js';

/*
 * The token and CA listings as an operator runs them beside a fleet: tables for people, --json for
 * scripts, and never a token, a hash or a key.
 */

const { ok, json, fleetOf } = cliBesideFleet(() => startTestFleet());

describe('fleet token list', () => {
  test('--json lists every token with its role and state, and never a token or its hash', async () => {
    const viewer = await createOperatorToken(fleetOf().fleet.db.pool, { name: 'dashboards', role: 'viewer', actor: 'test', now: new Date(), ttlMs: 3_600_000 });
    const res = await ok('token', 'list', '--json');
    const listed = JSON.parse(res.stdout).find((x: any) => x.id === viewer.id);
    assert.equal(listed.role, 'viewer');
    assert.equal(listed.name, 'dashboards');
    assert.equal(listed.expiresAt, viewer.expiresAt!.toISOString());
    const table = (await ok('token', 'list')).stdout;
    assert.match(table, new RegExp(`^${viewer.id}\\s+viewer\\s+active\\s+dashboards`, 'm'));
    const { rows } = await fleetOf().fleet.db.pool.query(`SELECT encode(token_hash, 'hex') AS hex, encode(token_hash, 'base64') AS b64 FROM operator_tokens`);
    for (const out of [res.stdout, table]) {
      assert.ok(!out.includes(viewer.token) && !out.includes(fleetOf().adminToken), 'no token');
      for (const { hex, b64 } of rows) assert.ok(!out.includes(hex) && !out.includes(b64), 'no hash');
    }
  });
});

describe('fleet ca list', () => {
  test('shows the root and each issuing CA: which signs, which are trusted, which retired', async () => {
    const table = (await ok('ca', 'list')).stdout.trimEnd().split('\n');
    assert.match(table[0]!, /^GENERATION\s+ROLE\s+STATE\s+SUBJECT\s+KEY ID\s+NOT BEFORE\s+NOT AFTER$/);
    assert.match(table[1]!, /^1\s+issuing\s+signing\s+CN=fleet-auth Issuing CA 1, O=fleet-auth\s+[0-9a-f]{40}\s+\S+Z\s+\S+Z$/);
    assert.match(table[2]!, /^root\s+root\s+trusted\s+CN=/);
    assert.equal(table.length, 3);

    await ok('ca', 'rotate');
    await ok('ca', 'retire', '1');
    await ok('ca', 'rotate');
    const after = await json('ca', 'list');
    assert.deepEqual(after.map((g: any) => [g.generation, g.role, g.state]), [
      [3, 'issuing', 'signing'],
      [2, 'issuing', 'trusted'],
      [1, 'issuing', 'retired'],
      [0, 'root', 'trusted'],
    ]);
    assert.equal(after[0].subject, 'CN=fleet-auth Issuing CA 3, O=fleet-auth');
    assert.ok(Date.parse(after[0].notAfter) > Date.now() && Date.parse(after[0].notBefore) <= Date.now() + 60_000);
    assert.doesNotMatch(table.join('\n') + JSON.stringify(after), /PRIVATE KEY/);
  });
});
