import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { ecSigningAlgorithm, generateEcKeys, randomSerial, x509 } from '../core/pki/x509.js';
import { writeFile } from 'node:fs/promises';
import path from 'node:path';
import { closed, connectDevice, nextMessage, type DeviceTls } from './support/mqtt.js';
import { openssl } from './support/openssl.js';
import { startTestFleet, type EnrolledDevice, type TestFleet } from './support/fleet.js';

let t: TestFleet;
before(async () => {
  t = await startTestFleet();
});
after(() => t?.close());

const tlsOf = (device: EnrolledDevice): DeviceTls => ({ ca: t.rootPem, cert: device.certificatePem, key: device.identity.keyPem });

/** A CA of someone else's, with a client certificate for a device id we know, signed correctly by it. */
async function foreignCertificate(deviceId: string): Promise<{ cert: string; key: string }> {
  const caKeys = await generateEcKeys('P-256');
  const ca = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: 'CN=fleet-auth Issuing CA 1, O=fleet-auth',
    keys: caKeys,
    signingAlgorithm: ecSigningAlgorithm('P-256'),
    extensions: [new x509.BasicConstraintsExtension(true, 0, true), new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign, true)],
  });
  const device = await createDeviceIdentity(deviceId);
  const leaf = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: `CN=${deviceId}`,
    issuer: ca.subject,
    publicKey: device.csr.publicKey,
    signingKey: caKeys.privateKey,
    signingAlgorithm: ecSigningAlgorithm('P-256'),
    extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
  });
  return { cert: leaf.toString('pem') + '\n' + ca.toString('pem'), key: device.keyPem };
}

describe('broker admission', () => {
  test('an enrolled device connects and exchanges messages under its own topics', async () => {
    const device = await t.enroll('meter-1');
    const { client, outcome } = await connectDevice(t.fleet.broker.port, 'meter-1', tlsOf(device));
    assert.equal(outcome, 'connected');
    const granted = await client.subscribeAsync('devices/meter-1/#', { qos: 1 });
    assert.equal(granted[0]?.qos, 1);
    const received = nextMessage(client, 'devices/meter-1/', 5000);
    await client.publishAsync('devices/meter-1/telemetry', '{"kwh":12.5}', { qos: 1 });
    assert.deepEqual(await received, { topic: 'devices/meter-1/telemetry', payload: '{"kwh":12.5}' });
    await client.endAsync();
  });

  test("a device cannot subscribe to another device's topics or to wildcards beyond its own", async () => {
    const device = await t.enroll('meter-2');
    const { client, outcome } = await connectDevice(t.fleet.broker.port, 'meter-2', tlsOf(device));
    assert.equal(outcome, 'connected');
    for (const filter of ['devices/meter-1/#', '#', 'devices/+/telemetry', '+/meter-2/x', '$SYS/#', 'devices/meter-2']) {
      // MQTT.js rejects a SUBACK that grants 0x80 and carries the packet on the error.
      const error = await client.subscribeAsync(filter, { qos: 0 }).then(() => undefined, (e) => e);
      assert.deepEqual(error?.packet?.granted, [128], `${filter} must be refused`);
    }
    assert.ok(client.connected, 'a refused subscription does not end the session');
    await client.endAsync();
  });

  test("publishing to another device's topic is dropped and ends the offender's session", async () => {
    const victim = await t.enroll('meter-3');
    const intruder = await t.enroll('meter-4');
    const v = await connectDevice(t.fleet.broker.port, 'meter-3', tlsOf(victim));
    await v.client.subscribeAsync('devices/meter-3/#', { qos: 1 });
    const i = await connectDevice(t.fleet.broker.port, 'meter-4', tlsOf(intruder));
    assert.equal(i.outcome, 'connected');
    const leaked = nextMessage(v.client, 'devices/meter-3/', 1500);
    const intruderClosed = closed(i.client);
    i.client.publish('devices/meter-3/commands', 'open the valve', { qos: 0 });
    await intruderClosed;
    assert.equal(await leaked, undefined, 'the victim never sees the forged message');
    i.client.end(true);
    await v.client.endAsync();
  });

  test('refuses a client id that is not the certificate\'s device', async () => {
    const device = await t.enroll('meter-5');
    const { client, outcome, connack } = await connectDevice(t.fleet.broker.port, 'meter-1', tlsOf(device));
    assert.equal(outcome, 'refused');
    assert.equal(connack, 2, 'CONNACK 0x02: identifier rejected [MQTT-3.1.3-9]');
    client.end(true);
    assert.ok((t.fleet.broker.refusals.get('client_id_mismatch') ?? 0) >= 1);
  });

  test('refuses a client without a certificate before CONNACK', async () => {
    const { client, outcome, connack } = await connectDevice(t.fleet.broker.port, 'meter-1', { ca: t.rootPem });
    assert.equal(outcome, 'refused');
    assert.equal(connack, undefined, 'refused at TLS, before any MQTT');
    client.end(true);
    assert.ok((t.fleet.broker.refusals.get('no_certificate') ?? 0) >= 1, 'counted as no_certificate');
  });

  test('refuses a certificate from a foreign CA, even one naming a real device', async () => {
    await t.enroll('meter-6');
    const foreign = await foreignCertificate('meter-6');
    const { client, outcome, connack } = await connectDevice(t.fleet.broker.port, 'meter-6', { ca: t.rootPem, ...foreign });
    assert.equal(outcome, 'refused');
    assert.equal(connack, undefined, 'refused at TLS, before any MQTT');
    client.end(true);
    assert.ok((t.fleet.broker.refusals.get('unknown_ca') ?? 0) >= 1, 'counted as unknown_ca');
  });

  test('refuses a certificate signed by our CA but absent from the registry', async () => {
    const device = await createDeviceIdentity('ghost-1');
    const cert = await t.fleet.ca.sign({
      subject: 'CN=ghost-1',
      publicKey: device.csr.publicKey,
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 3_600_000),
      extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
    });
    const { client, outcome, connack } = await connectDevice(t.fleet.broker.port, 'ghost-1', { ca: t.rootPem, cert: cert.toString('pem'), key: device.keyPem });
    assert.equal(outcome, 'refused');
    assert.equal(connack, 5, 'CONNACK 0x05: not authorized');
    client.end(true);
    assert.ok((t.fleet.broker.refusals.get('unknown_certificate') ?? 0) >= 1);
  });
});

