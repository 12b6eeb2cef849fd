import assert from 'node:assert/strict';
import { mkdtemp, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { connect as tlsConnect } from 'node:tls';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { caKeyStore } from '../cli/start.js';
import { silentLogger } from '../core/log.js';
import { retireIssuingCa, rotateIssuingCa } from '../core/pki/authority.js';
import { closed, connectDevice, nextMessage } from './support/mqtt.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { eventually } from './support/wait.js';

let t: TestFleet;
const policy = {
  profiles: { gateway: { publish: ['gateways/{deviceId}/#'], subscribe: ['gateways/{deviceId}/#', 'batches/{batch}/broadcast/#'] } },
};
before(async () => {
  const policyFile = path.join(await mkdtemp(path.join(os.tmpdir(), 'fleet-policy-')), 'policy.json');
  await writeFile(policyFile, JSON.stringify(policy));
  t = await startTestFleet({
    env: { FLEET_BROKER_CONNECT_TIMEOUT: '1s', FLEET_BROKER_POLICY: policyFile },
  });
});
after(() => t?.close());

const tlsOf = (d: EnrolledDevice) => ({ ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });
const port = () => t.fleet.broker.port;

async function enrollWith(id: string, body: Record<string, unknown>): Promise<EnrolledDevice> {
  const identity = await createDeviceIdentity(id);
  const res = await t.api('POST', '/v1/enrollments', { json: { ...body, csr: identity.csrPem } });
  assert.equal(res.status, 201, res.text);
  return { identity, certificatePem: res.json.certificate, chainPem: res.json.chain, serial: res.json.serial };
}

describe('live enforcement', () => {
  test('a resumed TLS session of a revoked certificate is still refused', async () => {
    const device = await t.enroll('resumer');
    const first = await connectDevice(port(), 'resumer', tlsOf(device));
    assert.equal(first.outcome, 'connected');
    await first.client.endAsync();
    assert.ok(first.tickets.length > 0, 'the server issued a session ticket');
    const resumedOk = await connectDevice(port(), 'resumer', { ...tlsOf(device), session: first.tickets.at(-1) });
    assert.equal(resumedOk.resumed, true, 'TLS resumption works, so reconnect storms are cheap');
    assert.equal(resumedOk.outcome, 'connected');
    await resumedOk.client.endAsync();

    await t.api('POST', '/v1/devices/resumer/revoke', { token: t.adminToken, json: { reason: 'keyCompromise' } });
    const resumedRevoked = await connectDevice(port(), 'resumer', { ...tlsOf(device), session: first.tickets.at(-1) });
    assert.equal(resumedRevoked.resumed, true, 'the handshake resumed');
    assert.equal(resumedRevoked.outcome, 'refused');
    assert.equal(resumedRevoked.connack, 5, 'CONNACK 0x05: not authorized');
    resumedRevoked.client.end(true);
  });

  test('a second connection with the same client id replaces the first', async () => {
    const device = await t.enroll('twin');
    const first = await connectDevice(port(), 'twin', tlsOf(device));
    const firstClosed = closed(first.client);
    const second = await connectDevice(port(), 'twin', tlsOf(device));
    assert.equal(second.outcome, 'connected');
    await firstClosed;
    first.client.end(true);
    assert.ok(second.client.connected);
    await second.client.endAsync();
  });

  test('garbage after the handshake and a client that never sends CONNECT are closed, others unaffected', async () => {
    const bystander = await t.enroll('bystander');
    const calm = await connectDevice(port(), 'bystander', tlsOf(bystander));
    const noisy = await t.enroll('noisy');
    for (const payload of [Buffer.from([0xff, 0xff, 0xff, 0xff, 0xff, 0x01]), undefined]) {
      const socket = tlsConnect({ host: 'localhost', port: port(), ca: t.rootPem, cert: noisy.certificatePem, key: noisy.identity.keyPem });
      await new Promise((resolve) => socket.once('secureConnect', resolve));
      if (payload) socket.write(payload);
      // Without a payload this is a stalled client, dropped by the connect timeout (1 s here).
      await new Promise((resolve) => socket.once('close', resolve));
    }
    await calm.client.subscribeAsync('devices/bystander/#');
    const echo = nextMessage(calm.client, 'devices/bystander/', 5000);
    await calm.client.publishAsync('devices/bystander/ok', 'fine', { qos: 1 });
    assert.equal((await echo)?.payload, 'fine');
    await calm.client.endAsync();
  });
});

describe('presence', () => {
  test('connect and disconnect reach the registry and the lifecycle topics', async () => {
    const reader = await t.enrollService('reader-1', 'fleet-reader');
    const watcher = await connectDevice(port(), 'reader-1', tlsOf(reader));
    assert.equal(watcher.outcome, 'connected');
    await watcher.client.subscribeAsync('$fleet/#', { qos: 1 });
    const device = await t.enroll('present-1');
    const online = nextMessage(watcher.client, '$fleet/lifecycle/present-1/connected', 5000);
    const session = await connectDevice(port(), 'present-1', tlsOf(device));
    const event = await online;
    assert.ok(event, 'a connected event was published');
    assert.equal(JSON.parse(event.payload).online, true);
    await eventually(async () => (await t.api('GET', '/v1/devices/present-1', { token: t.adminToken })).json.connected === true, 'registry shows connected');
    const shown = (await t.api('GET', '/v1/devices/present-1', { token: t.adminToken })).json;
    assert.match(shown.peerAddress, /127\.0\.0\.1/);
    assert.ok(shown.connectedSince);

    const offline = nextMessage(watcher.client, '$fleet/lifecycle/present-1/disconnected', 5000);
    await session.client.endAsync();
    assert.ok(await offline, 'a disconnected event was published');
    await eventually(async () => (await t.api('GET', '/v1/devices/present-1', { token: t.adminToken })).json.connected === false, 'registry shows disconnected');

    // The retained state is there for a service that subscribes later.
    await watcher.client.endAsync();
    const late = await connectDevice(port(), 'reader-1', tlsOf(reader));
    const retained = nextMessage(late.client, '$fleet/presence/present-1', 5000);
    await late.client.subscribeAsync('$fleet/presence/+');
    assert.equal(JSON.parse((await retained)!.payload).online, false);
    await late.client.endAsync();
  });
});

describe('authorization policies', () => {
  test('a service role reads across the fleet; devices cannot read $fleet or each other', async () => {
    const reader = await t.enrollService('reader-2', 'fleet-reader');
    const service = await connectDevice(port(), 'reader-2', tlsOf(reader));
    await service.client.subscribeAsync('devices/+/telemetry/#');
    const device = await t.enroll('policy-dev');
    const d = await connectDevice(port(), 'policy-dev', tlsOf(device));
    const seen = nextMessage(service.client, 'devices/policy-dev/telemetry/', 5000);
    await d.client.publishAsync('devices/policy-dev/telemetry/temp', '21', { qos: 1 });
    assert.equal((await seen)?.payload, '21');

    const refusedFleet = await d.client.subscribeAsync('$fleet/#').then(() => undefined, (e) => e);
    assert.deepEqual(refusedFleet?.packet?.granted, [128]);
    const serviceClosed = closed(service.client);
    service.client.publish('devices/policy-dev/commands/reboot', 'now');
    await serviceClosed;
    service.client.end(true);
    await d.client.endAsync();
  });

  test('a commander service may send commands to any device', async () => {
    const commander = await t.enrollService('commander-1', 'fleet-commander');
    const c = await connectDevice(port(), 'commander-1', tlsOf(commander));
    const device = await t.enroll('policy-cmd');
    const d = await connectDevice(port(), 'policy-cmd', tlsOf(device));
    await d.client.subscribeAsync('devices/policy-cmd/commands/#', { qos: 1 });
    const command = nextMessage(d.client, 'devices/policy-cmd/commands/', 5000);
    await c.client.publishAsync('devices/policy-cmd/commands/reboot', 'now', { qos: 1 });
    assert.equal((await command)?.payload, 'now');
    await c.client.endAsync();
    await d.client.endAsync();
  });
});

describe('policy templates', () => {
  test('a profile adds topics by template, and {batch} names only the device\'s own batch', async () => {
    const reg = await t.api('POST', '/v1/devices/bulk', {
      token: t.adminToken,
      json: { batch: 'gw-batch', profile: 'gateway', devices: [{ id: 'gw-1' }] },
    });
    assert.equal(reg.status, 201, reg.text);
    const gw = await enrollWith('gw-1', { token: reg.json.devices[0].enrollmentToken });
    const c = await connectDevice(port(), 'gw-1', tlsOf(gw));
    assert.equal(c.outcome, 'connected');
    // The SUBACK code for one filter at QoS 1: MQTT.js resolves a grant and rejects a 0x80 with the packet.
    const granted = async (filter: string): Promise<number> =>
      c.client.subscribeAsync(filter, { qos: 1 }).then(
        (grants) => grants[0]!.qos,
        (error) => error.packet.granted[0],
      );
    assert.equal(await granted('gateways/gw-1/#'), 1);
    assert.equal(await granted('batches/gw-batch/broadcast/#'), 1);
    assert.equal(await granted('batches/other-batch/broadcast/#'), 128);
    assert.equal(await granted('gateways/gw-2/#'), 128);
    await c.client.publishAsync('gateways/gw-1/uplink', 'x', { qos: 1 });
    assert.ok(c.client.connected, 'publishing under the profile topic is allowed');
    await c.client.endAsync();
  });
});

describe('trust bundle', () => {
  test('retiring an old issuing CA refuses its devices at the handshake, without a restart', async () => {
    const old = await t.enroll('retire-old');
    const log = silentLogger();
    const made = await rotateIssuingCa({ pool: t.fleet.db.pool, dataDir: t.dataDir, log, keyStore: caKeyStore(t.config, log) });
    await eventually(() => t.fleet.ca.current.generation === made.generation, 'the rotation was taken up');
    const fresh = await t.enroll('retire-new');
    assert.equal((await connectDevice(port(), 'retire-old', tlsOf(old))).outcome, 'connected');

    await retireIssuingCa({ pool: t.fleet.db.pool, dataDir: t.dataDir }, made.generation - 1);
    await eventually(() => t.fleet.ca.issuers.length === 1, 'the retirement was taken up');
    await sleep(100);
    const refused = await connectDevice(port(), 'retire-old', tlsOf(old));
    assert.equal(refused.outcome, 'refused');
    assert.equal(refused.connack, undefined, 'refused at the handshake, before any MQTT');
    refused.client.end(true);
    const fine = await connectDevice(port(), 'retire-new', tlsOf(fresh));
    assert.equal(fine.outcome, 'connected');
    await fine.client.endAsync();
  });
});

describe('re-enrollment', () => {
  test('a device enrolled again stops being admitted with its old certificate, even one the broker has cached', async () => {
    const old = await t.enroll('reenrolled');
    const first = await connectDevice(port(), 'reenrolled', tlsOf(old));
    assert.equal(first.outcome, 'connected', 'the old certificate is now in the broker cache');
    const ended = closed(first.client);
    const grant = await t.api('POST', '/v1/devices/reenrolled/enrollment-token', { token: t.adminToken });
    assert.equal(grant.status, 201, grant.text);
    const fresh = await enrollWith('reenrolled', { token: grant.json.enrollmentToken });
    await ended;
    first.client.end(true);
    const again = await connectDevice(port(), 'reenrolled', tlsOf(old));
    assert.equal(again.outcome, 'refused', 'the superseded certificate is refused');
    assert.equal(again.connack, 5, 'CONNACK 0x05: not authorized');
    again.client.end(true);
    const now = await connectDevice(port(), 'reenrolled', tlsOf(fresh));
    assert.equal(now.outcome, 'connected');
    await now.client.endAsync();
  });
});
