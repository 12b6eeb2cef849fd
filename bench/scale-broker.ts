/**
 * `fleet start` as the scale benchmark runs it: a child process on a data directory (and database)
 * of the benchmark's own, on free ports, that can be killed and started again on the same data.
 * Its resident memory is read from /proc across its process tree (cluster workers included), and
 * its counters from its Prometheus endpoint.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { once } from 'node:events';
import { createWriteStream, readdirSync, readFileSync, type WriteStream } from 'node:fs';
import net from 'node:net';
import { fileURLToPath } from 'node:url';
import { setTimeout as sleep } from 'node:timers/promises';

const FLEET_CLI = fileURLToPath(new URL('../cli/fleet.js', import.meta.url));
const READY_TIMEOUT_MS = 180_000;

export interface FleetPorts {
  api: number;
  broker: number;
  metrics: number;
}

/** Free ports for this run, all held at once so none is handed out twice. */
export async function freePorts(count: number): Promise<number[]> {
  const servers = await Promise.all(
    Array.from({ length: count }, async () => {
      const server = net.createServer().listen(0, '127.0.0.1');
      await once(server, 'listening');
      return server;
    }),
  );
  const ports = servers.map((s) => (s.address() as net.AddressInfo).port);
  await Promise.all(servers.map((s) => new Promise((resolve) => s.close(resolve))));
  return ports;
}

/** The environment a benchmark fleet runs with: the caller's (Redis, broker workers, log level) plus its own place and ports. */
export function fleetEnvironment(base: NodeJS.ProcessEnv, place: { dataDir: string; databaseUrl?: string }, ports: FleetPorts, overrides: Record<string, string>): NodeJS.ProcessEnv {
  const env: NodeJS.ProcessEnv = {
    ...base,
    FLEET_DATA_DIR: place.dataDir,
    FLEET_API_PORT: String(ports.api),
    FLEET_BROKER_PORT: String(ports.broker),
    FLEET_METRICS_PORT: String(ports.metrics),
    FLEET_PKI_HTTP_PORT: 'off',
    ...overrides,
  };
  if (place.databaseUrl) env.DATABASE_URL = place.databaseUrl;
  else delete env.DATABASE_URL;
  return env;
}

/** Runs a `fleet` command to its end; stdout's last line is its answer (a token, for one). */
export async function fleetCommand(args: string[], env: NodeJS.ProcessEnv): Promise<string> {
  const child = spawn(process.execPath, [FLEET_CLI, ...args], { env, stdio: ['ignore', 'pipe', 'pipe'] });
  let stdout = '';
  let stderr = '';
  child.stdout.on('data', (c: Buffer) => (stdout += c));
  child.stderr.on('data', (c: Buffer) => (stderr += c));
  const [code] = (await once(child, 'exit')) as [number | null];
  if (code !== 0) throw new Error(`fleet ${args.join(' ')} failed (${code}): ${stderr.trim().slice(-500)}`);
  return stdout.trimEnd().split('\n').at(-1) ?? '';
}

/** One running `fleet start`. */
export class FleetProcess {
  private constructor(
    private readonly child: ChildProcess,
    readonly ports: FleetPorts,
    private readonly log: WriteStream,
  ) {}

  /** How the process ended (a signal name or exit code), once it has. */
  exit: string | undefined;

  get pid(): number {
    return this.child.pid!;
  }

