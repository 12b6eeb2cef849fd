import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { x509 } from '../core/pki/x509.js';
import type { Refusal } from '../broker/admission.js';
import { closed, connectDevice } from './support/mqtt.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { capturingLogger } from './support/log.js';
import { manualTime } from './support/time.js';
import { eventually } from './support/wait.js';

/**
 * Sessions end by themselves at their certificate's expiry or at the end of a renewal overlap. The
 * fleet runs on time the test moves, so these deadlines are reached by advancing it, not by waiting.
 * TLS still checks certificates against the real clock, so every certificate used for a handshake is
 * issued before the clock moves (in `before`): it is then valid in real time for the whole run.
 */
const time = manualTime();
const fleetLog = capturingLogger();
const closedByBroker = () =>
  fleetLog.lines().filter((entry) => entry.msg === 'session closed by the broker').map((entry) => ({ deviceId: entry.deviceId, reason: entry.reason }));
let t: TestFleet;
const devices = new Map<string, EnrolledDevice>();

before(async () => {
  t = await startTestFleet({ time, log: fleetLog.log, env: { FLEET_CERT_LIFETIME: '90d', FLEET_RENEWAL_OVERLAP: '1h' } });
  const token = await t.register('short-lived');
  const identity = await createDeviceIdentity('short-lived');
  const res = await t.api('POST', '/v1/enrollments', { json: { token, csr: identity.csrPem, lifetime: '1h' } });
  assert.equal(res.status, 201, res.text);
  devices.set('short-lived', { identity, certificatePem: res.json.certificate, chainPem: res.json.chain, serial: res.json.serial });
  for (const id of ['overlap-1', 'long-lived']) devices.set(id, await t.enroll(id));
});
after(() => t?.close());

const tlsOf = (d: EnrolledDevice) => ({ ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });
const port = () => t.fleet.broker.port;

async function connect(deviceId: string): Promise<MqttClient> {
  const session = await connectDevice(port(), deviceId, tlsOf(devices.get(deviceId)!));
  assert.equal(session.outcome, 'connected', String(session.error));
  return session.client;
}

async function certificateOf(deviceId: string, serial: string): Promise<{ notAfter: string; acceptUntil: string | null }> {
  const res = await t.api('GET', `/v1/devices/${deviceId}`, { token: t.adminToken });
  assert.equal(res.status, 200, res.text);
  return res.json.certificates.find((c: { serial: string }) => c.serial === serial);
}

/** The broker still serves the session: a QoS 1 publish is acknowledged. */
async function assertLive(client: MqttClient, deviceId: string): Promise<void> {
  assert.equal(t.fleet.broker.sessions.count(deviceId), 1, `${deviceId} still has its session`);
  await client.publishAsync(`devices/${deviceId}/telemetry`, 'still here', { qos: 1 });
  assert.ok(client.connected);
}

/**
 * Moves time to just before `deadline`, checks the session is live there, then one millisecond on and
 * checks the broker ended it then and there (the scheduler fires synchronously as time moves).
 */
async function assertEndsAt(client: MqttClient, deviceId: string, deadline: number, reason: string): Promise<void> {
  assert.ok(time.now() < deadline - 1, 'the deadline is still ahead');
  time.advanceTo(deadline - 1);
  await assertLive(client, deviceId);
  time.advanceTo(deadline);
  assert.equal(t.fleet.broker.sessions.count(deviceId), 0, 'ended when the deadline was reached');
  assert.deepEqual(
    closedByBroker().filter((c) => c.deviceId === deviceId),
    [{ deviceId, reason }],
  );
  await closed(client);
  client.end(true);
}

async function assertRefused(deviceId: string, reason: Refusal): Promise<void> {
  const before = t.fleet.broker.refusals.get(reason) ?? 0;
  const again = await connectDevice(port(), deviceId, tlsOf(devices.get(deviceId)!));
  again.client.end(true);
  assert.equal(again.outcome, 'refused');
  // Valid by the real clock, so TLS lets it through and the broker's clock refuses it at CONNECT.
  assert.equal(again.connack, 5, 'CONNACK 0x05: not authorized');
  assert.equal(t.fleet.broker.refusals.get(reason), before + 1, `refused as ${reason}`);
}

describe('session deadlines', () => {
  test('a session ends when its certificate expires, not before, and the certificate is refused afterwards', async () => {
    const device = devices.get('short-lived')!;
    const client = await connect('short-lived');
    const notAfter = Date.parse((await certificateOf('short-lived', device.serial)).notAfter);
    await assertEndsAt(client, 'short-lived', notAfter, 'expired');
    await assertRefused('short-lived', 'expired');
  });

  test('a session on a renewed certificate ends when the renewal overlap does, not before', async () => {
    const device = devices.get('overlap-1')!;
    const client = await connect('overlap-1');
    const fresh = await createDeviceIdentity('overlap-1');
    const renewed = await t.api('POST', '/v1/renewals', { json: { csr: fresh.csrPem }, tls: { cert: device.certificatePem, key: device.identity.keyPem } });
    assert.equal(renewed.status, 201, renewed.text);
    // The broker hears of the renewal from the registry's change feed and moves the session's deadline.
    await eventually(() => t.fleet.broker.sessions.of('overlap-1')[0]?.identity.certificateStatus === 'superseded', 'the broker saw the renewal');
    const { acceptUntil } = await certificateOf('overlap-1', device.serial);
    assert.ok(acceptUntil, 'the old certificate has an overlap');
    await assertEndsAt(client, 'overlap-1', Date.parse(acceptUntil), 'superseded');
    await assertRefused('overlap-1', 'superseded');
  });

  test("a certificate that outlives Node's longest timer (24.8 days) ends its session at expiry, not earlier", async () => {
    const device = devices.get('long-lived')!;
    const client = await connect('long-lived');
    const notAfter = Date.parse((await certificateOf('long-lived', device.serial)).notAfter);
    assert.ok(notAfter - time.now() > 2 ** 31, 'the certificate lives longer than one timer can wait');
    time.advance(2 ** 31);
    await assertLive(client, 'long-lived');
    await assertEndsAt(client, 'long-lived', notAfter, 'expired');
    await assertRefused('long-lived', 'expired');
  });

  test('a certificate expired by the real clock is refused at the TLS handshake and counted as expired', async () => {
    const device = await createDeviceIdentity('expired-for-real');
    const real = Date.now();
    const cert = await t.fleet.ca.sign({
      subject: 'CN=expired-for-real',
      publicKey: device.csr.publicKey,
      notBefore: new Date(real - 2 * 3_600_000),
      notAfter: new Date(real - 3_600_000),
      extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
    });
    const before = t.fleet.broker.refusals.get('expired') ?? 0;
    const attempt = await connectDevice(port(), 'expired-for-real', { ca: t.rootPem, cert: cert.toString('pem'), key: device.keyPem });
    attempt.client.end(true);
    assert.equal(attempt.outcome, 'refused');
    assert.equal(attempt.connack, undefined, 'refused at the handshake, before any MQTT');
    assert.equal(t.fleet.broker.refusals.get('expired'), before + 1, 'counted as expired');
  });
});
