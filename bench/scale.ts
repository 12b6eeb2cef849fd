/**
 * `npm run bench:scale`: how many authenticated devices one machine holds, and how fast a fleet comes
 * back after a broker restart. `fleet start` runs as a child process on a data directory (and
 * database) of its own; the simulated devices run in worker processes of their own. It enrolls the
 * fleet, connects it, holds it, then kills and restarts the broker twice on the same data: once with
 * devices offering their TLS session tickets, once with every reconnect a full handshake.
 */
import { chmod, mkdtemp, readFile, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { Command, InvalidArgumentError, Option } from 'commander';
import pg from 'pg';
import { workerCount } from '../device-sim/processes.js';
import { type BrokerMetrics, fleetCommand, fleetEnvironment, FleetProcess, type FleetPorts, freePorts } from './scale-broker.js';
import { type HoldFigures, machineFacts, type RestartFigures, type ScaleReport, writeReport } from './scale-report.js';
import { failuresSince, SimRun } from './scale-sim.js';

const RESULTS = fileURLToPath(new URL('../../bench/results/', import.meta.url));
/** Enrolling 20,000 devices on a busy 2-core machine takes minutes, not seconds. */
const ENROLL_TIMEOUT_MS = 30 * 60_000;
const MiB = 2 ** 20;

interface Options {
  devices: number;
  hold: number;
  ramp: number;
  workers: number;
  timeout: number;
  kill?: NodeJS.Signals;
  connectRate: number;
  out: string;
  keep: boolean;
}

/** Where the benchmark's fleet lives, and how to put it back to nothing. */
interface Place {
  base: string;
  dataDir: string;
  stateDir: string;
  logFile: string;
  databaseUrl?: string;
  dropDatabase(): Promise<void>;
}

const say = (text: string) => process.stderr.write(`[scale] ${text}\n`);
const seconds = (ms: number) => Math.round(ms / 100) / 10;
const perSecond = (n: number, ms: number | null) => (ms === null || ms <= 0 ? null : Math.round((n / (ms / 1000)) * 10) / 10);

/** A database of the benchmark's own on the server of DATABASE_URL, so its devices land in no one's registry. */
async function scratchDatabase(url: string): Promise<{ url: string; drop(): Promise<void> }> {
  const name = `fleet_scale_${process.pid}_${Date.now()}`;
  const admin = new pg.Client({ connectionString: url });
  await admin.connect();
  await admin.query(`CREATE DATABASE ${name}`);
  await admin.end();
  const scratch = new URL(url);
  scratch.pathname = `/${name}`;
  return {
    url: scratch.toString(),
    drop: async () => {
      const client = new pg.Client({ connectionString: url });
      await client.connect();
      await client.query(`DROP DATABASE IF EXISTS ${name} WITH (FORCE)`);
      await client.end();
    },
  };
}

async function preparePlace(): Promise<Place> {
  const base = await mkdtemp(path.join(os.tmpdir(), 'fleet-scale-'));
  // The embedded PostgreSQL runs as 'postgres' when the benchmark runs as root: it must pass through.
  await chmod(base, 0o711);
  const database = process.env.DATABASE_URL ? await scratchDatabase(process.env.DATABASE_URL) : undefined;
  return {
    base,
    dataDir: path.join(base, 'data'),
    stateDir: path.join(base, 'devices'),
    logFile: path.join(base, 'fleet-start.log'),
    databaseUrl: database?.url,
    dropDatabase: async () => database?.drop(),
  };
}

/** The broker's own limits that a fleet from one address would trip; a real fleet comes from many. */
function benchOverrides(o: Options): Record<string, string> {
  return {
    FLEET_BROKER_CONNECT_RATE: String(o.connectRate),
    FLEET_BROKER_CONNECT_BURST: String(o.connectRate),
    FLEET_API_RATE: '1000000',
    FLEET_API_BURST: '1000000',
    FLEET_API_CREDENTIAL_RATE: '1000000',
    FLEET_API_CREDENTIAL_BURST: '1000000',
    LOG_LEVEL: process.env.LOG_LEVEL ?? 'info',
  };
}

/** The running benchmark: its place, the broker (replaced on each restart) and its settings. */
class Bench {
  fleet!: FleetProcess;
  env!: NodeJS.ProcessEnv;
  rootPem = '';
  token = '';
  signal: NodeJS.Signals;

  constructor(
    readonly o: Options,
    readonly place: Place,
    readonly ports: FleetPorts,
  ) {
    // SIGKILL is a crash; the embedded PostgreSQL is a child of fleet start and must be stopped by it.
    this.signal = o.kill ?? (place.databaseUrl ? 'SIGKILL' : 'SIGTERM');
  }

  async start(): Promise<void> {
    this.env = fleetEnvironment(process.env, { dataDir: this.place.dataDir, databaseUrl: this.place.databaseUrl }, this.ports, benchOverrides(this.o));
    this.fleet = await FleetProcess.start(this.env, this.ports, this.place.logFile);
    this.token = await fleetCommand(['token', 'create', '--role', 'operator', '--name', 'scale-bench'], this.env);
    this.rootPem = await readFile(path.join(this.place.dataDir, 'pki', 'root.crt'), 'utf8');
  }

  simulate(resume: boolean): SimRun {
    const sim = new SimRun({
      devices: this.o.devices,
      api: `https://localhost:${this.ports.api}`,
      broker: `mqtts://localhost:${this.ports.broker}`,
      caPem: this.rootPem,
      token: this.token,
      state: this.place.stateDir,
      prefix: 'scale',
      // Gateways: no simulated crypto delay or lossy link, so the figures are the broker's.
      profile: 'gateway',
      rate: 0,
      ramp: this.o.ramp,
      workers: this.o.workers,
      resume,
      onEnrollProgress: (step, done, total) => say(`enrolling: ${step === 'keys' ? 'keys and CSRs' : 'enrolled'} ${done}/${total}`),
    });
    sim.check = () => {
      if (this.fleet.exit !== undefined && !this.fleet.exit.startsWith('stopped by')) {
        throw new Error(`fleet start exited on its own (${this.fleet.exit}); its log is ${this.place.logFile} (run with --keep to keep it)`);
      }
    };
    return sim;
  }

  async metrics(): Promise<BrokerMetrics | undefined> {
    return this.fleet.brokerMetrics().catch(() => undefined);
  }

  async close(): Promise<void> {
    await this.fleet?.stop('SIGTERM').catch(() => undefined);
    await this.place.dropDatabase().catch((error: Error) => say(`could not drop the scratch database: ${error.message}`));
    if (!this.o.keep) await rm(this.place.base, { recursive: true, force: true });
    else say(`kept ${this.place.base} (the broker's log is fleet-start.log there)`);
  }
}

/** Connections closed before CONNACK, as the simulator counts them (timeouts included). */
const refusals = (failures: Record<string, number>) => (failures.refused_before_connack ?? 0) + (failures.tls_handshake_failed ?? 0);

/** Connects the whole fleet, holds it, and reads what the simulator and the broker counted. */
async function connectAndHold(bench: Bench, sim: SimRun, idleRss: number): Promise<{ hold: HoldFigures; enrollSeconds: number }> {
  const n = bench.o.devices;
  const began = performance.now();
  if (!(await sim.until(() => sim.latest !== undefined, ENROLL_TIMEOUT_MS, 200))) throw new Error('enrollment did not finish');
  const enrollSeconds = seconds(sim.startedAt! - began);
  say(`enrolled/loaded ${n} devices in ${enrollSeconds} s; connecting at up to ${bench.o.ramp}/s…`);
  const progress = setInterval(() => say(`connected ${sim.live}/${n}`), 5000);
  const all = await sim.until(() => sim.live >= n, bench.o.timeout * 1000).finally(() => clearInterval(progress));
  const connectMs = all ? performance.now() - sim.startedAt! : null;
  say(all ? `all ${n} connected in ${seconds(connectMs!)} s; holding ${bench.o.hold} s` : `only ${sim.live}/${n} connected in ${bench.o.timeout} s; holding anyway`);

  const holdFrom = performance.now();
  const before = { ...sim.latest!.counters.failures };
  let minHeld = sim.live;
  await sim.until(() => {
    minHeld = Math.min(minHeld, sim.live);
    return performance.now() - holdFrom >= bench.o.hold * 1000;
  }, bench.o.hold * 1000 + 5000, 250);
  const metrics = await bench.metrics();
  const rss = bench.fleet.rssBytes();
  const failures = sim.latest!.counters.failures;
  const held = sim.live;
  const whileHeld = failuresSince(before, failures);
  return {
    enrollSeconds,
    hold: {
      devices: n,
      workers: workerCount(bench.o.workers, n),
      connectSeconds: connectMs === null ? null : seconds(connectMs),
      averageConnectsPerSecond: perSecond(n, connectMs),
      holdSeconds: bench.o.hold,
      held,
      minHeld,
      brokerSessions: metrics?.sessions ?? -1,
      dropped: whileHeld.connection_lost ?? 0,
      refusedConnecting: refusals(before),
      refusedHeld: refusals(whileHeld),
      failures: { ...failures },
      brokerRefusals: metrics?.refusals ?? {},
      brokerRssMiB: Math.round(rss / MiB),
      brokerRssIdleMiB: Math.round(idleRss / MiB),
      brokerRssPerConnectionKiB: held > 0 ? Math.round((rss - idleRss) / held / 1024) : null,
    },
  };
}

/** The reconnect storm: this many devices connected again after a restart (within 30 s is the aim). */
const STORM_MILESTONE = 10_000;

/**
 * Kills the broker with every device connected, starts it again on the same data, and times until
 * every device is connected again: by the broker's session gauge, or by the simulator's count.
 */
async function restart(bench: Bench, sim: SimRun, resumption: boolean): Promise<RestartFigures> {
  const n = sim.live;
  const before = { connects: sim.latest!.counters.connects, resumed: sim.latest!.counters.resumed, failures: { ...sim.latest!.counters.failures } };
  say(`restart (${resumption ? 'devices resume' : 'full handshakes'}): ${bench.signal} to the broker with ${n} connected`);
  const killed = performance.now();
  const exitedMs = await bench.fleet.stop(bench.signal);
  bench.fleet = await FleetProcess.start(bench.env, bench.ports, bench.place.logFile);
  const readyMs = performance.now() - killed;
  say(`broker ready again ${seconds(readyMs)} s after the kill; waiting for ${n} devices`);
  const progress = setInterval(() => say(`connected again ${sim.live}/${n}`), 5000);
  const milestone = Math.min(n, STORM_MILESTONE);
  let milestoneMs: number | null = null;
  const back = await sim
    .until(
      async () => {
        const sessions = (await bench.metrics())?.sessions ?? 0;
        if (milestoneMs === null && Math.max(sessions, sim.live) >= milestone) milestoneMs = performance.now() - killed;
        return sessions >= n || (sim.live >= n && sim.latest!.counters.connects - before.connects >= n);
      },
      bench.o.timeout * 1000,
      250,
    )
    .finally(() => clearInterval(progress));
  const allMs = back ? performance.now() - killed : null;
  // The broker's gauge can lead the simulator's reports by a second or two: let its counts catch up.
  await sim.until(() => sim.latest!.counters.connects - before.connects >= n, 3000, 250);
  const metrics = await bench.metrics();
  const after = sim.latest!.counters;
  const connects = after.connects - before.connects;
  say(back ? `all ${n} connected again ${seconds(allMs!)} s after the kill` : `only ${sim.live}/${n} back within ${bench.o.timeout} s`);
  return {
    resumption,
    devices: n,
    signal: bench.signal,
    exitedSeconds: seconds(exitedMs),
    readySeconds: seconds(readyMs),
    allConnectedSeconds: allMs === null ? null : seconds(allMs),
    stormSeconds: allMs === null ? null : seconds(allMs - readyMs),
    milestone: { devices: milestone, seconds: milestoneMs === null ? null : seconds(milestoneMs) },
    connectedAgain: Math.max(sim.live, metrics?.sessions ?? 0),
    connects,
    resumed: after.resumed - before.resumed,
    averageConnectsPerSecond: allMs === null ? null : perSecond(n, allMs - readyMs),
    peakConnectsPerSecond: sim.peakConnectsPerSecond(killed + readyMs),
    failures: failuresSince(before.failures, after.failures),
    brokerRefusals: metrics?.refusals ?? {},
  };
}

function notesFor(report: Omit<ScaleReport, 'notes'>, o: Options): string[] {
  const notes = [
    `The broker's per-address connect limit was raised to ${o.connectRate}/s (FLEET_BROKER_CONNECT_RATE/BURST), and the API's ` +
      'per-address limits likewise: every simulated device connects from 127.0.0.1, where a real fleet comes from many addresses.',
    `Devices are gateways (no simulated crypto delay or packet loss) without telemetry; they come up at up to ${o.ramp} connects/s and ` +
      'reconnect after a restart with the simulator\'s backoff (full jitter, 0.5 s doubling to 30 s).',
    `The restart sends ${report.restarts[0]?.signal ?? o.kill} to fleet start` +
      (report.settings.database === 'embedded' ? ' (SIGTERM: the embedded PostgreSQL is its child and must be stopped by it).' : ' (a crash: the database is external).'),
    'Reconnect times are polled every 0.25 s from the broker\'s session gauge, or the simulator\'s once-a-second count. ' +
      'Readiness after each start is probed with one bare TCP connection, which the broker counts as one tls_handshake_failed.',
  ];
  const resumed = report.restarts.find((r) => r.resumption);
  if (resumed) {
    notes.push(
      'The broker makes its session-ticket keys when it starts, so tickets issued before a restart cannot be resumed: the first ' +
        `reconnect of every device after the restart is a full handshake. The ${resumed.resumed} resumed connects counted there are ` +
        'devices connecting a second time within the storm (after a refusal or timeout) with a ticket from the new broker.',
    );
  }
  return notes;
}

async function run(o: Options): Promise<void> {
  const began = performance.now();
  const place = await preparePlace();
  const [api, broker, metrics] = await freePorts(3);
  const bench = new Bench(o, place, { api: api!, broker: broker!, metrics: metrics! });
  const interrupted = () => void bench.close().finally(() => process.exit(130));
  process.once('SIGINT', interrupted);
  process.once('SIGTERM', interrupted);
  try {
    say(`starting fleet start (${place.databaseUrl ? 'a scratch database on DATABASE_URL' : 'embedded PostgreSQL'}) in ${place.base}`);
    await bench.start();
    const idleRss = bench.fleet.rssBytes();

    const resuming = bench.simulate(true);
    const { hold, enrollSeconds } = await connectAndHold(bench, resuming, idleRss);
    const restarts = [await restart(bench, resuming, true)];
    await resuming.stop();
    // The storm's aftermath (sessions closing, presence writes) is not the next run's.
    await sleep(5000);

    say('again with every reconnect a full handshake (tickets dropped)');
    const full = bench.simulate(false);
    if (!(await full.until(() => full.live >= o.devices, o.timeout * 1000))) say(`only ${full.live}/${o.devices} connected; restarting anyway`);
    restarts.push(await restart(bench, full, false));
    await full.stop();

    const partial = {
      machine: machineFacts(),
      settings: {
        devices: o.devices,
        hold: o.hold,
        ramp: o.ramp,
        simulatorProcesses: workerCount(o.workers, o.devices),
        connectRateLimit: o.connectRate,
        database: place.databaseUrl ? 'postgres (DATABASE_URL, scratch database)' : 'embedded',
        redis: process.env.FLEET_REDIS_URL ? 'FLEET_REDIS_URL set' : 'none',
        brokerWorkers: process.env.FLEET_BROKER_WORKERS ?? 'default',
        logLevel: benchOverrides(o).LOG_LEVEL!,
      },
      enrollment: { devices: o.devices, seconds: enrollSeconds, perSecond: perSecond(o.devices, enrollSeconds * 1000) },
      hold,
      restarts,
      durationSeconds: seconds(performance.now() - began),
    };
    const report: ScaleReport = { ...partial, notes: notesFor(partial, o) };
    const files = await writeReport(o.out, report);
    say(`report: ${files.join(', ')}`);
    process.stdout.write(JSON.stringify(report) + '\n');
  } finally {
    await bench.close();
  }
}

const whole = (min: number) => (text: string) => {
  const n = Number(text);
  if (!Number.isInteger(n) || n < min) throw new InvalidArgumentError(`needs a whole number ≥ ${min}`);
  return n;
};

const program = new Command('bench:scale')
  .description('hold N authenticated devices on one machine, then time their reconnect after a broker restart, with and without TLS resumption')
  .option('--devices <n>', 'simulated devices', whole(1), 10_000)
  .option('--hold <seconds>', 'how long to hold the fleet before the first restart', whole(0), 30)
  .option('--ramp <n>', 'new connections per second while the fleet first comes up', whole(1), 200)
  .option('--workers <n>', 'simulator worker processes (more start when the open-file limit needs them)', whole(1), os.availableParallelism())
  .option('--timeout <seconds>', 'how long to wait for the fleet to be connected, each time', whole(1), 180)
  .addOption(new Option('--kill <signal>', 'how the broker is stopped (default: SIGKILL with DATABASE_URL, SIGTERM with the embedded database)').choices(['SIGKILL', 'SIGTERM']))
  .option('--connect-rate <n>', 'the broker\'s per-address connect limit for the run (every device is 127.0.0.1)', whole(1), 1_000_000)
  .option('--out <dir>', 'where scale-<date>.json and .md are written', RESULTS)
  .option('--keep', 'keep the temporary data directory and the broker\'s log', false)
  .addHelpText(
    'after',
    `
The broker is \`fleet start\` in a child process, with the environment of this command (so
FLEET_REDIS_URL and FLEET_BROKER_WORKERS reach it), on free ports and a temporary data directory;
with DATABASE_URL it uses a scratch database on that server, dropped at the end, else the embedded
PostgreSQL. The devices run in simulator worker processes, each under its own open-file limit.

Examples:
  npm run bench:scale -- --devices 5000 --hold 30
  DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres FLEET_REDIS_URL=redis://127.0.0.1:6379 \\
    FLEET_BROKER_WORKERS=2 npm run bench:scale -- --devices 20000`,
  )
  .action((o: Options) => run(o));

program.parseAsync().catch((error: Error) => {
  process.stderr.write(`error: ${error.message}\n`);
  process.exit(1);
});
