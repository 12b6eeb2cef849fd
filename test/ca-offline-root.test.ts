import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, mkdir, mkdtemp, readFile, rename, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import { createLogger, type Logger, silentLogger } from '../core/log.js';
import { loadAuthority } from '../core/pki/authority.js';
import { x509 } from '../core/pki/x509.js';
import { fleetCli } from './support/cli.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { openssl } from './support/openssl.js';

const scratch: string[] = [];
after(async () => {
  for (const dir of scratch) await rm(dir, { recursive: true, force: true });
});

async function tempDir(prefix: string): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), prefix));
  scratch.push(dir);
  return dir;
}

/** Takes the root key offline as the start warning says: root.crt copied, root.key moved, to a directory of its own. */
async function moveRootKeyTo(dataDir: string, offline: string): Promise<void> {
  await mkdir(path.join(offline, 'pki'), { recursive: true });
  await copyFile(path.join(dataDir, 'pki', 'root.crt'), path.join(offline, 'pki', 'root.crt'));
  await rename(path.join(dataDir, 'pki', 'root.key'), path.join(offline, 'pki', 'root.key'));
}

/** A CSR that fleet ca rotate --csr did not make: another key, under the subject given. */
async function foreignCsr(subject: string): Promise<string> {
  const keys = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
  const csr = await x509.Pkcs10CertificateRequestGenerator.create({ name: subject, keys, signingAlgorithm: { name: 'ECDSA', hash: 'SHA-256' } });
  return csr.toString('pem');
}

