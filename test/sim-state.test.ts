import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { chmod, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import pg from 'pg';
import { fleetCommand } from './support/cli.js';
import { scratchDatabase } from './support/fleet.js';

/**
 * `fleet sim` without --api, through the real CLI: its backend keeps its data under the state
 * directory, never in the operator's data directory or DATABASE_URL, and a state directory whose
 * devices that backend does not know stops the run at once with what to do.
 */
let base: string;
let operatorDataDir: string;
let stateDir: string;
let operatorDatabase: { url: string; close(): Promise<void> };

before(async () => {
  base = await mkdtemp(path.join(os.tmpdir(), 'fleet-sim-state-'));
  // The embedded PostgreSQL runs as 'postgres' when the tests run as root: it must pass through.
  await chmod(base, 0o711);
  operatorDataDir = path.join(base, 'operator-data');
  stateDir = path.join(base, 'state');
  operatorDatabase = await scratchDatabase(await mkdtemp(path.join(os.tmpdir(), 'fleet-sim-operator-db-')));
});
after(async () => {
  await operatorDatabase?.close();
  if (base) await rm(base, { recursive: true, force: true });
});

const sim = () =>
  fleetCommand(
    ['sim', '--devices', '3', '--duration', '1', '--workers', '1', '--profile', 'gateway', '--state', stateDir, '--json'],
    // The operator's own settings, which the simulator's backend must leave alone.
    { DATABASE_URL: operatorDatabase.url },
    operatorDataDir,
  );
const report = (stdout: string) => JSON.parse(stdout.trimEnd().split('\n').at(-1)!) as { enrolled: number; reused: number };

async function tablesIn(url: string): Promise<number> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    const res = await client.query(`SELECT count(*)::int AS n FROM information_schema.tables WHERE table_schema = 'public'`);
    return res.rows[0].n as number;
  } finally {
    await client.end();
  }
}

describe('the simulator\'s own backend', () => {
  test('keeps its CA and registry under <state>/backend, and a rerun reuses the fleet it enrolled', async () => {
    const first = await sim();
    assert.equal(first.code, 0, first.stderr);
    assert.equal(report(first.stdout).enrolled, 3);
    assert.ok(existsSync(path.join(stateDir, 'backend', 'pki', 'root.crt')), 'the backend CA is in the state directory');
    assert.ok(!existsSync(operatorDataDir), 'nothing was written to the operator\'s data directory');
    assert.equal(await tablesIn(operatorDatabase.url), 0, 'DATABASE_URL was not touched: not even migrated');

    const second = await sim();
    assert.equal(second.code, 0, second.stderr);
    assert.deepEqual([report(second.stdout).enrolled, report(second.stdout).reused], [0, 3]);
  });

  test('a state directory whose devices the registry lost is refused at once, saying what to do', async () => {
    // The registry goes (a reset database); the CA stays, so only the registry can tell.
    await rm(path.join(stateDir, 'backend', 'postgres'), { recursive: true });
    await rm(path.join(stateDir, 'backend', 'postgres.json'));
    const res = await sim();
    assert.equal(res.code, 1, res.stderr);
    assert.match(res.stderr, /^error: the backend's registry does not know sim-000001, a device of the state directory .*; run with a new --state, or delete that directory to enroll the fleet again \[sim_state_unknown\]$/m);
    assert.doesNotMatch(res.stderr, /\n\s+at /);
    assert.equal(res.stdout, '', 'no report: the run did not start');
  });

  test('a state directory of devices from another CA is refused at once, saying what to do', async () => {
    // A new backend: a new CA that signed none of the stored certificates.
    await rm(path.join(stateDir, 'backend'), { recursive: true });
    const res = await sim();
    assert.equal(res.code, 1, res.stderr);
    assert.match(res.stderr, /^error: the state directory .* holds 3 of 3 devices enrolled by another CA .*run with a new --state, or delete that directory to enroll the fleet again \[sim_state_foreign\]$/m);
    assert.equal(res.stdout, '');
  });
});
