import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { cp, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import { rotateTicketKeys, TICKET_KEY_BYTES, ticketKeysOf } from '../broker/session-tickets.js';
import { ConfigError, loadConfig } from '../core/config.js';
import { projectRoot } from '../core/paths.js';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { FLEET_BIN, fleetCommand, fleetEnv } from './support/cli.js';
import { scratchDatabase } from './support/fleet.js';
import { httpsRequest } from './support/http.js';
import { closed, connectDevice, type DeviceTls, nextMessage } from './support/mqtt.js';
import { tempDirs } from './support/temp.js';
import { manualTime } from './support/time.js';
import { eventually } from './support/wait.js';

/** Lets a scheduled task's promise chain (repeatEvery runs its task in a microtask) finish. */
const settle = () => new Promise<void>((resolve) => setImmediate(resolve));

/*
 * Two fleet-auth nodes on one registry and one Redis, each a real `fleet start`: node A runs its
 * broker in two worker processes (FLEET_BROKER_WORKERS=2) behind one port, node B in one process with
 * its own data directory (a copy of A's CA key store) and ports. What crosses between them goes
 * through Redis (messages, takeovers) or the registry's change feed (revocations).
 */

// A database number of this test's own; Redis pub/sub is server-wide, so the test's ids are its own too.
const REDIS_URL = process.env.FLEET_TEST_REDIS_URL ?? 'redis://127.0.0.1:6379/13';

interface Node {
  child: ChildProcess;
  apiPort: number;
  brokerPort: number;
  output: () => string;
}

const dirs = tempDirs();
const running = new Set<ChildProcess>();
let database: { url: string; close(): Promise<void> };
let dirA: string;
let dirB: string;
let nodeA: Node;
let nodeB: Node;
let ca: string;
let admin: string;

/** `fleet start` as a child process; resolves once its banner names its ports. */
async function startNode(dataDir: string, env: Record<string, string>): Promise<Node> {
  const child = spawn(process.execPath, [FLEET_BIN, 'start'], {
    env: fleetEnv(dataDir, {
      DATABASE_URL: database.url,
      FLEET_REDIS_URL: REDIS_URL,
      FLEET_LISTEN_HOST: '127.0.0.1',
      FLEET_LOG_FORMAT: 'json',
      LOG_LEVEL: 'info',
      FLEET_BUILD: 'never',
      // Every connection of this test comes from 127.0.0.1.
      FLEET_BROKER_CONNECT_RATE: '100000',
      FLEET_BROKER_CONNECT_BURST: '100000',
      FLEET_API_RATE: '100000',
      FLEET_API_BURST: '100000',
      ...env,
    }),
    cwd: projectRoot,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  for (;;) {
    const api = /provisioning API\s+https:\/\/localhost:(\d+)/.exec(output);
    const broker = /mqtts:\/\/localhost:(\d+)/.exec(output);
    if (api && broker) return { child, apiPort: Number(api[1]), brokerPort: Number(broker[1]), output: () => output };
    if (child.exitCode !== null) throw new Error(`fleet start exited with ${child.exitCode}: ${output}`);
    await sleep(50);
  }
}

/** Waits for `promise`, failing the test (rather than hanging it) when it has not settled after a generous bound. */
async function within<T>(promise: Promise<T>, what: string, ms = 15_000): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const bound = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what}: not within ${ms} ms`)), ms)));
  try {
    return await Promise.race([promise, bound]);
  } finally {
    clearTimeout(timer);
  }
}

async function api(node: Node, method: string, pathname: string, json?: unknown) {
  return httpsRequest(`https://localhost:${node.apiPort}${pathname}`, {
    method,
    headers: { authorization: `Bearer ${admin}`, 'content-type': 'application/json' },
    body: json === undefined ? undefined : JSON.stringify(json),
    ca,
  });
}

