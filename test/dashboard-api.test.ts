import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import {
  createOperatorToken,
  type DeviceEventKind,
  insertCertificate,
  recordDeviceEvents,
  registerDevices,
  revokeCertificate,
  revokeDevice,
} from '../core/registry/index.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';
import { closed, connectDevice } from './support/mqtt.js';
import { eventually } from './support/wait.js';

/*
 * The dashboard API's lists and summary against a real registry: who may read them, what a bad filter
 * gets, that paging returns every device exactly once, and that no answer carries a secret.
 */

let t: TestFleet;
let viewer: string;
let operator: string;
const now = () => new Date();
const DAY = 86_400_000;

before(async () => {
  t = await startTestFleet();
  viewer = (await createOperatorToken(t.fleet.db.pool, { name: 'v', role: 'viewer', actor: 'test', now: now() })).token;
  operator = (await createOperatorToken(t.fleet.db.pool, { name: 'o', role: 'operator', actor: 'test', now: now() })).token;
});
after(() => t?.close());

const get = async (path: string, token = viewer) => {
  const res = await t.api('GET', path, { token });
  assert.equal(res.status, 200, `${path}: ${res.text}`);
  return res.json;
};

/** Registers devices straight in the registry (the API's bulk path, without HTTP for each). */
const seed = (devices: { id: string; profile?: string; metadata?: Record<string, unknown> }[], batch?: string) =>
  registerDevices(t.fleet.db.pool, { devices, batch, actor: 'test', tokenTtlMs: DAY, now: now() });

const hex = (bytes: number) => randomBytes(bytes).toString('hex');

/** A certificate row with the validity a test needs; the registry keeps it like any other. */
async function certificate(deviceId: string, notAfter: Date): Promise<string> {
  const serial = '7' + hex(8);
  await insertCertificate(
    t.fleet.db.pool,
    deviceId,
    { serial, fingerprint: hex(32), publicKeySha256: hex(32), issuer: 'CN=test', notBefore: new Date(notAfter.getTime() - 365 * DAY), notAfter, pem: 'test' },
    now(),
  );
  return serial;
}

/** Every page of a list, following nextCursor; fails if a page comes back twice. */
async function allPages(path: string, key: 'devices' | 'certificates' | 'entries'): Promise<any[]> {
  const rows: any[] = [];
  const cursors = new Set<string>();
  let cursor: string | null = null;
  do {
    const sep = path.includes('?') ? '&' : '?';
    const page: any = await get(cursor ? `${path}${sep}cursor=${encodeURIComponent(cursor)}` : path);
    rows.push(...page[key]);
    cursor = page.nextCursor;
    if (cursor) {
      assert.ok(!cursors.has(cursor), 'a cursor came back twice');
      cursors.add(cursor);
    }
  } while (cursor);
  return rows;
}

const ids = (rows: { id: string }[]) => rows.map((r) => r.id);
const byteOrder = (a: string, b: string) => (Buffer.from(a) < Buffer.from(b) ? -1 : 1);

const ROUTES = ['/v1/fleet/summary', '/v1/devices', '/v1/certificates', '/v1/audit-log'];

describe('who may read', () => {
  test('no token, an unknown token or a revoked one is 401; viewers, operators and admins read', async () => {
    for (const path of ROUTES) {
      const anonymous = await t.api('GET', path);
      assert.equal(anonymous.status, 401, path);
      assert.equal(anonymous.headers['content-type'], 'application/problem+json');
      assert.equal((await t.api('GET', path, { token: 'fleet_op_' + hex(20) })).status, 401, `${path} with a made-up token`);
      for (const token of [viewer, operator, t.adminToken]) assert.equal((await t.api('GET', path, { token })).status, 200, path);
    }
    const gone = await createOperatorToken(t.fleet.db.pool, { name: 'gone', role: 'admin', actor: 'test', now: now() });
    await t.api('DELETE', `/v1/tokens/${gone.id}`, { token: t.adminToken });
    for (const path of ROUTES) assert.equal((await t.api('GET', path, { token: gone.token })).status, 401, path);
  });

  test('a viewer reads lists but still may not change a device', async () => {
    await seed([{ id: 'auth-1' }]);
    assert.equal((await t.api('POST', '/v1/devices/auth-1/suspend', { token: viewer })).status, 403);
    assert.equal((await t.api('POST', '/v1/devices', { token: viewer, json: { id: 'auth-2' } })).status, 403);
  });

  test('every route is in the OpenAPI document', async () => {
    const doc = await get('/openapi.json');
    for (const path of ROUTES) assert.ok(doc.paths[path]?.get, `${path} documented`);
    assert.ok(doc.paths['/v1/devices'].post, 'registration is still documented beside the list');
    assert.match(JSON.stringify(doc.components.schemas.DeviceWithCertificates), /DeviceSession/, 'the device page documents its session');
  });
});

