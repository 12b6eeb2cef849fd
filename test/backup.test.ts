import assert from 'node:assert/strict';
import { chmod, mkdtemp, readFile, readdir, rm, stat, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { gunzipSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { type RunningFleet, startFleet } from '../cli/start.js';
import { loadConfig } from '../core/config.js';
import { silentLogger } from '../core/log.js';
import { NOT_REGISTRY_DATA } from '../core/registry/backup.js';
import { createOperatorToken, recordDeviceEvents } from '../core/registry/index.js';
import { createDeviceIdentity } from '../device-sim/identity.js';
import { fleetCli, fleetCommand } from './support/cli.js';
import { type EnrolledDevice, startTestFleet, type TestFleet, testDatabase } from './support/fleet.js';
import { httpsRequest } from './support/http.js';
import { connectDevice } from './support/mqtt.js';
import { openssl } from './support/openssl.js';

/**
 * `fleet backup` and `fleet restore` through the real CLI: a fleet with devices, certificates (one
 * superseded by its renewal, one revoked), tokens, audit rows and events is backed up beside the
 * running server, restored into a new database and data directory, and started there.
 */
const PASSPHRASE = 'correct horse battery staple';

let t: TestFleet;
let base: string;
let backupFile: string;
let kept: EnrolledDevice;
let renewed: { certificatePem: string; keyPem: string; serial: string };
let revoked: EnrolledDevice;
let viewerToken: string;

let restoredDir: string;
let restoredDatabase: { url: string | undefined; drop(): Promise<void> };
let restored: RunningFleet | undefined;

before(async () => {
  t = await startTestFleet({ env: { FLEET_CA_PASSPHRASE: PASSPHRASE, FLEET_RENEWAL_OVERLAP: '1h' } });
  base = await mkdtemp(path.join(os.tmpdir(), 'fleet-backup-'));
  // The embedded PostgreSQL runs as 'postgres' when the tests run as root: it must pass through.
  await chmod(base, 0o711);
  backupFile = path.join(base, 'fleet.backup');

  kept = await t.enroll('backup-kept');
  // A renewal: the old certificate is superseded and names its successor (a row pointing at a row of its own table).
  const fresh = await createDeviceIdentity('backup-kept');
  const renewal = await t.api('POST', '/v1/renewals', { json: { csr: fresh.csrPem }, tls: { cert: kept.certificatePem, key: kept.identity.keyPem } });
  assert.equal(renewal.status, 201, renewal.text);
  renewed = { certificatePem: renewal.json.certificate, keyPem: fresh.keyPem, serial: renewal.json.serial };
  revoked = await t.enroll('backup-revoked');
  const revocation = await t.api('POST', '/v1/devices/backup-revoked/revoke', { token: t.adminToken, json: { reason: 'keyCompromise' } });
  assert.equal(revocation.status, 200, revocation.text);
  await t.register('backup-pending');
  viewerToken = (await createOperatorToken(t.fleet.db.pool, { name: 'viewer', role: 'viewer', actor: 'test', now: new Date() })).token;
  await recordDeviceEvents(t.fleet.db.pool, [
    { at: new Date(), kind: 'connected', deviceId: 'backup-kept', serial: kept.serial, address: '127.0.0.1' },
    { at: new Date(), kind: 'revoked', deviceId: 'backup-revoked', serial: revoked.serial, reason: 'keyCompromise', details: { by: 'test' } },
  ]);

  restoredDir = path.join(base, 'restored');
  restoredDatabase = await testDatabase();
});

after(async () => {
  await restored?.close();
  await restoredDatabase?.drop();
  await t?.close();
  if (base) await rm(base, { recursive: true, force: true });
});

/** Every table of the registry with its rows in a stable order, to compare two databases whole. */
async function snapshot(url: string): Promise<Record<string, unknown[]>> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const tables = await client.query<{ name: string }>(
      `SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema() AND NOT (tablename = ANY($1)) ORDER BY 1`,
      [NOT_REGISTRY_DATA],
    );
    const all: Record<string, unknown[]> = {};
    for (const { name } of tables.rows) {
      all[name] = (await client.query(`SELECT row_to_json(t)::text AS r FROM ${client.escapeIdentifier(name)} t ORDER BY 1`)).rows.map((r) => r.r);
    }
    return all;
  } finally {
    await client.end();
  }
}

