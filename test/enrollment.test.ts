import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { registerDevice } from '../core/registry/index.js';
import { subtle, x509 } from '../core/pki/x509.js';
import { openssl } from './support/openssl.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';

let t: TestFleet;
before(async () => {
  t = await startTestFleet();
});
after(() => t?.close());

function assertProblem(res: { status: number; headers: Record<string, unknown>; json: any }, status: number, code: string) {
  assert.equal(res.status, status, JSON.stringify(res.json));
  assert.equal(res.headers['content-type'], 'application/problem+json');
  assert.equal(res.json.type, `urn:fleet-auth:problem:${code}`);
  assert.equal(res.json.code, code);
  assert.equal(res.json.status, status);
  assert.ok(res.json.detail.length > 10, 'the detail says what went wrong');
}

const file = (name: string, content: string | Buffer) => t.file(name, content);

describe('enrollment', () => {
  test('issues a client certificate that openssl verifies against the root and issuing CA', async () => {
    const device = await t.enroll('sensor-verify');
    const leaf = await file('leaf.pem', device.certificatePem);
    const root = await file('root.pem', t.rootPem);
    const issuing = await file('issuing.pem', t.fleet.ca.issuing.toString('pem'));
    const verified = await openssl(['verify', '-CAfile', root, '-untrusted', issuing, '-purpose', 'sslclient', leaf]);
    assert.equal(verified.code, 0, verified.stderr);
    assert.match(verified.stdout, /: OK/);

    const text = await openssl(['x509', '-in', leaf, '-noout', '-subject', '-ext', 'subjectAltName,extendedKeyUsage,basicConstraints']);
    assert.match(text.stdout, /subject=CN ?= ?sensor-verify/);
    assert.match(text.stdout, /TLS Web Client Authentication/);
    assert.match(text.stdout, /URI:spiffe:\/\/fleet.local\/device\/sensor-verify/);
    assert.match(text.stdout, /CA:FALSE/);

    const shown = await t.api('GET', '/v1/devices/sensor-verify', { token: t.adminToken });
    assert.equal(shown.status, 200);
    assert.equal(shown.json.status, 'active');
    assert.equal(shown.json.certificates[0].serial, device.serial);
  });

  test('takes its subject from the registry and ignores extensions the CSR asks for', async () => {
    const token = await t.register('sensor-ext');
    const keys = (await subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify'])) as CryptoKeyPair;
    const csr = await x509.Pkcs10CertificateRequestGenerator.create({
      name: 'CN=sensor-ext, O=Evil Corp',
      keys,
      signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' },
      extensions: [new x509.BasicConstraintsExtension(true, 5, true)],
    });
    const res = await t.api('POST', '/v1/enrollments', { json: { token, csr: csr.toString('pem') } });
    assert.equal(res.status, 201, res.text);
    const issued = new x509.X509Certificate(res.json.certificate);
    assert.equal(issued.subject, 'CN=sensor-ext');
    assert.equal(issued.getExtension(x509.BasicConstraintsExtension)?.ca, false);
  });

  test('the same token cannot enroll twice; a retry of the same CSR gets the same certificate', async () => {
    const token = await t.register('sensor-twice');
    const identity = await createDeviceIdentity('sensor-twice');
    const first = await t.api('POST', '/v1/enrollments', { json: { token, csr: identity.csrPem } });
    assert.equal(first.status, 201);
    const retry = await t.api('POST', '/v1/enrollments', { json: { token, csr: identity.csrPem } });
    assert.equal(retry.status, 200, retry.text);
    assert.equal(retry.json.serial, first.json.serial);
    assert.equal(retry.json.certificate, first.json.certificate);
    const other = await createDeviceIdentity('sensor-twice');
    assertProblem(await t.api('POST', '/v1/enrollments', { json: { token, csr: other.csrPem } }), 409, 'token_used');
    const shown = await t.api('GET', '/v1/devices/sensor-twice', { token: t.adminToken });
    assert.equal(shown.json.certificates.length, 1, 'exactly one certificate was issued');
  });

  test('refuses bad CSRs with specific errors and leaves the token usable', async () => {
    const token = await t.register('sensor-bad');
    const enroll = (csr: string) => t.api('POST', '/v1/enrollments', { json: { token, csr } });

    assertProblem(await enroll('hello, I am not a CSR'), 400, 'csr_invalid');
    assertProblem(await enroll(Buffer.from('not DER at all').toString('base64')), 400, 'csr_invalid');
    assertProblem(await enroll((await createDeviceIdentity('x')).keyPem), 400, 'csr_invalid');

    // A valid CSR whose signature was altered: proof of possession fails.
    const good = await createDeviceIdentity('sensor-bad');
    const der = Buffer.from(good.csrBase64, 'base64');
    der[der.length - 3] = der[der.length - 3]! ^ 0x01;
    assertProblem(await enroll(der.toString('base64')), 400, 'csr_signature_invalid');

    // RSA and Ed25519 keys made by openssl, subject right: refused for the key.
    const rsaKey = await openssl(['genpkey', '-algorithm', 'RSA', '-pkeyopt', 'rsa_keygen_bits:2048']);
    const rsaFile = await file('rsa.key', rsaKey.stdout);
    const rsaCsr = await openssl(['req', '-new', '-key', rsaFile, '-subj', '/CN=sensor-bad']);
    assertProblem(await enroll(rsaCsr.stdout), 400, 'key_not_allowed');
    const edKey = await openssl(['genpkey', '-algorithm', 'ED25519']);
    const edFile = await file('ed.key', edKey.stdout);
    const edCsr = await openssl(['req', '-new', '-key', edFile, '-subj', '/CN=sensor-bad']);
    assertProblem(await enroll(edCsr.stdout), 400, 'key_not_allowed');

    // A well-formed EC CSR for another device.
    assertProblem(await enroll((await createDeviceIdentity('someone-else')).csrPem), 400, 'subject_mismatch');

    const shown = await t.api('GET', '/v1/devices/sensor-bad', { token: t.adminToken });
    assert.equal(shown.json.status, 'pending');
    assert.equal(shown.json.certificates.length, 0, 'no refused request wrote a certificate');
    assert.equal((await enroll(good.csrPem)).status, 201, 'the token still works after refusals');
  });

  test('refuses unknown and expired tokens', async () => {
    const identity = await createDeviceIdentity('sensor-token');
    assertProblem(await t.api('POST', '/v1/enrollments', { json: { token: 'fleet_enroll_nope', csr: identity.csrPem } }), 401, 'token_unknown');
    assertProblem(await t.api('POST', '/v1/enrollments', { json: { token: 'garbage', csr: identity.csrPem } }), 401, 'token_unknown');

    const longAgo = new Date(Date.now() - 30 * 86_400_000);
    const stale = await registerDevice(t.fleet.db.pool, { deviceId: 'sensor-token', actor: 'test', tokenTtlMs: 86_400_000, now: longAgo });
    const res = await t.api('POST', '/v1/enrollments', { json: { token: stale.enrollmentToken, csr: identity.csrPem } });
    assertProblem(res, 401, 'token_expired');
  });

  test('refuses malformed, oversized and unauthenticated requests', async () => {
    assertProblem(await t.api('POST', '/v1/enrollments', { body: '{"token": ', headers: { 'content-type': 'application/json' } }), 400, 'request_malformed');
    assertProblem(await t.api('POST', '/v1/enrollments', { json: { token: 'x' } }), 400, 'validation_failed');
    const huge = 'A'.repeat(200 * 1024);
    assertProblem(await t.api('POST', '/v1/enrollments', { json: { token: 'x', csr: huge } }), 413, 'body_too_large');
    assertProblem(await t.api('POST', '/v1/devices', { json: { id: 'sensor-anon' } }), 401, 'unauthorized');
    assertProblem(await t.api('POST', '/v1/devices', { token: 'fleet_op_wrong', json: { id: 'sensor-anon' } }), 401, 'unauthorized');
    assertProblem(await t.api('POST', '/v1/devices', { token: t.adminToken, json: { id: 'bad/id/#' } }), 400, 'validation_failed');
    assertProblem(await t.api('GET', '/v1/nothing-here'), 404, 'not_found');
  });

  test('registering a device twice and revoking an unknown device are refused', async () => {
    await t.register('sensor-dup');
    assertProblem(await t.api('POST', '/v1/devices', { token: t.adminToken, json: { id: 'sensor-dup' } }), 409, 'device_exists');
    assertProblem(await t.api('POST', '/v1/devices/no-such-device/revoke', { token: t.adminToken, json: {} }), 404, 'device_not_found');
    assertProblem(await t.api('POST', '/v1/devices/sensor-dup/revoke', { token: t.adminToken, json: { reason: 'stolen' } }), 400, 'validation_failed');
  });

  test('a revoked device cannot enroll with its unused token', async () => {
    const token = await t.register('sensor-gone');
    const revoked = await t.api('POST', '/v1/devices/sensor-gone/revoke', { token: t.adminToken });
    assert.equal(revoked.status, 200, revoked.text);
    const identity = await createDeviceIdentity('sensor-gone');
    const res = await t.api('POST', '/v1/enrollments', { json: { token, csr: identity.csrPem } });
    assertProblem(res, 403, 'device_revoked');
  });
});

describe('EST (RFC 7030)', () => {
  test('cacerts returns the issuing and root CA as PKCS#7 that openssl reads', async () => {
    const res = await t.api('GET', '/.well-known/est/cacerts');
    assert.equal(res.status, 200);
    assert.match(String(res.headers['content-type']), /^application\/pkcs7-mime; smime-type=certs-only/);
    const certs = await openssl(['pkcs7', '-inform', 'DER', '-print_certs', '-noout'], Buffer.from(res.text, 'base64'));
    assert.equal(certs.code, 0, certs.stderr);
    assert.match(certs.stdout, /subject=CN ?= ?fleet-auth Issuing CA 1/);
    assert.match(certs.stdout, /subject=CN ?= ?fleet-auth Root CA/);
  });

  test('simpleenroll takes an openssl CSR with HTTP Basic device id and token', async () => {
    const token = await t.register('sensor-est');
    const key = await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256']);
    const keyFile = await file('est.key', key.stdout);
    const csr = await openssl(['req', '-new', '-key', keyFile, '-subj', '/CN=sensor-est']);
    // A PEM body is base64 DER, which is what EST sends.
    const body = csr.stdout.replace(/-----[A-Z ]+-----/g, '').trim();
    const basic = Buffer.from(`sensor-est:${token}`).toString('base64');

    const noAuth = await t.api('POST', '/.well-known/est/simpleenroll', { body, headers: { 'content-type': 'application/pkcs10' } });
    assertProblem(noAuth, 401, 'unauthorized');
    assert.match(String(noAuth.headers['www-authenticate']), /^Basic/);
    const wrongType = await t.api('POST', '/.well-known/est/simpleenroll', { body, headers: { 'content-type': 'text/plain', authorization: `Basic ${basic}` } });
    assertProblem(wrongType, 415, 'unsupported_media_type');
    const wrongDevice = Buffer.from(`sensor-other:${token}`).toString('base64');
    assertProblem(
      await t.api('POST', '/.well-known/est/simpleenroll', { body, headers: { 'content-type': 'application/pkcs10', authorization: `Basic ${wrongDevice}` } }),
      401,
      'token_unknown',
    );

    const res = await t.api('POST', '/.well-known/est/simpleenroll', { body, headers: { 'content-type': 'application/pkcs10', authorization: `Basic ${basic}` } });
    assert.equal(res.status, 200, res.text);
    assert.match(String(res.headers['content-type']), /^application\/pkcs7-mime; smime-type=certs-only/);
    const certs = await openssl(['pkcs7', '-inform', 'DER', '-print_certs'], Buffer.from(res.text, 'base64'));
    assert.equal(certs.code, 0, certs.stderr);
    assert.match(certs.stdout, /subject=CN ?= ?sensor-est/);
  });
});