describe('bad filters are 400 problems naming the parameter', () => {
  const cases: [string, string][] = [
    ['/v1/devices?status=sleeping', 'status'],
    ['/v1/devices?kind=robot', 'kind'],
    ['/v1/devices?online=yes', 'online'],
    ['/v1/devices?expiringBefore=next-week', 'expiringBefore'],
    ['/v1/devices?expiringBefore=2026-12-31T10:00:00', 'expiringBefore'],
    ['/v1/devices?batch=a/b', 'batch'],
    ['/v1/devices?limit=0', 'limit'],
    ['/v1/devices?limit=501', 'limit'],
    ['/v1/devices?limit=ten', 'limit'],
    ['/v1/devices?q=has%20space', 'q'],
    ['/v1/devices?q==3', 'q'],
    ['/v1/devices?cursor=not-a-cursor', 'cursor'],
    ['/v1/devices?stauts=active', 'stauts'],
    ['/v1/certificates?status=expired', 'status'],
    ['/v1/certificates?expiringBefore=soon', 'expiringBefore'],
    ['/v1/certificates?cursor=%25%25', 'cursor'],
    ['/v1/certificates?limit=1000', 'limit'],
    ['/v1/audit-log?since=yesterday', 'since'],
    ['/v1/audit-log?until=2026-13-45', 'until'],
    ['/v1/audit-log?device=a%2Fb', 'device'],
    ['/v1/audit-log?cursor=abc', 'cursor'],
    ['/v1/audit-log?actr=x', 'actr'],
  ];
  for (const [path, parameter] of cases) {
    test(path, async () => {
      const res = await t.api('GET', path, { token: viewer });
      assert.equal(res.status, 400, res.text);
      assert.equal(res.headers['content-type'], 'application/problem+json');
      assert.equal(res.json.code, 'validation_failed');
      assert.match(res.json.detail, new RegExp(parameter), `the problem names ${parameter}: ${res.json.detail}`);
    });
  }

  test("one list's cursor is refused by another", async () => {
    await seed([{ id: 'cur-1' }]);
    await certificate('cur-1', new Date(Date.UTC(2002, 0, 1)));
    await certificate('cur-1', new Date(Date.UTC(2002, 0, 2)));
    const page = await get('/v1/certificates?expiringBefore=2002-01-03&limit=1');
    assert.ok(page.nextCursor);
    // The serial inside would pass for a device id: only the cursor's list tells them apart.
    const res = await t.api('GET', `/v1/devices?cursor=${page.nextCursor}`, { token: viewer });
    assert.equal(res.status, 400);
    assert.match(res.json.detail, /cursor/);
  });
});