  /** Starts `fleet start` and waits until its banner is printed and its broker port accepts TCP. */
  static async start(env: NodeJS.ProcessEnv, ports: FleetPorts, logFile: string): Promise<FleetProcess> {
    const log = createWriteStream(logFile, { flags: 'a' });
    const child = spawn(process.execPath, [FLEET_CLI, 'start'], { env, stdio: ['ignore', 'pipe', 'pipe'] });
    child.stdout!.pipe(log, { end: false });
    child.stderr!.pipe(log, { end: false });
    let output = '';
    const watch = (c: Buffer) => (output = (output + c.toString()).slice(-20_000));
    child.stdout!.on('data', watch);
    child.stderr!.on('data', watch);
    const fleet = new FleetProcess(child, ports, log);
    const exited = once(child, 'exit').then(([code, signal]) => {
      throw new Error(`fleet start exited (${signal ?? `code ${code}`}) before it was ready; its output is in ${logFile}:\n${output.slice(-2000)}`);
    });
    const ready = (async () => {
      const deadline = Date.now() + READY_TIMEOUT_MS;
      while (!output.includes('fleet-auth is running.') || !(await accepts(ports.broker))) {
        if (Date.now() > deadline) throw new Error(`fleet start was not ready within ${READY_TIMEOUT_MS / 1000} s; its output is in ${logFile}`);
        await sleep(50);
      }
    })();
    try {
      await Promise.race([ready, exited]);
    } catch (error) {
      child.kill('SIGKILL');
      throw error;
    }
    exited.catch(() => undefined);
    child.once('exit', (code, signal) => (fleet.exit ??= signal ?? `code ${code}`));
    child.stdout!.off('data', watch);
    child.stderr!.off('data', watch);
    return fleet;
  }

  /** Signals the process and resolves once it has exited, with the milliseconds that took. */
  async stop(signal: NodeJS.Signals): Promise<number> {
    const started = performance.now();
    if (this.child.exitCode === null && this.child.signalCode === null) {
      this.exit = `stopped by the benchmark (${signal})`;
      const exited = once(this.child, 'exit');
      this.child.kill(signal);
      await exited;
    }
    this.log.end();
    return performance.now() - started;
  }

  /** Resident memory of the broker's node processes (the start process and any cluster workers), bytes. */
  rssBytes(): number {
    return nodeTree(this.pid).reduce((sum, pid) => sum + rssOf(pid), 0);
  }

  /** The broker's counters from its metrics endpoint: sessions, admitted, refusals by reason. */
  async brokerMetrics(): Promise<BrokerMetrics> {
    const res = await fetch(`http://127.0.0.1:${this.ports.metrics}/metrics`);
    return parseBrokerMetrics(await res.text());
  }
}

export interface BrokerMetrics {
  sessions: number;
  admitted: number;
  refusals: Record<string, number>;
}

/** The few series the benchmark reports, summed over any label it does not split by (a worker label, say). */
export function parseBrokerMetrics(text: string): BrokerMetrics {
  const metrics: BrokerMetrics = { sessions: 0, admitted: 0, refusals: {} };
  for (const line of text.split('\n')) {
    const match = /^(fleet_broker_sessions|fleet_broker_sessions_admitted_total|fleet_broker_refusals_total)(\{[^}]*\})? ([0-9.e+-]+)$/.exec(line);
    if (!match) continue;
    const value = Number(match[3]);
    if (match[1] === 'fleet_broker_sessions') metrics.sessions += value;
    else if (match[1] === 'fleet_broker_sessions_admitted_total') metrics.admitted += value;
    else {
      const reason = /reason="([^"]*)"/.exec(match[2] ?? '')?.[1] ?? 'unknown';
      metrics.refusals[reason] = (metrics.refusals[reason] ?? 0) + value;
    }
  }
  return metrics;
}

async function accepts(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

/** The pid and its descendants that are node processes (not an embedded PostgreSQL under it). */
function nodeTree(root: number): number[] {
  const children = new Map<number, number[]>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    try {
      const stat = readFileSync(`/proc/${entry}/stat`, 'utf8');
      // The command name may hold spaces and parentheses: the fields after the last ')' are fixed.
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      children.set(ppid, [...(children.get(ppid) ?? []), Number(entry)]);
    } catch {
      // Gone since the listing.
    }
  }
  const found: number[] = [];
  const walk = (pid: number) => {
    if (commandOf(pid) === 'node') found.push(pid);
    for (const child of children.get(pid) ?? []) walk(child);
  };
  walk(root);
  return found;
}

function commandOf(pid: number): string | undefined {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return undefined;
  }
}

function rssOf(pid: number): number {
  try {
    const kb = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1];
    return kb ? Number(kb) * 1024 : 0;
  } catch {
    return 0;
  }
}
