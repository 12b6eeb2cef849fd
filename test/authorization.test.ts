import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { createOperatorToken, type IdentityKind, type OperatorRole, registerDevices } from '../core/registry/index.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';

/**
 * Route × role × identity kind. Service identities read and command across the fleet, so only admins
 * may issue, revoke, suspend or resume them; operators manage devices; viewers read; nobody without
 * a token gets anything. A refused request changes nothing: the identity's status, its enrollment
 * tokens and its certificates are as they were.
 */
let t: TestFleet;
const tokens: Record<OperatorRole, string> = { admin: '', operator: '', viewer: '' };
type Caller = OperatorRole | 'none';
const CALLERS: Caller[] = ['admin', 'operator', 'viewer', 'none'];
const KINDS: IdentityKind[] = ['device', 'service'];

before(async () => {
  t = await startTestFleet();
  tokens.admin = t.adminToken;
  for (const role of ['operator', 'viewer'] as const) {
    tokens[role] = (await createOperatorToken(t.fleet.db.pool, { name: `matrix-${role}`, role, actor: 'test', now: new Date() })).token;
  }
});
after(() => t?.close());

interface Target {
  id: string;
  serial: string;
  batch: string;
}

/** How an identity must stand before the route acts on it. */
type Setup = 'none' | 'active' | 'suspended' | 'in-batch';

interface Route {
  name: string;
  setup: Setup;
  request(kind: IdentityKind, target: Target): { method: string; path: string; json?: unknown };
  succeeds: number;
  /** Whom the route admits, by kind of identity. */
  allowed(caller: Caller, kind: IdentityKind): boolean;
}

/** Changes: admins anything, operators devices only. */
const manages = (caller: Caller, kind: IdentityKind) => caller === 'admin' || (caller === 'operator' && kind === 'device');
const reads = (caller: Caller) => caller !== 'none';

const ROUTES: Route[] = [
  {
    name: 'register',
    setup: 'none',
    request: (kind, { id }) => (kind === 'service' ? { method: 'POST', path: '/v1/services', json: { id, role: 'fleet-commander' } } : { method: 'POST', path: '/v1/devices', json: { id } }),
    succeeds: 201,
    allowed: manages,
  },
  {
    name: 're-issue an enrollment token',
    setup: 'active',
    request: (_, { id }) => ({ method: 'POST', path: `/v1/devices/${id}/enrollment-token` }),
    succeeds: 201,
    allowed: manages,
  },
  { name: 'revoke', setup: 'active', request: (_, { id }) => ({ method: 'POST', path: `/v1/devices/${id}/revoke`, json: { reason: 'keyCompromise' } }), succeeds: 200, allowed: manages },
  { name: 'suspend', setup: 'active', request: (_, { id }) => ({ method: 'POST', path: `/v1/devices/${id}/suspend` }), succeeds: 200, allowed: manages },
  { name: 'resume', setup: 'suspended', request: (_, { id }) => ({ method: 'POST', path: `/v1/devices/${id}/resume` }), succeeds: 200, allowed: manages },
  {
    name: 'revoke a certificate',
    setup: 'active',
    request: (_, { serial }) => ({ method: 'POST', path: `/v1/certificates/${serial.toUpperCase()}/revoke` }),
    succeeds: 200,
    allowed: manages,
  },
  { name: 'revoke a batch', setup: 'in-batch', request: (_, { batch }) => ({ method: 'POST', path: `/v1/batches/${batch}/revoke` }), succeeds: 200, allowed: manages },
  { name: 'show', setup: 'active', request: (_, { id }) => ({ method: 'GET', path: `/v1/devices/${id}` }), succeeds: 200, allowed: reads },
  { name: 'show a certificate', setup: 'active', request: (_, { serial }) => ({ method: 'GET', path: `/v1/certificates/${serial}` }), succeeds: 200, allowed: reads },
];

let cells = 0;