describe('GET /v1/devices', () => {
  test('cursor paging returns every device exactly once, in byte order, with and without filters', async () => {
    const all = Array.from({ length: 37 }, (_, i) => ({ id: `page-${String(i).padStart(3, '0')}`, profile: i % 3 === 0 ? 'mcu-a' : 'mcu-b' }));
    // Byte order puts '-' before '.' and '_', and upper case before lower: a collation-ordered index would not.
    const odd = [{ id: 'page.x' }, { id: 'page_z' }, { id: 'pageA' }, { id: 'page-0Z' }];
    await seed(all, 'line-7');
    await seed(odd);
    await revokeDevice(t.fleet.db.pool, { deviceId: 'page-005', reason: 'keyCompromise', actor: 'test', now: now() });

    const everyone = await allPages('/v1/devices?q=page&limit=5', 'devices');
    const expected = [...all, ...odd].map((d) => d.id).sort(byteOrder);
    assert.deepEqual(ids(everyone), expected);

    const batch = await allPages('/v1/devices?batch=line-7&profile=mcu-a&limit=4', 'devices');
    assert.deepEqual(ids(batch), all.filter((d) => d.profile === 'mcu-a').map((d) => d.id));
    assert.ok(batch.every((d) => d.batch === 'line-7' && d.profile === 'mcu-a'));

    const revoked = await allPages('/v1/devices?q=page-&status=revoked&limit=1', 'devices');
    assert.deepEqual(ids(revoked), ['page-005']);
    const pending = await allPages('/v1/devices?q=page-&status=pending&kind=device&limit=10', 'devices');
    assert.deepEqual(ids(pending), expected.filter((id) => id.startsWith('page-') && id !== 'page-005'));
  });

  test('the last page has a null cursor, and a full last page does not promise another', async () => {
    await seed([{ id: 'last-1' }, { id: 'last-2' }]);
    const first = await get('/v1/devices?q=last-&limit=2');
    assert.deepEqual(ids(first.devices), ['last-1', 'last-2']);
    assert.equal(first.nextCursor, null);
  });

  test('q is an id prefix', async () => {
    await seed([{ id: 'pfx-a1' }, { id: 'pfx-a2' }, { id: 'pfx-ab' }, { id: 'pfx-azz' }, { id: 'pfx-b1' }, { id: 'pfx_a' }, { id: 'pfx-a' }, { id: 'pfx-' }]);
    assert.deepEqual(ids((await get('/v1/devices?q=pfx-a')).devices), ['pfx-a', 'pfx-a1', 'pfx-a2', 'pfx-ab', 'pfx-azz']);
    assert.deepEqual(ids((await get('/v1/devices?q=pfx-a1')).devices), ['pfx-a1']);
    assert.deepEqual(ids((await get('/v1/devices?q=pfx-z')).devices), []);
  });

  test('q=key=value matches a metadata value, as a string or the number or boolean it spells', async () => {
    await seed([
      { id: 'meta-1', metadata: { line: '3', firmware: '1.4.2' } },
      { id: 'meta-2', metadata: { line: 3 } },
      { id: 'meta-3', metadata: { line: '4', firmware: '1.4.2' } },
      { id: 'meta-4', metadata: { sealed: true, note: 'a=b' } },
    ]);
    assert.deepEqual(ids((await get('/v1/devices?q=line%3D3')).devices), ['meta-1', 'meta-2']);
    assert.deepEqual(ids((await get('/v1/devices?q=firmware%3D1.4.2')).devices), ['meta-1', 'meta-3']);
    assert.deepEqual(ids((await get('/v1/devices?q=sealed%3Dtrue')).devices), ['meta-4']);
    assert.deepEqual(ids((await get('/v1/devices?q=note%3Da%3Db')).devices), ['meta-4'], 'the value may hold =');
    assert.deepEqual(ids((await get('/v1/devices?q=line%3D5')).devices), []);
  });

  test('expiringBefore keeps devices whose active certificate ends before then; certificateNotAfter shows it', async () => {
    await seed([{ id: 'exp-soon' }, { id: 'exp-late' }, { id: 'exp-none' }, { id: 'exp-revoked' }]);
    const soon = new Date(Date.UTC(2031, 0, 10));
    await certificate('exp-soon', soon);
    await certificate('exp-late', new Date(Date.UTC(2031, 5, 1)));
    const revokedSerial = await certificate('exp-revoked', new Date(Date.UTC(2031, 0, 5)));
    await revokeCertificate(t.fleet.db.pool, { serial: revokedSerial, reason: 'superseded', actor: 'test', now: now() });

    const page = await get('/v1/devices?q=exp-&expiringBefore=2031-02-01');
    assert.deepEqual(ids(page.devices), ['exp-soon'], 'the revoked certificate no longer counts');
    assert.equal(page.devices[0].certificateNotAfter, soon.toISOString());
    const everyone = await get('/v1/devices?q=exp-');
    assert.equal(everyone.devices.find((d: any) => d.id === 'exp-none').certificateNotAfter, null);
    assert.deepEqual(ids((await get('/v1/devices?q=exp-&expiringBefore=2031-12-31T00:00:00%2B01:00')).devices), ['exp-late', 'exp-soon']);
  });

  test('online: a device connected over MQTT is listed online, with its session on its page, and offline after', async () => {
    const device = await t.enroll('live-1');
    await t.enroll('live-2');
    const onlineIds = async () => ids((await get('/v1/devices?q=live-&online=true')).devices);
    assert.deepEqual(await onlineIds(), []);

    const { client, outcome } = await connectDevice(t.fleet.broker.port, 'live-1', { ca: t.rootPem, cert: device.certificatePem, key: device.identity.keyPem });
    assert.equal(outcome, 'connected');
    await eventually(async () => (await onlineIds()).includes('live-1'), 'live-1 listed online');
    assert.deepEqual(await onlineIds(), ['live-1']);
    assert.deepEqual(ids((await get('/v1/devices?q=live-&online=false')).devices), ['live-2']);

    const page = await get('/v1/devices/live-1');
    assert.equal(page.session.connected, true);
    assert.ok(page.session.since && !Number.isNaN(Date.parse(page.session.since)));
    assert.match(page.session.address, /127\.0\.0\.1/);
    assert.equal(page.certificates[0].serial, device.serial);
    // The broker records which certificate the session presented; the page shows what it recorded.
    await t.fleet.db.pool.query(`UPDATE devices SET connected_serial = $2 WHERE id = $1`, ['live-1', device.serial]);
    assert.equal((await get('/v1/devices/live-1')).session.serial, device.serial);

    client.end(true);
    await closed(client);
    await eventually(async () => (await onlineIds()).length === 0, 'live-1 listed offline');
    assert.deepEqual((await get('/v1/devices/live-1')).session, { connected: false, since: null, address: null, serial: null });
  });
});

