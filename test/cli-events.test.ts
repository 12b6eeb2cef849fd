import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { after, before, test } from 'node:test';
import { latestDeviceEventId } from '../core/registry/index.js';
import { FLEET_BIN, fleetCli, fleetCliEnv } from './support/cli.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';
import { connectDevice } from './support/mqtt.js';
import { eventually } from './support/wait.js';

/*
 * `fleet events` beside a running fleet, as an operator types it: the latest events of a device as a
 * table or JSON, everything after an id, CA changes made with `fleet ca rotate`, and --follow printing
 * events as they are written until Ctrl-C.
 */

let t: TestFleet;
before(async () => {
  t = await startTestFleet();
});
after(() => t?.close());

const events = async (...args: string[]) => {
  const res = await fleetCli(t, ['events', ...args]);
  assert.equal(res.code, 0, res.stderr);
  return res.stdout;
};

test('fleet events --device lists what happened to a device, oldest first, as a table or JSON', async () => {
  const device = await t.enroll('cli-ev');
  const session = await connectDevice(t.fleet.broker.port, 'cli-ev', { ca: t.rootPem, cert: device.certificatePem, key: device.identity.keyPem });
  await session.client.endAsync();
  await eventually(async () => JSON.parse(await events('--device', 'cli-ev', '--json')).length === 3, 'the connect and disconnect were recorded');

  const listed = JSON.parse(await events('--device', 'cli-ev', '--json'));
  assert.deepEqual(listed.map((e: { kind: string }) => e.kind), ['enrolled', 'connected', 'disconnected']);
  assert.equal(listed[1].serial, device.serial);
  assert.equal(listed[1].address, '127.0.0.1');
  assert.equal(listed[2].reason, 'client_disconnect');

  const lines = (await events('--device', 'cli-ev')).trimEnd().split('\n');
  assert.match(lines[0]!, /^ID\s+AT\s+KIND\s+DEVICE\s+SERIAL\s+ADDRESS\s+REASON$/);
  assert.equal(lines.length, 4);
  assert.match(lines[3]!, /disconnected\s+cli-ev\s+[0-9a-f]+\s+127\.0\.0\.1\s+client_disconnect$/);

  const since = listed[0].id;
  const after = JSON.parse(await events('--since', String(since), '--device', 'cli-ev', '--json'));
  assert.deepEqual(after.map((e: { id: number }) => e.id), [listed[1].id, listed[2].id], 'everything after the id, nothing before');
});

test('fleet events rejects unknown kinds and ids that are not numbers, saying what to give', async () => {
  const kinds = await fleetCli(t, ['events', '--kinds', 'connected,exploded']);
  assert.notEqual(kinds.code, 0);
  assert.match(kinds.stderr, /unknown kind exploded; the kinds are connected, disconnected, refused/);
  const since = await fleetCli(t, ['events', '--since', 'yesterday']);
  assert.notEqual(since.code, 0);
  assert.match(since.stderr, /give an event id/);
  assert.match((await fleetCli(t, ['events', '--help'])).stdout, /--follow/);
});

test('fleet ca rotate is recorded as a ca_changed event', async () => {
  const rotated = await fleetCli(t, ['ca', 'rotate']);
  assert.equal(rotated.code, 0, rotated.stderr);
  const changes = JSON.parse(await events('--kinds', 'ca_changed', '--json'));
  assert.equal(changes.length, 1);
  assert.equal(changes[0].reason, 'rotated');
  assert.equal(changes[0].deviceId, null);
  assert.equal(changes[0].details.generation, 2);
});

test('fleet events --follow prints each new event once, as JSON lines, until Ctrl-C', async () => {
  await t.enroll('cli-follow');
  const child = spawn(process.execPath, [FLEET_BIN, 'events', '--follow', '--json', '--device', 'cli-follow', '--kinds', 'suspended,resumed'], {
    env: fleetCliEnv(t),
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (chunk: Buffer) => (stdout += chunk.toString()));
  child.stderr.on('data', (chunk: Buffer) => (stderr += chunk.toString()));
  const printed = () => stdout.split('\n').filter(Boolean).map((l) => JSON.parse(l) as { id: number; kind: string; deviceId: string });
  try {
    // Whether these land before the command starts (shown as the latest) or after (followed), each prints once.
    await t.api('POST', '/v1/devices/cli-follow/suspend', { token: t.adminToken });
    await t.api('POST', '/v1/devices/cli-follow/resume', { token: t.adminToken });
    await eventually(() => printed().length === 2, `both printed (stderr: ${stderr})`);
    const before = await latestDeviceEventId(t.fleet.db.pool);
    await t.api('POST', '/v1/devices/cli-follow/suspend', { token: t.adminToken });
    await eventually(() => printed().length === 3, 'a later event printed as it was written');
    const lines = printed();
    assert.deepEqual(lines.map((e) => e.kind), ['suspended', 'resumed', 'suspended']);
    assert.ok(lines[2]!.id > before);
    assert.equal(new Set(lines.map((e) => e.id)).size, 3, 'no event twice');
    assert.ok(lines.every((e) => e.deviceId === 'cli-follow'));
  } finally {
    child.kill('SIGINT');
  }
  const [code] = await once(child, 'exit');
  assert.equal(code, 0, `Ctrl-C ends it cleanly (stderr: ${stderr})`);
});
