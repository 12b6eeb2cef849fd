import assert from 'node:assert/strict';
import os from 'node:os';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { createBrokerMetrics } from '../broker/metrics.js';
import { loadTopicPolicy } from '../broker/policy.js';
import { type RunningBroker, startBroker } from '../broker/server.js';
import { ConfigError, loadConfig } from '../core/config.js';
import { recordPresence, sweepExpiredBrokerNodes } from '../core/registry/index.js';
import { capturingLogger } from './support/log.js';
import { connectDevice, type Connection } from './support/mqtt.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { manualTime, type ManualTime } from './support/time.js';
import { eventually } from './support/wait.js';

/**
 * Presence with several broker nodes on one registry. The fleet (node "fleet", with the API that
 * enrolls the devices) and extra brokers started beside it share the database, the CA and one
 * hand-moved time; each extra broker has a pool of its own, so a node can be killed by taking its
 * database away: it can then neither renew its lease nor clear its presence, as after a crash.
 */
const LEASE_MS = 30_000;
let time: ManualTime;
let t: TestFleet;
const fleetLog = capturingLogger();
const devices: Record<string, EnrolledDevice> = {};
const sessions: Connection[] = [];

before(async () => {
  time = manualTime();
  t = await startTestFleet({ time, log: fleetLog.log, env: { FLEET_NODE_ID: 'fleet', FLEET_PRESENCE_LEASE: '30s' } });
  for (const id of ['on-a', 'on-b', 'on-c', 'on-d']) devices[id] = await t.enroll(id);
});
after(async () => {
  for (const s of sessions) s.client.end(true);
  await t?.close();
});

interface Node {
  broker: RunningBroker;
  /** A clean shutdown: sessions closed, this node's devices written offline, its lease given up. */
  stop(): Promise<void>;
  /** Dies without a word: its database goes first, so nothing it knows reaches the registry. */
  kill(): Promise<void>;
}

async function startNode(nodeId: string): Promise<Node> {
  const pool = new pg.Pool({ connectionString: t.fleet.db.url, max: 2 });
  const deps = {
    pool,
    metrics: createBrokerMetrics(),
    changes: t.fleet.changes,
    ca: t.fleet.ca,
    policy: await loadTopicPolicy(undefined),
    clock: time.clock,
    scheduler: time.scheduler,
    log: capturingLogger().log,
  };
  const broker = await startBroker(deps, { host: '127.0.0.1', port: 0, nodeId, presenceLeaseMs: LEASE_MS });
  return {
    broker,
    async stop() {
      await broker.close();
      await pool.end();
    },
    async kill() {
      await pool.end();
      await broker.close();
    },
  };
}

async function connect(node: RunningBroker, deviceId: string): Promise<Connection> {
  const d = devices[deviceId]!;
  const session = await connectDevice(node.port, deviceId, { ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });
  assert.equal(session.outcome, 'connected', `${deviceId} connected`);
  sessions.push(session);
  return session;
}

/** What the registry shows of a device: connected, and through which node. */
async function shown(deviceId: string): Promise<{ connected: boolean; node: string | null }> {
  const { rows } = await t.fleet.db.pool.query('SELECT connected, connected_node FROM devices WHERE id = $1', [deviceId]);
  return { connected: rows[0].connected, node: rows[0].connected_node };
}
const shownOn = (deviceId: string, node: string) =>
  eventually(async () => (await shown(deviceId)).node === node && (await shown(deviceId)).connected, `${deviceId} shown connected through ${node}`);
const leases = async () => (await t.fleet.db.pool.query('SELECT id FROM broker_nodes ORDER BY id')).rows.map((r) => r.id as string);

test('a node that starts or stops cleanly leaves the devices of other nodes shown connected', async () => {
  const a = await startNode('host-a/w1');
  await connect(a.broker, 'on-a');
  await shownOn('on-a', 'host-a/w1');

  const b = await startNode('host-b/w1');
  await connect(b.broker, 'on-b');
  await shownOn('on-b', 'host-b/w1');
  assert.deepEqual(await shown('on-a'), { connected: true, node: 'host-a/w1' }, 'starting node B left node A devices alone');

  await b.stop();
  assert.deepEqual(await shown('on-b'), { connected: false, node: null }, 'B wrote its own device offline');
  assert.deepEqual(await shown('on-a'), { connected: true, node: 'host-a/w1' }, 'and left node A device connected');
  assert.deepEqual(await leases(), ['fleet', 'host-a/w1'], 'B gave up its lease');
  await a.stop();
  assert.equal((await shown('on-a')).connected, false);
});

