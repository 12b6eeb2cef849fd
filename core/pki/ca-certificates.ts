import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { ConfigError } from '../config.js';
import type { Queryable } from '../db/transaction.js';
import { FleetError } from '../errors.js';
import { type CaCertificateRow, caCertificates } from '../registry/index.js';
import { fingerprintOf, x509 } from './x509.js';

/**
 * The fleet's CA certificates, without keys, and where they are kept: the registry holds them
 * (sql/013) and each node writes them into `<dataDir>/pki` as a cache, for openssl, nginx and the
 * README's commands. A data directory alone (no registry) is a CA of its own, for tools and tests.
 */

/** In `<dataDir>/pki`: the root and every trusted issuing CA, rewritten on each rotation and retirement. */
export const TRUST_BUNDLE = 'trust.pem';

export interface CaGenerationCertificate {
  generation: number;
  certificate: x509.X509Certificate;
}

/** The CA certificates a fleet trusts, without its keys: what audits read of the CA (the root and each issuing CA's validity). */
export interface TrustedCaCertificates {
  root: x509.X509Certificate;
  /** Every trusted issuing CA, newest first. */
  issuers: readonly CaGenerationCertificate[];
}

/** Every CA certificate of a fleet: the trusted ones and the retired issuing CAs, newest first. */
export interface CaCertificateSet extends TrustedCaCertificates {
  issuers: CaGenerationCertificate[];
  retired: CaGenerationCertificate[];
}

export const rootCertFile = (dir: string) => path.join(dir, 'root.crt');
export const issuerFileName = (generation: number) => (generation === 1 ? 'issuing' : `issuing-${generation}`);
export const issuingCertFile = (dir: string, generation: number) => path.join(dir, `${issuerFileName(generation)}.crt`);
export const retiredCertFile = (dir: string, generation: number) => path.join(dir, 'retired', `${issuerFileName(generation)}.crt`);

export const readCertificate = async (file: string) => new x509.X509Certificate(await readFile(file, 'utf8'));

/** The next issuing CA's number: one past every issuing CA, retired ones included. */
export const nextGenerationOf = (set: CaCertificateSet) => Math.max(0, ...set.issuers.map((i) => i.generation), ...set.retired.map((i) => i.generation)) + 1;

/** The registry's CA certificates, or undefined when it has none yet (a new fleet, or one from before sql/013). */
export async function setFromRegistry(q: Queryable): Promise<CaCertificateSet | undefined> {
  const rows = await caCertificates(q);
  const root = rows.find((r) => r.role === 'root');
  if (!root) return undefined;
  const of = (r: CaCertificateRow) => ({ generation: r.generation, certificate: new x509.X509Certificate(r.pem) });
  const issuing = rows.filter((r) => r.role === 'issuing');
  return {
    root: new x509.X509Certificate(root.pem),
    issuers: issuing.filter((r) => r.state === 'current').map(of),
    retired: issuing.filter((r) => r.state === 'retired').map(of),
  };
}

/** The registry's CA certificates, or a refusal saying how a fleet gets them. */
export async function requireRegistrySet(q: Queryable): Promise<CaCertificateSet> {
  const set = await setFromRegistry(q);
  if (set) return set;
  throw new FleetError('root_not_found', 404, 'the registry holds no CA certificates yet; start the fleet once (fleet start), which creates the CA');
}

/** A registry row for a CA certificate made or found at `at`. */
export function caRow(generation: number, certificate: x509.X509Certificate, state: CaCertificateRow['state'], at: Date): CaCertificateRow {
  return {
    generation,
    role: generation === 0 ? 'root' : 'issuing',
    fingerprint: fingerprintOf(certificate),
    serial: certificate.serialNumber.toLowerCase(),
    subject: certificate.subject,
    pem: certificate.toString('pem'),
    state,
    createdAt: at,
    retiredAt: state === 'retired' ? at : null,
  };
}

/** Every certificate of a set as registry rows: how a data directory from before sql/013 is imported once. */
export const rowsOf = (set: CaCertificateSet, at: Date): CaCertificateRow[] => [
  caRow(0, set.root, 'current', at),
  ...set.issuers.map((i) => caRow(i.generation, i.certificate, 'current', at)),
  ...set.retired.map((i) => caRow(i.generation, i.certificate, 'retired', at)),
];

/** The certificates in a data directory (root.crt, issuing*.crt, retired/), or undefined when it has no root. */
export async function setFromDirectory(dir: string): Promise<CaCertificateSet | undefined> {
  if (!existsSync(rootCertFile(dir))) return undefined;
  const read = (file: (dir: string, g: number) => string) => async (generation: number) => ({ generation, certificate: await readCertificate(file(dir, generation)) });
  return {
    root: await readCertificate(rootCertFile(dir)),
    issuers: await Promise.all((await generationsIn(dir)).map(read(issuingCertFile))),
    retired: await Promise.all((await generationsIn(path.join(dir, 'retired'))).map(read(retiredCertFile))),
  };
}

/** Issuing CA numbers of the certificate files in dir, newest first. */
async function generationsIn(dir: string): Promise<number[]> {
  if (!existsSync(dir)) return [];
  const names = await readdir(dir);
  const generations = names.flatMap((name) => {
    const match = /^issuing(?:-(\d+))?\.crt$/.exec(name);
    return match ? [match[1] ? Number(match[1]) : 1] : [];
  });
  return generations.sort((a, b) => b - a);
}

/**
 * A data directory holding another root than the registry's belongs to another fleet (or the node
 * points at the wrong database): refused, rather than its root.crt overwritten.
 */
export async function assertSameRoot(dir: string, set: CaCertificateSet): Promise<void> {
  if (!existsSync(rootCertFile(dir))) return;
  const local = fingerprintOf(await readCertificate(rootCertFile(dir)));
  const registry = fingerprintOf(set.root);
  if (local === registry) return;
  throw new ConfigError(
    `${rootCertFile(dir)} is another root CA (SHA-256 ${local}) than the registry's (SHA-256 ${registry}): this data directory belongs to another fleet; ` +
      'point DATABASE_URL at that fleet\'s database, or give this node an empty FLEET_DATA_DIR holding only its CA key files',
  );
}

/** Writes the set into the data directory: the root, each trusted issuing CA, the retired ones under retired/, and the trust bundle. */
export async function writeCache(dir: string, set: CaCertificateSet): Promise<void> {
  await writeFileAtomically(rootCertFile(dir), pemOf(set.root));
  for (const { generation, certificate } of set.issuers) await writeFileAtomically(issuingCertFile(dir, generation), pemOf(certificate));
  if (set.retired.length > 0) await mkdir(path.join(dir, 'retired'), { recursive: true, mode: 0o700 });
  for (const { generation, certificate } of set.retired) {
    await writeFileAtomically(retiredCertFile(dir, generation), pemOf(certificate));
    await rm(issuingCertFile(dir, generation), { force: true });
  }
  await writeFileAtomically(path.join(dir, TRUST_BUNDLE), [...set.issuers.map((i) => i.certificate), set.root].map(pemOf).join(''));
}

const pemOf = (certificate: x509.X509Certificate) => certificate.toString('pem').trim() + '\n';

/** Aside and renamed, under a name of this process's own, so a reader never sees half a file. */
export async function writeFileAtomically(file: string, contents: string): Promise<void> {
  const aside = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(aside, contents, { mode: 0o644 });
  await rename(aside, file);
}
