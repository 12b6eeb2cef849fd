import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ensureDataDir } from '../core/db/database.js';
import { type EmbeddedDatabase, openEmbeddedDatabase } from '../core/db/embedded.js';
import { silentLogger } from '../core/log.js';
import pg from 'pg';
import { CONNECTIONS } from '../core/db/database.js';
import { recordChange, type RegistryChange, resumeDevice, revokeCertificate, revokeDevice, suspendDevice } from '../core/registry/index.js';
import { cutChangeFeed, ReconnectGate } from './support/feed.js';
import { capturingLogger } from './support/log.js';
import { closed, connectDevice } from './support/mqtt.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { eventually } from './support/wait.js';

/**
 * These tests stop and start PostgreSQL under a running broker, so they run on an embedded server of
 * their own (never the machine's shared one), whatever DATABASE_URL says.
 */
let dir: string;
let database: EmbeddedDatabase;
let t: TestFleet;
const log = silentLogger();
const gate = new ReconnectGate();
const fleetLog = capturingLogger();
/** Every change the broker's feed delivered, with whether the feed was live at the time. */
const delivered: (RegistryChange & { live: boolean })[] = [];

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'fleet-resilience-'));
  await ensureDataDir(dir);
  database = await openEmbeddedDatabase(dir, log);
  t = await startTestFleet({
    databaseUrl: database.url,
    env: { FLEET_BROKER_STALE_GRACE: '5m' },
    hooks: { waitToReconnect: gate.wait },
    log: fleetLog.log,
  });
  t.fleet.changes.onChange((change) => delivered.push({ ...change, live: t.fleet.changes.live }));
});
after(async () => {
  await t?.close();
  await database?.stop();
  await rm(dir, { recursive: true, force: true });
});

const tlsOf = (d: EnrolledDevice) => ({ ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });
const port = () => t.fleet.broker.port;

/** Cuts the feed and keeps it down until `whileDown` has run; resolves once it is live again. */
async function withFeedDown(whileDown: () => Promise<void>): Promise<void> {
  await eventually(() => t.fleet.changes.live, 'the feed is live');
  gate.close();
  assert.equal(await cutChangeFeed(t.fleet.db.pool), 1, 'the feed had one connection to cut');
  await eventually(() => !t.fleet.changes.live, 'the broker noticed the feed is gone');
  try {
    await whileDown();
  } finally {
    gate.open();
  }
  await eventually(() => t.fleet.changes.live, 'the feed came back');
}

const deliveredFor = (deviceId: string) => delivered.filter((change) => change.deviceId === deviceId);

test('a revocation committed while the change feed is down is replayed, not missed', async () => {
  const device = await t.enroll('replay-1');
  const session = await connectDevice(port(), 'replay-1', tlsOf(device));
  assert.equal(session.outcome, 'connected');
  const ended = closed(session.client);

  await withFeedDown(async () => {
    await revokeDevice(t.fleet.db.pool, { deviceId: 'replay-1', reason: 'keyCompromise', actor: 'test', now: new Date() });
    assert.equal(t.fleet.broker.sessions.count('replay-1'), 1, 'with the feed down, nothing has told the broker yet');
  });
  assert.equal(t.fleet.broker.sessions.count('replay-1'), 0, 'the replay closed the session');
  await ended;
  session.client.end(true);
  assert.deepEqual(
    deliveredFor('replay-1').map((c) => [c.kind, c.live]),
    [['device_revoked', false]],
    'delivered once, by the replay, before the feed reported live',
  );
  const again = await connectDevice(port(), 'replay-1', tlsOf(device));
  assert.equal(again.outcome, 'refused');
  assert.equal(again.connack, 5, 'CONNACK 0x05: not authorized');
  again.client.end(true);
});

test('a replay after reconnecting delivers nothing twice: a resumed device keeps its session', async () => {
  const device = await t.enroll('redeliver-1');
  const actor = { actor: 'test', now: new Date() };
  await suspendDevice(t.fleet.db.pool, { deviceId: 'redeliver-1', ...actor });
  await resumeDevice(t.fleet.db.pool, { deviceId: 'redeliver-1', ...actor });
  await eventually(() => deliveredFor('redeliver-1').length === 2, 'the broker heard of both');
  const session = await connectDevice(port(), 'redeliver-1', tlsOf(device));
  assert.equal(session.outcome, 'connected');

  await withFeedDown(async () => {});
  assert.equal(t.fleet.broker.sessions.count('redeliver-1'), 1, 'the replay did not deliver the old suspension again');
  assert.ok(session.client.connected);
  assert.deepEqual(
    deliveredFor('redeliver-1').map((c) => c.kind),
    ['device_suspended', 'device_resumed'],
  );
  await session.client.endAsync();
});

