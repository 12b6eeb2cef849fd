import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { ecSigningAlgorithm, generateEcKeys, randomSerial, x509 } from '../core/pki/x509.js';
import { getCertificate } from '../core/registry/index.js';
import { MAX_CERT_IDS_PER_REQUEST, ocspAnswer, type StatusRecord } from '../provisioning/ocsp.js';
import { openssl } from './support/openssl.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';

let t: TestFleet;
let issuingFile: string;
let chainFile: string;
before(async () => {
  t = await startTestFleet();
  issuingFile = await file('issuing.pem', t.fleet.ca.issuing.toString('pem'));
  chainFile = await file('chain.pem', t.fleet.ca.chainPem);
});
after(() => t?.close());

const file = (name: string, content: string | Buffer) => t.file(name, content);

const certFile = async (deviceId: string) => file(`${deviceId}.pem`, (await t.enroll(deviceId)).certificatePem);

/** openssl builds the request, as a relying party would: `args` name the certificates (-cert, -serial). */
async function ocspRequest(args: string[], options: { nonce?: boolean; digest?: string } = {}): Promise<Buffer> {
  const out = await t.file('req.der', '');
  const made = await openssl([
    'ocsp',
    ...(options.digest ? [`-${options.digest}`] : []),
    '-issuer',
    issuingFile,
    ...args,
    '-reqout',
    out,
    ...(options.nonce ? [] : ['-no_nonce']),
  ]);
  assert.equal(made.code, 0, made.stderr);
  return readFile(out);
}

async function postOcsp(request: Buffer | string): Promise<Buffer> {
  const res = await t.api('POST', '/ocsp', { body: request, headers: { 'content-type': 'application/ocsp-request' } });
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers['content-type'], 'application/ocsp-response');
  return res.body;
}

async function getOcsp(encoded: string): Promise<Buffer> {
  const res = await t.api('GET', `/ocsp/${encoded}`);
  assert.equal(res.status, 200, res.text);
  assert.equal(res.headers['content-type'], 'application/ocsp-response');
  return res.body;
}

/** openssl judges the response: signature, chain to the root, and each certificate's status. */
async function judge(response: Buffer, certArgs: string[], issuer = issuingFile) {
  const respFile = await file('resp.der', response);
  const checked = await openssl(['ocsp', '-respin', respFile, '-issuer', issuer, ...certArgs, '-CAfile', chainFile, '-no_nonce', '-resp_text']);
  return { ...checked, all: checked.stdout + checked.stderr };
}

/** openssl prints "Nov 24 05:31:07 2026 GMT". */
const opensslDate = (output: string, label: string): Date => {
  const match = new RegExp(`${label}: (\\w+ +\\d+ [\\d:]+ \\d+ GMT)`).exec(output);
  assert.ok(match, `no ${label} in ${output}`);
  return new Date(match[1]!);
};

const nonceIn = (text: string): string | undefined => /OCSP Nonce:\s*\n\s*([0-9A-F]+)/.exec(text)?.[1];