/** Registers a device (or a service with `role`) on node A and enrolls it; returns its TLS identity. */
async function enroll(id: string, role?: string): Promise<DeviceTls> {
  const registered = role ? await api(nodeA, 'POST', '/v1/services', { id, role }) : await api(nodeA, 'POST', '/v1/devices', { id });
  assert.equal(registered.status, 201, registered.text);
  const identity = await createDeviceIdentity(id);
  const enrolled = await api(nodeA, 'POST', '/v1/enrollments', { token: registered.json.enrollmentToken, csr: identity.csrPem });
  assert.equal(enrolled.status, 201, enrolled.text);
  return { ca, cert: enrolled.json.certificate, key: identity.keyPem };
}

before(async () => {
  database = await scratchDatabase(await dirs.make('fleet-cluster-db-'));
  dirA = await dirs.make('fleet-cluster-a-');
  dirB = await dirs.make('fleet-cluster-b-');
  nodeA = await startNode(dirA, { FLEET_BROKER_WORKERS: '2' });
  // Node B's CA key store: a copy of node A's (the same CA, signing and trusting alike).
  await cp(path.join(dirA, 'pki'), path.join(dirB, 'pki'), { recursive: true, preserveTimestamps: true });
  nodeB = await startNode(dirB, { FLEET_BROKER_WORKERS: '1' });
  ca = await readFile(path.join(dirA, 'pki', 'root.crt'), 'utf8');
  const token = await fleetCommand(['token', 'create', '--role', 'admin'], { DATABASE_URL: database.url }, dirA);
  assert.equal(token.code, 0, token.stderr);
  admin = token.stdout.trim().split('\n').at(-1)!;
});

after(async () => {
  for (const child of running) {
    if (child.exitCode !== null) continue;
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
  }
  await database?.close();
  await dirs.removeAll();
});

test('more than one broker worker without Redis is refused, saying to set FLEET_REDIS_URL', () => {
  assert.throws(() => loadConfig({ FLEET_BROKER_WORKERS: '2' }), (error: Error) => error instanceof ConfigError && /FLEET_REDIS_URL must be set/.test(error.message));
  assert.equal(loadConfig({}).brokerWorkers, 1, 'without Redis: one broker process, as before');
  assert.equal(loadConfig({ FLEET_REDIS_URL: REDIS_URL, FLEET_BROKER_WORKERS: '3' }).brokerWorkers, 3);
  assert.throws(() => loadConfig({ FLEET_BROKER_WORKERS: '0' }), ConfigError);
  assert.throws(() => loadConfig({ FLEET_REDIS_URL: 'http://127.0.0.1:6379' }), ConfigError);
});

test('ticket keys: 48 random bytes, replaced on schedule and sent on; a malformed message carries none', async () => {
  const sent: Buffer[] = [];
  const time = manualTime();
  const rotation = rotateTicketKeys({ rotated: (m) => sent.push(ticketKeysOf(m)!), scheduler: time.scheduler, intervalMs: 60_000 });
  const first = ticketKeysOf(rotation.message());
  assert.equal(first?.length, TICKET_KEY_BYTES);
  time.advance(59_999);
  await settle();
  assert.equal(sent.length, 0, 'nothing before the interval');
  time.advance(1);
  await settle();
  assert.equal(sent.length, 1);
  assert.notDeepEqual(sent[0], first, 'a rotation makes new keys');
  assert.deepEqual(ticketKeysOf(rotation.message()), sent[0], 'a worker starting now gets the new keys');
  rotation.stop();
  for (const bad of [undefined, 'keys', { type: 'fleet:ticket-keys', keys: Buffer.alloc(47).toString('base64') }, { type: 'other', keys: first!.toString('base64') }]) {
    assert.equal(ticketKeysOf(bad), undefined);
  }
});