test('a replay longer than one page is delivered in full, in order, once', async () => {
  const device = await t.enroll('page-1');
  const session = await connectDevice(port(), 'page-1', tlsOf(device));
  assert.equal(session.outcome, 'connected');
  const ended = closed(session.client);
  const from = delivered.length;
  const filler = Array.from({ length: 100_500 }, (_, i) => ({ deviceId: `page-filler-${i}` }));

  await withFeedDown(async () => {
    await recordChange(t.fleet.db.pool, { kind: 'device_resumed', at: new Date(), targets: filler });
    await revokeDevice(t.fleet.db.pool, { deviceId: 'page-1', reason: 'keyCompromise', actor: 'test', now: new Date() });
  });
  // Caught up before it reports live: the last change, on the last page, has closed the session.
  assert.equal(t.fleet.broker.sessions.count('page-1'), 0, 'the revocation after the first page was delivered');
  const replayed = delivered.slice(from);
  assert.equal(replayed.length, filler.length + 1, 'every change, each once');
  assert.ok(replayed.every((c, i) => i === 0 || c.seq > replayed[i - 1]!.seq), 'in the order they were numbered');
  assert.equal(replayed.at(-1)?.deviceId, 'page-1');
  await ended;
  session.client.end(true);
});

test('changes that cannot be replayed drop the identity cache, and the log says so', async () => {
  const device = await t.enroll('gap-1');
  // The last change the broker delivered before the cut is one of gap-1's.
  await suspendDevice(t.fleet.db.pool, { deviceId: 'gap-1', actor: 'test', now: new Date() });
  await resumeDevice(t.fleet.db.pool, { deviceId: 'gap-1', actor: 'test', now: new Date() });
  await eventually(() => deliveredFor('gap-1').length === 2, 'the broker heard of both');
  const warm = await connectDevice(port(), 'gap-1', tlsOf(device));
  assert.equal(warm.outcome, 'connected', 'now cached as active');
  await warm.client.endAsync();

  await withFeedDown(async () => {
    await suspendDevice(t.fleet.db.pool, { deviceId: 'gap-1', actor: 'test', now: new Date() });
    // The history the broker would replay is gone: pruned, or the database restored from a backup.
    await t.fleet.db.pool.query('DELETE FROM registry_changes');
  });
  assert.ok(
    fleetLog.lines().some((line) => line.level === 50 && String(line.msg).includes('cannot be replayed')),
    'the log says the changes could not be replayed',
  );
  const again = await connectDevice(port(), 'gap-1', tlsOf(device));
  assert.equal(again.outcome, 'refused', 'the suspended device is read again, not admitted from the cache');
  again.client.end(true);
});

/** The broker's identity lookups waiting for a lock, as pg_stat_activity shows them. */
async function waitingLookups(admin: pg.Client): Promise<number> {
  const { rows } = await admin.query(
    `SELECT count(*)::int AS n FROM pg_stat_activity
     WHERE application_name = $1 AND wait_event_type = 'Lock' AND query LIKE '%c.fingerprint = ANY($1%'`,
    [CONNECTIONS.broker.applicationName],
  );
  return rows[0].n;
}

test('a lookup raced by a change at every attempt is refused as registry_unavailable, never admitted', async () => {
  const device = await t.enroll('race-1');
  const others = [await t.enroll('race-other-1'), await t.enroll('race-other-2'), await t.enroll('race-other-3')];
  const lockers = Array.from({ length: 3 }, () => new pg.Client({ connectionString: database.url }));
  const admin = new pg.Client({ connectionString: database.url });
  await Promise.all([admin, ...lockers].map((c) => c.connect()));
  try {
    // Each attempt's query waits behind a lock on devices; while it waits, a change is delivered.
    // The next lock is queued behind that query, so the next attempt waits again.
    await lockers[0]!.query('BEGIN; LOCK TABLE devices IN ACCESS EXCLUSIVE MODE');
    const attempt = connectDevice(port(), 'race-1', tlsOf(device));
    for (let i = 0; i < 3; i++) {
      await eventually(async () => (await waitingLookups(admin)) === 1, `lookup ${i + 1} waits`);
      const next = lockers[i + 1];
      if (next) {
        const pid = (await next.query('SELECT pg_backend_pid() AS pid')).rows[0].pid;
        void next.query('BEGIN; LOCK TABLE devices IN ACCESS EXCLUSIVE MODE');
        await eventually(
          async () => (await admin.query('SELECT 1 FROM pg_locks WHERE pid = $1 AND NOT granted', [pid])).rowCount === 1,
          `lock ${i + 2} queued behind lookup ${i + 1}`,
        );
      }
      const epoch = t.fleet.changes.epoch;
      await revokeCertificate(t.fleet.db.pool, { serial: others[i]!.serial, reason: 'superseded', actor: 'test', now: new Date() });
      await eventually(() => t.fleet.changes.epoch > epoch, `change ${i + 1} delivered`);
      await lockers[i]!.query('COMMIT');
    }
    const outcome = await attempt;
    outcome.client.end(true);
    assert.equal(outcome.outcome, 'refused');
    const refusal = fleetLog.lines().find((line) => line.reason === 'registry_unavailable' && line.lookup === 'unsettled');
    assert.ok(refusal, 'refused because the lookup never settled');
  } finally {
    await Promise.all([admin, ...lockers].map((c) => c.end()));
  }
});