/** pki/ or pki.restoring/ in a data directory that may not exist. */
const caEntries = (dir: string) => readdir(dir).then((names) => names.filter((n) => n.startsWith('pki')), () => []);

const lines = (text: string) => text.split('\n').filter((line) => line.trim() !== '');

describe('fleet backup and fleet restore', () => {
  let before: Record<string, unknown[]>;

  test('backup beside the running fleet writes one file, mode 0600, with the CA keys still encrypted', async () => {
    before = await snapshot(t.fleet.db.url);
    const res = await fleetCli(t, ['backup', backupFile]);
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stderr, /devices: 3 rows/);
    assert.equal((await stat(backupFile)).mode & 0o777, 0o600);
    const content = gunzipSync(await readFile(backupFile)).toString('utf8');
    const files = content.split('\n').filter((l) => l.startsWith('{"file"')).map((l) => (JSON.parse(l) as { file: { path: string; data: string } }).file);
    const keys = files.filter((f) => f.path.endsWith('.key'));
    assert.ok(keys.length >= 2, 'the root and issuing keys are in the backup');
    for (const key of keys) {
      const pem = Buffer.from(key.data, 'base64').toString('utf8');
      assert.match(pem, /^-----BEGIN ENCRYPTED PRIVATE KEY-----/, `${key.path} stays encrypted`);
      assert.deepEqual(Buffer.from(key.data, 'base64'), await readFile(path.join(t.dataDir, 'pki', key.path)), `${key.path} is copied byte for byte`);
    }
    assert.doesNotMatch(content, /BEGIN PRIVATE KEY|BEGIN EC PRIVATE KEY/);
    assert.doesNotMatch(content, new RegExp(t.adminToken), 'tokens are stored as hashes only');
    assert.equal(await readdir(base).then((names) => names.filter((n) => n.endsWith('.partial')).length), 0);

    const again = await fleetCli(t, ['backup', backupFile]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /^error: .* already exists; choose another name/);
  });

  test('restore into a database that holds a registry is refused, and writes nothing', async () => {
    const elsewhere = path.join(base, 'not-restored');
    const res = await fleetCommand(['restore', backupFile], { DATABASE_URL: t.fleet.db.url }, elsewhere);
    assert.equal(res.code, 1, res.stderr);
    assert.equal(lines(res.stderr).length, 1, res.stderr);
    assert.match(res.stderr, /^error: the database is not empty \(\w+ has \d+ rows?\); restore only into a new database/);
    assert.deepEqual(await caEntries(elsewhere), [], 'no CA was written');
    assert.deepEqual(await snapshot(t.fleet.db.url), before, 'the database is untouched');
  });

  test('restore into a new database and data directory brings back every row, sequence and CA file', async () => {
    const res = await fleetCommand(['restore', backupFile], { DATABASE_URL: restoredDatabase.url }, restoredDir);
    assert.equal(res.code, 0, res.stderr);
    assert.match(res.stderr, /Restored \d+ rows/);
    for (const name of await readdir(path.join(t.dataDir, 'pki'), { recursive: true })) {
      const original = path.join(t.dataDir, 'pki', name);
      if (!(await stat(original)).isFile()) continue;
      const copy = path.join(restoredDir, 'pki', name);
      assert.deepEqual(await readFile(copy), await readFile(original), name);
      assert.equal((await stat(copy)).mode & 0o777, (await stat(original)).mode & 0o777, `${name} keeps its mode`);
    }
  });

  test('a second restore into the same data directory is refused', async () => {
    const res = await fleetCommand(['restore', backupFile], { DATABASE_URL: restoredDatabase.url }, restoredDir);
    assert.equal(res.code, 1);
    assert.match(res.stderr, /^error: .*pki already holds a CA; restore only into a new data directory/);
  });

  test('the restored fleet: the old certificate connects, the revoked one is refused and in the CRL, tokens work, the audit log is intact', async () => {
    const config = loadConfig({
      FLEET_DATA_DIR: restoredDir,
      ...(restoredDatabase.url ? { DATABASE_URL: restoredDatabase.url } : {}),
      FLEET_API_PORT: '0',
      FLEET_BROKER_PORT: '0',
      FLEET_METRICS_PORT: '0',
      FLEET_PKI_HTTP_PORT: '0',
      FLEET_LISTEN_HOST: '127.0.0.1',
      FLEET_CA_PASSPHRASE: PASSPHRASE,
    });
    restored = await startFleet(config, silentLogger());
    assert.equal(restored.ca.rootPem, t.rootPem, 'the same root CA');

    const after = await snapshot(restored.db.url);
    assert.deepEqual(Object.keys(after), Object.keys(before), 'every table');
    for (const table of Object.keys(before)) assert.deepEqual(after[table], before[table], `${table}: every row, as it was`);

    const tls = (cert: string, key: string) => ({ ca: t.rootPem, cert, key });
    const current = await connectDevice(restored.broker.port, 'backup-kept', tls(renewed.certificatePem, renewed.keyPem));
    assert.equal(current.outcome, 'connected', 'an enrolled device connects with the certificate it has');
    await current.client.endAsync();
    const refused = await connectDevice(restored.broker.port, 'backup-revoked', tls(revoked.certificatePem, revoked.identity.keyPem));
    assert.equal(refused.outcome, 'refused');
    assert.equal(refused.connack, 5, 'the revoked device is refused: not authorized');

    const api = (pathname: string, token?: string) =>
      httpsRequest(`https://localhost:${restored!.api.port}${pathname}`, { method: 'GET', headers: token ? { authorization: `Bearer ${token}` } : {}, ca: t.rootPem });
    const crl = await api('/pki/crl');
    assert.equal(crl.status, 200);
    const listed = await openssl(['crl', '-inform', 'DER', '-noout', '-text'], crl.body);
    assert.match(listed.stdout, new RegExp(`Serial Number: ${revoked.serial}`, 'i'), 'the CRL still lists the revoked certificate');

    for (const token of [t.adminToken, viewerToken]) {
      const device = await api('/v1/devices/backup-kept', token);
      assert.equal(device.status, 200, device.text);
      assert.equal(device.json.certificates.length, 2, 'the superseded certificate and its successor');
    }

    // Sequences go on from where they were: a new audit row follows the restored ones.
    const lastId = Math.max(...before.audit_log!.map((r) => (JSON.parse(r as string) as { id: number }).id));
    await createOperatorToken(restored.db.pool, { name: 'after-restore', role: 'viewer', actor: 'test', now: new Date() });
    const next = await restored.db.pool.query<{ id: string }>(`SELECT max(id)::text AS id FROM audit_log`);
    assert.equal(Number(next.rows[0]!.id), lastId + 1);
  });

  test('a backup cut short is refused, and nothing is restored', async () => {
    const whole = await readFile(backupFile);
    const cut = path.join(base, 'cut.backup');
    await writeFile(cut, whole.subarray(0, Math.floor(whole.length * 0.8)));
    const target = path.join(base, 'from-cut');
    const database = await testDatabase();
    try {
      const res = await fleetCommand(['restore', cut], { DATABASE_URL: database.url }, target);
      assert.equal(res.code, 1, res.stderr);
      assert.match(res.stderr, /^error: .*(cut short|damaged)/m);
      assert.deepEqual(await caEntries(target), [], 'no CA was written');
    } finally {
      await database.drop();
    }
  });
});
