import { readFile } from 'node:fs/promises';
import { userInfo } from 'node:os';
import { type Command, InvalidArgumentError, Option } from 'commander';
import { type FleetConfig, loadConfig } from '../core/config.js';
import { type Database, openDatabase } from '../core/db/database.js';
import { FleetError, fileProblem } from '../core/errors.js';
import { startFleet, startFleetWithWorkers, rootCertificatePath } from './start.js';
import { registerRotationCommands } from './ca-commands.js';
import { registerEventCommands } from './events-commands.js';
import { registerListCommands } from './list-commands.js';
import { registerAuditCommands } from './audit-commands.js';
import { registerBackupCommands } from './backup-commands.js';
import { retireIssuingCa } from '../core/pki/authority.js';
import { logTo } from '../core/log.js';
import {
  createOperatorToken,
  listOperatorTokens,
  OPERATOR_ROLES,
  type OperatorRole,
  registerDevice,
  registerDevices,
  reissueEnrollmentToken,
  resumeDevice,
  REVOCATION_REASONS,
  type RevocationReason,
  revokeBatch,
  revokeCertificate,
  revokeDevice,
  revokeOperatorToken,
  suspendDevice,
  type OperatorTokenRecord,
} from '../core/registry/index.js';
import { parseDuration } from '../core/duration.js';
import { bulkFromCsv, tokensAsCsv } from '../provisioning/api/bulk.js';
import { registerSimCommand } from '../device-sim/cli.js';
import { stopOnSignals } from './shutdown.js';
import { startSimBackend } from './sim-backend.js';
import { printResult, table } from './table.js';
import { explainFileFailure, explainListenFailure } from './system-errors.js';
import { holdDataDir } from './start-lock.js';

const cliActor = () => `cli:${userInfo().username}`;

/** Explanations go to stderr; a secret goes alone on the last line of stdout, for `$(…)` capture. */
const explain = (text: string) => process.stderr.write(text + '\n');
const printSecret = (secret: string) => process.stdout.write(secret + '\n');

export type WithRegistry = typeof withRegistry;

/** Runs a command against the registry: joins the running embedded database, or starts it for the call. */
async function withRegistry<T>(run: (db: Database, config: FleetConfig) => Promise<T>): Promise<T> {
  const config = loadConfig();
  const log = logTo(2, process.env.LOG_LEVEL ?? 'warn', config.logFormat);
  const db = await openDatabase(config, log);
  try {
    return await run(db, config);
  } finally {
    await db.close();
  }
}

