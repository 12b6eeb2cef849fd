import { userInfo } from 'node:os';
import { type Command, Option } from 'commander';
import { type FleetConfig, loadConfig } from '../config.js';
import { type Database, openDatabase } from '../db/database.js';
import { FleetError } from '../errors.js';
import { startFleet, rootCertificatePath } from '../fleet.js';
import { createLogger, stderrDestination } from '../log.js';
import {
  createOperatorToken,
  OPERATOR_ROLES,
  type OperatorRole,
  registerDevice,
  REVOCATION_REASONS,
  type RevocationReason,
  revokeDevice,
} from '../registry/index.js';

const cliActor = () => `cli:${userInfo().username}`;

/** Explanations go to stderr; a secret goes alone on the last line of stdout, for `$(…)` capture. */
const explain = (text: string) => process.stderr.write(text + '\n');
const printSecret = (secret: string) => process.stdout.write(secret + '\n');

/** Runs a command against the registry: joins the running embedded database, or starts it for the call. */
async function withRegistry<T>(run: (db: Database, config: FleetConfig) => Promise<T>): Promise<T> {
  const config = loadConfig();
  const log = createLogger(process.env.LOG_LEVEL ?? 'warn', stderrDestination());
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
      const log = createLogger(config.logLevel);
      const fleet = await startFleet(config, log);
      explain(
        [
          '',
          'fleet-auth is running.',
          `  provisioning API  https://localhost:${fleet.api.port}  (reference at /docs, OpenAPI at /openapi.json)`,
          `  MQTT broker       mqtts://localhost:${fleet.broker.port}  (client certificate required)`,
          `  root CA           ${rootCertificatePath(config)}`,
          'Next, in another terminal: npx fleet token create --role admin',
          '',
        ].join('\n'),
      );
      const stop = async (signal: string) => {
        log.info({ signal }, 'shutting down');
        await fleet.close();
        process.exit(0);
      };
      process.once('SIGINT', () => void stop('SIGINT'));
      process.once('SIGTERM', () => void stop('SIGTERM'));
    });

  const token = program.command('token').description('operator API tokens');
  token
    .command('create')
    .description('create an operator API token; it is printed once, on the last line of stdout')
    .addOption(new Option('--role <role>', 'what the token may do').choices(OPERATOR_ROLES).makeOptionMandatory())
    .option('--name <name>', 'who or what the token is for', 'operator')
    .action(async (options: { role: OperatorRole; name: string }) => {
      const created = await withRegistry((db) =>
        createOperatorToken(db.pool, { name: options.name, role: options.role, actor: cliActor(), now: new Date() }),
      );
      explain(`Created ${created.role} token ${created.id} for "${created.name}". It is shown once; store it now.`);
      explain('Use it as: Authorization: Bearer <token>');
      printSecret(created.token);
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

  const reasonNames = Object.keys(REVOCATION_REASONS);
  program
    .command('revoke')
    .description("revoke a device and all its certificates; its MQTT sessions close at once and the CRL lists them")
    .argument('<id>', 'the device id')
    .addOption(new Option('--reason <reason>', 'RFC 5280 revocation reason').choices(reasonNames).default('unspecified'))
    .action(async (id: string, options: { reason: RevocationReason }) => {
      const result = await withRegistry((db) =>
        revokeDevice(db.pool, { deviceId: id, reason: options.reason, actor: cliActor(), now: new Date() }),
      );
      const serials = result.revokedSerials;
      explain(
        serials.length > 0
          ? `Revoked ${id} and ${serials.length} certificate(s): ${serials.join(', ')}`
          : `${id} is revoked (it had no active certificate left to revoke).`,
      );
    });
}

/** A refusal or bad configuration is a one-line message; anything else keeps its stack for a bug report. */
export function fail(error: unknown): never {
  if (error instanceof FleetError) {
    process.stderr.write(`error: ${error.message} [${error.code}]\n`);
    process.exit(1);
  }
  if (error instanceof Error && error.name === 'ConfigError') {
    process.stderr.write(`error: ${error.message}\n`);
    process.exit(2);
  }
  process.stderr.write(`error: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
  process.exit(1);
}
