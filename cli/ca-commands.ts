import { readFile, writeFile } from 'node:fs/promises';
import type { Command } from 'commander';
import { type FleetConfig, loadConfig } from '../core/config.js';
import type { Database } from '../core/db/database.js';
import { logTo } from '../core/log.js';
import { issuerFileName, rotateIssuingCa } from '../core/pki/authority.js';
import { importIssuingCa, requestIssuingCa, signIssuingRequest } from '../core/pki/offline-root.js';
import { sha256Hex } from '../core/pki/x509.js';
import { withCaKeys } from './ca-keys.js';

type WithRegistry = <T>(run: (db: Database, config: FleetConfig) => Promise<T>) => Promise<T>;

const explain = (text: string) => process.stderr.write(text + '\n');
const cliLog = () => logTo(2, process.env.LOG_LEVEL ?? 'warn');

/** `fleet ca rotate [--csr]`, `fleet ca sign-issuing`, `fleet ca import`: rotation with the root online or offline. */
export function registerRotationCommands(ca: Command, withRegistry: WithRegistry): void {
  ca.command('rotate')
    .description('add a new issuing CA, signed by the root; new certificates come from it, older ones stay trusted, and a running server switches over at once')
    .option('--csr <file>', 'the root key is offline: make the new key and write its CSR to <file>, for fleet ca sign-issuing')
    .action(async (options: { csr?: string }) => {
      if (options.csr) return requestWithCsr(options.csr, withRegistry);
      const issuer = await withRegistry(async (db, config) => {
        const log = cliLog();
        // Stored in the registry with the change-feed event, in one transaction: every node reloads it.
        return withCaKeys(config, log, (keyStore) => rotateIssuingCa({ pool: db.pool, dataDir: config.dataDir, log, keyStore }));
      });
      explain(`Issuing CA ${issuer.generation} (${issuer.certificate.subject}, key id ${issuer.keyId}) now signs new certificates.`);
      explain('Earlier issuing CAs stay trusted until you retire them (fleet ca retire <generation>).');
      explainOtherNodes(issuer.generation);
    });

  ca.command('sign-issuing')
    .description('run where the root key is (FLEET_DATA_DIR holding root.crt and root.key): sign an issuing CA CSR from fleet ca rotate --csr')
    .argument('<csr>', 'the CSR file fleet ca rotate --csr wrote')
    .requiredOption('--out <file>', 'where to write the issuing CA certificate, for fleet ca import')
    .action(async (csrFile: string, options: { out: string }) => {
      const config = loadConfig();
      const log = cliLog();
      const csrPem = await readFile(csrFile, 'utf8');
      const certificate = await withCaKeys(config, log, (keyStore) => signIssuingRequest({ dataDir: config.dataDir, log, keyStore }, csrPem));
      await writeFile(options.out, certificate.toString('pem') + '\n', { mode: 0o644 });
      explain(`Signed ${certificate.subject} (key SHA-256 ${sha256Hex(certificate.publicKey.rawData)}), valid until ${certificate.notAfter.toISOString()}.`);
      explain(`Take ${options.out} back to the fleet and run: fleet ca import ${options.out}`);
    });

  ca.command('import')
    .description('install the issuing CA certificate fleet ca sign-issuing made; new certificates come from it, and a running server switches over at once')
    .argument('<certificate>', 'the certificate file')
    .action(async (file: string) => {
      const pem = await readFile(file, 'utf8');
      const imported = await withRegistry(async (db, config) => {
        const log = cliLog();
        return withCaKeys(config, log, (keyStore) => importIssuingCa({ pool: db.pool, dataDir: config.dataDir, log, keyStore }, pem));
      });
      explain(`Issuing CA ${imported.generation} (${imported.certificate.subject}, key id ${imported.keyId}) now signs new certificates.`);
      explain('Earlier issuing CAs stay trusted until you retire them (fleet ca retire <generation>).');
      explainOtherNodes(imported.generation);
    });
}

/** Every node trusts a new issuing CA from the registry at once, but signs with it only with its key. */
const explainOtherNodes = (generation: number) =>
  explain(`Other nodes of the fleet trust it now; to sign with it they need its key: copy ${issuerFileName(generation)}.key into their data/pki (not with a shared PKCS#11 token).`);

async function requestWithCsr(file: string, withRegistry: WithRegistry): Promise<void> {
  const log = cliLog();
  // The next generation's number comes from the registry, which holds every issuing CA of the fleet.
  const request = await withRegistry((db, config) =>
    withCaKeys(config, log, (keyStore) => requestIssuingCa({ pool: db.pool, dataDir: config.dataDir, log, keyStore })),
  );
  await writeFile(file, request.csrPem, { mode: 0o644 });
  const out = `issuing-${request.generation}.crt`;
  explain(`Issuing CA ${request.generation}'s key is in ${request.location}; its CSR is in ${file}.`);
  explain(`Where the root key is, run: FLEET_DATA_DIR=<root data dir> fleet ca sign-issuing ${file} --out ${out}`);
  explain(`Then here: fleet ca import ${out}`);
}
