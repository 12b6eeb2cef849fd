import assert from 'node:assert/strict';
import { once } from 'node:events';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { after, before, describe, test } from 'node:test';
import { x509 } from '../core/pki/x509.js';
import { openssl, run } from './support/openssl.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';

/**
 * The signed objects over plain HTTP, fetched as a relying party that does not trust our root yet
 * would: URLs read from the certificate, curl and openssl over http://, nothing else served there.
 */
let t: TestFleet;
let pkiUrl: string;
let device: EnrolledDevice;
let certFile: string;
let issuingFile: string;
let chainFile: string;
before(async () => {
  t = await startTestFleet();
  assert.ok(t.fleet.api.pkiHttpPort, 'the PKI listener runs');
  pkiUrl = `http://localhost:${t.fleet.api.pkiHttpPort}`;
  device = await t.enroll('pki-http-1');
  certFile = await t.file('device.pem', device.certificatePem);
  issuingFile = await t.file('issuing.pem', t.fleet.ca.issuing.toString('pem'));
  chainFile = await t.file('chain.pem', t.fleet.ca.chainPem);
});
after(() => t?.close());

/** The certificate's own URLs, as openssl prints them. */
async function urlsIn(pem: string) {
  const text = (await openssl(['x509', '-noout', '-text'], pem)).stdout;
  return {
    crl: /X509v3 CRL Distribution Points:[\s\S]*?URI:(\S+)/.exec(text)?.[1],
    ocsp: /OCSP - URI:(\S+)/.exec(text)?.[1],
    caIssuers: /CA Issuers - URI:(\S+)/.exec(text)?.[1],
  };
}

const curl = (...args: string[]) => run('curl', ['-sS', ...args]);
/** curl's response, headers and body, as bytes. */
async function fetchBytes(url: string, ...args: string[]): Promise<{ status: number; type: string; body: Buffer }> {
  const out = await t.file('body', '');
  const res = await curl('-o', out, '-w', '%{http_code} %{content_type}', ...args, url);
  assert.equal(res.code, 0, res.stderr);
  const [status, type] = res.stdout.split(' ');
  return { status: Number(status), type: type ?? '', body: await readFile(out) };
}

