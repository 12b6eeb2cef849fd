import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { ConfigError, loadConfig } from '../core/config.js';
import { createLogger, type Logger } from '../core/log.js';
import { projectRoot } from '../core/paths.js';
import { type AuthorityOptions, loadAuthority } from '../core/pki/authority.js';
import { fileKeyStore } from '../core/pki/key-store.js';
import { fingerprintOf } from '../core/pki/x509.js';
import { startTestFleet } from './support/fleet.js';
import { openssl, run } from './support/openssl.js';

const PASSPHRASE = 'correct horse battery staple';
const KEYS = ['root', 'issuing', 'server'] as const;
const ENCRYPTED = '-----BEGIN ENCRYPTED PRIVATE KEY-----';
const FLEET = path.join(projectRoot, 'dist', 'cli', 'fleet.js');

const scratch: string[] = [];
after(async () => {
  for (const dir of scratch) await rm(dir, { recursive: true, force: true });
});

async function dataDir(): Promise<string> {
  const dir = await mkdtemp(path.join(os.tmpdir(), 'fleet-ca-keys-'));
  scratch.push(dir);
  return dir;
}

/** A real pino logger whose JSON lines are kept, to check what was said and that no secret was. */
function capturingLogger(): { log: Logger; lines: () => { level: number; msg: string; raw: string }[] } {
  const raw: string[] = [];
  const log = createLogger('debug', { write: (line: string) => void raw.push(line) });
  return { log, lines: () => raw.map((line) => ({ ...JSON.parse(line), raw: line })) };
}

const WARN = 40;

function assertNoSecretsIn(lines: { raw: string }[]) {
  for (const { raw } of lines) {
    assert.doesNotMatch(raw, /PRIVATE KEY/, 'no key material is logged');
    assert.ok(!raw.includes(PASSPHRASE), 'the passphrase is not logged');
  }
}

function load(dir: string, log: Logger, passphrase?: string) {
  const options: AuthorityOptions = { dataDir: dir, hostnames: [], log };
  if (passphrase !== undefined) options.keyStore = fileKeyStore(path.join(dir, 'pki'), { passphrase, log });
  return loadAuthority(options);
}

const keyFile = (dir: string, name: string) => path.join(dir, 'pki', `${name}.key`);
const keyFiles = (dir: string) => Promise.all(KEYS.map((name) => readFile(keyFile(dir, name), 'utf8')));

describe('CA keys encrypted at rest', () => {
  test('with a passphrase every key file is encrypted PKCS#8, mode 0600, that openssl opens only with the passphrase', async () => {
    const dir = await dataDir();
    await load(dir, capturingLogger().log, PASSPHRASE);
    for (const name of KEYS) {
      const file = keyFile(dir, name);
      assert.ok((await readFile(file, 'utf8')).startsWith(ENCRYPTED), `${name}.key is encrypted`);
      assert.equal((await stat(file)).mode & 0o777, 0o600, `${name}.key is 0600`);
    }
    const issuing = keyFile(dir, 'issuing');
    const opened = await openssl(['pkey', '-in', issuing, '-passin', `pass:${PASSPHRASE}`, '-noout', '-text']);
    assert.equal(opened.code, 0, opened.stderr);
    assert.match(opened.stdout, /NIST CURVE: P-256/);
    const withoutPassphrase = await openssl(['pkey', '-in', issuing, '-passin', 'pass:', '-noout']);
    assert.notEqual(withoutPassphrase.code, 0, 'openssl cannot read the key without the passphrase');
    const wrongPassphrase = await openssl(['pkey', '-in', issuing, '-passin', 'pass:not the passphrase', '-noout']);
    assert.notEqual(wrongPassphrase.code, 0, 'openssl cannot read the key with another passphrase');
  });

  test('a restart with the same passphrase reuses the same CA, and its keys still sign', async () => {
    const dir = await dataDir();
    const first = await load(dir, capturingLogger().log, PASSPHRASE);
    const filesBefore = await keyFiles(dir);
    const second = await load(dir, capturingLogger().log, PASSPHRASE);
    assert.equal(fingerprintOf(second.root), fingerprintOf(first.root));
    assert.equal(fingerprintOf(second.issuing), fingerprintOf(first.issuing));
    assert.deepEqual(await keyFiles(dir), filesBefore, 'an encrypted key is not rewritten on start');
    const now = new Date();
    const crl = await second.current.signCrl([], 1, now, new Date(now.getTime() + 3_600_000));
    assert.ok(await crl.verify({ publicKey: first.issuing.publicKey }), 'the decrypted issuing key signs for the same issuing CA');
  });

  test('a wrong or missing passphrase is refused with a message that says what to do, and the keys stay as they were', async () => {
    const dir = await dataDir();
    await load(dir, capturingLogger().log, PASSPHRASE);
    const filesBefore = await keyFiles(dir);

    await assert.rejects(load(dir, capturingLogger().log, 'not the right passphrase'), (error: Error) => {
      assert.ok(error instanceof ConfigError, `a ConfigError, not ${error.name}`);
      assert.match(error.message, /FLEET_CA_PASSPHRASE does not decrypt .*root\.key/);
      assert.match(error.message, /Set the passphrase the CA keys were encrypted with/);
      assert.doesNotMatch(error.message, /bad decrypt|ossl|routines/i, 'no OpenSSL internals');
      return true;
    });
    await assert.rejects(load(dir, capturingLogger().log), (error: Error) => {
      assert.ok(error instanceof ConfigError);
      assert.match(error.message, /root\.key is encrypted but FLEET_CA_PASSPHRASE is not set/);
      return true;
    });
    assert.deepEqual(await keyFiles(dir), filesBefore, 'a refused start changes no key');
  });

  test('adding a passphrase to an unencrypted data directory encrypts its keys in place and keeps the CA', async () => {
    const dir = await dataDir();
    const plain = await load(dir, capturingLogger().log);
    for (const contents of await keyFiles(dir)) assert.ok(contents.startsWith('-----BEGIN PRIVATE KEY-----'));

    const { log, lines } = capturingLogger();
    const encrypted = await load(dir, log, PASSPHRASE);
    assert.equal(fingerprintOf(encrypted.root), fingerprintOf(plain.root));
    assert.equal(fingerprintOf(encrypted.issuing), fingerprintOf(plain.issuing));
    for (const name of KEYS) {
      assert.ok((await readFile(keyFile(dir, name), 'utf8')).startsWith(ENCRYPTED), `${name}.key is now encrypted`);
      assert.equal((await stat(keyFile(dir, name))).mode & 0o777, 0o600);
    }
    const told = lines().filter((l) => /encrypted the CA key at rest/.test(l.msg));
    assert.equal(told.length, KEYS.length, 'each key encrypted in place is reported');
    assertNoSecretsIn(lines());
    const opened = await openssl(['pkey', '-in', keyFile(dir, 'root'), '-passin', `pass:${PASSPHRASE}`, '-noout']);
    assert.equal(opened.code, 0, opened.stderr);
  });

  test('a passphrase shorter than 12 characters is a configuration error that does not echo it', () => {
    assert.throws(
      () => loadConfig({ FLEET_CA_PASSPHRASE: 'short-pass' }),
      (error: Error) => error instanceof ConfigError && /FLEET_CA_PASSPHRASE: must be at least 12/.test(error.message) && !error.message.includes('short-pass'),
    );
    assert.equal(loadConfig({ FLEET_CA_PASSPHRASE: PASSPHRASE }).caPassphrase, PASSPHRASE);
  });
});