describe('OCSP responder', () => {
  test('answers good for an enrolled certificate, signed by the issuing CA and valid for an hour', async () => {
    const cert = await certFile('ocsp-good');
    const checked = await judge(await postOcsp(await ocspRequest(['-cert', cert])), ['-cert', cert]);
    assert.equal(checked.code, 0, checked.all);
    assert.match(checked.stderr, /Response verify OK/);
    assert.match(checked.stdout, /ocsp-good\.pem: good/);
    assert.match(checked.stdout, /Signature Algorithm: ecdsa-with-SHA256/);
    // byKey: the SHA-1 of the issuing CA's key bits, which is also its subject key identifier.
    const ski = t.fleet.ca.issuing.getExtension(x509.SubjectKeyIdentifierExtension)!.keyId.toUpperCase();
    assert.match(checked.stdout, new RegExp(`Responder Id: ${ski}`));
    const thisUpdate = opensslDate(checked.stdout, 'This Update');
    assert.equal(opensslDate(checked.stdout, 'Next Update').getTime() - thisUpdate.getTime(), 3_600_000);
  });

  test('answers for CertIDs hashed with SHA-256 too', async () => {
    const cert = await certFile('ocsp-sha256');
    const request = await ocspRequest(['-cert', cert], { digest: 'sha256' });
    const checked = await judge(await postOcsp(request), ['-cert', cert]);
    assert.match(checked.stderr, /Response verify OK/);
    assert.match(checked.stdout, /Hash Algorithm: sha256/);
    assert.match(checked.stdout, /Cert Status: good/);
  });

  test('echoes the nonce, so openssl accepts the response as fresh', async () => {
    const cert = await certFile('ocsp-nonce');
    const request = await ocspRequest(['-cert', cert], { nonce: true });
    const reqFile = await file('req.der', request);
    const respFile = await file('resp.der', await postOcsp(request));
    // Without -cert openssl checks the response against this very request, nonce included.
    const checked = await openssl(['ocsp', '-reqin', reqFile, '-respin', respFile, '-CAfile', chainFile, '-resp_text']);
    assert.equal(checked.code, 0, checked.stderr);
    assert.match(checked.stderr, /Response verify OK/);
    assert.doesNotMatch(checked.stderr, /nonce/i);
    const sent = nonceIn((await openssl(['ocsp', '-reqin', reqFile, '-req_text'])).stdout);
    assert.ok(sent, 'openssl put a nonce in the request');
    assert.equal(nonceIn(checked.stdout), sent);
  });

  test('answers revoked with the time and reason once the device is revoked', async () => {
    const cert = await certFile('ocsp-revoked');
    const revoked = await t.api('POST', '/v1/devices/ocsp-revoked/revoke', { token: t.adminToken, json: { reason: 'keyCompromise' } });
    assert.equal(revoked.status, 200, revoked.text);
    const checked = await judge(await postOcsp(await ocspRequest(['-cert', cert])), ['-cert', cert]);
    assert.equal(checked.code, 0, checked.all);
    assert.match(checked.stderr, /Response verify OK/);
    assert.match(checked.stdout, /ocsp-revoked\.pem: revoked/);
    assert.match(checked.stdout, /Reason: keyCompromise/);
    const shown = await t.api('GET', '/v1/devices/ocsp-revoked', { token: t.adminToken });
    const revokedAt = new Date(shown.json.certificates[0].revokedAt);
    assert.equal(opensslDate(checked.stdout, 'Revocation Time').getTime(), Math.floor(revokedAt.getTime() / 1000) * 1000);
  });

  test('answers revoked with certificateHold while the device is suspended, and good after it resumes', async () => {
    const cert = await certFile('ocsp-held');
    const ask = async () => judge(await postOcsp(await ocspRequest(['-cert', cert])), ['-cert', cert]);
    assert.equal((await t.api('POST', '/v1/devices/ocsp-held/suspend', { token: t.adminToken })).status, 200);
    const held = await ask();
    assert.match(held.all, /Response verify OK/);
    assert.match(held.stdout, /ocsp-held\.pem: revoked\n(.*\n)*?\s*Reason: certificateHold/);
    assert.equal((await t.api('POST', '/v1/devices/ocsp-held/resume', { token: t.adminToken })).status, 200);
    assert.match((await ask()).stdout, /ocsp-held\.pem: good/);
  });

  test('answers unknown for a certificate our CA signed that the registry does not hold', async () => {
    const device = await createDeviceIdentity('ocsp-ghost');
    const ghost = await t.fleet.ca.sign({
      subject: 'CN=ocsp-ghost',
      publicKey: device.csr.publicKey,
      notBefore: new Date(Date.now() - 60_000),
      notAfter: new Date(Date.now() + 3_600_000),
      extensions: [new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.clientAuth])],
    });
    const cert = await file('ghost.pem', ghost.toString('pem'));
    const checked = await judge(await postOcsp(await ocspRequest(['-cert', cert])), ['-cert', cert]);
    assert.match(checked.stderr, /Response verify OK/);
    assert.match(checked.stdout, /ghost\.pem: unknown/);
  });

  test('answers unauthorized, unsigned, for a CA we do not run, even one with our issuing CA\'s name', async () => {
    const keys = await generateEcKeys('P-256');
    const foreignCa = await x509.X509CertificateGenerator.createSelfSigned({
      serialNumber: randomSerial(),
      name: t.fleet.ca.issuing.subject,
      keys,
      signingAlgorithm: ecSigningAlgorithm('P-256'),
      extensions: [new x509.BasicConstraintsExtension(true, 0, true)],
    });
    // The serial of a real enrolled certificate: only the key hash tells the issuers apart.
    const enrolled = await t.enroll('ocsp-twin');
    const foreignCaFile = await file('foreign-ca.pem', foreignCa.toString('pem'));
    const request = await openssl(['ocsp', '-issuer', foreignCaFile, '-serial', `0x${enrolled.serial}`, '-reqout', path.join(t.dataDir, 'twin.der'), '-no_nonce']);
    assert.equal(request.code, 0, request.stderr);
    const response = await postOcsp(await readFile(path.join(t.dataDir, 'twin.der')));
    // RFC 6960 2.3: we cannot answer for it, so we say so instead of signing "unknown" on its behalf.
    const checked = await judge(response, ['-serial', `0x${enrolled.serial}`], foreignCaFile);
    assert.match(checked.all, /Responder Error: unauthorized \(6\)/);
    assert.doesNotMatch(checked.stdout, /Cert Status/);
    // Mixed with a certificate of ours, the whole request is still refused.
    const ours = await certFile('ocsp-twin-ours');
    const mixed = await openssl(['ocsp', '-issuer', issuingFile, '-cert', ours, '-issuer', foreignCaFile, '-serial', `0x${enrolled.serial}`, '-reqout', path.join(t.dataDir, 'mixed.der'), '-no_nonce']);
    assert.equal(mixed.code, 0, mixed.stderr);
    const mixedChecked = await judge(await postOcsp(await readFile(path.join(t.dataDir, 'mixed.der'))), []);
    assert.match(mixedChecked.all, /Responder Error: unauthorized \(6\)/);
  });

  test('answers several certificates in one request, each in its own right', async () => {
    const good = await certFile('ocsp-multi-good');
    const gone = await certFile('ocsp-multi-revoked');
    await t.api('POST', '/v1/devices/ocsp-multi-revoked/revoke', { token: t.adminToken, json: { reason: 'superseded' } });
    const stranger = `0x${randomSerial()}`;
    const args = ['-cert', good, '-cert', gone, '-serial', stranger];
    const checked = await judge(await postOcsp(await ocspRequest(args)), args);
    assert.match(checked.stderr, /Response verify OK/);
    assert.match(checked.stdout, /ocsp-multi-good\.pem: good/);
    assert.match(checked.stdout, /ocsp-multi-revoked\.pem: revoked\n(.*\n)*?\s*Reason: superseded/);
    assert.match(checked.stdout, new RegExp(`${stranger}: unknown`));
  });

  test(`answers up to ${MAX_CERT_IDS_PER_REQUEST} CertIDs in a request and refuses more as malformed`, async () => {
    const serials = (n: number) => Array.from({ length: n }, () => ['-serial', `0x${randomSerial()}`]).flat();
    const most = await judge(await postOcsp(await ocspRequest(serials(MAX_CERT_IDS_PER_REQUEST))), []);
    assert.match(most.stdout, /OCSP Response Status: successful/);
    assert.equal(most.stdout.match(/Cert Status: unknown/g)?.length, MAX_CERT_IDS_PER_REQUEST);
    const tooMany = await judge(await postOcsp(await ocspRequest(serials(MAX_CERT_IDS_PER_REQUEST + 1))), []);
    assert.match(tooMany.all, /Responder Error: malformedrequest/);
  });

  test('answers the GET form, base64 URL-encoded or base64url', async () => {
    const cert = await certFile('ocsp-get');
    const request = await ocspRequest(['-cert', cert]);
    for (const encoded of [encodeURIComponent(request.toString('base64')), request.toString('base64url')]) {
      const checked = await judge(await getOcsp(encoded), ['-cert', cert]);
      assert.match(checked.stderr, /Response verify OK/, encoded);
      assert.match(checked.stdout, /ocsp-get\.pem: good/, encoded);
    }
  });

  test('answers garbage with malformedRequest over HTTP 200, POST or GET', async () => {
    const responses = [
      await postOcsp('this is not an OCSP request'),
      await postOcsp(Buffer.alloc(0)),
      await postOcsp(randomBytes(300)),
      await getOcsp(encodeURIComponent(Buffer.from('garbage').toString('base64'))),
      await getOcsp('not*base64!'),
    ];
    for (const response of responses) {
      const checked = await judge(response, []);
      assert.match(checked.all, /Responder Error: malformedrequest \(1\)/);
    }
  });

  test('refuses a POST that is not an OCSP request with a problem document', async () => {
    const res = await t.api('POST', '/ocsp', { body: 'x', headers: { 'content-type': 'application/octet-stream' } });
    assert.equal(res.status, 415);
    assert.equal(res.headers['content-type'], 'application/problem+json');
    assert.equal(res.json.code, 'unsupported_media_type');
  });

  test('works as an OCSP URL for openssl itself, over HTTPS with a nonce', async () => {
    const cert = await certFile('ocsp-url');
    const checked = await openssl(['ocsp', '-url', `${t.apiUrl}/ocsp`, '-issuer', issuingFile, '-cert', cert, '-CAfile', chainFile]);
    assert.equal(checked.code, 0, checked.stderr);
    assert.match(checked.stderr, /Response verify OK/);
    assert.doesNotMatch(checked.stderr, /nonce/i);
    assert.match(checked.stdout, /ocsp-url\.pem: good/);
  });
});

describe('certificate status in the registry', () => {
  test('finds an enrolled certificate by serial, and nothing for a serial it never issued', async () => {
    const device = await t.enroll('status-1');
    const found = await getCertificate(t.fleet.db.pool, device.serial);
    assert.equal(found?.status, 'active');
    assert.equal(found?.issuer, t.fleet.ca.issuing.subject);
    assert.equal(found?.revokedAt, null);
    assert.ok(found?.notAfter instanceof Date);
    assert.equal(await getCertificate(t.fleet.db.pool, randomSerial()), undefined);
  });

  test('a suspended certificate is answered as revoked with reason certificateHold', () => {
    const at = new Date('2030-01-02T03:04:05Z');
    const record = (status: StatusRecord['status']): StatusRecord => ({ issuer: 'CN=us', status, revokedAt: at, revocationReason: null });
    assert.deepEqual(ocspAnswer(record('suspended'), 'CN=us', new Date()), { revokedAt: at, reason: 6 });
    assert.deepEqual(ocspAnswer(record('superseded'), 'CN=us', new Date()), { good: true });
    assert.deepEqual(ocspAnswer(record('active'), 'CN=someone else', new Date()), { unknown: true });
  });
});