describe('GET /v1/certificates: the expiry report', () => {
  test('ordered by notAfter then serial, paged by cursor, filtered by status and expiringBefore', async () => {
    await seed([{ id: 'rep-1' }, { id: 'rep-2' }]);
    const base = Date.UTC(2001, 0, 1);
    const made: { serial: string; notAfter: number }[] = [];
    for (let i = 0; i < 9; i++) {
      const notAfter = base + (i % 3) * DAY; // three certificates end at each moment: serial breaks the tie
      made.push({ serial: await certificate(i % 2 ? 'rep-1' : 'rep-2', new Date(notAfter)), notAfter });
    }
    await revokeCertificate(t.fleet.db.pool, { serial: made[4]!.serial, reason: 'keyCompromise', actor: 'test', now: now() });
    const expected = [...made].sort((a, b) => a.notAfter - b.notAfter || byteOrder(a.serial, b.serial)).map((c) => c.serial);

    const report = await allPages('/v1/certificates?expiringBefore=2001-01-04&limit=2', 'certificates');
    assert.deepEqual(report.map((c) => c.serial), expected);
    assert.deepEqual(Object.keys(report[0]).sort(), ['deviceId', 'issuer', 'notAfter', 'notBefore', 'serial', 'status']);

    const active = await allPages('/v1/certificates?expiringBefore=2001-01-04&status=active&limit=3', 'certificates');
    assert.deepEqual(active.map((c) => c.serial), expected.filter((s) => s !== made[4]!.serial));
    const first = await get('/v1/certificates?expiringBefore=2001-01-02');
    assert.equal(first.certificates.length, 3, 'only those ending before the 2nd');
  });
});

