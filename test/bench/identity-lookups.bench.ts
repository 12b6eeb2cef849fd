/**
 * The broker's CPU per identity lookup when every CONNECT misses the cache (a broker restart): one
 * registry query per lookup against the batched resolver (broker/identity.ts), 1,000 lookups with
 * 50 in flight as bench:broker connects, rounds interleaved in one process on one database, medians
 * shown. Uses the PostgreSQL at DATABASE_URL (a database of its own, dropped afterwards), else an
 * embedded one. Run: `npx tsc -p tsconfig.json && node dist/test/bench/identity-lookups.bench.js`.
 */
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { mapLimited } from '../../core/concurrency.js';
import { openDatabase } from '../../core/db/database.js';
import { silentLogger } from '../../core/log.js';
import { type CertificateIdentity, findIdentityByFingerprint } from '../../core/registry/index.js';
import { IdentityCache } from '../../broker/identity-cache.js';
import { identityResolver } from '../../broker/identity.js';
import { testDatabase } from '../support/fleet.js';

const LOOKUPS = 1000;
const IN_FLIGHT = 50;
const ROUNDS = 7;

const cpuMicroseconds = () => {
  const { user, system } = process.cpuUsage();
  return user + system;
};
const median = (values: number[]) => [...values].sort((a, b) => a - b)[values.length >> 1]!;

async function main(): Promise<void> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'fleet-lookups-'));
  const database = await testDatabase();
  const db = await openDatabase({ databaseUrl: database.url, dataDir }, silentLogger());
  try {
    const pool = db.brokerPool;
    // Rows of the registry's shape, without a CA: the lookup reads them, nothing checks their PEM.
    await pool.query(`INSERT INTO devices (id, status) SELECT 'lookup-' || g, 'active' FROM generate_series(1, $1) g`, [LOOKUPS]);
    await pool.query(
      `INSERT INTO certificates (serial, fingerprint, public_key_sha256, device_id, issuer, not_before, not_after, pem)
       SELECT to_hex(g), lpad(to_hex(g), 64, '0'), lpad(to_hex(g), 64, 'a'), 'lookup-' || g, 'CN=bench', now(), now() + interval '1 year', '-'
       FROM generate_series(1, $1) g`,
      [LOOKUPS],
    );
    const fingerprints = Array.from({ length: LOOKUPS }, (_, i) => (i + 1).toString(16).padStart(64, '0'));
    const perLookup = async (find: (fingerprint: string) => Promise<CertificateIdentity | undefined>) => {
      const started = cpuMicroseconds();
      const found = await mapLimited(fingerprints, IN_FLIGHT, find);
      if (found.some((identity) => !identity)) throw new Error('a lookup found nothing');
      return (cpuMicroseconds() - started) / LOOKUPS;
    };
    const single = (fingerprint: string) => findIdentityByFingerprint(pool, fingerprint);
    // A fresh resolver each round, and no live change feed: every lookup misses the cache.
    const batched = () => identityResolver({ pool, changes: { live: false, epoch: 0, lostSince: undefined }, cache: new IdentityCache(1), staleGraceMs: 0, now: Date.now });
    await perLookup(single);
    await perLookup(batched());
    const one: number[] = [];
    const shared: number[] = [];
    for (let round = 0; round < ROUNDS; round++) {
      one.push(await perLookup(single));
      shared.push(await perLookup(batched()));
    }
    const show = (values: number[]) => `median ${median(values).toFixed(0)} µs (rounds: ${values.map((v) => v.toFixed(0)).join(', ')})`;
    console.log(`broker CPU per identity lookup, ${LOOKUPS} lookups, ${IN_FLIGHT} in flight, load average ${os.loadavg()[0]!.toFixed(1)}`);
    console.log(`  one query per lookup: ${show(one)}`);
    console.log(`  batched:              ${show(shared)}`);
  } finally {
    await db.close();
    await database.drop();
    await rm(dataDir, { recursive: true, force: true });
  }
}

main().then(
  () => process.exit(0),
  (error: Error) => {
    process.stderr.write(`identity lookup benchmark failed: ${error.message}\n`);
    process.exit(1);
  },
);
