import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { ecSigningAlgorithm, exportPrivateKeyPem, generateEcKeys, randomSerial, x509 } from '../core/pki/x509.js';
import { offsetClock } from './support/clock.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';

/**
 * Renewal's chain check is ours: the presented certificate must be signed by one of our issuing
 * CAs, whatever OpenSSL's verify result says; and an expired one renews only within the opt-in
 * grace (FLEET_RENEW_AFTER_EXPIRY), set here to two hours.
 */
const { clock, withClock } = offsetClock();
let t: TestFleet;
before(async () => {
  t = await startTestFleet({ clock, env: { FLEET_RENEW_AFTER_EXPIRY: '2h' } });
});
after(() => t?.close());

const HOUR = 3_600_000;

/** A certificate for `deviceId` signed by a key of our choosing, under a name of our choosing. */
async function forged(deviceId: string, issuerName: string, notAfter: Date, selfSigned: boolean) {
  const device = await generateEcKeys('P-256');
  const signer = selfSigned ? device : await generateEcKeys('P-256');
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: `CN=${deviceId}`,
    issuer: selfSigned ? `CN=${deviceId}` : issuerName,
    notBefore: new Date(notAfter.getTime() - 24 * HOUR),
    notAfter,
    publicKey: device.publicKey,
    signingKey: signer.privateKey,
    signingAlgorithm: ecSigningAlgorithm('P-256'),
    extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
  });
  return { cert: certificate.toString('pem'), key: await exportPrivateKeyPem(device.privateKey) };
}

const renewWith = async (deviceId: string, tls: { cert: string; key: string }) =>
  t.api('POST', '/v1/renewals', { json: { csr: (await createDeviceIdentity(deviceId)).csrPem }, tls });

/** Enrolls `deviceId` with the clock `ago` in the past and a lifetime of `lifetime`. */
async function enrolledAgo(deviceId: string, ago: number, lifetime: string) {
  const token = await t.register(deviceId);
  const identity = await createDeviceIdentity(deviceId);
  const res = await withClock(-ago, () => t.api('POST', '/v1/enrollments', { json: { token, csr: identity.csrPem, lifetime } }));
  assert.equal(res.status, 201, res.text);
  return { cert: res.json.certificate as string, key: identity.keyPem, serial: res.json.serial as string };
}

describe('the certificate presented for renewal', () => {
  test('an expired self-signed certificate is client_certificate_invalid, not looked up', async () => {
    await t.register('ghost-1');
    const res = await renewWith('ghost-1', await forged('ghost-1', '', new Date(Date.now() - HOUR), true));
    assert.equal(res.status, 401, res.text);
    assert.equal(res.json.code, 'client_certificate_invalid');
  });

  test('an expired or current certificate from a CA that only borrows our issuing CA\'s name is client_certificate_invalid', async () => {
    await t.register('ghost-2');
    for (const notAfter of [new Date(Date.now() - HOUR), new Date(Date.now() + HOUR)]) {
      const res = await renewWith('ghost-2', await forged('ghost-2', t.fleet.ca.issuing.subject, notAfter, false));
      assert.equal(res.json.code, 'client_certificate_invalid', res.text);
    }
  });

  test('a certificate of ours still renews', async () => {
    const device = await t.enroll('chain-ok');
    const res = await renewWith('chain-ok', { cert: device.certificatePem, key: device.identity.keyPem });
    assert.equal(res.status, 201, res.text);
  });
});

describe('renewal after expiry (FLEET_RENEW_AFTER_EXPIRY=2h)', () => {
  test('a certificate expired within the grace renews, and the expired one is superseded at once', async () => {
    // Issued three hours ago for two hours: expired an hour ago.
    const expired = await enrolledAgo('late-1', 3 * HOUR, '2h');
    const res = await renewWith('late-1', expired);
    assert.equal(res.status, 201, res.text);
    assert.equal(res.json.previousSerial, expired.serial);
    const again = await renewWith('late-1', expired);
    assert.equal(again.json.code, 'certificate_superseded');
  });

  test('a certificate expired longer ago than the grace must re-enroll', async () => {
    const expired = await enrolledAgo('late-2', 5 * HOUR, '2h');
    const res = await renewWith('late-2', expired);
    assert.equal(res.status, 401);
    assert.equal(res.json.code, 'certificate_expired');
    assert.match(res.json.detail, /2h/);
    assert.match(res.json.detail, /re-enroll/);
  });

  test('a revoked certificate expired within the grace does not renew', async () => {
    const expired = await enrolledAgo('late-3', 3 * HOUR, '2h');
    assert.equal((await t.api('POST', `/v1/certificates/${expired.serial}/revoke`, { token: t.adminToken, json: { reason: 'keyCompromise' } })).status, 200);
    const res = await renewWith('late-3', expired);
    assert.equal(res.json.code, 'certificate_revoked', res.text);
  });
});