test('a killed node keeps its devices shown until its lease expires; then another node clears them', async () => {
  const a = await startNode('host-a/w1');
  await connect(a.broker, 'on-a');
  await shownOn('on-a', 'host-a/w1');
  const leaseEnd = time.now() + LEASE_MS;
  await a.kill();
  assert.deepEqual(await shown('on-a'), { connected: true, node: 'host-a/w1' }, 'nothing reached the registry');

  // Two thirds of a lease on: the fleet renewed its own lease, and a sweep (the statement every node
  // runs) finds nothing expired.
  time.advance(LEASE_MS - 10_000);
  assert.deepEqual(await sweepExpiredBrokerNodes(t.fleet.db.pool, time.clock()), { nodes: [], devices: 0 });
  assert.equal((await shown('on-a')).connected, true, 'still within the lease');

  // Past the lease: the fleet's own periodic sweep clears A's device and says so. Its next renewal is
  // scheduled when the last one finished, which a slow machine may put after the time advanced to, so
  // each look moves time on by a renewal period until the sweep has run.
  time.advanceTo(leaseEnd + 1);
  await eventually(async () => {
    if (!(await shown('on-a')).connected) return true;
    time.advance(LEASE_MS / 3);
    return false;
  }, 'the fleet node cleared the dead node device');
  assert.deepEqual(await leases(), ['fleet']);
  const line = fleetLog.lines().find((l) => l.msg.startsWith('cleared the presence of broker nodes whose lease expired'));
  assert.deepEqual({ nodes: line?.nodes, devices: line?.devices }, { nodes: ['host-a/w1'], devices: 1 });
});

test('a node started again under its id clears its own leftovers at once, and only those', async () => {
  const other = await startNode('host-b/w1');
  await connect(other.broker, 'on-b');
  await shownOn('on-b', 'host-b/w1');
  const a = await startNode('host-a/w1');
  await connect(a.broker, 'on-c');
  await shownOn('on-c', 'host-a/w1');
  await a.kill();

  const again = await startNode('host-a/w1');
  assert.deepEqual(await shown('on-c'), { connected: false, node: null }, 'cleared at start, with no time passing');
  assert.deepEqual(await shown('on-b'), { connected: true, node: 'host-b/w1' }, 'another node device untouched');
  await again.stop();
  await other.stop();
});

test('a node whose lease lapsed while it stalled writes its live devices connected again', async () => {
  const a = await startNode('host-a/w1');
  await connect(a.broker, 'on-d');
  await shownOn('on-d', 'host-a/w1');
  // As if A stalled past its lease and another node swept it meanwhile.
  await t.fleet.db.pool.query(`UPDATE broker_nodes SET lease_expires_at = $1 WHERE id = 'host-a/w1'`, [new Date(time.now() - 1)]);
  assert.deepEqual(await sweepExpiredBrokerNodes(t.fleet.db.pool, time.clock()), { nodes: ['host-a/w1'], devices: 1 });
  assert.equal((await shown('on-d')).connected, false);

  time.advance(LEASE_MS / 3);
  await shownOn('on-d', 'host-a/w1');
  assert.ok((await leases()).includes('host-a/w1'), 'A holds a lease again');
  await a.stop();
});

test('two nodes sweeping at once clear a dead node once; a device that moved on is not written offline by the old node', async () => {
  const pool = t.fleet.db.pool;
  const at = time.clock();
  await pool.query(`INSERT INTO broker_nodes (id, started_at, lease_expires_at) VALUES ('ghost', $1, $1)`, [new Date(at.getTime() - LEASE_MS)]);
  await recordPresence(pool, 'ghost', [{ deviceId: 'on-a', connected: true, at, peerAddress: null, serial: devices['on-a']!.serial }]);
  const [one, two] = await Promise.all([sweepExpiredBrokerNodes(pool, at), sweepExpiredBrokerNodes(pool, at)]);
  assert.deepEqual([...one.nodes, ...two.nodes], ['ghost'], 'one of them dropped the lease');
  assert.equal(one.devices + two.devices, 1, 'and the device was cleared once');

  // on-b connects through "fleet", then its old session on "ghost" ends, later: the fleet's row stands.
  const later = new Date(at.getTime() + 1000);
  await recordPresence(pool, 'fleet', [{ deviceId: 'on-b', connected: true, at: later, peerAddress: null, serial: devices['on-b']!.serial }]);
  await recordPresence(pool, 'ghost', [{ deviceId: 'on-b', connected: false, at: new Date(later.getTime() + 1000), peerAddress: null, serial: null }]);
  assert.deepEqual(await shown('on-b'), { connected: true, node: 'fleet' });
  await recordPresence(pool, 'fleet', [{ deviceId: 'on-b', connected: false, at: new Date(later.getTime() + 2000), peerAddress: null, serial: null }]);
});

test('FLEET_NODE_ID is the host name unless set, any printable text; FLEET_PRESENCE_LEASE is at least 3s', () => {
  assert.equal(loadConfig({}).brokerNodeId, os.hostname().slice(0, 200) || 'fleet-auth');
  assert.equal(loadConfig({}).presenceLeaseMs, 30_000);
  assert.equal(loadConfig({ FLEET_NODE_ID: 'rack-2.example/w3' }).brokerNodeId, 'rack-2.example/w3');
  assert.throws(() => loadConfig({ FLEET_NODE_ID: 'two words' }), (e: unknown) => e instanceof ConfigError && /FLEET_NODE_ID: must be 1 to 200 printable/.test(e.message));
  assert.throws(() => loadConfig({ FLEET_NODE_ID: 'x'.repeat(201) }), ConfigError);
  assert.throws(() => loadConfig({ FLEET_PRESENCE_LEASE: '2s' }), (e: unknown) => e instanceof ConfigError && /FLEET_PRESENCE_LEASE must be at least 3s/.test(e.message));
  assert.equal(loadConfig({ FLEET_PRESENCE_LEASE: '2m' }).presenceLeaseMs, 120_000);
});
