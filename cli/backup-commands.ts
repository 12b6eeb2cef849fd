import { createReadStream, createWriteStream } from 'node:fs';
import { chmod, lstat, mkdir, readdir, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { createInterface } from 'node:readline';
import { once } from 'node:events';
import { createGunzip, createGzip } from 'node:zlib';
import type { Command } from 'commander';
import type pg from 'pg';
import { loadConfig } from '../core/config.js';
import { openDatabase } from '../core/db/database.js';
import { loadMigrations, migrate } from '../core/db/migrate.js';
import { FleetError, fileProblem } from '../core/errors.js';
import { logTo } from '../core/log.js';
import { inTransaction } from '../core/db/transaction.js';
import {
  allowLongWork,
  type AppliedMigration,
  appliedMigrations,
  assertRegistryEmpty,
  inRegistrySnapshot,
  loadTable,
  registrySequences,
  registryTables,
  restoreSequence,
  type RegistryTable,
  type SequenceValue,
  tableRows,
} from '../core/registry/backup.js';

/**
 * A backup file: gzip of JSON lines, read and written as a stream so no registry has to fit in
 * memory. In order: the header (format, version, the migrations the registry was at), the CA files
 * of <data dir>/pki byte for byte (keys as they are on disk: encrypted when FLEET_CA_PASSPHRASE is
 * set, never decrypted here), then each table's name and columns followed by its rows, the
 * sequences, and an end line with the row counts, without which a file is refused as cut short.
 */
const FORMAT = 'fleet-auth-backup';
const VERSION = 1;
const ROW_PREFIX = '{"r":';

type Line =
  | { header: { format: string; version: number; createdAt: string; migrations: AppliedMigration[] } }
  | { file: { path: string; mode: number; data: string } }
  | { table: RegistryTable }
  | { sequences: SequenceValue[] }
  | { end: { rows: Record<string, number> } };

const explain = (text: string) => process.stderr.write(text + '\n');

export function registerBackupCommands(program: Command): void {
  program
    .command('backup')
    .description('write the registry (every table, with its sequences) and the CA files to <file> (mode 0600); keys stay encrypted as on disk')
    .argument('<file>', 'the backup file to create; an existing file is never overwritten')
    .addHelpText('after', '\nWorks beside a running fleet start: the registry is read as one consistent snapshot.\nRestore with: FLEET_DATA_DIR=<new dir> fleet restore <file>')
    .action(async (file: string) => backup(file));
  program
    .command('restore')
    .description('restore a backup into an empty database and a new data directory (FLEET_DATA_DIR, DATABASE_URL), then fleet start there')
    .argument('<file>', 'a file fleet backup wrote')
    .action(async (file: string) => restore(file));
}

/** Progress on stderr for long work: a line per table, and a running count on a terminal. */
function progress(verb: string) {
  let shown = 0;
  return {
    rows(table: string, count: number) {
      if (process.stderr.isTTY && count - shown >= 10_000) {
        shown = count;
        process.stderr.write(`\r\x1b[2K${verb} ${table}: ${count.toLocaleString('en')} rows…`);
      }
    },
    done(table: string, count: number) {
      shown = 0;
      process.stderr.write(`${process.stderr.isTTY ? '\r\x1b[2K' : ''}  ${table}: ${count.toLocaleString('en')} row${count === 1 ? '' : 's'}\n`);
    },
  };
}

async function backup(file: string): Promise<void> {
  const config = loadConfig();
  if (await exists(file)) throw new FleetError('backup_exists', 1, `${file} already exists; choose another name (a backup never overwrites a file)`);
  const pkiDir = path.join(config.dataDir, 'pki');
  if (!(await exists(pkiDir))) throw new FleetError('backup_no_ca', 1, `there is no CA in ${pkiDir} (FLEET_DATA_DIR); run the backup where fleet start runs`);
  const db = await openDatabase(config, logTo(2, process.env.LOG_LEVEL ?? 'warn', config.logFormat));
  const partial = `${file}.partial`;
  const out = new LineWriter(partial);
  try {
    const show = progress('backing up');
    const counts = await inRegistrySnapshot(db.pool, async (client) => {
      await out.write({ header: { format: FORMAT, version: VERSION, createdAt: new Date().toISOString(), migrations: await appliedMigrations(client) } });
      const files = await caFiles(pkiDir);
      for (const f of files) await out.write({ file: f });
      explain(`Backing up ${files.length} CA files from ${pkiDir} (keys as they are on disk) and the registry:`);
      const rows: Record<string, number> = {};
      for (const table of await registryTables(client)) {
        await out.write({ table });
        let count = 0;
        for await (const batch of tableRows(client, table.name)) {
          for (const row of batch) await out.raw(ROW_PREFIX + row + '}');
          count += batch.length;
          show.rows(table.name, count);
        }
        rows[table.name] = count;
        show.done(table.name, count);
      }
      await out.write({ sequences: await registrySequences(client) });
      await out.write({ end: { rows } });
      return rows;
    });
    await out.close();
    await rename(partial, file);
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    explain(`Wrote ${file} (mode 0600): ${total.toLocaleString('en')} rows in ${Object.keys(counts).length} tables. Keep it as safe as the CA keys it holds.`);
  } catch (error) {
    await out.close().catch(() => undefined);
    await rm(partial, { force: true });
    throw error;
  } finally {
    await db.close();
  }
}

/** Every file under pki/ (retired CAs, pending CSR keys included), with its mode; keys are copied, not opened. */
async function caFiles(dir: string, prefix = ''): Promise<{ path: string; mode: number; data: string }[]> {
  const found: { path: string; mode: number; data: string }[] = [];
  for (const entry of (await readdir(path.join(dir, prefix), { withFileTypes: true })).sort((a, b) => a.name.localeCompare(b.name))) {
    const relative = path.join(prefix, entry.name);
    if (entry.isDirectory()) found.push(...(await caFiles(dir, relative)));
    else if (entry.isFile()) {
      const full = path.join(dir, relative);
      found.push({ path: relative, mode: (await stat(full)).mode & 0o777, data: (await readFile(full)).toString('base64') });
    }
  }
  return found;
}

async function restore(file: string): Promise<void> {
  const config = loadConfig();
  const pkiDir = path.join(config.dataDir, 'pki');
  if ((await exists(pkiDir)) && (await readdir(pkiDir)).length > 0) {
    throw new FleetError('restore_data_dir_not_empty', 1, `${pkiDir} already holds a CA; restore only into a new data directory (set FLEET_DATA_DIR to one)`);
  }
  const input = new LineReader(file);
  const staged = path.join(config.dataDir, 'pki.restoring');
  let db: Awaited<ReturnType<typeof openDatabase>> | undefined;
  try {
    const header = await input.header();
    const upTo = await checkMigrations(header.migrations);
    const log = logTo(2, process.env.LOG_LEVEL ?? 'warn', config.logFormat);
    db = await openDatabase(config, log, { migrateUpTo: upTo });
    await rm(staged, { recursive: true, force: true });
    const counts = await inTransaction(db.pool, async (client) => {
      await allowLongWork(client);
      await assertRegistryEmpty(client, await registryTables(client));
      return loadAll(input, client, staged);
    });
    // Migrations newer than the backup run now, over its rows, as they would have on the old database.
    await migrate(db.pool, log);
    await rename(staged, pkiDir);
    const total = Object.values(counts).reduce((a, b) => a + b, 0);
    explain(`Restored ${total.toLocaleString('en')} rows in ${Object.keys(counts).length} tables and the CA into ${config.dataDir}.`);
    explain(`Start it with the same FLEET_CA_PASSPHRASE (and PKCS#11 token, if the issuing keys are in one): FLEET_DATA_DIR=${config.dataDir} npx fleet start`);
  } catch (error) {
    await rm(staged, { recursive: true, force: true });
    throw error;
  } finally {
    input.close();
    await db?.close();
  }
}

/** The rows go in at the backup's schema version; a backup from a newer fleet-auth cannot. */
async function checkMigrations(backedUp: AppliedMigration[]): Promise<number> {
  const known = new Map((await loadMigrations()).map((m) => [m.version, m]));
  for (const m of backedUp) {
    const mine = known.get(m.version);
    if (!mine) throw new FleetError('restore_newer_backup', 1, `the backup was made by a newer fleet-auth (migration ${m.name} is unknown here); restore it with that version`);
    if (mine.checksum !== m.checksum) throw new FleetError('restore_schema_differs', 1, `the backup's migration ${m.name} differs from this fleet-auth's; restore it with the version that made it`);
  }
  return Math.max(0, ...backedUp.map((m) => m.version));
}

/** Everything after the header, in file order, inside the caller's transaction; CA files go to `staged`. */
async function loadAll(input: LineReader, client: pg.PoolClient, staged: string): Promise<Record<string, number>> {
  const show = progress('restoring');
  const counts: Record<string, number> = {};
  for (;;) {
    const line = await input.next();
    if (line === undefined) throw cutShort(input.file);
    if ('file' in line) await writeCaFile(staged, line.file);
    else if ('table' in line) {
      counts[line.table.name] = await loadTable(client, line.table, input.rows((n) => show.rows(line.table.name, n)));
      show.done(line.table.name, counts[line.table.name]!);
    } else if ('sequences' in line) for (const sequence of line.sequences) await restoreSequence(client, sequence);
    else if ('end' in line) {
      for (const [table, rows] of Object.entries(line.end.rows)) {
        if (counts[table] !== rows) throw new FleetError('restore_file_damaged', 1, `${input.file} says ${table} has ${rows} rows but holds ${counts[table] ?? 0}; the file is damaged`);
      }
      return counts;
    } else throw new FleetError('restore_file_damaged', 1, `${input.file} has a line this fleet-auth does not know; the file is damaged or from a newer version`);
  }
}

async function writeCaFile(staged: string, f: { path: string; mode: number; data: string }): Promise<void> {
  const target = path.resolve(staged, f.path);
  // A crafted file must not write outside the CA directory.
  if (!target.startsWith(staged + path.sep)) throw new FleetError('restore_file_damaged', 1, `the backup names a CA file outside pki/ (${f.path}); refused`);
  await mkdir(path.dirname(target), { recursive: true, mode: 0o700 });
  await writeFile(target, Buffer.from(f.data, 'base64'), { mode: f.mode & 0o777, flag: 'wx' });
  await chmod(target, f.mode & 0o777);
}

const cutShort = (file: string) => new FleetError('restore_file_damaged', 1, `${file} ends before its end line: the backup was cut short; nothing was restored`);

async function exists(file: string): Promise<boolean> {
  return lstat(file).then(
    () => true,
    (error: NodeJS.ErrnoException) => {
      if (error.code === 'ENOENT') return false;
      throw error;
    },
  );
}

/** Lines into a gzip file created with mode 0600, waiting for the disk when it falls behind. */
class LineWriter {
  private readonly gzip = createGzip();
  private readonly file;
  private readonly done: Promise<unknown>;
  constructor(name: string) {
    this.file = createWriteStream(name, { flags: 'wx', mode: 0o600 });
    this.gzip.pipe(this.file);
    this.done = once(this.file, 'close');
    this.file.on('error', () => undefined);
  }
  write(line: Line): Promise<void> {
    return this.raw(JSON.stringify(line));
  }
  async raw(text: string): Promise<void> {
    if (!this.gzip.write(text + '\n')) await once(this.gzip, 'drain');
  }
  async close(): Promise<void> {
    this.gzip.end();
    await this.done;
  }
}

/** A backup file line by line; rows of a table are handed over in batches, the rest as parsed lines. */
class LineReader {
  private readonly lines: AsyncIterator<string>;
  private pending: string | undefined;
  private readonly stream;
  constructor(readonly file: string) {
    this.stream = createReadStream(file);
    const gunzip = createGunzip();
    this.stream.on('error', (error) => gunzip.destroy(error));
    this.lines = createInterface({ input: this.stream.pipe(gunzip), crlfDelay: Infinity })[Symbol.asyncIterator]();
  }

  async header(): Promise<Extract<Line, { header: unknown }>['header']> {
    let first: Line | undefined;
    try {
      first = await this.next();
    } catch (error) {
      if (error instanceof FleetError) throw error;
      throw new FleetError('restore_file_unreadable', 1, `cannot read the backup ${this.file}: ${fileProblem(error)}`);
    }
    if (!first || !('header' in first) || first.header.format !== FORMAT) {
      throw new FleetError('restore_file_unreadable', 1, `${this.file} is not a fleet-auth backup`);
    }
    if (first.header.version !== VERSION) throw new FleetError('restore_newer_backup', 1, `${this.file} is a backup of format ${first.header.version}, which this fleet-auth cannot read`);
    return first.header;
  }

  private async nextText(): Promise<string | undefined> {
    if (this.pending !== undefined) {
      const line = this.pending;
      this.pending = undefined;
      return line;
    }
    try {
      const step = await this.lines.next();
      return step.done ? undefined : step.value;
    } catch (error) {
      // zlib's errors (Z_DATA_ERROR, Z_BUF_ERROR…) mean the bytes are not a whole gzip stream.
      if ((error as NodeJS.ErrnoException).code?.startsWith('Z_')) {
        throw new FleetError('restore_file_damaged', 1, `${this.file} is damaged or cut short (${(error as Error).message}); nothing was restored`);
      }
      throw error;
    }
  }

  async next(): Promise<Line | undefined> {
    const text = await this.nextText();
    if (text === undefined) return undefined;
    if (text.startsWith(ROW_PREFIX)) throw new FleetError('restore_file_damaged', 1, `${this.file} has a row outside any table; the file is damaged`);
    try {
      return JSON.parse(text) as Line;
    } catch {
      throw new FleetError('restore_file_damaged', 1, `${this.file} holds a line that is not JSON; the file is damaged`);
    }
  }

  /** The rows that follow a table line, 500 at a time, up to the next line that is not a row. */
  async *rows(onCount: (count: number) => void): AsyncGenerator<string[]> {
    let batch: string[] = [];
    let count = 0;
    for (;;) {
      const text = await this.nextText();
      if (text === undefined) throw cutShort(this.file);
      if (!text.startsWith(ROW_PREFIX)) {
        this.pending = text;
        break;
      }
      batch.push(text.slice(ROW_PREFIX.length, -1));
      if (batch.length === 500) {
        count += batch.length;
        yield batch;
        batch = [];
        onCount(count);
      }
    }
    if (batch.length > 0) yield batch;
  }

  close(): void {
    this.stream.destroy();
  }
}
