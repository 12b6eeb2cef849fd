import type pg from 'pg';
import { FleetError } from '../errors.js';
import { inTransaction, type Queryable } from '../db/transaction.js';

/**
 * The registry's side of `fleet backup` and `fleet restore`: every table of the registry, found in
 * the catalog (so a table a later migration adds is included without a change here), in foreign-key
 * order, and its sequences. Rows travel as row_to_json text and come back through
 * json_populate_recordset, so each type (timestamps to the microsecond, jsonb, bytea, arrays) is
 * read back by PostgreSQL's own input functions. The file around them is the CLI's business.
 *
 * Table names come from the catalog, never from a user, and are quoted with escapeIdentifier: the
 * one place in the registry where an identifier is spliced into SQL, since a generic dump must name
 * tables it does not know in advance.
 */

/**
 * Not copied: migrations bookkeeping (recreated by the migrations themselves, compared rather than
 * copied), and the broker nodes' presence leases, which belong to the processes running now: a
 * restored fleet's brokers take leases of their own.
 */
export const NOT_REGISTRY_DATA: readonly string[] = ['schema_migrations', 'broker_nodes'];

const TABLES = `
  SELECT c.relname AS name
    FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p') AND NOT c.relispartition
   ORDER BY c.relname`;

const FOREIGN_KEYS = `
  SELECT child.relname AS child, parent.relname AS parent
    FROM pg_constraint k
    JOIN pg_class child ON child.oid = k.conrelid
    JOIN pg_class parent ON parent.oid = k.confrelid
    JOIN pg_namespace n ON n.oid = k.connamespace
   WHERE k.contype = 'f' AND n.nspname = current_schema()`;

/** Columns a row can be given: not dropped, not generated (those PostgreSQL computes again). */
const COLUMNS = `
  SELECT a.attname AS name
    FROM pg_attribute a
    JOIN pg_class c ON c.oid = a.attrelid
    JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname = current_schema() AND c.relname = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attgenerated = ''
   ORDER BY a.attnum`;

/** A sequence never used has no last_value: it is left as the migration made it. */
const SEQUENCES = `
  SELECT sequencename AS name, last_value::text AS value
    FROM pg_sequences
   WHERE schemaname = current_schema() AND last_value IS NOT NULL
   ORDER BY sequencename`;

const SET_SEQUENCE = `SELECT setval(quote_ident($1)::regclass, $2::bigint, true)`;

const APPLIED_MIGRATIONS = `SELECT version, name, checksum FROM schema_migrations ORDER BY version`;

export interface RegistryTable {
  name: string;
  columns: string[];
}

export interface SequenceValue {
  name: string;
  value: string;
}

export interface AppliedMigration {
  version: number;
  name: string;
  checksum: string;
}

/** Every table the registry owns, parents before the tables that reference them. */
export async function registryTables(q: Queryable): Promise<RegistryTable[]> {
  const names = (await q.query<{ name: string }>(TABLES)).rows.map((r) => r.name).filter((n) => !NOT_REGISTRY_DATA.includes(n));
  const edges = (await q.query<{ child: string; parent: string }>(FOREIGN_KEYS)).rows;
  const ordered = parentsFirst(names, edges);
  const tables: RegistryTable[] = [];
  for (const name of ordered) tables.push({ name, columns: (await q.query<{ name: string }>(COLUMNS, [name])).rows.map((r) => r.name) });
  return tables;
}

/** Kahn's order over the foreign keys; a table referencing itself is loaded in one statement, which PostgreSQL checks at its end. */
function parentsFirst(names: string[], edges: { child: string; parent: string }[]): string[] {
  const waitingOn = new Map(names.map((n) => [n, new Set<string>()]));
  for (const { child, parent } of edges) if (child !== parent && waitingOn.has(parent)) waitingOn.get(child)?.add(parent);
  const ordered: string[] = [];
  while (waitingOn.size > 0) {
    const ready = [...waitingOn].filter(([, parents]) => parents.size === 0).map(([n]) => n);
    if (ready.length === 0) throw new Error(`the registry's foreign keys form a cycle among ${[...waitingOn.keys()].join(', ')}`);
    for (const name of ready.sort()) {
      ordered.push(name);
      waitingOn.delete(name);
      for (const parents of waitingOn.values()) parents.delete(name);
    }
  }
  return ordered;
}

export async function appliedMigrations(q: Queryable): Promise<AppliedMigration[]> {
  return (await q.query<AppliedMigration>(APPLIED_MIGRATIONS)).rows;
}

export async function registrySequences(q: Queryable): Promise<SequenceValue[]> {
  return (await q.query<SequenceValue>(SEQUENCES)).rows;
}

