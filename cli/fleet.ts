#!/usr/bin/env node
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { projectRoot } from '../core/paths.js';

// In a clone, sources edited since the last build are compiled first (saying so on stderr), before
// the commands are loaded: `npx fleet` never runs code older than its sources, and never builds silently.
const builder = pathToFileURL(path.join(projectRoot, 'scripts', 'build-if-stale.mjs')).href;
await import(builder).then((m: { buildIfStale(): boolean }) => m.buildIfStale(), () => undefined);

const { Command } = await import('commander');
const { fail, registerCommands } = await import('./commands.js');

const program = new Command()
  .name('fleet')
  .description('fleet-auth: private CA, device registry, enrollment API and mTLS MQTT broker for IoT fleets')
  .showHelpAfterError('(run with --help for usage)')
  .addHelpText(
    'after',
    `
Configuration comes from the environment: DATABASE_URL (unset: embedded PostgreSQL under the data
directory), FLEET_DATA_DIR (./data), FLEET_API_PORT (8443), FLEET_BROKER_PORT (8883),
FLEET_PKI_HTTP_PORT (8080, CRLs/OCSP/CAs over plain HTTP), FLEET_METRICS_PORT (9464), FLEET_HOSTNAMES,
FLEET_CERT_LIFETIME (90d), FLEET_ENROLLMENT_TOKEN_TTL (7d), FLEET_TRUST_DOMAIN, FLEET_CA_PASSPHRASE
(encrypts the CA keys at rest), FLEET_CA_PKCS11_MODULE, _TOKEN and _PIN (issuing CA keys in a PKCS#11
token), LOG_LEVEL, FLEET_LOG_FORMAT (json or pretty; pretty on a terminal by default). Every variable
is in the README's Configuration table.
Commands other than start work beside a running 'fleet start' on the same data directory.`,
  );

registerCommands(program);
await program.parseAsync(process.argv).catch(fail);
