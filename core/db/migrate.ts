import { createHash } from 'node:crypto';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type pg from 'pg';
import type { Logger } from '../log.js';
import { sqlDir } from '../paths.js';

interface Migration {
  version: number;
  name: string;
  sql: string;
  checksum: string;
}

/** Any constant will do; it only has to be the same for every fleet-auth process sharing a database. */
const MIGRATION_LOCK = 7_215_004_211;

export async function loadMigrations(dir = sqlDir): Promise<Migration[]> {
  const files = (await readdir(dir)).filter((f) => /^\d+_[\w-]+\.sql$/.test(f)).sort();
  const migrations: Migration[] = [];
  for (const file of files) {
    const sql = await readFile(path.join(dir, file), 'utf8');
    migrations.push({
      version: Number.parseInt(file, 10),
      name: file,
      sql,
      checksum: createHash('sha256').update(sql).digest('hex'),
    });
  }
  const versions = new Set(migrations.map((m) => m.version));
  if (versions.size !== migrations.length) throw new Error(`two migrations in ${dir} share a version number`);
  return migrations;
}

/**
 * Applies the numbered SQL files of sql/ in order, each in its own transaction, recording them in
 * schema_migrations. The advisory lock makes processes that start together wait for each other
 * instead of racing to create the same tables.
 */
export async function migrate(pool: pg.Pool, log: Logger, dir = sqlDir, upTo = Number.POSITIVE_INFINITY): Promise<number> {
  const migrations = await loadMigrations(dir);
  const client = await pool.connect();
  try {
    await client.query('SELECT pg_advisory_lock($1)', [MIGRATION_LOCK]);
    await client.query(`CREATE TABLE IF NOT EXISTS schema_migrations (
      version integer PRIMARY KEY,
      name text NOT NULL,
      checksum text NOT NULL,
      applied_at timestamptz NOT NULL DEFAULT now())`);
    const applied = new Map<number, string>();
    for (const row of (await client.query('SELECT version, checksum FROM schema_migrations')).rows) {
      applied.set(row.version, row.checksum);
    }
    let count = 0;
    for (const migration of migrations) {
      // A restore brings the schema to its backup's version, loads the rows, then applies the rest.
      if (migration.version > upTo) break;
      const checksum = applied.get(migration.version);
      if (checksum !== undefined) {
        if (checksum !== migration.checksum) {
          throw new Error(
            `migration ${migration.name} was changed after it was applied to this database; ` +
              'add a new numbered migration instead of editing an applied one',
          );
        }
        continue;
      }
      await client.query('BEGIN');
      try {
        await client.query(migration.sql);
        await client.query('INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)', [
          migration.version,
          migration.name,
          migration.checksum,
        ]);
        await client.query('COMMIT');
      } catch (error) {
        await client.query('ROLLBACK').catch(() => undefined);
        throw new Error(`migration ${migration.name} failed: ${(error as Error).message}`, { cause: error });
      }
      log.info({ migration: migration.name }, 'applied migration');
      count++;
    }
    return count;
  } finally {
    await client.query('SELECT pg_advisory_unlock($1)', [MIGRATION_LOCK]).catch(() => undefined);
    client.release();
  }
}
