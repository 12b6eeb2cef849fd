/**
 * The systems compared, each started fresh in a process of its own whose pid the benchmark reads
 * /proc for. All present the same server certificate and check devices against the same chain
 * (the fleet's own root -> issuing CA), so curves and chain depth match:
 * - fleet-auth: `node dist/cli/fleet.js start`, as `npm start` runs it, on the run's data directory;
 * - fleet-auth-workers: the same with FLEET_REDIS_URL and FLEET_BROKER_WORKERS (a process group);
 * - aedes and the floor: system-host.ts;
 * - Mosquitto: /usr/sbin/mosquitto with a config file of its own.
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import net from 'node:net';
import path from 'node:path';
import { once } from 'node:events';
import { promisify } from 'node:util';
import { forkChild } from './child.js';
import type { HostAnswer, HostOrder } from './system-host.js';

export const SYSTEMS = ['fleet-auth', 'fleet-auth-workers', 'aedes', 'floor', 'mosquitto'] as const;
export type SystemName = (typeof SYSTEMS)[number];

export const MOSQUITTO = '/usr/sbin/mosquitto';

export interface Running {
  name: SystemName;
  pid: number;
  port: number;
  stop(): Promise<void>;
}

/** Where the fleet keeps its state for the run, and what every system presents and trusts. */
export interface FleetPlace {
  dataDir: string;
  /** A database of the run's own on DATABASE_URL's server; unset: the embedded PostgreSQL under dataDir. */
  databaseUrl?: string;
}

export interface Chain {
  rootPem: string;
  /** Root and issuing CA: what a server checks device certificates against. */
  trustPem: string;
  /** Server certificate then issuing CA. */
  serverCertPem: string;
  serverKeyPem: string;
}

const fleetCli = new URL('../cli/fleet.js', import.meta.url);

/** The environment `fleet` runs in: every port chosen by the kernel, the per-address limit off (all devices are 127.0.0.1). */
function fleetEnv(place: FleetPlace, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...process.env,
    ...extra,
    FLEET_DATA_DIR: place.dataDir,
    FLEET_API_PORT: '0',
    FLEET_BROKER_PORT: '0',
    FLEET_METRICS_PORT: '0',
    FLEET_PKI_HTTP_PORT: '0',
    FLEET_LISTEN_HOST: '127.0.0.1',
    FLEET_BROKER_CONNECT_RATE: '1000000',
    FLEET_BROKER_CONNECT_BURST: '1000000',
    FLEET_BUILD: 'never',
  };
  if (place.databaseUrl) env.DATABASE_URL = place.databaseUrl;
  else delete env.DATABASE_URL;
  return env;
}

/** An admin API token, made with `fleet token create` before the fleet starts (it also creates the database). */
export async function adminToken(place: FleetPlace): Promise<string> {
  const { stdout } = await promisify(execFile)(process.execPath, [fleetCli.pathname, 'token', 'create', '--role', 'admin', '--name', 'bench'], {
    env: fleetEnv(place),
  });
  const token = stdout.trim().split('\n').at(-1);
  if (!token) throw new Error('fleet token create printed no token');
  return token;
}

/** Resolves with the first match of `pattern` in the process's output; keeps draining it afterwards. */
function watchFor(child: ChildProcess, pattern: RegExp): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let seen = '';
    const look = (chunk: Buffer) => {
      seen = (seen + chunk.toString('utf8')).slice(-20_000);
      const match = pattern.exec(seen);
      if (match) resolve(match);
    };
    child.stdout!.on('data', look);
    child.stderr!.on('data', look);
    child.once('exit', (code) => reject(new Error(`fleet start exited (code ${code}) before it was running:\n${seen.slice(-2000)}`)));
  });
}

export interface FleetRunning extends Running {
  apiUrl: string;
}

/** Broker processes of fleet-auth-workers: one per core of the 2-core machine the targets are set on. */
export const BENCH_WORKERS = 2;

/** How fleet-auth-workers (and a second node beside it) run: broker workers sharing state through `redisUrl`. */
export const workersEnv = (redisUrl: string, workers: number): NodeJS.ProcessEnv => ({ FLEET_REDIS_URL: redisUrl, FLEET_BROKER_WORKERS: String(workers) });

/**
 * `fleet start`, with `env` added (workersEnv for the workers); BENCH_CPU_PROF=<dir> writes a V8 CPU
 * profile of it there, for profiling the connect path, and BENCH_FLEET_NODE_ARGS (space-separated
 * Node or V8 flags, e.g. `--max-semi-space-size=32`) are given to its node only, so a flag can be
 * compared against bare aedes in one run.
 */