/**
 * Runs `read` in one REPEATABLE READ, read-only transaction, so every table and sequence it reads
 * is the same moment of the registry, while a running fleet goes on writing.
 */
export function inRegistrySnapshot<T>(pool: pg.Pool, read: (client: pg.PoolClient) => Promise<T>): Promise<T> {
  return inTransaction(
    pool,
    async (client) => {
      await allowLongWork(client);
      return read(client);
    },
    'BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY',
  );
}

/** A backup or restore of a large registry is long work, not a hung query: no statement or idle timeout in this transaction. */
export async function allowLongWork(client: pg.PoolClient): Promise<void> {
  await client.query('SET LOCAL statement_timeout = 0');
  await client.query('SET LOCAL idle_in_transaction_session_timeout = 0');
}

/** A table's rows as JSON text, `batch` at a time through a cursor: memory stays flat at any size. */
export async function* tableRows(client: pg.PoolClient, table: string, batch = 1000): AsyncGenerator<string[]> {
  const cursor = 'fleet_backup_rows';
  await client.query(`DECLARE ${cursor} NO SCROLL CURSOR FOR SELECT row_to_json(t)::text AS r FROM ${client.escapeIdentifier(table)} t`);
  try {
    for (;;) {
      const rows = (await client.query<{ r: string }>(`FETCH FORWARD ${batch} FROM ${cursor}`)).rows;
      if (rows.length === 0) return;
      yield rows.map((row) => row.r);
    }
  } finally {
    await client.query(`CLOSE ${cursor}`);
  }
}

/** Refuses a database that holds any registry row: a restore never merges into a live registry. */
export async function assertRegistryEmpty(q: Queryable, tables: RegistryTable[]): Promise<void> {
  for (const { name } of tables) {
    const res = await q.query<{ n: number }>(`SELECT count(*)::int AS n FROM (SELECT 1 FROM ${escape(q, name)} LIMIT 1000) s`);
    const rows = res.rows[0]!.n;
    if (rows > 0) {
      throw new FleetError(
        'restore_target_not_empty',
        409,
        `the database is not empty (${name} has ${rows === 1000 ? '1000 or more rows' : `${rows} row${rows === 1 ? '' : 's'}`}); ` +
          'restore only into a new database: create one and set DATABASE_URL to it, or use a new FLEET_DATA_DIR for the embedded one',
      );
    }
  }
}

/**
 * Loads one table inside the caller's transaction: rows are staged in a temporary table batch by
 * batch, then copied in one INSERT, whose foreign-key checks run at its end, so rows that point at
 * rows of the same table (a superseded certificate at its successor) may come in any order.
 * Columns missing from `columns` (added by a later migration than the backup's) get their defaults.
 * Runs as the tables' owner (the role that ran the migrations), which may switch their triggers.
 */
export async function loadTable(client: pg.PoolClient, table: RegistryTable, batches: AsyncIterable<string[]>): Promise<number> {
  const target = client.escapeIdentifier(table.name);
  const stage = client.escapeIdentifier(`fleet_restore_${table.name}`);
  const known = new Set((await client.query<{ name: string }>(COLUMNS, [table.name])).rows.map((r) => r.name));
  const columns = table.columns.filter((c) => known.has(c)).map((c) => client.escapeIdentifier(c)).join(', ');
  await client.query(`CREATE TEMP TABLE ${stage} ON COMMIT DROP AS SELECT * FROM ${target} WITH NO DATA`);
  let count = 0;
  for await (const rows of batches) {
    await client.query(`INSERT INTO ${stage} SELECT * FROM json_populate_recordset(NULL::${target}, $1::json)`, [`[${rows.join(',')}]`]);
    count += rows.length;
  }
  // The rows come back as they were: the table's own triggers (counts kept by triggers, events made
  // from audit rows, notifications) must not derive rows a second time that the backup holds already.
  // Foreign-key checks are not user triggers and still run.
  await client.query(`ALTER TABLE ${target} DISABLE TRIGGER USER`);
  await client.query(`INSERT INTO ${target} (${columns}) OVERRIDING SYSTEM VALUE SELECT ${columns} FROM ${stage}`);
  await client.query(`ALTER TABLE ${target} ENABLE TRIGGER USER`);
  await client.query(`DROP TABLE ${stage}`);
  return count;
}

export async function restoreSequence(q: Queryable, sequence: SequenceValue): Promise<void> {
  await q.query(SET_SEQUENCE, [sequence.name, sequence.value]);
}

function escape(q: Queryable, name: string): string {
  // A pool has no escapeIdentifier of its own; the rule is PostgreSQL's: double the quotes, quote the whole.
  return 'escapeIdentifier' in q ? q.escapeIdentifier(name) : `"${name.replaceAll('"', '""')}"`;
}
