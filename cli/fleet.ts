#!/usr/bin/env node
import { Command } from 'commander';
import { fail, registerCommands } from './commands.js';

const program = new Command()
  .name('fleet')
  .description('fleet-auth: private CA, device registry, enrollment API and mTLS MQTT broker for IoT fleets')
  .showHelpAfterError('(run with --help for usage)')
  .addHelpText(
    'after',
    `
Configuration comes from the environment: DATABASE_URL (unset: embedded PostgreSQL under the data
directory), FLEET_DATA_DIR (./data), FLEET_API_PORT (8443), FLEET_BROKER_PORT (8883),
FLEET_PKI_HTTP_PORT (8080, CRLs/OCSP/CAs over plain HTTP), FLEET_HOSTNAMES, FLEET_CERT_LIFETIME (90d), FLEET_ENROLLMENT_TOKEN_TTL (7d), FLEET_TRUST_DOMAIN, FLEET_CA_PASSPHRASE
(encrypts the CA keys at rest), LOG_LEVEL.
Commands other than start work beside a running 'fleet start' on the same data directory.`,
  );

registerCommands(program);
await program.parseAsync(process.argv).catch(fail);