export function registerCommands(program: Command): void {
  program
    .command('start')
    .description('run the database (embedded unless DATABASE_URL is set), CA, provisioning API and MQTT broker')
    .action(async () => {
      const config = loadConfig();
      await holdDataDir(config);
      const log = logTo(1, config.logLevel, config.logFormat);
      // Signals are handled from the start: one during startup stops what has started, database included.
      const starting = (config.brokerWorkers > 1 ? startFleetWithWorkers(config, log) : startFleet(config, log)).catch((error: unknown) => {
        throw explainListenFailure(error, config);
      });
      stopOnSignals(async () => (await starting).close(), log);
      const fleet = await starting;
      explain(
        [
          '',
          'fleet-auth is running.',
          `  provisioning API  https://localhost:${fleet.api.port}  (reference at /docs, OpenAPI at /openapi.json)`,
          `  ops console       https://localhost:${fleet.api.port}/console  (log in with an operator token)`,
          `  MQTT broker       mqtts://localhost:${fleet.broker.port}  (client certificate required)`,
          ...(fleet.api.pkiHttpPort === undefined ? [] : [`  CRLs, OCSP, CAs   http://localhost:${fleet.api.pkiHttpPort}  (plain HTTP, signed objects only)`]),
          fleet.metricsPort === undefined ? '  metrics           off (FLEET_METRICS_PORT=off)' : `  metrics           http://${config.metricsHost}:${fleet.metricsPort}/metrics`,
          `  root CA           ${rootCertificatePath(config)}`,
          'Next, in another terminal: npx fleet token create --role admin',
          '',
        ].join('\n'),
      );
    });

  const token = program.command('token').description('operator API tokens');
  token
    .command('create')
    .description('create an operator API token; it is printed once, on the last line of stdout')
    .addOption(new Option('--role <role>', 'what the token may do').choices(OPERATOR_ROLES).makeOptionMandatory())
    .option('--name <name>', 'who or what the token is for', 'operator')
    .option('--ttl <duration>', 'let it expire after this long (90d, 12h, 30m); without it, it lasts until revoked', durationOption)
    .action(async (options: { role: OperatorRole; name: string; ttl?: number }) => {
      const created = await withRegistry((db) =>
        createOperatorToken(db.pool, { name: options.name, role: options.role, actor: cliActor(), now: new Date(), ttlMs: options.ttl }),
      );
      const expiry = created.expiresAt ? `; it expires at ${created.expiresAt.toISOString()}` : '';
      explain(`Created ${created.role} token ${created.id} for "${created.name}"${expiry}. It is shown once; store it now.`);
      explain('Use it as: Authorization: Bearer <token>');
      printSecret(created.token);
    });
  token
    .command('list')
    .description('list operator tokens: id, role, name, expiry, last use (never the tokens themselves)')
    .option('--json', 'print JSON instead of a table')
    .action(async (options: { json?: boolean }) => {
      const tokens = await withRegistry((db) => listOperatorTokens(db.pool));
      printResult(options, tokens, () => operatorTokenTable(tokens, new Date()));
    });
  token
    .command('revoke')
    .description('revoke an operator token; it is refused from its next request on')
    .argument('<id>', 'the token id, as fleet token list shows it')
    .action(async (id: string) => {
      const revoked = await withRegistry((db) => revokeOperatorToken(db.pool, { id, actor: cliActor(), now: new Date() }));
      explain(`Token ${revoked.id} ("${revoked.name}", ${revoked.role}) is revoked since ${revoked.revokedAt!.toISOString()}.`);
    });

  const device = program.command('device').description('devices in the registry');
  device
    .command('add')
    .description('register a device; its one-time enrollment token is printed on the last line of stdout')
    .argument('<id>', 'the device id, which becomes its certificate CN and MQTT client id')
    .action(async (id: string) => {
      const registered = await withRegistry((db, config) =>
        registerDevice(db.pool, { deviceId: id, actor: cliActor(), tokenTtlMs: config.enrollmentTokenTtlMs, now: new Date() }),
      );
      const expires = registered.enrollmentTokenExpiresAt.toISOString();
      explain(`Registered ${id} (pending). Its enrollment token works once and expires at ${expires}.`);
      printSecret(registered.enrollmentToken);
    });

  device
    .command('import')
    .description('register devices from a CSV file (an id column, optional profile, other columns as metadata); prints id,enrollment_token CSV on stdout')
    .argument('<file>', 'the CSV file, or - for standard input')
    .option('--batch <name>', 'register them as this named batch')
    .option('--profile <profile>', 'hardware profile for rows that name none')
    .action(async (file: string, options: { batch?: string; profile?: string }) => {
      const text = file === '-' ? await readStdin() : await readFile(file, 'utf8').catch((error: unknown) => {
        throw new FleetError('import_file_unreadable', 2, `cannot read the import file ${file}: ${fileProblem(error)}`);
      });
      const request = bulkFromCsv(text, options);
      const registered = await withRegistry((db, config) =>
        registerDevices(db.pool, { ...request, actor: cliActor(), tokenTtlMs: config.enrollmentTokenTtlMs, now: new Date() }),
      );
      const batch = registered.batch ? ` as batch ${registered.batch}` : '';
      explain(`Registered ${registered.devices.length} devices${batch}. Each token works once and expires at ${registered.enrollmentTokenExpiresAt.toISOString()}.`);
      process.stdout.write(tokensAsCsv(registered.devices.map((d) => ({ id: d.device.id, enrollmentToken: d.enrollmentToken }))));
    });
  device
    .command('reenroll')
    .description('a new one-time enrollment token for a registered device (e.g. its certificate expired); printed on the last line of stdout')
    .argument('<id>', 'the device id')
    .action(async (id: string) => {
      const granted = await withRegistry((db, config) =>
        reissueEnrollmentToken(db.pool, { deviceId: id, actor: cliActor(), tokenTtlMs: config.enrollmentTokenTtlMs, now: new Date() }),
      );
      explain(`New enrollment token for ${id}; it works once and expires at ${granted.enrollmentTokenExpiresAt.toISOString()}.`);
      printSecret(granted.enrollmentToken);
    });

  const reasonNames = Object.keys(REVOCATION_REASONS);
  program
    .command('revoke')
    .description('revoke a device (or one certificate, or a whole batch); sessions close at once and the CRL lists the certificates')
    .argument('[id]', 'the device id')
    .option('--serial <serial>', 'revoke only this certificate (hex serial)')
    .option('--batch <name>', 'revoke every device of this batch')
    .addOption(new Option('--reason <reason>', 'RFC 5280 revocation reason').choices(reasonNames).default('unspecified'))
    .action(async (id: string | undefined, options: { reason: RevocationReason; serial?: string; batch?: string }) => {
      const targets = [id, options.serial, options.batch].filter((x) => x !== undefined);
      if (targets.length !== 1) {
        throw new FleetError('usage', 2, 'name exactly one of: a device id, --serial <serial>, --batch <name>');
      }
      const who = { reason: options.reason, actor: cliActor(), now: new Date() };
      if (options.serial) {
        const certificate = await withRegistry((db) => revokeCertificate(db.pool, { serial: options.serial!, ...who }));
        explain(`Certificate ${certificate.serial} of ${certificate.deviceId} is revoked.`);
        return;
      }
      if (options.batch) {
        const result = await withRegistry((db) => revokeBatch(db.pool, { batch: options.batch!, ...who }));
        explain(`Revoked ${result.revokedDevices} device(s) of batch ${result.batch} and ${result.revokedSerials.length} certificate(s).`);
        return;
      }
      const result = await withRegistry((db) => revokeDevice(db.pool, { deviceId: id!, ...who }));
      const serials = result.revokedSerials;
      explain(
        serials.length > 0
          ? `Revoked ${id} and ${serials.length} certificate(s): ${serials.join(', ')}`
          : `${id} is revoked (it had no active certificate left to revoke).`,
      );
    });

  const service = program.command('service').description('backend service identities, which the broker policy grants fleet-wide topics by role');
  service
    .command('add')
    .description('register a service identity; its one-time enrollment token is printed on the last line of stdout')
    .argument('<id>', 'the service id, its certificate CN and MQTT client id')
    .requiredOption('--role <role>', 'the role the broker policy knows it by (built in: fleet-reader, fleet-commander)')
    .action(async (id: string, options: { role: string }) => {
      const registered = await withRegistry((db, config) =>
        registerDevice(db.pool, { deviceId: id, serviceRole: options.role, actor: cliActor(), tokenTtlMs: config.enrollmentTokenTtlMs, now: new Date() }),
      );
      explain(`Registered service ${id} with role ${options.role}. Enroll it like a device; its token works once.`);
      printSecret(registered.enrollmentToken);
    });

  const ca = program.command('ca').description('the private CA');
  registerRotationCommands(ca, withRegistry);
  ca.command('retire')
    .description('stop trusting an older issuing CA: the live sessions of its devices close and they are refused, at once')
    .argument('<generation>', 'the issuing CA number, as rotate printed it', (value) => Number.parseInt(value, 10))
    .action(async (generation: number) => {
      await withRegistry(async (db, config) => {
        await retireIssuingCa({ pool: db.pool, dataDir: config.dataDir }, generation);
      });
      explain(`Issuing CA ${generation} is retired; running servers stop trusting it and close its devices' sessions now.`);
    });

  program
    .command('suspend')
    .description('suspend a device: its sessions close, its certificates are held (certificateHold in the CRL) until resumed')
    .argument('<id>', 'the device id')
    .action(async (id: string) => {
      const device = await withRegistry((db) => suspendDevice(db.pool, { deviceId: id, actor: cliActor(), now: new Date() }));
      explain(`${device.id} is ${device.status}.`);
    });
  program
    .command('resume')
    .description('resume a suspended device: its certificates are accepted again')
    .argument('<id>', 'the device id')
    .action(async (id: string) => {
      const device = await withRegistry((db) => resumeDevice(db.pool, { deviceId: id, actor: cliActor(), now: new Date() }));
      explain(`${device.id} is ${device.status}.`);
    });

  registerAuditCommands(program, withRegistry);
  registerSimCommand(program, startSimBackend);
  registerEventCommands(program, withRegistry);
  registerListCommands(program, withRegistry);
  registerBackupCommands(program);
}

