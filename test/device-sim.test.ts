import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtemp, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { MqttClient } from 'mqtt';
import { createDeviceIdentity } from '../device-sim/identity.js';
import type { SimReport } from '../device-sim/report.js';
import { runSimulation, type SimOptions } from '../device-sim/run.js';
import { connectDevice } from './support/mqtt.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';

const DEVICES = 20;
/** Long enough for every device to renew a one-minute certificate once (at about 40 s). */
const DURATION_SECONDS = 70;
const VICTIM = 'sim-000003';

let t: TestFleet;
let stateDir: string;
let monitor: MqttClient;
/** Device ids the fleet-reader service has seen telemetry from. */
const heardFrom = new Set<string>();

before(async () => {
  t = await startTestFleet({ env: { FLEET_CERT_LIFETIME_MIN: '1m', FLEET_BROKER_CONNECT_RATE: '1000000', FLEET_BROKER_CONNECT_BURST: '1000000' } });
  stateDir = await mkdtemp(path.join(os.tmpdir(), 'fleet-sim-state-'));
  monitor = await connectMonitor();
});
after(async () => {
  await monitor?.endAsync(true);
  await t?.close();
  if (stateDir) await rm(stateDir, { recursive: true, force: true });
});

/** A backend reading the whole fleet's telemetry, as a service identity with the fleet-reader role. */
async function connectMonitor(): Promise<MqttClient> {
  const registered = await t.api('POST', '/v1/services', { token: t.adminToken, json: { id: 'sim-monitor', role: 'fleet-reader' } });
  assert.equal(registered.status, 201, registered.text);
  const identity = await createDeviceIdentity('sim-monitor');
  const enrolled = await t.api('POST', '/v1/enrollments', { json: { token: registered.json.enrollmentToken, csr: identity.csrPem } });
  assert.equal(enrolled.status, 201, enrolled.text);
  const session = await connectDevice(t.fleet.broker.port, 'sim-monitor', { ca: t.rootPem, cert: enrolled.json.certificate, key: identity.keyPem });
  assert.equal(session.outcome, 'connected');
  await session.client.subscribeAsync('devices/+/telemetry/#');
  session.client.on('message', (topic) => heardFrom.add(topic.split('/')[1]!));
  return session.client;
}

const simOptions = (more: Partial<SimOptions> = {}): Partial<SimOptions> & { devices: number } => ({
  devices: DEVICES,
  api: t.apiUrl,
  broker: `mqtts://localhost:${t.fleet.broker.port}`,
  caPem: t.rootPem,
  token: t.adminToken,
  state: stateDir,
  lifetime: '1m',
  rate: 1,
  ramp: 50,
  workers: 2,
  profile: 'mixed',
  progress: false,
  ...more,
});

const revokedRefusals = () => t.fleet.broker.refusals.get('revoked') ?? 0;

async function publicKeysOf(deviceId: string): Promise<string[]> {
  const device = await t.api('GET', `/v1/devices/${deviceId}`, { token: t.adminToken });
  assert.equal(device.status, 200, device.text);
  const keys: string[] = [];
  for (const certificate of device.json.certificates as { serial: string }[]) {
    const one = await t.api('GET', `/v1/certificates/${certificate.serial}`, { token: t.adminToken });
    assert.equal(one.status, 200, one.text);
    keys.push(new X509Certificate(one.json.pem).publicKey.export({ type: 'spki', format: 'der' }).toString('base64'));
  }
  return keys;
}

describe('device simulator', () => {
  let report: SimReport;
  let refusalsAtRevocation: number | undefined;

  test('a simulated fleet enrolls, connects, publishes, renews with new keys, and a revoked device stops', async () => {
    let revoking: Promise<unknown> | undefined;
    report = await runSimulation(
      simOptions({
        duration: DURATION_SECONDS,
        // Revoke one device once the monitor has heard from the whole fleet, so it too is known to have worked.
        onProgress: () => {
          if (revoking || heardFrom.size < DEVICES) return;
          refusalsAtRevocation = revokedRefusals();
          revoking = t.api('POST', `/v1/devices/${VICTIM}/revoke`, { token: t.adminToken, json: { reason: 'keyCompromise' } });
        },
      }),
    );
    assert.ok(revoking, `the monitor heard from ${heardFrom.size} of ${DEVICES} devices before the run ended`);
    const revoked = (await revoking) as { status: number; text: string };
    assert.equal(revoked.status, 200, revoked.text);

    assert.equal(report.devices, DEVICES);
    assert.equal(report.enrolled, DEVICES, 'every device enrolled');
    assert.ok(report.connects >= DEVICES, 'every device connected');
    for (let i = 1; i <= DEVICES; i++) assert.ok(heardFrom.has(`sim-${String(i).padStart(6, '0')}`), `telemetry from device ${i}`);

    assert.deepEqual(report.revokedDevices, [VICTIM], 'the revoked device is reported as revoked');
    const refusedAfter = revokedRefusals() - refusalsAtRevocation!;
    assert.ok(refusedAfter >= 1 && refusedAfter <= 2, `the revoked device stopped retrying (${refusedAfter} refused attempts)`);

    assert.ok(report.renewals >= DEVICES - 1, `every device renewed (${report.renewals} renewals)`);
    for (let i = 1; i <= DEVICES; i++) {
      const id = `sim-${String(i).padStart(6, '0')}`;
      if (id === VICTIM) continue;
      const keys = await publicKeysOf(id);
      assert.ok(keys.length >= 2, `${id} has a renewed certificate`);
      assert.equal(new Set(keys).size, keys.length, `${id} renewed onto a new key each time`);
    }
    assert.ok(report.handshakeMs.count > 0 && report.connackMs.count > 0);
  });

  test('device keys in the state directory are readable by the owner only', async () => {
    const mode = (await stat(path.join(stateDir, 'sim-000001.key'))).mode & 0o777;
    assert.equal(mode, 0o600);
  });

  test('a second run on the same state directory reuses the fleet instead of enrolling it again', async () => {
    const again = await runSimulation(simOptions({ duration: 3 }));
    assert.equal(again.enrolled, 0, 'no new enrollments');
    assert.equal(again.reused, DEVICES - 1);
    assert.deepEqual(again.revokedDevices, [VICTIM], 'the revoked device is reported, not enrolled again');
  });
});