describe('GET /v1/fleet/summary', () => {
  test('counts devices by status and kind, online, expiring certificates, refusals and today', async () => {
    const before = await get('/v1/fleet/summary');
    assert.ok(Math.abs(Date.parse(before.at) - Date.now()) < 60_000);

    await t.enroll('sum-1');
    await t.enroll('sum-2');
    await t.register('sum-3');
    await t.enrollService('sum-svc', 'fleet-reader');
    await t.api('POST', '/v1/devices/sum-2/revoke', { token: operator, json: { reason: 'keyCompromise' } });
    await t.api('POST', '/v1/devices/sum-1/suspend', { token: operator });
    await seed([{ id: 'sum-exp' }]);
    await certificate('sum-exp', new Date(Date.now() + 3 * DAY));
    await certificate('sum-exp', new Date(Date.now() + 20 * DAY));
    await certificate('sum-exp', new Date(Date.now() - DAY)); // ended already: not "expiring"

    const mid = await get('/v1/fleet/summary');
    const delta = (path: (s: any) => number) => path(mid) - path(before);
    assert.equal(delta((s) => s.devices.byStatus.pending), 2, 'sum-3 and sum-exp');
    assert.equal(delta((s) => s.devices.byStatus.active), 1, 'the service');
    assert.equal(delta((s) => s.devices.byStatus.suspended), 1);
    assert.equal(delta((s) => s.devices.byStatus.revoked), 1);
    assert.equal(delta((s) => s.devices.byKind.device), 4);
    assert.equal(delta((s) => s.devices.byKind.service), 1);
    assert.equal(delta((s) => s.certificates.expiringWithin7Days), 1);
    assert.equal(delta((s) => s.certificates.expiringWithin30Days), 2, 'both of sum-exp; enrolled certificates are not due yet');

    const at = new Date();
    const events = (kind: DeviceEventKind, n: number, extra: { reason?: string; at?: Date } = {}) =>
      Array.from({ length: n }, () => ({ at: extra.at ?? at, kind, deviceId: 'sum-1', reason: extra.reason }));
    await recordDeviceEvents(t.fleet.db.pool, [
      ...events('refused', 3, { reason: 'certificate_revoked' }),
      ...events('refused', 1, { reason: 'unknown_certificate' }),
      ...events('refused', 5, { reason: 'certificate_revoked', at: new Date(at.getTime() - 2 * 3_600_000) }),
      ...events('enrolled', 2),
      ...events('renewed', 1),
      ...events('revoked', 4),
      ...events('revoked', 7, { at: new Date(at.getTime() - 2 * DAY) }),
      ...events('connected', 6),
    ]);
    const after = await get('/v1/fleet/summary');
    assert.equal((after.refusalsLastHour.certificate_revoked ?? 0) - (mid.refusalsLastHour.certificate_revoked ?? 0), 3, 'the last hour only');
    assert.equal((after.refusalsLastHour.unknown_certificate ?? 0) - (mid.refusalsLastHour.unknown_certificate ?? 0), 1);
    assert.equal(after.today.enrollments - mid.today.enrollments, 2);
    assert.equal(after.today.renewals - mid.today.renewals, 1);
    assert.equal(after.today.revocations - mid.today.revocations, 4, 'today only');
  });

  test('device counts stay exact through bulk changes, and their change rows are folded', async () => {
    const truth = async () => {
      const { rows } = await t.fleet.db.pool.query(`SELECT status, kind, count(*)::int AS n FROM devices GROUP BY status, kind`);
      const byStatus: Record<string, number> = { pending: 0, active: 0, suspended: 0, revoked: 0 };
      const byKind: Record<string, number> = { device: 0, service: 0 };
      for (const r of rows) {
        byStatus[r.status] += r.n;
        byKind[r.kind] += r.n;
      }
      return { byStatus, byKind };
    };
    await seed(Array.from({ length: 250 }, (_, i) => ({ id: `fold-${i}` })), 'fold-batch');
    await t.api('POST', '/v1/batches/fold-batch/revoke', { token: operator });
    const counted = await get('/v1/fleet/summary');
    assert.deepEqual({ byStatus: counted.devices.byStatus, byKind: counted.devices.byKind }, await truth());
    const { rows } = await t.fleet.db.pool.query(`SELECT count(*)::int AS n FROM device_counts`);
    assert.ok(rows[0].n <= 8, `folded to one row per status and kind, not ${rows[0].n}`);
    const again = await get('/v1/fleet/summary');
    assert.deepEqual({ byStatus: again.devices.byStatus, byKind: again.devices.byKind }, await truth());
  });

  test('online counts connected devices', async () => {
    const before = (await get('/v1/fleet/summary')).devices.online;
    const device = await t.enroll('sum-live');
    const { client } = await connectDevice(t.fleet.broker.port, 'sum-live', { ca: t.rootPem, cert: device.certificatePem, key: device.identity.keyPem });
    await eventually(async () => (await get('/v1/fleet/summary')).devices.online === before + 1, 'online count up by one');
    client.end(true);
    await closed(client);
    await eventually(async () => (await get('/v1/fleet/summary')).devices.online === before, 'online count back');
  });
});