describe('revocation', () => {
  test('closes a connected device, refuses it afterwards and lists it in the CRL', async () => {
    const device = await t.enroll('valve-1');
    const { client, outcome } = await connectDevice(t.fleet.broker.port, 'valve-1', tlsOf(device));
    assert.equal(outcome, 'connected');
    const wasClosed = closed(client);

    const res = await t.api('POST', '/v1/devices/valve-1/revoke', { token: t.adminToken, json: { reason: 'keyCompromise' } });
    assert.equal(res.status, 200, res.text);
    assert.deepEqual(res.json.revokedSerials, [device.serial]);
    // The session closes on the revocation itself (how fast is `npm run bench:broker`'s business).
    await wasClosed;
    client.end(true);

    const again = await connectDevice(t.fleet.broker.port, 'valve-1', tlsOf(device));
    assert.equal(again.outcome, 'refused');
    assert.equal(again.connack, 5, 'a revoked certificate is answered CONNACK 0x05: not authorized');
    again.client.end(true);
    assert.ok((t.fleet.broker.refusals.get('revoked') ?? 0) >= 1);

    const crl = await t.api('GET', '/pki/crl');
    assert.equal(crl.status, 200);
    assert.equal(crl.headers['content-type'], 'application/pkix-crl');
    const crlFile = path.join(t.dataDir, 'crl.der');
    const chainFile = path.join(t.dataDir, 'chain.pem');
    await writeFile(crlFile, crl.body);
    await writeFile(chainFile, t.fleet.ca.chainPem);
    const checked = await openssl(['crl', '-inform', 'DER', '-in', crlFile, '-CAfile', chainFile, '-noout', '-text']);
    assert.equal(checked.code, 0, checked.stderr);
    assert.match(checked.stderr + checked.stdout, /verify OK/);
    assert.match(checked.stdout, new RegExp(`Serial Number: ${device.serial}`, 'i'));
    assert.match(checked.stdout, /Key Compromise/);
  });

  test('revoking one device leaves the others connected', async () => {
    const keep = await t.enroll('valve-2');
    const drop = await t.enroll('valve-3');
    const k = await connectDevice(t.fleet.broker.port, 'valve-2', tlsOf(keep));
    const d = await connectDevice(t.fleet.broker.port, 'valve-3', tlsOf(drop));
    const dropped = closed(d.client);
    await t.api('POST', '/v1/devices/valve-3/revoke', { token: t.adminToken });
    await dropped;
    await k.client.subscribeAsync('devices/valve-2/#');
    const echo = nextMessage(k.client, 'devices/valve-2/', 5000);
    await k.client.publishAsync('devices/valve-2/state', 'still here', { qos: 1 });
    assert.equal((await echo)?.payload, 'still here');
    await k.client.endAsync();
    d.client.end(true);
  });
});

describe('diagnostics', () => {
  test('refusals and denials are counted by reason on the metrics endpoint', async () => {
    const res = await fetch(`http://127.0.0.1:${t.fleet.metricsPort}/metrics`);
    assert.equal(res.status, 200);
    const text = await res.text();
    const value = (pattern: RegExp) => Number(pattern.exec(text)?.[1] ?? 0);
    assert.ok(value(/^fleet_broker_refusals_total\{reason="no_certificate"\} (\d+)/m) >= 1, 'no_certificate counted');
    assert.ok(value(/^fleet_broker_refusals_total\{reason="client_id_mismatch"\} (\d+)/m) >= 1, 'client_id_mismatch counted');
    assert.ok(value(/^fleet_broker_denials_total\{action="subscribe"\} (\d+)/m) >= 1, 'subscribe denials counted');
  });
});