describe('a fleet with FLEET_CA_PASSPHRASE', () => {
  test('starts on encrypted keys, enrolls, and `fleet start` with a wrong passphrase stops with one clear line', async () => {
    const { log, lines } = capturingLogger();
    const t = await startTestFleet({ env: { FLEET_CA_PASSPHRASE: PASSPHRASE }, log });
    try {
      for (const contents of await keyFiles(t.dataDir)) assert.ok(contents.startsWith(ENCRYPTED));
      const device = await t.enroll('sensor-encrypted-ca');
      assert.match(device.certificatePem, /^-----BEGIN CERTIFICATE-----/);
      assert.equal(lines().filter((l) => /not encrypted at rest/.test(l.msg)).length, 0, 'no warning when the keys are encrypted');
      assertNoSecretsIn(lines());

      // The CLI joins this fleet's database (embedded or DATABASE_URL's) and fails at the CA.
      const env: NodeJS.ProcessEnv = {
        ...process.env,
        FLEET_DATA_DIR: t.dataDir,
        FLEET_API_PORT: '0',
        FLEET_BROKER_PORT: '0',
        FLEET_PKI_HTTP_PORT: '0',
        FLEET_CA_PASSPHRASE: 'a wrong passphrase, long enough',
        LOG_LEVEL: 'warn',
      };
      if (t.config.databaseUrl) env.DATABASE_URL = t.config.databaseUrl;
      else delete env.DATABASE_URL;
      const started = await run(process.execPath, [FLEET, 'start'], { env });
      assert.equal(started.code, 2, started.stderr);
      assert.match(started.stderr, /^error: FLEET_CA_PASSPHRASE does not decrypt .*root\.key.*Set the passphrase/m);
      assert.doesNotMatch(started.stderr, /^\s+at /m, 'no stack trace');
      assert.ok(!(started.stdout + started.stderr).includes('a wrong passphrase'), 'the passphrase is not echoed');

      delete env.FLEET_CA_PASSPHRASE;
      const unset = await run(process.execPath, [FLEET, 'start'], { env });
      assert.equal(unset.code, 2, unset.stderr);
      assert.match(unset.stderr, /^error: .*root\.key is encrypted but FLEET_CA_PASSPHRASE is not set/m);
      assert.doesNotMatch(unset.stdout, /not encrypted at rest/, 'no claim that encrypted keys are unencrypted');
    } finally {
      await t.close();
    }
  });

  test('without a passphrase the start warns once that the CA keys are not encrypted, and how to fix it', async () => {
    const { log, lines } = capturingLogger();
    const t = await startTestFleet({ log });
    try {
      const warnings = lines().filter((l) => l.level === WARN && /not encrypted at rest/.test(l.msg));
      assert.equal(warnings.length, 1);
      assert.match(warnings[0]!.msg, /set FLEET_CA_PASSPHRASE/);
      for (const contents of await keyFiles(t.dataDir)) assert.ok(contents.startsWith('-----BEGIN PRIVATE KEY-----'));
    } finally {
      await t.close();
    }
  });
});