test('an enrollment burst holding every API connection does not starve broker lookups', async () => {
  const device = await t.enroll('burst-1');
  // What a factory burst does: every API connection held, each in a transaction while it signs.
  const held = await Promise.all(Array.from({ length: CONNECTIONS.api.max }, () => t.fleet.db.pool.connect()));
  try {
    await Promise.all(held.map((c) => c.query('BEGIN')));
    const session = await connectDevice(port(), 'burst-1', tlsOf(device));
    assert.equal(session.outcome, 'connected', 'an uncached device is looked up on the broker\'s own connections');
    await session.client.endAsync();
  } finally {
    await Promise.all(held.map((c) => c.query('ROLLBACK').finally(() => c.release())));
  }
});

test('a lookup stuck behind a lock is refused within the lock timeout, not left hanging', async () => {
  const device = await t.enroll('stuck-1');
  const locker = new pg.Client({ connectionString: database.url });
  await locker.connect();
  try {
    await locker.query('BEGIN; LOCK TABLE devices IN ACCESS EXCLUSIVE MODE');
    const before = t.fleet.broker.refusals.get('registry_unavailable') ?? 0;
    const attempt = await connectDevice(port(), 'stuck-1', tlsOf(device));
    attempt.client.end(true);
    assert.equal(attempt.outcome, 'refused');
    await eventually(() => (t.fleet.broker.refusals.get('registry_unavailable') ?? 0) > before, 'the lookup gave up while the lock is still held');
  } finally {
    await locker.query('ROLLBACK');
    await locker.end();
  }
  const later = await connectDevice(port(), 'stuck-1', tlsOf(device));
  assert.equal(later.outcome, 'connected');
  await later.client.endAsync();
});

test('an error event on a listening server (EMFILE on accept) is logged, and everything keeps serving', async () => {
  // What libuv reports when accept() fails: an 'error' event on the listening server. Every server
  // this process listens on gets one: the broker, the API and the metrics endpoint.
  const servers = (process as unknown as { _getActiveHandles(): unknown[] })._getActiveHandles().filter(
    (handle): handle is net.Server => handle instanceof net.Server && handle.listening,
  );
  assert.ok(servers.length >= 3, `found ${servers.length} listening servers`);
  for (const server of servers) {
    server.emit('error', Object.assign(new Error('accept EMFILE'), { code: 'EMFILE', errno: -24, syscall: 'accept' }));
  }
  assert.equal(fleetLog.lines().filter((line) => line.code === 'EMFILE').length, servers.length, 'each one logged');
  const device = await t.enroll('after-emfile-1');
  const session = await connectDevice(port(), 'after-emfile-1', tlsOf(device));
  assert.equal(session.outcome, 'connected');
  await session.client.endAsync();
});

test('PostgreSQL restarted under connected devices: sessions stay, cached devices reconnect, unknown ones are refused, no revocation is missed', async () => {
  const held = await t.enroll('restart-held');
  const cached = await t.enroll('restart-cached');
  const unknown = await t.enroll('restart-unknown');
  const heldSession = await connectDevice(port(), 'restart-held', tlsOf(held));
  const warmUp = await connectDevice(port(), 'restart-cached', tlsOf(cached));
  assert.equal(warmUp.outcome, 'connected');
  await warmUp.client.endAsync();

  const { port: dbPort } = new URL(database.url);
  await database.stop();
  await eventually(() => !t.fleet.changes.live, 'the broker noticed the database is gone');

  assert.ok(heldSession.client.connected, 'an admitted device stays connected');
  const fromCache = await connectDevice(port(), 'restart-cached', tlsOf(cached));
  assert.equal(fromCache.outcome, 'connected', 'a device cached as active is admitted within the grace');
  await fromCache.client.endAsync();
  const notCached = await connectDevice(port(), 'restart-unknown', tlsOf(unknown));
  assert.equal(notCached.outcome, 'refused', 'an identity the broker cannot check is refused');
  assert.equal(notCached.connack, 3, 'CONNACK 0x03: server unavailable, so the device retries with backoff');
  notCached.client.end(true);
  assert.ok((t.fleet.broker.refusals.get('registry_unavailable') ?? 0) >= 1);

  database = await openEmbeddedDatabase(dir, log, { port: Number(dbPort) });
  // Revoke at once, maybe before the feed is back: either the NOTIFY or the replay must close it.
  const heldClosed = closed(heldSession.client);
  const revoked = await t.api('POST', '/v1/devices/restart-held/revoke', { token: t.adminToken, json: { reason: 'keyCompromise' } });
  assert.equal(revoked.status, 200, revoked.text);
  await heldClosed;
  heldSession.client.end(true);
  await eventually(() => t.fleet.changes.live, 'the feed came back');

  const revokedAgain = await connectDevice(port(), 'restart-held', tlsOf(held));
  assert.equal(revokedAgain.outcome, 'refused', 'no revoked device is admitted afterwards');
  assert.equal(revokedAgain.connack, 5, 'CONNACK 0x05: not authorized');
  revokedAgain.client.end(true);
  const nowKnown = await connectDevice(port(), 'restart-unknown', tlsOf(unknown));
  assert.equal(nowKnown.outcome, 'connected');
  await nowKnown.client.endAsync();
});