describe('GET /v1/audit-log', () => {
  test('newest first, filtered by actor, action, device, since and until, paged by cursor', async () => {
    const start = new Date();
    await seed([{ id: 'aud-1' }, { id: 'aud-2' }, { id: 'aud-3' }], 'aud-batch');
    await t.api('POST', '/v1/devices/aud-1/revoke', { token: operator, json: { reason: 'keyCompromise' } });
    await t.api('POST', '/v1/devices/aud-2/revoke', { token: t.adminToken });

    const entries = await allPages(`/v1/audit-log?since=${start.toISOString()}&limit=2`, 'entries');
    const mine = entries.filter((e) => e.deviceId?.startsWith('aud-'));
    assert.deepEqual(mine.map((e) => [e.action, e.deviceId]).slice(0, 2), [['device.revoked', 'aud-2'], ['device.revoked', 'aud-1']]);
    assert.equal(new Set(entries.map((e) => e.id)).size, entries.length, 'each entry once');
    for (let i = 1; i < entries.length; i++) assert.ok(entries[i - 1].at >= entries[i].at, 'newest first');

    const revokedByOperator = await get(`/v1/audit-log?action=device.revoked&since=${start.toISOString()}`);
    assert.deepEqual(revokedByOperator.entries.map((e: any) => e.deviceId), ['aud-2', 'aud-1']);
    const device = await get('/v1/audit-log?device=aud-3');
    assert.deepEqual(device.entries.map((e: any) => e.action), ['device.registered']);
    assert.deepEqual(device.entries[0].details.batch, 'aud-batch');
    const adminActor = (await get('/v1/audit-log?action=device.revoked&device=aud-2')).entries[0].actor;
    const byActor = await get(`/v1/audit-log?actor=${encodeURIComponent(adminActor)}&since=${start.toISOString()}`);
    assert.deepEqual(byActor.entries.map((e: any) => e.deviceId), ['aud-2']);
    assert.deepEqual((await get(`/v1/audit-log?until=${start.toISOString()}&device=aud-1`)).entries, [], 'until excludes later entries');
    assert.deepEqual((await get(`/v1/audit-log?since=${new Date(Date.now() + DAY).toISOString()}`)).entries, []);
  });
});

describe('no answer carries a secret', () => {
  test('tokens, token hashes and private keys appear in no list, page or summary', async () => {
    const grant = await seed([{ id: 'secret-1', metadata: { line: '9' } }], 'secret-batch');
    const enrollmentToken = grant.devices[0]!.enrollmentToken;
    const enrolled = await t.enroll('secret-2');
    const paths = [
      '/v1/fleet/summary',
      '/v1/devices?limit=500',
      '/v1/devices?q=secret-',
      '/v1/devices/secret-1',
      '/v1/devices/secret-2',
      '/v1/certificates?limit=500',
      '/v1/audit-log?limit=500',
    ];
    const { rows } = await t.fleet.db.pool.query(
      `SELECT token_hash FROM operator_tokens UNION ALL SELECT token_hash FROM enrollment_tokens`,
    );
    const hashes = rows.flatMap((r) => {
      const b = r.token_hash as Buffer;
      return [b.toString('hex'), b.toString('base64'), b.toString('base64url')];
    });
    assert.ok(hashes.includes(createHash('sha256').update(enrollmentToken).digest('hex')) || hashes.length > 0);
    for (const path of paths) {
      const res = await t.api('GET', path, { token: t.adminToken });
      assert.equal(res.status, 200, path);
      for (const secret of [enrollmentToken, t.adminToken, viewer, operator, ...hashes]) assert.ok(!res.text.includes(secret), `${path} shows a secret`);
      assert.doesNotMatch(res.text, /PRIVATE KEY|token_?hash|fleet_op_|fleet_enr/i, path);
      assert.ok(!res.text.includes(enrolled.identity.keyPem.split('\n')[1]!), `${path} shows a private key`);
    }
  });
});
