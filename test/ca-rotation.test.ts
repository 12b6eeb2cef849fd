import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { caKeyStore } from '../cli/start.js';
import { silentLogger } from '../core/log.js';
import { rotateIssuingCa } from '../core/pki/authority.js';
import { x509 } from '../core/pki/x509.js';
import { announceCaChange } from '../core/registry/index.js';
import { connectDevice } from './support/mqtt.js';
import { openssl } from './support/openssl.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';

let t: TestFleet;
before(async () => {
  t = await startTestFleet();
});
after(() => t?.close());

const file = (name: string, content: string | Buffer) => t.file(name, content);

const tlsOf = (d: EnrolledDevice) => ({ ca: t.rootPem, cert: d.certificatePem, key: d.identity.keyPem });
const keyIdOf = (pem: string) => new x509.X509Certificate(pem).getExtension(x509.AuthorityKeyIdentifierExtension)!.keyId!.toLowerCase();

/** Waits for the running fleet to take up the rotation it was told about (bounded, not timed). */
async function untilGeneration(generation: number): Promise<void> {
  for (let i = 0; i < 100 && t.fleet.ca.current.generation !== generation; i++) await sleep(50);
  assert.equal(t.fleet.ca.current.generation, generation, 'the fleet reloaded the CA');
}

async function crlFor(keyId: string): Promise<string> {
  const res = await t.api('GET', `/pki/crl/${keyId}`);
  assert.equal(res.status, 200, res.text);
  const issuer = await t.api('GET', `/pki/issuers/${keyId}.crt`);
  const issuerPem = new x509.X509Certificate(new Uint8Array(issuer.body)).toString('pem');
  const checked = await openssl(['crl', '-inform', 'DER', '-in', await file('crl.der', res.body), '-CAfile', await file('issuer.pem', issuerPem), '-noout', '-text']);
  assert.match(checked.stderr, /verify OK/, checked.stderr);
  return checked.stdout;
}

async function ocspStatus(device: EnrolledDevice, issuerPem: string): Promise<string> {
  const cert = await file('device.pem', device.certificatePem);
  const issuer = await file('issuer.pem', issuerPem);
  const reqFile = await t.file('req.der', '');
  assert.equal((await openssl(['ocsp', '-issuer', issuer, '-cert', cert, '-reqout', reqFile, '-no_nonce'])).code, 0);
  const res = await t.api('POST', '/ocsp', { body: await readFile(reqFile), headers: { 'content-type': 'application/ocsp-request' } });
  const trust = await file('trust.pem', t.fleet.ca.trustPem);
  const checked = await openssl(['ocsp', '-respin', await file('resp.der', res.body), '-issuer', issuer, '-cert', cert, '-CAfile', trust, '-no_nonce']);
  assert.match(checked.stderr, /Response verify OK/, checked.stdout + checked.stderr);
  return checked.stdout;
}

test('a new issuing CA signs new certificates while the old one still verifies, without a restart', async () => {
  const before = await t.enroll('rotate-old');
  const firstIssuerPem = t.fleet.ca.issuing.toString('pem');
  const firstKeyId = t.fleet.ca.current.keyId;
  assert.equal(keyIdOf(before.certificatePem), firstKeyId);

  const log = silentLogger();
  const made = await rotateIssuingCa({ dataDir: t.dataDir, log, keyStore: caKeyStore(t.config, log) });
  assert.equal(made.generation, 2);
  await announceCaChange(t.fleet.db.pool);
  await untilGeneration(2);
  assert.equal(t.fleet.ca.issuers.length, 2);

  const after = await t.enroll('rotate-new');
  assert.match(new x509.X509Certificate(after.certificatePem).issuer, /Issuing CA 2/);
  assert.equal(keyIdOf(after.certificatePem), made.keyId);
  const trusted = await t.api('GET', '/pki/trust.pem');
  const verified = await openssl(['verify', '-CAfile', await file('root.pem', t.rootPem), '-untrusted', await file('trust.pem', trusted.text), await file('new.pem', after.certificatePem)]);
  assert.equal(verified.code, 0, verified.stderr);

  // The broker trusts both issuers now: the new device is admitted, the old one still is.
  for (const [id, device] of [['rotate-new', after], ['rotate-old', before]] as const) {
    const session = await connectDevice(t.fleet.broker.port, id, tlsOf(device));
    assert.equal(session.outcome, 'connected', `${id} connects after the rotation`);
    await session.client.endAsync();
  }

  // Renewal of an old certificate moves the device to the new issuer.
  const fresh = await createDeviceIdentity('rotate-old');
  const renewed = await t.api('POST', '/v1/renewals', { json: { csr: fresh.csrPem }, tls: { cert: before.certificatePem, key: before.identity.keyPem } });
  assert.equal(renewed.status, 201, renewed.text);
  assert.equal(keyIdOf(renewed.json.certificate), made.keyId);

  // Each issuer keeps its own CRL and answers OCSP for its own certificates.
  await t.api('POST', '/v1/devices/rotate-new/revoke', { token: t.adminToken, json: { reason: 'keyCompromise' } });
  assert.match(await crlFor(made.keyId), new RegExp(`Serial Number: ${after.serial}`, 'i'));
  assert.doesNotMatch(await crlFor(firstKeyId), new RegExp(after.serial, 'i'));
  assert.match(await ocspStatus(after, made.certificate.toString('pem')), /: revoked/);
  const stillGood = await t.enroll('rotate-good');
  assert.match(await ocspStatus(stillGood, made.certificate.toString('pem')), /: good/);
  assert.match(await ocspStatus(before, firstIssuerPem), /: good/, 'the first issuer still answers for what it issued');

  const cacerts = await t.api('GET', '/.well-known/est/cacerts');
  const listed = await openssl(['pkcs7', '-inform', 'DER', '-print_certs', '-noout'], Buffer.from(cacerts.text, 'base64'));
  assert.match(listed.stdout, /Issuing CA 1/);
  assert.match(listed.stdout, /Issuing CA 2/);
});
