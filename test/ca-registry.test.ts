import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { copyFile, cp, mkdir, readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { type RunningFleet, startFleet } from '../cli/start.js';
import { loadConfig } from '../core/config.js';
import { migrate } from '../core/db/migrate.js';
import { silentLogger } from '../core/log.js';
import { loadAuthority } from '../core/pki/authority.js';
import { fingerprintOf, x509 } from '../core/pki/x509.js';
import { caCertificates } from '../core/registry/index.js';
import { fleetCli, fleetCommand } from './support/cli.js';
import { type EnrolledDevice, scratchDatabase, startTestFleet, type TestFleet } from './support/fleet.js';
import { httpsRequest } from './support/http.js';
import { closed, connectDevice } from './support/mqtt.js';
import { tempDirs } from './support/temp.js';
import { eventually } from './support/wait.js';

/**
 * Two nodes of one fleet: A as `fleet start` makes a new fleet, B on the same database with a data
 * directory holding nothing but copies of A's issuing CA key files. The CA certificates and the trust
 * bundle come to B from the registry.
 */
const dirs = tempDirs();
let a: TestFleet;
let b: RunningFleet;
let bDir: string;
/** Enrolled on A before the rotation: issuing CA 1's. */
let first: EnrolledDevice;

const pkiOf = (dataDir: string) => path.join(dataDir, 'pki');
const read = (dataDir: string, name: string) => readFile(path.join(pkiOf(dataDir), name), 'utf8');
const nodeEnv = (dataDir: string) => ({
  FLEET_DATA_DIR: dataDir,
  DATABASE_URL: a.fleet.db.url,
  FLEET_API_PORT: '0',
  FLEET_BROKER_PORT: '0',
  FLEET_PKI_HTTP_PORT: '0',
  FLEET_LISTEN_HOST: '127.0.0.1',
});
const tlsOf = (d: EnrolledDevice) => ({ ca: a.rootPem, cert: d.certificatePem, key: d.identity.keyPem });

/** A node's data directory with copies of A's issuing CA key files (not the root key, not the server key). */
async function nodeDirWithIssuingKeys(): Promise<string> {
  const dir = await dirs.make('fleet-node-');
  await mkdir(pkiOf(dir), { recursive: true, mode: 0o700 });
  for (const name of await readdir(pkiOf(a.dataDir))) {
    if (/^issuing(-\d+)?\.key$/.test(name)) await copyFile(path.join(pkiOf(a.dataDir), name), path.join(pkiOf(dir), name));
  }
  return dir;
}

async function admitted(port: number, device: EnrolledDevice): Promise<string> {
  const session = await connectDevice(port, device.identity.deviceId, tlsOf(device));
  if (session.outcome === 'connected') await session.client.endAsync();
  return session.outcome;
}

before(async () => {
  a = await startTestFleet();
  bDir = await nodeDirWithIssuingKeys();
  b = await startFleet(loadConfig(nodeEnv(bDir)), silentLogger());
});
after(async () => {
  await b?.close();
  await a?.close();
  await dirs.removeAll();
});

describe('CA certificates and the trust bundle from the registry', () => {
  test('a second node with only copies of the issuing CA keys runs the same CA and admits a device enrolled on the first', async () => {
    assert.ok(!existsSync(path.join(pkiOf(bDir), 'root.key')), 'node B never had the root key');
    assert.equal(b.ca.trustPem, a.fleet.ca.trustPem);
    for (const name of ['root.crt', 'issuing.crt', 'trust.pem']) assert.equal(await read(bDir, name), await read(a.dataDir, name), `B's data/pki/${name} is A's`);
    const served = await httpsRequest(`https://localhost:${b.api.port}/pki/trust.pem`, { method: 'GET', ca: a.rootPem });
    assert.equal(served.text, await read(a.dataDir, 'trust.pem'), 'B serves the same /pki/trust.pem, over TLS from its own server certificate');

    first = await a.enroll('node-a-device');
    assert.equal(await admitted(b.broker.port, first), 'connected', "B's broker admits a device enrolled on A");
  });

  test('after fleet ca rotate on the first node, the second reloads the same trust bundle', async () => {
    const rotated = await fleetCli(a, ['ca', 'rotate']);
    assert.equal(rotated.code, 0, rotated.stderr);
    await eventually(() => a.fleet.ca.issuers.length === 2 && b.ca.issuers.length === 2, 'both nodes reloaded the CA');
    assert.equal(b.ca.trustPem, a.fleet.ca.trustPem);
    await eventually(async () => (await read(bDir, 'trust.pem')) === (await read(a.dataDir, 'trust.pem')), "B rewrote its data/pki/trust.pem");
    assert.equal(await read(bDir, 'issuing-2.crt'), await read(a.dataDir, 'issuing-2.crt'));
    // B has no copy of the new issuing key yet: it trusts issuing CA 2 and keeps signing with 1.
    assert.equal(b.ca.current.generation, 1);
    const fresh = await a.enroll('node-a-after-rotate');
    assert.match(new x509.X509Certificate(fresh.certificatePem).issuer, /Issuing CA 2\b/);
    assert.equal(await admitted(b.broker.port, fresh), 'connected', "B's broker admits a device of A's new issuing CA");
  });

  test('a retirement on the first node ends the trust on the second at once, though the second is left with no key to sign with', async () => {
    const live = await connectDevice(b.broker.port, first.identity.deviceId, tlsOf(first));
    assert.equal(live.outcome, 'connected');
    const retired = await fleetCli(a, ['ca', 'retire', '1']);
    assert.equal(retired.code, 0, retired.stderr);
    await eventually(() => b.ca.issuers.length === 1, 'B dropped issuing CA 1');
    // A too reloads from its own change feed, after the CLI's transaction: compare once it has.
    await eventually(() => a.fleet.ca.issuers.length === 1, 'A dropped issuing CA 1');
    await closed(live.client);
    assert.equal(b.ca.trustPem, a.fleet.ca.trustPem);
    await eventually(async () => (await read(bDir, 'trust.pem')) === (await read(a.dataDir, 'trust.pem')), "B rewrote its data/pki/trust.pem");
    assert.equal(await admitted(b.broker.port, first), 'refused', "B's broker refuses a device of the retired issuing CA");
    // Issuing CA 1, which B signed with, is retired and B has no copy of issuing CA 2's key: it signs nothing.
    await assert.rejects(b.ca.signData(new ArrayBuffer(8)), /no key for issuing CA 2; copy issuing-2\.key/);
  });

  test('a node whose key store lacks the current issuing CA key refuses to start, in one line saying what to copy', async () => {
    const empty = await dirs.make('fleet-node-nokeys-');
    const { DATABASE_URL, FLEET_LISTEN_HOST } = nodeEnv(empty);
    const started = await fleetCommand(['start'], { DATABASE_URL, FLEET_LISTEN_HOST }, empty);
    assert.equal(started.code, 2, started.stderr);
    const errors = started.stderr.split('\n').filter((l) => l.startsWith('error:'));
    assert.equal(errors.length, 1, started.stderr);
    assert.match(errors[0]!, /^error: issuing CA 2 \(CN=fleet-auth Issuing CA 2, .*\) has no private key here: copy issuing-2\.key from the pki directory of a node that has it into \S+\/pki /);
    assert.ok(!existsSync(path.join(pkiOf(empty), 'root.key')), 'the refused node made no CA of its own');
  });
});

describe('a registry with no CA certificates yet', () => {
  let scratch: { url: string; close(): Promise<void> };
  let pool: pg.Pool;
  before(async () => {
    scratch = await scratchDatabase(await dirs.make('fleet-scratch-db-'));
    pool = new pg.Pool({ connectionString: scratch.url, max: 4 });
    await migrate(pool, silentLogger());
  });
  after(async () => {
    await pool?.end();
    await scratch?.close();
  });
  const load = (dataDir: string) => loadAuthority({ pool, dataDir, hostnames: [], log: silentLogger() });
  const roots = async () => (await caCertificates(pool)).filter((r) => r.role === 'root');

  test('two nodes starting on it at once make one root: the other finds it and asks for its keys', async () => {
    const [x, y] = [await dirs.make('fleet-race-'), await dirs.make('fleet-race-')];
    const outcomes = await Promise.allSettled([load(x), load(y)]);
    const won = outcomes.filter((o) => o.status === 'fulfilled');
    const lost = outcomes.filter((o): o is PromiseRejectedResult => o.status === 'rejected');
    assert.equal(won.length, 1, 'one node made the CA');
    assert.equal(lost.length, 1);
    assert.match(String(lost[0]!.reason.message), /issuing CA 1 .* has no private key here: copy issuing\.key /);
    const stored = await roots();
    assert.equal(stored.length, 1);
    for (const dir of [x, y]) assert.equal(fingerprintOf(new x509.X509Certificate(await read(dir, 'root.crt'))), stored[0]!.fingerprint);
  });

  test('a data directory from before the registry kept CA certificates is imported once; another fleet\'s is refused', async () => {
    await pool.query('TRUNCATE ca_certificates');
    const upgraded = await dirs.make('fleet-upgrade-');
    await cp(pkiOf(a.dataDir), pkiOf(upgraded), { recursive: true });
    const ca = await load(upgraded);
    assert.equal(ca.trustPem, a.fleet.ca.trustPem, 'the files as they were');
    await load(upgraded);
    const rows = await caCertificates(pool);
    assert.deepEqual(rows.map((r) => [r.generation, r.state]), [[2, 'current'], [1, 'retired'], [0, 'current']], 'imported once, the retired issuing CA as retired');
    assert.equal(rows[2]!.fingerprint, fingerprintOf(a.fleet.ca.root));

    // A's data directory pointed at this database: its root.crt is another root than the registry's.
    const foreign = await dirs.make('fleet-foreign-');
    await cp(pkiOf(a.dataDir), pkiOf(foreign), { recursive: true });
    await pool.query('TRUNCATE ca_certificates');
    await load(await dirs.make('fleet-other-'));
    const before = await read(foreign, 'root.crt');
    await assert.rejects(load(foreign), /root\.crt is another root CA \(SHA-256 [0-9a-f]{64}\) than the registry's .*belongs to another fleet/);
    assert.equal(await read(foreign, 'root.crt'), before, 'its root.crt is left as it was');
  });
});
