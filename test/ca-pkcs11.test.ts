import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rename, rm, writeFile, copyFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { after, before, describe, test } from 'node:test';
import * as graphene from 'graphene-pk11';
import { ConfigError, loadConfig } from '../core/config.js';
import { createLogger, type Logger } from '../core/log.js';
import { x509 } from '../core/pki/x509.js';
import { type EnrolledDevice, startTestFleet, type TestFleet } from './support/fleet.js';
import { fleetCli as runFleet } from './support/cli.js';
import { openssl, run } from './support/openssl.js';

/** Where Debian's softhsm2 package puts the module. */
const MODULE = '/usr/lib/softhsm/libsofthsm2.so';
const installed = existsSync(MODULE) && existsSync('/usr/bin/softhsm2-util');
const TOKEN = 'fleet-test-ca';
const PIN = '246810';
const SO_PIN = '13579111';
const PKCS11_ENV = { FLEET_CA_PKCS11_MODULE: MODULE, FLEET_CA_PKCS11_TOKEN: TOKEN, FLEET_CA_PKCS11_PIN: PIN };

describe('the issuing CA key in a PKCS#11 token (SoftHSM2)', { skip: installed ? false : `softhsm2 is not installed (no ${MODULE}); apt-get install softhsm2, as .ci/run does` }, () => {
  let scratch: string;
  let t: TestFleet;
  let running = false;
  const logged: string[] = [];
  const log: Logger = createLogger('debug', { write: (line: string) => void logged.push(line) });

  before(async () => {
    // A token of the test's own: SoftHSM2 keeps tokens in the directory its configuration names.
    scratch = await mkdtemp(path.join(os.tmpdir(), 'fleet-softhsm-'));
    await mkdir(path.join(scratch, 'tokens'));
    const conf = path.join(scratch, 'softhsm2.conf');
    await writeFile(conf, `directories.tokendir = ${path.join(scratch, 'tokens')}\nobjectstore.backend = file\nlog.level = ERROR\n`);
    process.env.SOFTHSM2_CONF = conf;
    const init = await run('softhsm2-util', ['--init-token', '--free', '--label', TOKEN, '--pin', PIN, '--so-pin', SO_PIN], { env: process.env });
    assert.equal(init.code, 0, init.stderr);
    t = await startTestFleet({ env: PKCS11_ENV, log });
    running = true;
  });
  after(async () => {
    if (running) await t.close();
    await rm(scratch, { recursive: true, force: true });
  });

  const file = (name: string, content: string | Buffer) => t.file(name, content);
  const pki = (name: string) => path.join(t.dataDir, 'pki', name);
  const issuingKeyFiles = async () => (await readdir(path.join(t.dataDir, 'pki'))).filter((name) => /^issuing.*\.key/.test(name));

  /** The fleet CLI beside the running fleet: same data directory, database and token. */
  const fleetCli = (args: string[], env: Record<string, string | undefined> = {}) => runFleet(t, args, { ...PKCS11_ENV, ...env });

  async function untilGeneration(generation: number): Promise<void> {
    for (let i = 0; i < 200 && t.fleet.ca.current.generation !== generation; i++) await sleep(50);
    assert.equal(t.fleet.ca.current.generation, generation, 'the running fleet reloaded the CA');
  }

  /** openssl verifies the device certificate up to the root, through the issuing CA the fleet serves. */
  async function assertChains(device: EnrolledDevice, issuer: RegExp): Promise<void> {
    assert.match(new x509.X509Certificate(device.certificatePem).issuer, issuer);
    const verified = await openssl(['verify', '-CAfile', await file('root.pem', t.rootPem), '-untrusted', await file('chain.pem', device.chainPem), await file('device.pem', device.certificatePem)]);
    assert.equal(verified.code, 0, verified.stdout + verified.stderr);
  }

  test('the fleet signs device and server certificates, CRLs and OCSP answers through the token, and no issuing key file exists', async () => {
    assert.deepEqual(await issuingKeyFiles(), [], 'no private key file for the issuing CA');
    assert.ok(existsSync(pki('root.key')) && existsSync(pki('server.key')), 'the root and TLS keys are files, as before');
    assert.ok(logged.some((line) => /generated a CA key in the PKCS#11 token/.test(line) && line.includes('fleet-ca-issuing')));

    // Every API call verifies the server certificate (signed through the token) against the root.
    const device = await t.enroll('hsm-sensor-1');
    await assertChains(device, /Issuing CA 1\b/);
    const issuerPem = await file('issuer.pem', t.fleet.ca.issuing.toString('pem'));
    const s = await openssl(['s_client', '-connect', `127.0.0.1:${t.fleet.api.port}`, '-servername', 'localhost', '-CAfile', await file('root.pem', t.rootPem), '-verify_return_error'], '');
    assert.match(s.stdout, /Verify return code: 0 \(ok\)/, 'openssl verifies the server certificate the token signed');

    const revoked = await t.api('POST', '/v1/devices/hsm-sensor-1/revoke', { token: t.adminToken, json: { reason: 'keyCompromise' } });
    assert.equal(revoked.status, 200, revoked.text);
    const crl = await t.api('GET', `/pki/crl/${t.fleet.ca.current.keyId}`);
    assert.equal(crl.status, 200);
    const crlChecked = await openssl(['crl', '-inform', 'DER', '-in', await file('crl.der', crl.body), '-CAfile', issuerPem, '-noout', '-text']);
    assert.match(crlChecked.stderr, /verify OK/, crlChecked.stderr);
    assert.match(crlChecked.stdout, new RegExp(`Serial Number: ${device.serial}`, 'i'));

    const good = await t.enroll('hsm-sensor-2');
    for (const [subject, status] of [[device, /: revoked/], [good, /: good/]] as const) {
      const cert = await file('ocsp-cert.pem', subject.certificatePem);
      const reqFile = await file('ocsp-req.der', '');
      assert.equal((await openssl(['ocsp', '-issuer', issuerPem, '-cert', cert, '-reqout', reqFile, '-no_nonce'])).code, 0);
      const res = await t.api('POST', '/ocsp', { body: await readFile(reqFile), headers: { 'content-type': 'application/ocsp-request' } });
      const checked = await openssl(['ocsp', '-respin', await file('ocsp-resp.der', res.body), '-issuer', issuerPem, '-cert', cert, '-CAfile', await file('trust.pem', t.fleet.ca.trustPem), '-no_nonce']);
      assert.match(checked.stderr, /Response verify OK/, checked.stdout + checked.stderr);
      assert.match(checked.stdout, status);
    }
    for (const line of logged) assert.ok(!line.includes(PIN), 'the PIN is never logged');
  });

  test('certificates, CRLs and OCSP signatures asked for at the same moment are all made (the token session signs one at a time)', async () => {
    const ca = t.fleet.ca;
    const now = new Date();
    const later = new Date(now.getTime() + 3_600_000);
    const keys = await crypto.subtle.generateKey({ name: 'ECDSA', namedCurve: 'P-256' }, true, ['sign', 'verify']);
    const publicKey = await x509.PublicKey.create(keys.publicKey);
    const work = Array.from({ length: 12 }, (_, i) => [
      ca.sign({ subject: `CN=burst-${i}`, publicKey, notBefore: now, notAfter: later, extensions: [] }).then((c) => c.verify({ publicKey: ca.issuing.publicKey, signatureOnly: true })),
      ca.current.signCrl([], 1_000 + i, now, later).then((crl) => crl.verify({ publicKey: ca.issuing.publicKey })),
      ca.signData(new TextEncoder().encode(`answer ${i}`).buffer).then(() => true),
    ]).flat();
    const outcomes = await Promise.allSettled(work);
    const failed = outcomes.flatMap((o) => (o.status === 'rejected' ? [String(o.reason)] : []));
    assert.deepEqual(failed, [], 'no signature fails for another one in flight');
    assert.ok(outcomes.every((o) => o.status === 'fulfilled' && o.value === true), 'every signature verifies');
  });

  test('fleet ca rotate makes the next issuing key inside the token, and the running fleet signs with it', async () => {
    const rotated = await fleetCli(['ca', 'rotate']);
    assert.equal(rotated.code, 0, rotated.stderr);
    await untilGeneration(2);
    await assertChains(await t.enroll('hsm-after-rotate'), /Issuing CA 2\b/);
    assert.deepEqual(await issuingKeyFiles(), [], 'the new issuing key is not a file either');
    assert.ok(!(rotated.stdout + rotated.stderr).includes(PIN));
  });

  test('with the root offline, rotate --csr makes the key in the token, the root signs elsewhere, and import installs it', async () => {
    const offline = await mkdtemp(path.join(os.tmpdir(), 'fleet-offline-root-'));
    try {
      await mkdir(path.join(offline, 'pki'));
      await copyFile(pki('root.crt'), path.join(offline, 'pki', 'root.crt'));
      await rename(pki('root.key'), path.join(offline, 'pki', 'root.key'));

      const csr = path.join(scratch, 'issuing-3.csr');
      const requested = await fleetCli(['ca', 'rotate', '--csr', csr]);
      assert.equal(requested.code, 0, requested.stderr);
      assert.match(requested.stderr, new RegExp(`PKCS#11 token "${TOKEN}", key "fleet-ca-issuing-3"`));
      const csrChecked = await openssl(['req', '-in', csr, '-verify', '-noout', '-subject']);
      assert.match(csrChecked.stdout + csrChecked.stderr, /verify OK/i, 'the token signed the CSR');

      const cert = path.join(scratch, 'issuing-3.crt');
      const signed = await fleetCli(['ca', 'sign-issuing', csr, '--out', cert], { ...Object.fromEntries(Object.keys(PKCS11_ENV).map((k) => [k, undefined])), FLEET_DATA_DIR: offline, DATABASE_URL: undefined });
      assert.equal(signed.code, 0, signed.stderr);
      const imported = await fleetCli(['ca', 'import', cert]);
      assert.equal(imported.code, 0, imported.stderr);
      await untilGeneration(3);
      await assertChains(await t.enroll('hsm-offline-root'), /Issuing CA 3\b/);
      assert.deepEqual(await issuingKeyFiles(), []);
    } finally {
      await rm(offline, { recursive: true, force: true });
    }
  });

  test('a wrong PIN, an unknown token or no token at all stops the start with one line that says which, never echoing the PIN', async () => {
    const wrongPin = await fleetCli(['start'], { FLEET_CA_PKCS11_PIN: '999999' });
    assert.equal(wrongPin.code, 2, wrongPin.stderr);
    assert.match(wrongPin.stderr, /^error: FLEET_CA_PKCS11_PIN is not the user PIN of the PKCS#11 token "fleet-test-ca"$/m);
    assert.ok(!(wrongPin.stdout + wrongPin.stderr).includes('999999'));
    const unknown = await fleetCli(['start'], { FLEET_CA_PKCS11_TOKEN: 'no-such-token' });
    assert.equal(unknown.code, 2, unknown.stderr);
    assert.match(unknown.stderr, /^error: FLEET_CA_PKCS11_TOKEN: .* has no token labelled "no-such-token"; it has "fleet-test-ca"/m);
    const noToken = await fleetCli(['start'], Object.fromEntries(Object.keys(PKCS11_ENV).map((k) => [k, undefined])));
    assert.equal(noToken.code, 2, noToken.stderr);
    assert.match(noToken.stderr, /^error: issuing CA 3 \(.*issuing-3\.crt\) has no private key here: .*FLEET_CA_PKCS11_\* for a token\)$/m);
  });

  test('the issuing keys in the token are sensitive and not extractable', async () => {
    await t.close();
    running = false;
    const module = graphene.Module.load(MODULE);
    module.initialize();
    try {
      const slots = module.getSlots(true);
      const slot = Array.from({ length: slots.length }, (_, i) => slots.items(i)).find((s) => s.getToken().label.trim() === TOKEN)!;
      const session = slot.open(graphene.SessionFlag.SERIAL_SESSION);
      session.login(PIN);
      const keys: graphene.PrivateKey[] = [];
      session.find({ class: graphene.ObjectClass.PRIVATE_KEY }, (o) => void keys.push(o.toType<graphene.PrivateKey>()));
      assert.deepEqual(keys.map((k) => k.label).sort(), ['fleet-ca-issuing', 'fleet-ca-issuing-2', 'fleet-ca-issuing-3']);
      for (const key of keys) {
        assert.equal(key.sensitive, true, `${key.label} is sensitive`);
        assert.equal(key.extractable, false, `${key.label} cannot be exported`);
      }
      session.close();
    } finally {
      module.finalize();
    }
  });
});

test('FLEET_CA_PKCS11_MODULE without a token or PIN is a configuration error that names what is missing', () => {
  assert.throws(
    () => loadConfig({ FLEET_CA_PKCS11_MODULE: MODULE, FLEET_CA_PKCS11_TOKEN: TOKEN }),
    (error: Error) => error instanceof ConfigError && /FLEET_CA_PKCS11_MODULE is set, so FLEET_CA_PKCS11_PIN must be too/.test(error.message),
  );
  assert.deepEqual(loadConfig({ ...PKCS11_ENV }).caPkcs11, { module: MODULE, token: TOKEN, pin: PIN, keyLabel: 'fleet-ca' });
  assert.equal(loadConfig({}).caPkcs11, undefined);
});
