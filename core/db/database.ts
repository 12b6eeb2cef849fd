import { constants } from 'node:fs';
import { access, chmod, mkdir } from 'node:fs/promises';
import { FleetError, fileProblem } from '../errors.js';
import pg from 'pg';
import type { FleetConfig } from '../config.js';
import type { Logger } from '../log.js';
import { openEmbeddedDatabase } from './embedded.js';
import { migrate } from './migrate.js';

export interface Database {
  /** The API's and the CLI's: registrations, enrollment bursts, operators, CRL and OCSP. */
  pool: pg.Pool;
  /** The broker's own, for identity lookups and presence: no enrollment burst can take its connections. */
  brokerPool: pg.Pool;
  /** Settings for the change feed's long-lived LISTEN connection, which cannot come from a pool. */
  changeFeedConnection: pg.ClientConfig;
  url: string;
  close(): Promise<void>;
}

interface ConnectionLimits {
  /** Shows in pg_stat_activity, so an operator can tell who holds what. */
  applicationName: string;
  /** A query running longer is cancelled: a hung query cannot hang a request or a lookup. */
  statementTimeoutMs: number;
  /** A lock waited for longer fails the statement, rather than queueing behind a stuck transaction. */
  lockTimeoutMs: number;
}

/**
 * Each part gets connections of its own, bounded, named and timed out. The broker's are short: a
 * lookup that cannot answer in seconds is better refused (the device retries) than left hanging.
 */
export const CONNECTIONS = {
  api: { applicationName: 'fleet-auth api', max: 10, statementTimeoutMs: 30_000, lockTimeoutMs: 10_000 },
  broker: { applicationName: 'fleet-auth broker', max: 10, statementTimeoutMs: 5_000, lockTimeoutMs: 3_000 },
  changeFeed: { applicationName: 'fleet-auth change feed', statementTimeoutMs: 30_000, lockTimeoutMs: 10_000 },
} as const;

/** A transaction left idle this long (a caller that stopped between statements) is ended by the server. */
const IDLE_IN_TRANSACTION_MS = 60_000;

const connectionConfig = (url: string, limits: ConnectionLimits): pg.ClientConfig => ({
  connectionString: url,
  application_name: limits.applicationName,
  statement_timeout: limits.statementTimeoutMs,
  lock_timeout: limits.lockTimeoutMs,
  idle_in_transaction_session_timeout: IDLE_IN_TRANSACTION_MS,
  // A database that stops answering must fail lookups quickly, so the broker can fall back or refuse.
  connectionTimeoutMillis: 3000,
});

function openPool(url: string, limits: ConnectionLimits & { max: number }, log: Logger): pg.Pool {
  const pool = new pg.Pool({ ...connectionConfig(url, limits), max: limits.max });
  // An idle client losing its server must not crash the process; the next query reports it.
  pool.on('error', (error) => log.warn({ err: error, pool: limits.applicationName }, 'idle database connection failed'));
  return pool;
}

/**
 * Connects to DATABASE_URL, or to the embedded PostgreSQL under the data directory when it is unset,
 * and brings the schema up to date (or up to `migrateUpTo`, for a restore that loads rows at their own version).
 */
export async function openDatabase(
  config: Pick<FleetConfig, 'databaseUrl' | 'dataDir'>,
  log: Logger,
  options: { migrateUpTo?: number } = {},
): Promise<Database> {
  let url = config.databaseUrl;
  let stopEmbedded = async () => {};
  if (url === undefined) {
    await ensureDataDir(config.dataDir);
    const embedded = await openEmbeddedDatabase(config.dataDir, log);
    url = embedded.url;
    stopEmbedded = embedded.stop;
  }
  try {
    // Migrations wait for each other's lock and may run long: a connection of their own, without the timeouts.
    const migrations = new pg.Pool({ connectionString: url, max: 1, application_name: 'fleet-auth migrations' });
    migrations.on('error', (error) => log.warn({ err: error }, 'the migrations connection failed'));
    try {
      await migrate(migrations, log, undefined, options.migrateUpTo);
    } finally {
      await migrations.end();
    }
  } catch (error) {
    await stopEmbedded();
    throw error;
  }
  const pool = openPool(url, CONNECTIONS.api, log);
  const brokerPool = openPool(url, CONNECTIONS.broker, log);
  return {
    pool,
    brokerPool,
    changeFeedConnection: connectionConfig(url, CONNECTIONS.changeFeed),
    url,
    async close() {
      await Promise.all([pool.end(), brokerPool.end()]);
      await stopEmbedded();
    },
  };
}

/**
 * The data directory holds keys (in pki/, mode 0700) and the embedded cluster, which runs as the
 * 'postgres' user when we are root: that user may pass through it, but not list it.
 */
export async function ensureDataDir(dataDir: string): Promise<void> {
  try {
    await mkdir(dataDir, { recursive: true, mode: 0o711 });
    await chmod(dataDir, 0o711);
    await access(dataDir, constants.W_OK);
  } catch (error) {
    throw new FleetError(
      'data_dir_unusable',
      1,
      `the data directory ${dataDir} cannot be created or written (FLEET_DATA_DIR): ${fileProblem(error)}; choose another directory or fix its permissions`,
    );
  }
}