async function prepare(kind: IdentityKind, setup: Setup): Promise<Target> {
  const id = `m-${++cells}-${kind}`;
  const target = { id, serial: '', batch: `batch-${id}` };
  if (setup === 'none') return target;
  if (setup === 'in-batch') {
    // The API registers services one at a time; the registry can put one in a batch, so the check must hold there too.
    await registerDevices(t.fleet.db.pool, { batch: target.batch, devices: [{ id, serviceRole: kind === 'service' ? 'fleet-reader' : undefined }], actor: 'test', tokenTtlMs: 3_600_000, now: new Date() });
    return target;
  }
  const registered = await t.api('POST', kind === 'service' ? '/v1/services' : '/v1/devices', { token: tokens.admin, json: kind === 'service' ? { id, role: 'fleet-reader' } : { id } });
  assert.equal(registered.status, 201, registered.text);
  const identity = await createDeviceIdentity(id);
  const enrolled = await t.api('POST', '/v1/enrollments', { json: { token: registered.json.enrollmentToken, csr: identity.csrPem } });
  assert.equal(enrolled.status, 201, enrolled.text);
  target.serial = enrolled.json.serial;
  if (setup === 'suspended') assert.equal((await t.api('POST', `/v1/devices/${id}/suspend`, { token: tokens.admin })).status, 200);
  return target;
}

/** Everything a change could touch, to show a refused request touched nothing. */
async function stateOf(id: string) {
  const { rows } = await t.fleet.db.pool.query(
    `SELECT (SELECT status FROM devices WHERE id = $1) AS status,
            (SELECT count(*)::int FROM enrollment_tokens WHERE device_id = $1) AS tokens,
            (SELECT string_agg(status, ',' ORDER BY serial) FROM certificates WHERE device_id = $1) AS certificates`,
    [id],
  );
  return rows[0];
}

describe('authorization by route, role and identity kind', () => {
  for (const route of ROUTES) {
    for (const kind of KINDS) {
      for (const caller of CALLERS) {
        const allowed = route.allowed(caller, kind);
        const expected = allowed ? route.succeeds : caller === 'none' ? 401 : 403;
        test(`${route.name} × ${caller} × ${kind} → ${expected}`, async () => {
          const target = await prepare(kind, route.setup);
          const before = await stateOf(target.id);
          const { method, path, json } = route.request(kind, target);
          const res = await t.api(method, path, { json, token: caller === 'none' ? undefined : tokens[caller] });
          assert.equal(res.status, expected, res.text);
          if (allowed) return;
          assert.equal(res.headers['content-type'], 'application/problem+json');
          assert.equal(res.json.code, caller === 'none' ? 'unauthorized' : 'forbidden');
          assert.doesNotMatch(res.text, /enrollmentToken|fleet_enroll_/, 'a refusal carries no token');
          assert.deepEqual(await stateOf(target.id), before, 'a refused request changes nothing');
        });
      }
    }
  }
});

describe('an operator cannot take over a service identity', () => {
  test('the re-issue, enroll-as-the-service path of the review is closed; an admin can still do it', async () => {
    const service = await prepare('service', 'active');
    const refused = await t.api('POST', `/v1/devices/${service.id}/enrollment-token`, { token: tokens.operator });
    assert.equal(refused.status, 403);
    assert.match(refused.json.detail, /service identity/);
    assert.match(refused.json.detail, /admins/);
    for (const action of ['revoke', 'suspend']) {
      assert.equal((await t.api('POST', `/v1/devices/${service.id}/${action}`, { token: tokens.operator })).status, 403, action);
    }
    const shown = await t.api('GET', `/v1/devices/${service.id}`, { token: tokens.admin });
    assert.equal(shown.json.status, 'active');
    assert.equal(shown.json.certificates.filter((c: { status: string }) => c.status === 'active').length, 1, 'the service keeps its one certificate');

    const granted = await t.api('POST', `/v1/devices/${service.id}/enrollment-token`, { token: tokens.admin });
    assert.equal(granted.status, 201);
    assert.match(granted.json.enrollmentToken, /^fleet_enroll_/);
  });
});
