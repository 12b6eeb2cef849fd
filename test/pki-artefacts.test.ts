import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import { after, before, describe, test } from 'node:test';
import { startFleet, type RunningFleet } from '../cli/start.js';
import { silentLogger } from '../core/log.js';
import { httpsRequest } from './support/http.js';
import { openssl, run } from './support/openssl.js';
import { startTestFleet, type TestFleet } from './support/fleet.js';

/** Judged by openssl and curl: what each standard tool reads of our PKI artefacts. */
let t: TestFleet;
/** A second process on the same database and CA, as in a deployment with two API instances. */
let other: RunningFleet;
let rootFile: string;
let chainFile: string;
before(async () => {
  t = await startTestFleet();
  other = await startFleet(t.config, silentLogger());
  rootFile = await t.file('root.pem', t.rootPem);
  chainFile = await t.file('chain.pem', t.fleet.ca.chainPem);
});
after(async () => {
  await other?.close();
  await t?.close();
});

async function crlNumberOf(der: Buffer): Promise<number> {
  const printed = await openssl(['crl', '-inform', 'DER', '-noout', '-crlnumber'], der);
  assert.equal(printed.code, 0, printed.stderr);
  return Number(/crlNumber=(0x[0-9A-Fa-f]+)/.exec(printed.stdout)![1]);
}

const crlFrom = async (port: number) => (await httpsRequest(`https://localhost:${port}/pki/crl`, { ca: t.rootPem })).body;

/** openssl's view of a CMS structure: shows eContent as <ABSENT>, or as an (empty) value. */
const cmsPrint = (base64Body: string) => openssl(['cms', '-cmsout', '-print', '-inform', 'DER'], Buffer.from(base64Body, 'base64'));

describe('the CRL', () => {
  test('its PEM form is labelled X509 CRL, so openssl crl reads and verifies it', async () => {
    const pem = await t.api('GET', '/pki/crl.pem');
    assert.equal(pem.status, 200);
    assert.match(pem.text, /^-----BEGIN X509 CRL-----\n/);
    const checked = await openssl(['crl', '-in', await t.file('crl.pem', pem.body), '-CAfile', chainFile, '-noout']);
    assert.equal(checked.code, 0, checked.stderr);
    assert.match(checked.stderr, /verify OK/);
  });

  test('is signed once per change, by one process for all, and its number only grows', async () => {
    let previous = 0;
    for (let round = 0; round < 3; round++) {
      // A change: a device revoked.
      await t.register(`crl-round-${round}`);
      assert.equal((await t.api('POST', `/v1/devices/crl-round-${round}/revoke`, { token: t.adminToken, json: { reason: 'keyCompromise' } })).status, 200);
      const ports = [...Array(6).fill(t.fleet.api.port), ...Array(6).fill(other.api.port)] as number[];
      const numbers = await Promise.all(ports.map(async (port) => crlNumberOf(await crlFrom(port))));
      assert.equal(new Set(numbers).size, 1, `every request after one change gets the one CRL signed for it: ${numbers.join(', ')}`);
      assert.ok(numbers[0]! > previous, `CRL number ${numbers[0]} follows ${previous}`);
      previous = numbers[0]!;
    }
    // No change: the same CRL again, from either process.
    for (const port of [t.fleet.api.port, other.api.port]) assert.equal(await crlNumberOf(await crlFrom(port)), previous);
  });
});

describe('EST artefacts', () => {
  test('certs-only responses omit eContent (RFC 5652 5.2), for cacerts and simpleenroll', async () => {
    const cacerts = await t.api('GET', '/.well-known/est/cacerts');
    const printed = await cmsPrint(cacerts.text);
    assert.equal(printed.code, 0, printed.stderr);
    assert.match(printed.stdout, /eContentType: pkcs7-data/);
    assert.match(printed.stdout, /eContent: <ABSENT>/);
    assert.match(printed.stdout, /signerInfos:\s*\n\s*<EMPTY>/);
    const certs = await openssl(['pkcs7', '-inform', 'DER', '-print_certs', '-noout'], Buffer.from(cacerts.text, 'base64'));
    assert.match(certs.stdout, /subject=CN ?= ?fleet-auth Issuing CA 1/);
    assert.match(certs.stdout, /subject=CN ?= ?fleet-auth Root CA/);
  });

  test('csrattrs says what a CSR must carry: the commonName, and the key types the policy allows', async () => {
    const res = await run('curl', ['-sS', '-D', '-', '--cacert', rootFile, `${t.apiUrl}/.well-known/est/csrattrs`]);
    assert.equal(res.code, 0, res.stderr);
    const [head, body] = res.stdout.split('\r\n\r\n');
    assert.match(head!, /^HTTP\/1.1 200/);
    assert.match(head!, /content-type: application\/csrattrs/i);
    const parsed = await openssl(['asn1parse', '-inform', 'DER'], Buffer.from(body!, 'base64'));
    assert.equal(parsed.code, 0, parsed.stderr);
    const objects = [...parsed.stdout.matchAll(/OBJECT\s+:(\S+)/g)].map((m) => m[1]);
    // The default policy: EC P-256 and P-384 only.
    assert.deepEqual(objects, ['commonName', 'id-ecPublicKey', 'secp384r1', 'prime256v1', 'ecdsa-with-SHA256']);
  });

  test('a device id with ":" enrolls over EST: curl -u "<id>:<token>" splits at the last colon', async () => {
    const deviceId = 'line:7:sensor';
    const token = await t.register(deviceId);
    const key = await openssl(['genpkey', '-algorithm', 'EC', '-pkeyopt', 'ec_paramgen_curve:P-256']);
    const derFile = await t.file('colon.csr.der', '');
    const csr = await openssl(['req', '-new', '-key', await t.file('colon.key', key.stdout), '-subj', `/CN=${deviceId}`, '-outform', 'DER', '-out', derFile]);
    assert.equal(csr.code, 0, csr.stderr);
    const csrFile = await t.file('colon.csr', (await readFile(derFile)).toString('base64'));
    const res = await run('curl', [
      '-sS', '--fail-with-body', '--cacert', rootFile, '-u', `${deviceId}:${token}`,
      '-H', 'Content-Type: application/pkcs10', '--data-binary', `@${csrFile}`,
      `${t.apiUrl}/.well-known/est/simpleenroll`,
    ]);
    assert.equal(res.code, 0, res.stdout + res.stderr);
    const printed = await cmsPrint(res.stdout);
    assert.match(printed.stdout, /eContent: <ABSENT>/);
    const certs = await openssl(['pkcs7', '-inform', 'DER', '-print_certs', '-noout'], Buffer.from(res.stdout, 'base64'));
    assert.match(certs.stdout, /subject=CN ?= ?line:7:sensor/);
  });
});