describe('brokers sharing state through Redis', () => {
  test('node A runs two broker workers on one port', () => {
    const listening = nodeA.output().split('\n').find((line) => line.includes('broker workers listening'));
    assert.ok(listening, nodeA.output());
    const { pids, port } = JSON.parse(listening) as { pids: number[]; port: number };
    assert.equal(new Set(pids).size, 2);
    assert.equal(port, nodeA.brokerPort);
  });

  test('a fleet-commander service on node B reaches a device on node A', async () => {
    const device = await connectDevice(nodeA.brokerPort, 'cl-pump-1', await enroll('cl-pump-1'));
    const commander = await connectDevice(nodeB.brokerPort, 'cl-commander', await enroll('cl-commander', 'fleet-commander'));
    assert.equal(device.outcome, 'connected');
    assert.equal(commander.outcome, 'connected');
    await device.client.subscribeAsync('devices/cl-pump-1/commands/#');
    const received = nextMessage(device.client, 'devices/cl-pump-1/commands/', 10_000);
    await commander.client.publishAsync('devices/cl-pump-1/commands/reboot', 'now', { qos: 1 });
    assert.deepEqual(await received, { topic: 'devices/cl-pump-1/commands/reboot', payload: 'now' });
    device.client.end(true);
    commander.client.end(true);
  });

  test('a revocation through the API closes sessions on both nodes', async () => {
    const onA = await connectDevice(nodeA.brokerPort, 'cl-valve-a', await enroll('cl-valve-a'));
    const onB = await connectDevice(nodeB.brokerPort, 'cl-valve-b', await enroll('cl-valve-b'));
    assert.equal(onA.outcome, 'connected');
    assert.equal(onB.outcome, 'connected');
    // Each revoked through the other node's API: the change feed carries it to every broker process.
    assert.equal((await api(nodeB, 'POST', '/v1/devices/cl-valve-a/revoke', { reason: 'keyCompromise' })).status, 200);
    assert.equal((await api(nodeA, 'POST', '/v1/devices/cl-valve-b/revoke', { reason: 'keyCompromise' })).status, 200);
    await within(Promise.all([closed(onA.client), closed(onB.client)]), 'both sessions closed');
  });

  test('a second connection of a client id on node B closes the first one on node A', async () => {
    const tls = await enroll('cl-meter-1');
    const first = await connectDevice(nodeA.brokerPort, 'cl-meter-1', tls);
    assert.equal(first.outcome, 'connected');
    const firstClosed = closed(first.client);
    const second = await connectDevice(nodeB.brokerPort, 'cl-meter-1', tls);
    assert.equal(second.outcome, 'connected');
    await within(firstClosed, 'the session on node A closed');
    assert.equal(second.client.connected, true, 'the new session stays');
    second.client.end(true);
  });

  test('a TLS session from one worker resumes on every worker of node A', async () => {
    const tls = await enroll('cl-gauge-1');
    const first = await connectDevice(nodeA.brokerPort, 'cl-gauge-1', tls);
    assert.equal(first.outcome, 'connected');
    // TLS 1.3 sends its tickets after the handshake; one has arrived by the time the next packet does.
    await first.client.subscribeAsync('devices/cl-gauge-1/#');
    const ticket = first.tickets.at(-1);
    assert.ok(ticket, 'the broker issued a session ticket');
    first.client.end(true);
    await closed(first.client);
    // The primary hands connections to the workers in turn, so six in a row reach both; each must resume.
    const resumed: boolean[] = [];
    for (let i = 0; i < 6; i++) {
      const again = await connectDevice(nodeA.brokerPort, 'cl-gauge-1', { ...tls, session: ticket });
      assert.equal(again.outcome, 'connected');
      resumed.push(again.resumed);
      again.client.end(true);
      await closed(again.client);
    }
    assert.deepEqual(resumed, [true, true, true, true, true, true]);
  });

  test('a broker worker that dies is replaced, and node A keeps admitting devices', async () => {
    const listening = nodeA.output().split('\n').find((line) => line.includes('broker workers listening'))!;
    const [victim] = (JSON.parse(listening) as { pids: number[] }).pids;
    process.kill(victim!, 'SIGKILL');
    await eventually(() => nodeA.output().includes('a broker worker exited; starting another'), 'the primary noticed the dead worker');
    // The replacement's own line: its broker listens on the shared port (two lines were there before).
    await eventually(() => nodeA.output().split('MQTT broker listening').length === 4, 'a new worker listening');
    const tls = await enroll('cl-tank-1');
    for (let i = 0; i < 4; i++) {
      const again = await connectDevice(nodeA.brokerPort, 'cl-tank-1', tls);
      assert.equal(again.outcome, 'connected');
      again.client.end(true);
      await closed(again.client);
    }
  });
});
