import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, readdir, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { setTimeout as sleep } from 'node:timers/promises';
import pg from 'pg';
import { openEmbeddedDatabase } from '../core/db/embedded.js';
import { silentLogger } from '../core/log.js';
import { projectRoot } from '../core/paths.js';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { httpsRequest } from './support/http.js';
import { connectDevice } from './support/mqtt.js';
import { run } from './support/openssl.js';
import { eventually } from './support/wait.js';

const FLEET = path.join(projectRoot, 'dist', 'cli', 'fleet.js');

/**
 * `fleet start` as a user runs it, as a real child process on the embedded database (DATABASE_URL
 * removed on purpose): a device connects, the process gets a signal the way a terminal, a service
 * manager or npm delivers it, and then nothing may be left running and the registry must say the
 * device is offline, before any later start had a chance to clear it.
 */
let dataDir: string;
let env: NodeJS.ProcessEnv;

before(async () => {
  dataDir = await mkdtemp(path.join(os.tmpdir(), 'fleet-shutdown-'));
  env = { ...process.env, FLEET_DATA_DIR: dataDir, FLEET_API_PORT: '0', FLEET_BROKER_PORT: '0', FLEET_METRICS_PORT: '0', FLEET_PKI_HTTP_PORT: '0', LOG_LEVEL: 'info' };
  delete env.DATABASE_URL;
});
const running = new Set<ChildProcess>();
after(async () => {
  // A failed test may leave its server up: stop it the way a user would, and wait.
  for (const child of running) {
    if (child.exitCode !== null) continue;
    child.kill('SIGTERM');
    await new Promise((resolve) => child.once('exit', resolve));
  }
  await rm(dataDir, { recursive: true, force: true });
});

interface Started {
  child: ChildProcess;
  apiPort: number;
  brokerPort: number;
  output: () => string;
  exited: Promise<number | null>;
}

/** Starts `fleet start` (or `npm start`) in a process group of its own, as a terminal would. */
async function start(how: 'node' | 'npm'): Promise<Started> {
  const [command, args] = how === 'node' ? [process.execPath, [FLEET, 'start']] : ['npm', ['start', '--ignore-scripts', '--silent']];
  const child = spawn(command, args, { env, cwd: projectRoot, stdio: ['ignore', 'pipe', 'pipe'], detached: true });
  running.add(child);
  let output = '';
  child.stdout!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  child.stderr!.on('data', (chunk: Buffer) => (output += chunk.toString()));
  const exited = new Promise<number | null>((resolve) => child.once('exit', (code) => resolve(code)));
  for (;;) {
    const api = /https:\/\/localhost:(\d+)/.exec(output);
    const broker = /mqtts:\/\/localhost:(\d+)/.exec(output);
    if (api && broker) return { child, apiPort: Number(api[1]), brokerPort: Number(broker[1]), output: () => output, exited };
    if (child.exitCode !== null) throw new Error(`${how} start exited with ${child.exitCode}: ${output}`);
    await sleep(50);
  }
}

const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Every process below `pid` (npm's shell, node, PostgreSQL), read from /proc. */
async function descendants(pid: number): Promise<number[]> {
  const found: number[] = [];
  const tasks = await readdir(`/proc/${pid}/task`).catch(() => [] as string[]);
  for (const task of tasks) {
    const children = await readFile(`/proc/${pid}/task/${task}/children`, 'utf8').catch(() => '');
    for (const child of children.split(' ').filter(Boolean).map(Number)) found.push(child, ...(await descendants(child)));
  }
  return found;
}

const postmasterPid = async () => Number((await readFile(path.join(dataDir, 'postgres', 'postmaster.pid'), 'utf8')).split('\n')[0]);

/** What the registry says of a device, read with no broker running (so nothing clears presence first). */
async function presenceOf(deviceId: string): Promise<{ connected: boolean; lastSeenAt: Date | null }> {
  const database = await openEmbeddedDatabase(dataDir, silentLogger());
  assert.equal(database.owned, true, 'no PostgreSQL was left running on the data directory');
  const client = new pg.Client({ connectionString: database.url });
  try {
    await client.connect();
    const { rows } = await client.query('SELECT connected, last_seen_at FROM devices WHERE id = $1', [deviceId]);
    return { connected: rows[0].connected, lastSeenAt: rows[0].last_seen_at };
  } finally {
    await client.end();
    await database.stop();
  }
}

let devices = 0;

/** Registers (CLI beside the running server), enrolls (API) and connects (MQTT) a device, and waits until the registry shows it connected. */
async function connectOne(fleet: Started) {
  const deviceId = `shutdown-${++devices}`;
  const added = await run(process.execPath, [FLEET, 'device', 'add', deviceId], { env: { ...env, LOG_LEVEL: 'warn' } });
  assert.equal(added.code, 0, added.stderr);
  const token = added.stdout.trim().split('\n').at(-1)!;
  const identity = await createDeviceIdentity(deviceId);
  const ca = await readFile(path.join(dataDir, 'pki', 'root.crt'), 'utf8');
  const enrolled = await httpsRequest(`https://localhost:${fleet.apiPort}/v1/enrollments`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ token, csr: identity.csrPem }),
    ca,
  });
  assert.equal(enrolled.status, 201, enrolled.text);
  const session = await connectDevice(fleet.brokerPort, deviceId, { ca, cert: enrolled.json.certificate, key: identity.keyPem });
  assert.equal(session.outcome, 'connected');
  const joined = await openEmbeddedDatabase(dataDir, silentLogger());
  const client = new pg.Client({ connectionString: joined.url });
  await client.connect();
  await eventually(async () => (await client.query('SELECT connected FROM devices WHERE id = $1', [deviceId])).rows[0].connected, 'presence recorded');
  await client.end();
  return { deviceId, session };
}

async function stopsCleanly(how: 'node' | 'npm', deliver: (child: ChildProcess) => void): Promise<void> {
  const fleet = await start(how);
  const { deviceId, session } = await connectOne(fleet);
  const postgres = await postmasterPid();
  const tree = await descendants(fleet.child.pid!);
  assert.ok(tree.includes(postgres), 'the embedded PostgreSQL runs below the started process');

  deliver(fleet.child);
  const code = await fleet.exited;
  session.client.end(true);
  assert.equal(code, 0, fleet.output());
  assert.doesNotMatch(fleet.output(), /could not record presence/);
  await eventually(async () => tree.every((pid) => !isAlive(pid)), 'every process it started has exited');
  assert.equal(existsSync(path.join(dataDir, 'postgres', 'postmaster.pid')), false, 'PostgreSQL shut down cleanly');

  const presence = await presenceOf(deviceId);
  assert.equal(presence.connected, false, 'the registry shows the device offline');
  assert.ok(presence.lastSeenAt, 'with the time it was last seen');
}

describe('shutdown records presence and leaves nothing running', () => {
  test('SIGTERM to node', () => stopsCleanly('node', (child) => child.kill('SIGTERM')));
  test('Ctrl-C on node (SIGINT to its whole process group)', () => stopsCleanly('node', (child) => process.kill(-child.pid!, 'SIGINT')));
  test('SIGTERM to npm start', () => stopsCleanly('npm', (child) => child.kill('SIGTERM')));
  test('Ctrl-C on npm start (SIGINT to its whole process group)', () => stopsCleanly('npm', (child) => process.kill(-child.pid!, 'SIGINT')));
});

