import { readFile, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { FleetApi } from './api.js';
import { addCounters, type Counters, DEVICE_STATES, type DeviceState, emptyCounters, percentiles } from './counters.js';
import { type PlannedDevice, provisionFleet } from './factory.js';
import { spawnWorker, workerCount } from './processes.js';
import { type ProfileChoice, profileFor } from './profiles.js';
import { htmlReport, summaryTable, type SimReport, type TimelinePoint } from './report.js';
import { ensureStateDir, type StoredIdentity } from './state.js';
import type { ParentMessage, WorkerOrder, WorkerReport } from './worker.js';

export interface SimOptions {
  devices: number;
  /** The backend; unset starts one in this process on the embedded default. */
  api?: string;
  broker?: string;
  /** The root CA, PEM text (the CLI reads --ca for it). */
  caPem?: string;
  token?: string;
  state: string;
  /** Device ids are <prefix>-000001 …; the same prefix and state directory reuse the same fleet. */
  prefix: string;
  ramp: number;
  rate: number;
  size: number;
  lifetime?: string;
  profile: ProfileChoice;
  /** Worker processes; more are started when one process's open-file limit cannot hold its share. */
  workers: number;
  /** Offer TLS session tickets on reconnect (true), or drop them so every connect is a full handshake. */
  resume: boolean;
  /** Seconds to run once the devices start; 0 runs until `signal` aborts. */
  duration: number;
  batch?: string;
  /** A live progress line on stderr. */
  progress: boolean;
  html?: string;
  onProgress?: (snapshot: Progress) => void;
  /** Enrollment progress: devices with a key, then devices enrolled, out of those missing. */
  onEnrollProgress?: (step: 'keys' | 'enrolled', done: number, total: number) => void;
  signal?: AbortSignal;
  /** Starts a backend in this process when `api` is unset; the CLI passes the one it wires. */
  startBackend?: StartBackend;
}

export interface Progress {
  elapsedSeconds: number;
  states: Record<DeviceState, number>;
  counters: Counters;
}

export const DEFAULT_OPTIONS: Omit<SimOptions, 'devices'> = {
  state: './data/sim',
  prefix: 'sim',
  ramp: 200,
  rate: 0.2,
  size: 128,
  profile: 'mixed',
  workers: os.availableParallelism(),
  resume: true,
  duration: 60,
  progress: true,
};

/** Starts a backend of the simulator's own, keeping its data under `stateDir`, never the operator's. */
export type StartBackend = (options: { lifetime: string | undefined; stateDir: string }) => Promise<Backend>;

/** Where the simulated devices enroll and connect. */
export interface Backend {
  apiUrl: string;
  brokerHost: string;
  brokerPort: number;
  rootPem: string;
  token: string;
  close(): Promise<void>;
}

function inProcessBackend(options: SimOptions): Promise<Backend> {
  if (!options.startBackend) throw new Error('without --api the simulator needs a backend to start in this process');
  return options.startBackend({ lifetime: options.lifetime, stateDir: options.state });
}

function externalBackend(options: SimOptions): Backend {
  if (!options.broker || !options.caPem || !options.token) throw new Error('--api needs --broker, --ca and --token as well');
  const broker = new URL(options.broker);
  if (broker.protocol !== 'mqtts:') throw new Error(`--broker must be an mqtts:// URL, got ${options.broker}`);
  return {
    apiUrl: options.api!.replace(/\/$/, ''),
    brokerHost: broker.hostname,
    brokerPort: Number(broker.port || 8883),
    rootPem: options.caPem,
    token: options.token,
    close: async () => {},
  };
}

export function planFleet(count: number, prefix: string, profile: ProfileChoice): PlannedDevice[] {
  return Array.from({ length: count }, (_, i) => ({ id: `${prefix}-${String(i + 1).padStart(6, '0')}`, profile: profileFor(profile, i).name }));
}

/** Runs the simulated fleet against a backend and returns the report; the CLI wraps this. */
export async function runSimulation(input: Partial<SimOptions> & { devices: number }): Promise<SimReport> {
  const options: SimOptions = { ...DEFAULT_OPTIONS, ...input };
  const backend = options.api ? externalBackend(options) : await inProcessBackend(options);
  const api = new FleetApi(backend.apiUrl, backend.rootPem, backend.token);
  const say = (text: string) => options.progress && process.stderr.isTTY && process.stderr.write(`\r\x1b[2K${text}`);
  try {
    await ensureStateDir(options.state);
    const planned = planFleet(options.devices, options.prefix, options.profile);
    const factory = await provisionFleet(api, options.state, planned, {
      lifetime: options.lifetime,
      batch: options.batch,
      onEnrolling: (n) => say(`enrolling ${n} devices (key, CSR, bulk registration, batch enrollment)…`),
      onProgress: options.onEnrollProgress,
    });
    const run = await runWorkers(options, backend, factory.ready, say);
    const counters = run.counters;
    for (const [reason, n] of Object.entries(factory.failures)) counters.failures[reason] = (counters.failures[reason] ?? 0) + n;
    const report: SimReport = {
      devices: options.devices,
      connected: run.connectedAtEnd,
      enrolled: factory.enrolled,
      reused: factory.reused,
      revoked: factory.revoked.length + run.revoked.length,
      revokedDevices: [...factory.revoked, ...run.revoked].sort(),
      expired: factory.expired.length + (run.finalStates.expired ?? 0),
      expiredDevices: factory.expired,
      durationSeconds: run.seconds,
      workers: run.workers,
      profile: options.profile,
      handshakeMs: percentiles(run.handshakeMs),
      connackMs: percentiles(run.connackMs),
      connectRate: run.connectRate,
      connectAttempts: counters.connectAttempts,
      connects: counters.connects,
      resumed: counters.resumed,
      publishes: counters.publishes,
      lostOnLink: counters.lostOnLink,
      linkDrops: counters.linkDrops,
      renewals: counters.renewals,
      renewalFailures: counters.renewalFailures,
      commandsAnswered: counters.commandsAnswered,
      failures: counters.failures,
      timeline: run.timeline,
    };
    if (options.html) await writeFile(options.html, htmlReport(report, options));
    say('');
    return report;
  } finally {
    api.close();
    await backend.close();
  }
}

interface WorkerRun {
  seconds: number;
  workers: number;
  connectedAtEnd: number;
  finalStates: Record<DeviceState, number>;
  counters: Counters;
  handshakeMs: number[];
  connackMs: number[];
  connectRate: number | null;
  revoked: string[];
  timeline: TimelinePoint[];
}

/** Splits the fleet over worker processes, follows their reports each second, and stops them at the end. */
async function runWorkers(options: SimOptions, backend: Backend, ready: StoredIdentity[], say: (text: string) => void): Promise<WorkerRun> {
  const count = workerCount(options.workers, ready.length);
  const shares: StoredIdentity[][] = Array.from({ length: count }, () => []);
  ready.forEach((identity, i) => shares[i % count]!.push(identity));
  const latest: WorkerReport[] = [];
  const handshakeMs: number[] = [];
  const connackMs: number[] = [];
  const revoked: string[] = [];
  const timeline: TimelinePoint[] = [];
  const started = Date.now();
  let fullyConnectedAt: number | undefined;
  let lastConnects = 0;
  let stopping = false;

  const workers = shares.map((devices, index) => {
    const order: WorkerOrder = {
      devices,
      apiUrl: backend.apiUrl,
      rootPem: backend.rootPem,
      operatorToken: backend.token,
      brokerHost: backend.brokerHost,
      brokerPort: backend.brokerPort,
      stateDir: options.state,
      rate: options.rate,
      size: options.size,
      lifetime: options.lifetime,
      resume: options.resume,
      ramp: options.ramp / count,
    };
    const worker = spawnWorker();
    const tell = (message: ParentMessage) => worker.connected && worker.send(message);
    tell({ type: 'order', order });
    const finished = new Promise<void>((resolve, reject) => {
      worker.on('message', (report: WorkerReport) => {
        latest[index] = report;
        handshakeMs.push(...report.handshakeMs);
        connackMs.push(...report.connackMs);
        revoked.push(...report.revoked);
        if (report.type === 'final') resolve();
      });
      worker.once('error', reject);
      worker.once('exit', (code, signal) => {
        if (code === 0 || stopping) resolve();
        else reject(new Error(`simulator worker ${index + 1} of ${count} exited (${signal ?? `code ${code}`}) before the run ended`));
      });
    });
    // Noticed now, not at the end: the run would otherwise go on with part of the fleet gone.
    finished.catch(() => undefined);
    return { worker, tell, finished };
  });

  const sum = () => {
    const states = Object.fromEntries(DEVICE_STATES.map((s) => [s, 0])) as Record<DeviceState, number>;
    const counters = emptyCounters();
    for (const report of latest) {
      if (!report) continue;
      for (const s of DEVICE_STATES) states[s] += report.states[s];
      addCounters(counters, report.counters);
    }
    return { states, counters };
  };

  let intervalHandshake = 0;
  let intervalConnack = 0;
  let lastStates = sum().states;
  const follow = setInterval(() => {
    const { states, counters } = sum();
    lastStates = states;
    const elapsed = (Date.now() - started) / 1000;
    const live = states.connected + states.renewing;
    if (fullyConnectedAt === undefined && live >= ready.length && ready.length > 0) fullyConnectedAt = elapsed;
    const window = (from: number, samples: number[]) => percentiles(samples.slice(from));
    timeline.push({
      t: Math.round(elapsed),
      connected: live,
      connectsPerSecond: counters.connects - lastConnects,
      handshakeP95: window(intervalHandshake, handshakeMs).p95,
      connackP95: window(intervalConnack, connackMs).p95,
      renewals: counters.renewals,
    });
    intervalHandshake = handshakeMs.length;
    intervalConnack = connackMs.length;
    lastConnects = counters.connects;
    options.onProgress?.({ elapsedSeconds: elapsed, states, counters });
    say(progressLine(elapsed, ready.length, states, counters));
  }, 1000);

  await waitForEnd(options);
  clearInterval(follow);
  const seconds = (Date.now() - started) / 1000;
  stopping = true;
  for (const { tell } of workers) tell({ type: 'stop' });
  await Promise.all(workers.map((w) => w.finished));
  const final = sum();
  const rampSeconds = fullyConnectedAt ?? seconds;
  return {
    seconds: Math.round(seconds * 10) / 10,
    workers: count,
    connectedAtEnd: lastStates.connected + lastStates.renewing,
    finalStates: final.states,
    counters: final.counters,
    handshakeMs,
    connackMs,
    // Connections per second until the whole fleet was first connected (all of the run if never).
    connectRate: rampSeconds > 0 ? Math.round((Math.min(final.counters.connects, ready.length) / rampSeconds) * 10) / 10 : null,
    revoked,
    timeline,
  };
}

function waitForEnd(options: SimOptions): Promise<void> {
  return new Promise((resolve) => {
    if (options.signal?.aborted) return resolve();
    const timer = options.duration > 0 ? setTimeout(resolve, options.duration * 1000) : undefined;
    options.signal?.addEventListener('abort', () => {
      if (timer) clearTimeout(timer);
      resolve();
    });
  });
}

function progressLine(elapsed: number, total: number, states: Record<DeviceState, number>, counters: Counters): string {
  const failures = Object.entries(counters.failures)
    .map(([reason, n]) => `${reason} ${n}`)
    .join(', ');
  return (
    `[${Math.round(elapsed)}s] connected ${states.connected + states.renewing}/${total}  connecting ${states.connecting}  ` +
    `renewing ${states.renewing}  backoff ${states.backoff}  revoked ${states.revoked}  expired ${states.expired}  ` +
    `pub ${counters.publishes}  renewals ${counters.renewals}` + (failures ? `  failed: ${failures}` : '')
  );
}

export { summaryTable };
export const readCa = (file: string) => readFile(file, 'utf8');
