import { chmod, mkdir } from 'node:fs/promises';
import pg from 'pg';
import type { FleetConfig } from '../config.js';
import type { Logger } from '../log.js';
import { openEmbeddedDatabase } from './embedded.js';
import { migrate } from './migrate.js';

export interface Database {
  pool: pg.Pool;
  /** The connection string, for the long-lived LISTEN connection that cannot come from the pool. */
  url: string;
  close(): Promise<void>;
}

/**
 * Connects to DATABASE_URL, or to the embedded PostgreSQL under the data directory when it is unset,
 * and brings the schema up to date.
 */
export async function openDatabase(config: Pick<FleetConfig, 'databaseUrl' | 'dataDir'>, log: Logger): Promise<Database> {
  let url = config.databaseUrl;
  let stopEmbedded = async () => {};
  if (url === undefined) {
    await ensureDataDir(config.dataDir);
    const embedded = await openEmbeddedDatabase(config.dataDir, log);
    url = embedded.url;
    stopEmbedded = embedded.stop;
  }
  // A database that stops answering must fail lookups quickly, so the broker can fall back or refuse.
  const pool = new pg.Pool({ connectionString: url, max: 10, application_name: 'fleet-auth', connectionTimeoutMillis: 3000 });
  // An idle client losing its server must not crash the process; the next query reports it.
  pool.on('error', (error) => log.warn({ err: error }, 'idle database connection failed'));
  try {
    await migrate(pool, log);
  } catch (error) {
    await pool.end();
    await stopEmbedded();
    throw error;
  }
  return {
    pool,
    url,
    async close() {
      await pool.end();
      await stopEmbedded();
    },
  };
}

/**
 * The data directory holds keys (in pki/, mode 0700) and the embedded cluster, which runs as the
 * 'postgres' user when we are root: that user may pass through it, but not list it.
 */
export async function ensureDataDir(dataDir: string): Promise<void> {
  await mkdir(dataDir, { recursive: true, mode: 0o711 });
  await chmod(dataDir, 0o711);
}
