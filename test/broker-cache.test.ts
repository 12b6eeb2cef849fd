import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import { ensureDataDir } from '../core/db/database.js';
import { type EmbeddedDatabase, openEmbeddedDatabase } from '../core/db/embedded.js';
import { silentLogger } from '../core/log.js';
import pg from 'pg';
import { resumeDevice, suspendDevice } from '../core/registry/index.js';
import { normalizeFingerprint } from '../core/pki/x509.js';
import { IdentityCache } from '../broker/identity-cache.js';
import { identityResolver, RegistryUnavailable } from '../broker/identity.js';
import { connectDevice } from './support/mqtt.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { eventually } from './support/wait.js';

/**
 * The broker's identity cache through the real broker: a small FLEET_BROKER_CACHE_SIZE, and the
 * registry made unreachable by stopping this file's own embedded PostgreSQL. Time is the fleet's
 * injected clock, moved by the test, never waited out.
 */
let dir: string;
let database: EmbeddedDatabase;
let t: TestFleet;
let offsetMs = 0;
const GRACE_MS = 60_000;
const devices: Record<string, EnrolledDevice> = {};

before(async () => {
  dir = await mkdtemp(path.join(os.tmpdir(), 'fleet-cache-'));
  await ensureDataDir(dir);
  database = await openEmbeddedDatabase(dir, silentLogger());
  t = await startTestFleet({
    databaseUrl: database.url,
    env: { FLEET_BROKER_CACHE_SIZE: '2', FLEET_BROKER_STALE_GRACE: '1m' },
    clock: () => new Date(Date.now() + offsetMs),
  });
  for (const id of ['cache-a', 'cache-b', 'cache-c']) devices[id] = await t.enroll(id);
});
after(async () => {
  await t?.close();
  await database?.stop();
  await rm(dir, { recursive: true, force: true });
});

async function attempt(deviceId: string): Promise<'connected' | 'refused'> {
  const d = devices[deviceId]!;
  const session = await connectDevice(t.fleet.broker.port, deviceId, { ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });
  if (session.outcome === 'connected') await session.client.endAsync();
  else session.client.end(true);
  return session.outcome;
}

const unavailable = () => t.fleet.broker.refusals.get('registry_unavailable') ?? 0;

test('past the cache size the least recently used identity is evicted and looked up again', async () => {
  for (const id of ['cache-a', 'cache-b', 'cache-c']) assert.equal(await attempt(id), 'connected');
  // Cached now: b and c. a was evicted when c came in.
  await database.stop();
  await eventually(() => !t.fleet.changes.live, 'the broker noticed the database is gone');
  const before = unavailable();
  assert.equal(await attempt('cache-a'), 'refused', 'the evicted identity needs the registry, which is down');
  assert.equal(unavailable(), before + 1);
  assert.equal(await attempt('cache-b'), 'connected', 'a cached identity is admitted within the grace');
  assert.equal(await attempt('cache-c'), 'connected');
});

test('after the stale grace, a cached identity is refused too', async () => {
  // The grace runs from when the feed was lost, on the fleet's clock: set the clock from there, since
  // the real time the first test took after the loss counts too (seconds on a busy machine).
  const lost = t.fleet.changes.lostSince!;
  offsetMs = lost + GRACE_MS - 10_000 - Date.now();
  assert.equal(await attempt('cache-b'), 'connected', 'still within the grace');
  offsetMs += 20_000;
  const before = unavailable();
  assert.equal(await attempt('cache-b'), 'refused', 'the grace is over: nothing is admitted unchecked');
  assert.equal(unavailable(), before + 1);
});

test('with the registry back, an evicted identity is read again and reflects what changed meanwhile', async () => {
  database = await openEmbeddedDatabase(dir, silentLogger(), { port: Number(new URL(database.url).port) });
  await eventually(() => t.fleet.changes.live, 'the feed came back');
  const heard: string[] = [];
  t.fleet.changes.onChange((change) => heard.push(`${change.deviceId} ${change.kind}`));
  const actor = { deviceId: 'cache-a', actor: 'test', now: new Date() };
  await suspendDevice(t.fleet.db.pool, actor);
  await eventually(() => heard.includes('cache-a device_suspended'), 'the broker heard of the suspension');
  const suspended = t.fleet.broker.refusals.get('suspended') ?? 0;
  assert.equal(await attempt('cache-a'), 'refused');
  assert.equal(t.fleet.broker.refusals.get('suspended') ?? 0, suspended + 1, 'refused as suspended: read from the registry');
  await resumeDevice(t.fleet.db.pool, actor);
  await eventually(() => heard.includes('cache-a device_resumed'), 'the broker heard of the resumption');
  assert.equal(await attempt('cache-a'), 'connected');
});

test('cache misses that arrive together share registry queries, and each gets its own identity', async () => {
  // A pool of the test's own, so every query it counts is the resolver's.
  const pool = new pg.Pool({ connectionString: database.url, max: 4 });
  let queries = 0;
  pool.on('acquire', () => queries++);
  const resolverOn = (on: pg.Pool) => identityResolver({ pool: on, changes: t.fleet.changes, cache: new IdentityCache(10), staleGraceMs: GRACE_MS, now: Date.now });
  const resolve = resolverOn(pool);
  const fingerprintOf = (id: string) => normalizeFingerprint(new X509Certificate(devices[id]!.certificatePem).fingerprint256);
  const unknown = 'f'.repeat(64);
  const asked = ['cache-a', 'cache-b', 'cache-c', 'cache-a', 'cache-b', 'cache-c', 'cache-c', 'cache-b', 'cache-a', null, 'cache-a', null];
  try {
    const answers = await Promise.all(asked.map((id) => resolve(id ? fingerprintOf(id) : unknown)));
    assert.deepEqual(
      answers.map((identity) => identity?.deviceId ?? null),
      asked,
      'each caller gets the identity of its own fingerprint, and an unknown one gets none',
    );
    // Two queries go at once (one miss each); the other ten misses wait for them and share the third.
    assert.equal(queries, 3);
  } finally {
    await pool.end();
  }
  // A batch that fails fails every caller in it, closed (a fresh resolver: nothing cached to fall back on).
  const unreachable = resolverOn(pool);
  const refused = await Promise.allSettled(['cache-a', 'cache-b', 'cache-c'].map((id) => unreachable(fingerprintOf(id))));
  for (const outcome of refused) assert.ok(outcome.status === 'rejected' && outcome.reason instanceof RegistryUnavailable);
});