describe('the plain-HTTP PKI listener', () => {
  test('certificates name http:// URLs on it for the CRL, OCSP and the issuer', async () => {
    const urls = await urlsIn(device.certificatePem);
    const keyId = t.fleet.ca.current.keyId;
    assert.deepEqual(urls, { crl: `${pkiUrl}/pki/crl/${keyId}`, ocsp: `${pkiUrl}/ocsp`, caIssuers: `${pkiUrl}/pki/issuers/${keyId}.crt` });
  });

  test('serves the CRL the certificate names, which openssl verifies', async () => {
    const { crl } = await urlsIn(device.certificatePem);
    const fetched = await fetchBytes(crl!);
    assert.equal(fetched.status, 200);
    assert.equal(fetched.type, 'application/pkix-crl');
    const checked = await openssl(['crl', '-inform', 'DER', '-in', await t.file('crl.der', fetched.body), '-CAfile', chainFile, '-noout']);
    assert.equal(checked.code, 0, checked.stderr);
    assert.match(checked.stderr, /verify OK/);
    const pem = await fetchBytes(`${pkiUrl}/pki/crl.pem`);
    assert.match(pem.body.toString(), /^-----BEGIN X509 CRL-----/);
  });

  test('serves the issuer the certificate names, DER, and the CA certificates', async () => {
    const { caIssuers } = await urlsIn(device.certificatePem);
    const issuer = await fetchBytes(caIssuers!);
    assert.equal(issuer.status, 200);
    assert.equal(issuer.type, 'application/pkix-cert');
    const issuerCert = new x509.X509Certificate(new Uint8Array(issuer.body));
    assert.equal(issuerCert.subject, t.fleet.ca.issuing.subject);
    // With only what came over HTTP (root and issuer), openssl verifies the device certificate.
    const rootFile = await t.file('root.pem', (await fetchBytes(`${pkiUrl}/pki/root.pem`)).body);
    const verified = await openssl(['verify', '-CAfile', rootFile, '-untrusted', await t.file('issuer.pem', issuerCert.toString('pem')), certFile]);
    assert.equal(verified.code, 0, verified.stderr);
    assert.match(verified.stdout, /: OK/);
  });

  test('answers OCSP at the URL the certificate names: openssl ocsp -url, POST and GET', async () => {
    const { ocsp } = await urlsIn(device.certificatePem);
    const post = await openssl(['ocsp', '-url', ocsp!, '-issuer', issuingFile, '-cert', certFile, '-CAfile', chainFile]);
    assert.equal(post.code, 0, post.stderr);
    assert.match(post.stderr, /Response verify OK/);
    assert.match(post.stdout, /device\.pem: good/);
    // The GET form (RFC 6960 A.1), as caching clients use it.
    const reqFile = await t.file('req.der', '');
    assert.equal((await openssl(['ocsp', '-issuer', issuingFile, '-cert', certFile, '-reqout', reqFile, '-no_nonce'])).code, 0);
      const encoded = encodeURIComponent((await readFile(reqFile)).toString('base64'));
    const got = await fetchBytes(`${ocsp}/${encoded}`);
    assert.equal(got.status, 200);
    assert.equal(got.type, 'application/ocsp-response');
    const checked = await openssl(['ocsp', '-respin', await t.file('resp.der', got.body), '-issuer', issuingFile, '-cert', certFile, '-CAfile', chainFile, '-no_nonce']);
    assert.match(checked.stderr, /Response verify OK/);
    assert.match(checked.stdout, /device\.pem: good/);
  });

  test('serves nothing else: enrollment, devices, EST, health and docs are 404 there', async () => {
    const routes: [string, string][] = [
      ['POST', '/v1/enrollments'],
      ['POST', '/v1/devices'],
      ['GET', '/v1/devices/pki-http-1'],
      ['POST', '/v1/renewals'],
      ['GET', '/.well-known/est/cacerts'],
      ['GET', '/.well-known/est/csrattrs'],
      ['POST', '/.well-known/est/simpleenroll'],
      ['GET', '/healthz'],
      ['GET', '/healthz/live'],
      ['GET', '/healthz/ready'],
      ['GET', '/docs'],
      ['GET', '/openapi.json'],
    ];
    for (const [method, path] of routes) {
      const res = await fetchBytes(`${pkiUrl}${path}`, '-X', method, '-H', `authorization: Bearer ${t.adminToken}`, '-H', 'content-type: application/json', '--data-binary', '{}');
      assert.equal(res.status, 404, `${method} ${path}`);
      assert.equal(res.type, 'application/problem+json');
    }
    // And it is plain HTTP only: no TLS on that port.
    const tls = await curl('--cacert', await t.file('root2.pem', t.rootPem), `https://localhost:${t.fleet.api.pkiHttpPort}/pki/crl`);
    assert.notEqual(tls.code, 0);
  });

  test('the https routes stay', async () => {
    for (const path of ['/pki/crl', '/pki/ca.pem', `/pki/issuers/${t.fleet.ca.current.keyId}.crt`]) {
      assert.equal((await t.api('GET', path)).status, 200, path);
    }
  });
});

describe('a port in use', () => {
  test('on the PKI listener fails the start and leaves no API listener behind', async () => {
    const freePort = async () => {
      const probe = net.createServer().listen(0, '127.0.0.1');
      await once(probe, 'listening');
      const { port } = probe.address() as net.AddressInfo;
      await new Promise<void>((resolve) => probe.close(() => resolve()));
      return port;
    };
    const busy = net.createServer().listen(0, '127.0.0.1');
    await once(busy, 'listening');
    const busyPort = (busy.address() as net.AddressInfo).port;
    const apiPort = await freePort();
    try {
      await assert.rejects(
        // The same registry and CA key store (the registry's CA needs its keys), other ports.
        startTestFleet({ databaseUrl: t.config.databaseUrl, env: { FLEET_DATA_DIR: t.config.dataDir, FLEET_API_PORT: String(apiPort), FLEET_PKI_HTTP_PORT: String(busyPort) } }),
        (error: NodeJS.ErrnoException) => error.code === 'EADDRINUSE',
      );
      // The API's port is free again: nothing was left listening on it.
      const again = net.createServer().listen(apiPort, '127.0.0.1');
      await once(again, 'listening');
      again.close();
    } finally {
      busy.close();
    }
  });
});