export async function startFleetAuth(place: FleetPlace, name: 'fleet-auth' | 'fleet-auth-workers' = 'fleet-auth', env: NodeJS.ProcessEnv = {}): Promise<FleetRunning> {
  const profile = process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [];
  const flags = (process.env.BENCH_FLEET_NODE_ARGS ?? '').split(/\s+/).filter(Boolean);
  const child = spawn(process.execPath, [...flags, ...profile, fleetCli.pathname, 'start'], { env: fleetEnv(place, env), stdio: ['ignore', 'pipe', 'pipe'] });
  const exited = once(child, 'exit');
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    const timer = setTimeout(() => child.kill('SIGKILL'), 30_000);
    await exited;
    clearTimeout(timer);
  };
  try {
    const [, apiPort, brokerPort] = await withTimeout(
      watchFor(child, /provisioning API\s+https:\/\/localhost:(\d+)[\s\S]*MQTT broker\s+mqtts:\/\/localhost:(\d+)/),
      120_000,
      'fleet start',
    );
    return { name, pid: child.pid!, port: Number(brokerPort), apiUrl: `https://localhost:${apiPort}`, stop };
  } catch (error) {
    await stop();
    throw error;
  }
}

async function withTimeout<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_, reject) => (timer = setTimeout(() => reject(new Error(`${what} was not ready in ${ms / 1000} s`)), ms)));
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

/** The fleet's chain and server identity, read from its data directory after its first start. */
export async function readChain(dataDir: string): Promise<Chain> {
  const pki = path.join(dataDir, 'pki');
  const read = (name: string) => readFile(path.join(pki, name), 'utf8');
  const [rootPem, issuingPem, serverPem, serverKeyPem] = await Promise.all([read('root.crt'), read('issuing.crt'), read('server.crt'), read('server.key')]);
  const serverCertPem = serverPem.includes(issuingPem.trim()) ? serverPem : `${serverPem.trim()}\n${issuingPem.trim()}\n`;
  return { rootPem, trustPem: `${issuingPem.trim()}\n${rootPem.trim()}\n`, serverCertPem, serverKeyPem };
}

export async function startHosted(kind: 'aedes' | 'floor', chain: Chain): Promise<Running> {
  const child = forkChild<HostOrder, HostAnswer>(new URL('./system-host.js', import.meta.url), kind);
  try {
    const answer = await child.ask({ kind, tls: { key: chain.serverKeyPem, cert: chain.serverCertPem, ca: chain.trustPem } });
    if (answer.type !== 'listening') throw new Error(`${kind}: unexpected answer ${answer.type}`);
    return { name: kind, pid: child.process.pid!, port: answer.port, stop: () => child.stop() };
  } catch (error) {
    await child.stop();
    throw error;
  }
}

/** A port nobody listens on now, for Mosquitto (which cannot report a port the kernel chose). */
async function freePort(): Promise<number> {
  const server = net.createServer().listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as net.AddressInfo).port;
  await new Promise((resolve) => server.close(resolve));
  return port;
}

async function waitForPort(port: number, child: ChildProcess, ms: number): Promise<void> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`mosquitto exited (code ${child.exitCode}) at start`);
    const open = await new Promise<boolean>((resolve) => {
      const socket = net.connect(port, '127.0.0.1', () => {
        socket.destroy();
        resolve(true);
      });
      socket.on('error', () => resolve(false));
    });
    if (open) return;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`mosquitto did not listen on ${port} in ${ms / 1000} s`);
}

/** Mosquitto with the same chain, client certificates required, the certificate's CN as username. */
export async function startMosquitto(chain: Chain, dir: string): Promise<Running> {
  const file = (name: string) => path.join(dir, name);
  await writeFile(file('ca.pem'), chain.trustPem);
  await writeFile(file('server.pem'), chain.serverCertPem);
  await writeFile(file('server.key'), chain.serverKeyPem, { mode: 0o600 });
  const port = await freePort();
  const config = [
    `listener ${port} 127.0.0.1`,
    `cafile ${file('ca.pem')}`,
    `certfile ${file('server.pem')}`,
    `keyfile ${file('server.key')}`,
    'require_certificate true',
    'use_identity_as_username true',
    'allow_anonymous true',
    'persistence false',
    'log_dest none',
    'max_keepalive 65535',
    // Run as root (a container), Mosquitto would switch to its own user, who cannot read the run's temp files.
    ...(process.getuid?.() === 0 ? ['user root'] : []),
  ];
  await writeFile(file('mosquitto.conf'), config.join('\n') + '\n');
  // Its stderr is kept for an error: as root it always warns that it should not run as root.
  const child = spawn(MOSQUITTO, ['-c', file('mosquitto.conf')], { stdio: ['ignore', 'ignore', 'pipe'] });
  let said = '';
  child.stderr!.on('data', (chunk: Buffer) => (said = (said + chunk.toString('utf8')).slice(-4000)));
  const exited = once(child, 'exit');
  const stop = async () => {
    if (child.exitCode !== null || child.signalCode !== null) return;
    child.kill('SIGTERM');
    await exited;
  };
  try {
    await waitForPort(port, child, 10_000);
  } catch (error) {
    await stop();
    throw new Error(`${(error as Error).message}: ${said.trim()}`);
  }
  return { name: 'mosquitto', pid: child.pid!, port, stop };
}

export const mosquittoInstalled = () => existsSync(MOSQUITTO);
