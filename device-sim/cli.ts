import os from 'node:os';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { parseDuration } from '../core/duration.js';
import { PROFILE_CHOICES } from './profiles.js';
import { DEFAULT_OPTIONS, readCa, runSimulation, type SimOptions, type StartBackend, summaryTable } from './run.js';

const number = (min: number, whole = false) => (text: string) => {
  const n = Number(text);
  if (!Number.isFinite(n) || n < min || (whole && !Number.isInteger(n))) throw new InvalidArgumentError(`needs a ${whole ? 'whole ' : ''}number ≥ ${min}`);
  return n;
};

const lifetime = (text: string) => {
  if (parseDuration(text) === undefined) throw new InvalidArgumentError('needs a duration such as 1m, 12h or 90d');
  return text;
};

/** The simulation's options as the command line spells them: a CA file instead of PEM text, and --json. */
type CliOptions = Omit<SimOptions, 'caPem' | 'progress' | 'onProgress' | 'onEnrollProgress' | 'signal' | 'startBackend'> & { ca?: string; json: boolean };

/** `startBackend` runs the backend in this process when --api is not given. */
export function registerSimCommand(program: Command, startBackend: StartBackend): void {
  program
    .command('sim')
    .description('simulate a fleet of devices: enroll, connect over mTLS, publish, answer commands, renew, react to revocation')
    .option('--devices <n>', 'simulated devices', number(1, true), 1000)
    .option('--api <url>', 'a running backend\'s API, e.g. https://host:8443; unset starts one in this process (embedded default)')
    .option('--broker <url>', 'with --api: its broker, e.g. mqtts://host:8883')
    .option('--ca <root.pem>', 'with --api: the root CA certificate the backend chains to (data/pki/root.crt)')
    .option('--token <token>', 'with --api: an operator token (fleet token create --role operator); registers devices and reads their status')
    .option('--state <dir>', 'where each device keeps its key (0600), certificate and chain; a rerun reuses them', DEFAULT_OPTIONS.state)
    .option('--prefix <prefix>', 'device ids are <prefix>-000001, …', DEFAULT_OPTIONS.prefix)
    .option('--ramp <n>', 'new connections per second, fleet-wide, while the devices come up', number(0.1), DEFAULT_OPTIONS.ramp)
    .option('--rate <n>', 'telemetry messages per second per device (0.2 = one every 5 s; 0 = none)', number(0), DEFAULT_OPTIONS.rate)
    .option('--size <bytes>', 'telemetry message size in bytes', number(1, true), DEFAULT_OPTIONS.size)
    .option('--lifetime <duration>', 'certificate lifetime to ask for (1m shows many renewals); devices renew at about 2/3 of it', lifetime)
    .addOption(
      new Option('--profile <profile>', 'hardware: mcu (slow crypto, lossy link, drifting clock), gateway (fast, stable), mixed (4 mcu : 1 gateway)')
        .choices(PROFILE_CHOICES)
        .default(DEFAULT_OPTIONS.profile),
    )
    .option('--workers <n>', 'worker processes running the devices (default: one per core; more when the open-file limit needs them)', number(1, true), os.availableParallelism())
    .option('--no-resume', 'drop TLS session tickets: every reconnect is a full handshake (default: devices resume)')
    .option('--duration <seconds>', 'run this long once devices start, then stop and report; 0 runs until Ctrl-C', number(0), DEFAULT_OPTIONS.duration)
    .option('--batch <name>', 'register new devices as this named batch (so fleet revoke --batch can take them all)')
    .option('--json', 'print the JSON report as the last line of stdout (for scripts and CI)', false)
    .option('--html <file>', 'also write an HTML report with charts of connections and latencies over time')
    .addHelpText(
      'after',
      `
Without --api the simulator starts a backend of its own in this process, on free ports, with its
data (CA, embedded database) in <state>/backend: never the registry of FLEET_DATA_DIR or DATABASE_URL.
The per-address connect limit is raised there (every device connects from 127.0.0.1). A state
directory whose devices the backend does not know (another CA, a reset registry) stops the run at
once, saying so. That backend holds the broker's end of every connection in this process, so for
more devices than its open-file limit (ulimit -n) allows, run the backend separately (npm start)
and point --api/--broker/--ca/--token at it.

The devices run in worker processes, each under its own open-file limit (raised to the hard limit
where allowed): one socket per device, so 20,000 devices with a hard limit of 20,000 take two or
more workers, started as needed. See "Scale" in device-sim/README.md for a larger box.

Examples:
  npx fleet sim --devices 200 --duration 90 --lifetime 1m --html report.html
  npx fleet sim --devices 10000 --duration 120 --json --api https://localhost:8443 \\
      --broker mqtts://localhost:8883 --ca data/pki/root.crt --token "$(npx fleet token create --role operator)"`,
    )
    .action(async (o: CliOptions) => {
      const abort = new AbortController();
      process.once('SIGINT', () => abort.abort());
      process.once('SIGTERM', () => abort.abort());
      const report = await runSimulation({
        ...o,
        caPem: o.ca ? await readCa(o.ca) : undefined,
        progress: true,
        signal: abort.signal,
        startBackend,
      });
      process.stderr.write('\n' + summaryTable(report));
      if (o.html) process.stderr.write(`HTML report: ${o.html}\n`);
      if (o.json) process.stdout.write(JSON.stringify(report) + '\n');
      // Sockets of the embedded backend's pools may linger; the run is over.
      process.exit(0);
    });
}