describe('rotation with the root key offline', () => {
  let t: TestFleet;
  let offline: string;
  before(async () => {
    t = await startTestFleet();
    offline = await tempDir('fleet-offline-root-');
  });
  after(() => t?.close());

  const file = (name: string, content: string | Buffer) => t.file(name, content);
  /** Where the root key is: its own data directory, no database, nothing else of the fleet. */
  const atRoot = (args: string[], dir = offline) => fleetCli(t, args, { FLEET_DATA_DIR: dir, DATABASE_URL: undefined });

  async function untilGeneration(generation: number): Promise<void> {
    for (let i = 0; i < 200 && t.fleet.ca.current.generation !== generation; i++) await sleep(50);
    assert.equal(t.fleet.ca.current.generation, generation, 'the running fleet reloaded the CA');
  }

  async function verifies(device: EnrolledDevice): Promise<boolean> {
    const trust = await file('trust.pem', (await t.api('GET', '/pki/trust.pem')).text);
    const result = await openssl(['verify', '-CAfile', await file('root.pem', t.rootPem), '-untrusted', trust, await file('device.pem', device.certificatePem)]);
    return result.code === 0;
  }

  test('rotate --csr here, sign-issuing where the root key is, import here: the fleet signs with the new issuing CA at once', async () => {
    const before = await t.enroll('offline-before');
    await moveRootKeyTo(t.dataDir, offline);

    const online = await fleetCli(t, ['ca', 'rotate']);
    assert.equal(online.code, 1);
    assert.match(online.stderr, /^error: the root CA key is not in .* \(kept offline\); make the next issuing CA with fleet ca rotate --csr <file>.*\[root_offline\]$/m);

    const csr = path.join(t.dataDir, 'issuing.csr');
    const requested = await fleetCli(t, ['ca', 'rotate', '--csr', csr]);
    assert.equal(requested.code, 0, requested.stderr);
    assert.match(requested.stderr, /fleet ca sign-issuing .*issuing\.csr --out issuing-2\.crt/);
    const csrChecked = await openssl(['req', '-in', csr, '-verify', '-noout', '-subject']);
    assert.match(csrChecked.stdout + csrChecked.stderr, /verify OK/i);
    assert.match(csrChecked.stdout, /subject=CN\s*=\s*fleet-auth Issuing CA 2, O\s*=\s*fleet-auth/);
    assert.ok(existsSync(path.join(t.dataDir, 'pki', 'issuing-2.key')), 'the new key waits beside the fleet (a file: no token configured)');
    assert.ok(!existsSync(path.join(t.dataDir, 'pki', 'issuing-2.crt')), 'nothing signs with it yet');

    const here = await fleetCli(t, ['ca', 'sign-issuing', csr, '--out', path.join(t.dataDir, 'x.crt')]);
    assert.equal(here.code, 1);
    assert.match(here.stderr, /has the root CA certificate but not its key \(root\.key\); run this where the root key is/);

    // The root signs only issuing CA requests whose own signature holds.
    const badSubject = await atRoot(['ca', 'sign-issuing', await file('evil.csr', await foreignCsr('CN=evil.example.com')), '--out', path.join(offline, 'evil.crt')]);
    assert.equal(badSubject.code, 1);
    assert.match(badSubject.stderr, /"CN=evil\.example\.com" is not an issuing CA's subject/);
    const der = Buffer.from(x509.PemConverter.decodeFirst(await readFile(csr, 'utf8')));
    der[der.length - 1] = der.at(-1)! ^ 0x01;
    const tampered = await atRoot(['ca', 'sign-issuing', await file('tampered.csr', x509.PemConverter.encode(der, 'CERTIFICATE REQUEST')), '--out', path.join(offline, 't.crt')]);
    assert.equal(tampered.code, 1);
    assert.match(tampered.stderr, /the CSR's signature does not verify/);

    // Import takes only a certificate from our root, for the key rotate --csr made.
    const otherRootDir = await tempDir('fleet-other-root-');
    await loadAuthority({ dataDir: otherRootDir, hostnames: [], log: silentLogger() });
    const fromOtherRoot = path.join(offline, 'other-root.crt');
    assert.equal((await atRoot(['ca', 'sign-issuing', csr, '--out', fromOtherRoot], otherRootDir)).code, 0);
    const refusedRoot = await fleetCli(t, ['ca', 'import', fromOtherRoot]);
    assert.equal(refusedRoot.code, 1);
    assert.match(refusedRoot.stderr, /the certificate is not signed by this fleet's root CA .*; nothing was installed \[issuer_certificate_refused\]/);
    const otherKey = path.join(offline, 'other-key.crt');
    const signedOtherKey = await atRoot(['ca', 'sign-issuing', await file('other-key.csr', await foreignCsr('CN=fleet-auth Issuing CA 2, O=fleet-auth')), '--out', otherKey]);
    assert.equal(signedOtherKey.code, 0, signedOtherKey.stderr);
    const refusedKey = await fleetCli(t, ['ca', 'import', otherKey]);
    assert.equal(refusedKey.code, 1);
    assert.match(refusedKey.stderr, /the certificate is for another key than issuing CA 2's .*issuing-2\.key/);
    assert.ok(!existsSync(path.join(t.dataDir, 'pki', 'issuing-2.crt')), 'a refused import installs nothing');
    assert.equal(t.fleet.ca.current.generation, 1);

    const cert = path.join(offline, 'issuing-2.crt');
    const signed = await atRoot(['ca', 'sign-issuing', csr, '--out', cert]);
    assert.equal(signed.code, 0, signed.stderr);
    assert.match(signed.stderr, /Signed CN=fleet-auth Issuing CA 2, O=fleet-auth \(key SHA-256 [0-9a-f]{64}\)/);
    const issued = await openssl(['x509', '-in', cert, '-noout', '-text']);
    assert.match(issued.stdout, /CA:TRUE, pathlen:0/);
    assert.equal((await openssl(['verify', '-CAfile', path.join(offline, 'pki', 'root.crt'), cert])).code, 0, 'openssl verifies it against the root');

    const imported = await fleetCli(t, ['ca', 'import', cert]);
    assert.equal(imported.code, 0, imported.stderr);
    await untilGeneration(2);
    const after = await t.enroll('offline-after');
    assert.match(new x509.X509Certificate(after.certificatePem).issuer, /Issuing CA 2\b/);
    assert.ok(await verifies(after), 'a certificate from the imported issuing CA verifies up to the root');
    assert.ok(await verifies(before), 'the earlier issuing CA stays trusted');
    assert.ok(!existsSync(path.join(t.dataDir, 'pki', 'root.key')), 'the root key never came back');

    const again = await fleetCli(t, ['ca', 'import', cert]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /no issuing CA is waiting for its certificate .*run fleet ca rotate --csr <file> first/);
  });
});

describe('a root key left online', () => {
  test('every start warns in one line how to take it offline, and stops once the key is moved away', async () => {
    const raw: string[] = [];
    const log: Logger = createLogger('info', { write: (line: string) => void raw.push(line) });
    const warnings = (from: number) =>
      raw.slice(from).map((line) => JSON.parse(line) as { level: number; msg: string }).filter((l) => l.level === 40 && /root CA key is online/.test(l.msg));
    const t = await startTestFleet({ log });
    try {
      const rootKey = path.join(t.dataDir, 'pki', 'root.key');
      const said = warnings(0);
      assert.equal(said.length, 1);
      const msg = said[0]!.msg;
      assert.ok(!msg.includes('\n'), 'one line');
      assert.ok(msg.includes(`mv ${rootKey} <offline-dir>/pki/`), msg);
      for (const command of ['fleet ca rotate --csr', 'fleet ca sign-issuing', 'fleet ca import']) assert.ok(msg.includes(command), `names ${command}`);

      const offline = await tempDir('fleet-warned-root-');
      const mark = raw.length;
      await t.restart(() => moveRootKeyTo(t.dataDir, offline));
      assert.deepEqual(warnings(mark), [], 'no warning once the root key is offline');
      assert.ok(raw.slice(mark).some((line) => /not encrypted at rest/.test(line)), 'the restart did log its start');
      assert.ok(await t.enroll('after-root-offline'), 'the fleet runs without its root key');
      assert.equal(t.fleet.ca.root.toString('pem'), new x509.X509Certificate(await readFile(path.join(offline, 'pki', 'root.crt'), 'utf8')).toString('pem'), 'the same root');
    } finally {
      await t.close();
    }
  });
});