function durationOption(text: string): number {
  const ms = parseDuration(text);
  if (ms === undefined || ms <= 0) throw new InvalidArgumentError('give a duration such as 90d, 12h or 30m');
  return ms;
}

/** One line per token; the status column says whether it still works. */
export function operatorTokenTable(tokens: OperatorTokenRecord[], now: Date): string {
  const status = (t: OperatorTokenRecord) =>
    t.revokedAt ? 'revoked' : t.expiresAt && t.expiresAt.getTime() <= now.getTime() ? 'expired' : 'active';
  return table(
    ['ID', 'ROLE', 'STATUS', 'NAME', 'CREATED', 'EXPIRES', 'LAST USED'],
    tokens.map((t) => [t.id, t.role, status(t), t.name, t.createdAt, t.expiresAt, t.lastUsedAt]),
  );
}

async function readStdin(): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

/** A refusal or bad configuration is a one-line message; anything else keeps its stack for a bug report. */
export function fail(error: unknown): never {
  error = explainFileFailure(error) ?? error;
  if (error instanceof FleetError) {
    process.stderr.write(`error: ${error.message} [${error.code}]\n`);
    process.exit(error.code === 'usage' ? 2 : 1);
  }
  if (error instanceof Error && error.name === 'ConfigError') {
    process.stderr.write(`error: ${error.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
}
