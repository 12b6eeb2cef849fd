import assert from 'node:assert/strict';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';
import pg from 'pg';
import { loadMigrations, migrate } from '../core/db/migrate.js';
import { silentLogger } from '../core/log.js';
import { sqlDir } from '../core/paths.js';
import { scratchDatabase } from './support/fleet.js';

let pool: pg.Pool;
let cleanup: () => Promise<void>;
let scratch: string;

before(async () => {
  scratch = await mkdtemp(path.join(os.tmpdir(), 'fleet-migrate-'));
  const database = await scratchDatabase(scratch);
  pool = new pg.Pool({ connectionString: database.url, max: 6 });
  cleanup = async () => {
    await pool.end();
    await database.close();
    await rm(scratch, { recursive: true, force: true });
  };
});
after(() => cleanup?.());

test('processes migrating one database at once apply each migration exactly once', async () => {
  const applied = await Promise.all([migrate(pool, silentLogger()), migrate(pool, silentLogger()), migrate(pool, silentLogger())]);
  const total = (await loadMigrations()).length;
  assert.equal(applied.reduce((a, b) => a + b, 0), total, 'together they applied each file once');
  const { rows } = await pool.query('SELECT version FROM schema_migrations ORDER BY version');
  assert.equal(rows.length, total);
  assert.equal(await migrate(pool, silentLogger()), 0, 'a later start applies nothing');
});

test('the audit log refuses updates and deletes', async () => {
  await pool.query(`INSERT INTO audit_log (actor, action) VALUES ('test', 'test.entry')`);
  await assert.rejects(pool.query(`UPDATE audit_log SET actor = 'someone else'`), /append-only/);
  await assert.rejects(pool.query(`DELETE FROM audit_log`), /append-only/);
});

test('a migration edited after it was applied stops the start with a clear error', async () => {
  const edited = path.join(scratch, 'sql');
  await cp(sqlDir, edited, { recursive: true });
  const first = (await loadMigrations(edited))[0]!;
  const file = path.join(edited, first.name);
  await writeFile(file, (await readFile(file, 'utf8')) + '\n-- an innocent edit\n');
  await assert.rejects(migrate(pool, silentLogger(), edited), /changed after it was applied/);
});
