import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { ensureDataDir } from '../core/db/database.js';
import { type EmbeddedDatabase, openEmbeddedDatabase } from '../core/db/embedded.js';
import { silentLogger } from '../core/log.js';
import { revokeDevice } from '../core/registry/index.js';
import { closed, connectDevice } from './support/mqtt.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';

/**
 * These tests stop and start PostgreSQL under a running broker, so they run on an embedded server of
 * their own (never the machine's shared one), whatever DATABASE_URL says.
 */
let dir: string;
let database: EmbeddedDatabase;
let t: TestFleet;
const log = silentLogger();

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'fleet-resilience-'));
  await ensureDataDir(dir);
  database = await openEmbeddedDatabase(dir, log);
  t = await startTestFleet({ databaseUrl: database.url, env: { FLEET_BROKER_STALE_GRACE: '5m' } });
});
after(async () => {
  await t?.close();
  await database?.stop();
  await rm(dir, { recursive: true, force: true });
});

const tlsOf = (d: EnrolledDevice) => ({ ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });
const port = () => t.fleet.broker.port;

async function until(check: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 300 && !check(); i++) await sleep(50);
  assert.ok(check(), `never happened: ${what}`);
}

test('a revocation committed while the change feed is down is replayed, not missed', async () => {
  const device = await t.enroll('replay-1');
  const session = await connectDevice(port(), 'replay-1', tlsOf(device));
  assert.equal(session.outcome, 'connected');
  const ended = closed(session.client);
  await until(() => t.fleet.changes.live, 'the feed is live');

  // Cut the broker's LISTEN connection and revoke before it can reconnect (it waits at least 100 ms):
  // the NOTIFY reaches nobody, so only the replay from registry_changes can close the session.
  await t.fleet.db.pool.query(`SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'fleet-auth broker changes'`);
  await revokeDevice(t.fleet.db.pool, { deviceId: 'replay-1', reason: 'keyCompromise', actor: 'test', now: new Date() });
  await ended;
  session.client.end(true);
  await until(() => t.fleet.changes.live, 'the feed came back');
  const again = await connectDevice(port(), 'replay-1', tlsOf(device));
  assert.equal(again.outcome, 'refused');
  assert.equal(again.connack, 5, 'CONNACK 0x05: not authorized');
  again.client.end(true);
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
  await until(() => !t.fleet.changes.live, 'the broker noticed the database is gone');

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
  await until(() => t.fleet.changes.live, 'the feed came back');

  const revokedAgain = await connectDevice(port(), 'restart-held', tlsOf(held));
  assert.equal(revokedAgain.outcome, 'refused', 'no revoked device is admitted afterwards');
  assert.equal(revokedAgain.connack, 5, 'CONNACK 0x05: not authorized');
  revokedAgain.client.end(true);
  const nowKnown = await connectDevice(port(), 'restart-unknown', tlsOf(unknown));
  assert.equal(nowKnown.outcome, 'connected');
  await nowKnown.client.endAsync();
});
