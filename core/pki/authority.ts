import { createPublicKey, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { AsnConvert } from '@peculiar/asn1-schema';
import { type AlgorithmIdentifier, CRLNumber, id_ce_cRLNumber } from '@peculiar/asn1-x509';
import { FleetError } from '../errors.js';
import type { Logger } from '../log.js';
import { fileKeyStore, type KeyStore } from './key-store.js';
import {
  type EcCurve,
  ecdsaSignatureToDer,
  ecSigningAlgorithm,
  exportPrivateKeyPem,
  generateEcKeys,
  importEcPrivateKeyPem,
  pemChain,
  randomSerial,
  signatureAlgorithmIdentifier,
  subtle,
  x509,
} from './x509.js';

const ROOT_CURVE: EcCurve = 'P-384';
const ISSUING_CURVE: EcCurve = 'P-256';
/** In `<dataDir>/pki`: the root and every trusted issuing CA, rewritten on each rotation and retirement. */
export const TRUST_BUNDLE = 'trust.pem';
const DAY = 86_400_000;
/** A server certificate this close to expiry (or naming other hosts) is replaced at start and on a CA reload. */
const SERVER_RENEW_BEFORE = 30 * DAY;
/** Certificates start a little in the past so devices with slow clocks accept them. */
export const CLOCK_SKEW_MS = 5 * 60_000;

export interface CertificateRequestToSign {
  subject: string;
  publicKey: x509.PublicKeyType;
  notBefore: Date;
  notAfter: Date;
  extensions: x509.Extension[];
}

/** A DER signature over data the caller built, and the algorithm that made it. */
export interface DetachedSignature {
  algorithm: AlgorithmIdentifier;
  signature: ArrayBuffer;
}

export interface RevokedEntry {
  serial: string;
  revokedAt: Date;
  reason: number;
}

/** One issuing CA: signs device and server certificates, its CRL and OCSP answers for what it issued. */
export interface IssuingCa {
  /** 1 for the first issuing CA; each rotation adds one. */
  generation: number;
  certificate: x509.X509Certificate;
  /** Its subject key identifier, hex: names it in URLs (CRL, issuer download) and matches AKIs. */
  keyId: string;
  sign(request: CertificateRequestToSign): Promise<x509.X509Certificate>;
  signCrl(entries: RevokedEntry[], crlNumber: number, thisUpdate: Date, nextUpdate: Date): Promise<x509.X509Crl>;
  /** Signs with this CA's key, for structures it vouches for directly (OCSP responses, RFC 6960 4.2.2.2). */
  signData(data: ArrayBuffer): Promise<DetachedSignature>;
}

/**
 * The private CA: a root that signs only issuing CAs, and issuing CAs that sign device and server
 * certificates. The newest issuing CA signs new certificates; older ones stay trusted, so rotation
 * never strands a device. What goes into a device certificate is decided by the issuance policy
 * (provisioning/policy.ts); this only signs.
 */
export interface CertificateAuthority {
  root: x509.X509Certificate;
  rootPem: string;
  /** Every trusted issuing CA, newest first. */
  issuers: IssuingCa[];
  /** The newest issuing CA, which signs new certificates. */
  current: IssuingCa;
  /** The newest issuing CA's certificate. */
  issuing: x509.X509Certificate;
  /** The newest issuing CA then the root, PEM: what a relying party needs beside a new leaf. */
  chainPem: string;
  /** Every trusted issuing CA and the root, PEM: what a TLS server verifies client certificates with. */
  trustPem: string;
  /** The broker's and API's TLS identity: leaf then its issuing CA, and its key. */
  server: { certificatePem: string; keyPem: string };
  sign(request: CertificateRequestToSign): Promise<x509.X509Certificate>;
  signData(data: ArrayBuffer): Promise<DetachedSignature>;
  issuerByKeyId(keyId: string): IssuingCa | undefined;
  /** Reads the issuing CAs again (after a rotation by another process); the object changes in place. */
  reload(): Promise<void>;
}

export interface AuthorityOptions {
  dataDir: string;
  hostnames: string[];
  log: Logger;
  now?: () => Date;
  /** Where the private keys are kept; unencrypted files in `<dataDir>/pki` when not given. */
  keyStore?: KeyStore;
}

interface KeyedCertificate {
  certificate: x509.X509Certificate;
  key: CryptoKey;
  keyPem: string;
}

const pkiDirOf = (dataDir: string) => path.join(dataDir, 'pki');

async function openPkiDir(options: AuthorityOptions) {
  const dir = pkiDirOf(options.dataDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const keys = options.keyStore ?? fileKeyStore(dir, { log: options.log });
  return { dir, keys, now: options.now ?? (() => new Date()) };
}

async function loadOrCreateRoot(dir: string, keys: KeyStore, log: Logger, now: () => Date): Promise<KeyedCertificate> {
  const files = pairOf(dir, 'root', keys);
  return (await readKeyed(files, ROOT_CURVE)) ?? (await createAndStore(files, log, 'root CA', () => createRoot(now())));
}

/** Loads the CA from `<dataDir>/pki`, creating the root, first issuing CA and server certificate on first start. */
export async function loadAuthority(options: AuthorityOptions): Promise<CertificateAuthority> {
  const { dir, keys, now } = await openPkiDir(options);
  const root = await loadOrCreateRoot(dir, keys, options.log, now);
  if ((await issuerGenerations(dir)).length === 0) {
    await createAndStore(pairOf(dir, issuerFileName(1), keys), options.log, 'issuing CA', () => createIssuing(root, 1, now()));
  }
  const authority = { root: root.certificate, rootPem: pemChain(root.certificate) } as CertificateAuthority;
  const sanNames = serverNames(options.hostnames);
  const serverFiles = pairOf(dir, 'server', keys);
  let server: KeyedCertificate | undefined;
  const refresh = async () => {
    const issuers = await loadIssuers(dir, keys);
    const current = issuers[0]!;
    server = await serverCertificate(serverFiles, server, current, sanNames, now(), options.log);
    await writeTrustBundle(dir);
    // All at once, so no reader sees the new issuing CA beside the old server certificate.
    Object.assign(authority, {
      issuers,
      current,
      issuing: current.certificate,
      chainPem: pemChain(current.certificate, root.certificate),
      trustPem: pemChain(...issuers.map((i) => i.certificate), root.certificate),
      server: { certificatePem: pemChain(server.certificate, current.certificate), keyPem: server.keyPem },
    });
  };
  await refresh();
  // A rotation and a retirement announced back to back must not reload side by side.
  let reloading = Promise.resolve();
  Object.assign(authority, {
    sign: (request: CertificateRequestToSign) => authority.current.sign(request),
    signData: (data: ArrayBuffer) => authority.current.signData(data),
    issuerByKeyId: (keyId: string) => authority.issuers.find((i) => i.keyId === keyId.toLowerCase()),
    reload: () => (reloading = reloading.catch(() => undefined).then(refresh)),
  });
  return authority;
}

/**
 * Adds the next issuing CA, signed by the root. Running processes pick it up when told (see
 * announceCaChange); until then they keep signing with the one before, which stays trusted.
 */
export async function rotateIssuingCa(options: Omit<AuthorityOptions, 'hostnames'>): Promise<IssuingCa> {
  const { dir, keys, now } = await openPkiDir({ ...options, hostnames: [] });
  const root = await loadOrCreateRoot(dir, keys, options.log, now);
  const generation = Math.max(0, ...(await issuerGenerations(dir))) + 1;
  const made = await createAndStore(pairOf(dir, issuerFileName(generation), keys), options.log, 'issuing CA', () =>
    createIssuing(root, generation, now()),
  );
  await writeTrustBundle(dir);
  return issuingCa(generation, made);
}

/**
 * Stops trusting an older issuing CA: its certificate moves to pki/retired/, and after the reload
 * its devices are refused at the TLS handshake and their live sessions closed. The newest issuing CA
 * cannot be retired.
 */
export async function retireIssuingCa(options: { dataDir: string }, generation: number): Promise<void> {
  const dir = pkiDirOf(options.dataDir);
  const generations = await issuerGenerations(dir);
  if (!generations.includes(generation)) throw new FleetError('issuer_not_found', 404, `there is no issuing CA ${generation}`);
  if (generation === Math.max(...generations)) {
    throw new FleetError('issuer_current', 409, `issuing CA ${generation} is the one signing new certificates; rotate first (fleet ca rotate)`);
  }
  await mkdir(path.join(dir, 'retired'), { recursive: true, mode: 0o700 });
  const name = `${issuerFileName(generation)}.crt`;
  await rename(path.join(dir, name), path.join(dir, 'retired', name));
  await writeTrustBundle(dir);
}

const issuerFileName = (generation: number) => (generation === 1 ? 'issuing' : `issuing-${generation}`);

async function issuerGenerations(dir: string): Promise<number[]> {
  const names = await readdir(dir);
  return names.flatMap((name) => {
    const match = /^issuing(?:-(\d+))?\.crt$/.exec(name);
    return match ? [match[1] ? Number(match[1]) : 1] : [];
  });
}

async function loadIssuers(dir: string, keys: KeyStore): Promise<IssuingCa[]> {
  const generations = (await issuerGenerations(dir)).sort((a, b) => b - a);
  const issuers: IssuingCa[] = [];
  for (const generation of generations) {
    const keyed = await readKeyed(pairOf(dir, issuerFileName(generation), keys), ISSUING_CURVE);
    if (keyed) issuers.push(issuingCa(generation, keyed));
  }
  if (issuers.length === 0) throw new Error(`no issuing CA with its key in ${dir}`);
  return issuers;
}

const keyIdOf = (certificate: x509.X509Certificate): string =>
  certificate.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId.toLowerCase() ?? '';

export const authorityKeyIdOf = (certificate: x509.X509Certificate): string =>
  certificate.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId?.toLowerCase() ?? '';

function issuingCa(generation: number, issuing: KeyedCertificate): IssuingCa {
  const signingAlgorithm = ecSigningAlgorithm(ISSUING_CURVE);
  return {
    generation,
    certificate: issuing.certificate,
    keyId: keyIdOf(issuing.certificate),
    sign: (request) =>
      x509.X509CertificateGenerator.create({
        serialNumber: randomSerial(),
        subject: request.subject,
        issuer: issuing.certificate.subject,
        notBefore: request.notBefore,
        notAfter: request.notAfter,
        publicKey: request.publicKey,
        signingKey: issuing.key,
        signingAlgorithm,
        extensions: request.extensions,
      }),
    signCrl: async (entries, crlNumber, thisUpdate, nextUpdate) =>
      x509.X509CrlGenerator.create({
        issuer: issuing.certificate.subject,
        thisUpdate,
        nextUpdate,
        signingAlgorithm,
        signingKey: issuing.key,
        extensions: [
          await x509.AuthorityKeyIdentifierExtension.create(issuing.certificate.publicKey),
          new x509.Extension(id_ce_cRLNumber, false, AsnConvert.serialize(new CRLNumber(crlNumber))),
        ],
        entries: entries.map((e) => ({ serialNumber: e.serial, revocationDate: e.revokedAt, reason: e.reason })),
      }),
    signData: async (data) => ({
      algorithm: signatureAlgorithmIdentifier(signingAlgorithm),
      signature: ecdsaSignatureToDer(ISSUING_CURVE, await subtle.sign(signingAlgorithm, issuing.key, data)),
    }),
  };
}

function pairOf(dir: string, name: string, keys: KeyStore): FilePair {
  return { cert: path.join(dir, `${name}.crt`), key: name, keys };
}

/** A certificate file and the name its private key has in the key store. */
type FilePair = { cert: string; key: string; keys: KeyStore };

async function readKeyed(files: FilePair, curve: EcCurve): Promise<KeyedCertificate | undefined> {
  if (!existsSync(files.cert)) return undefined;
  const keyPem = await files.keys.read(files.key);
  if (keyPem === undefined) return undefined;
  return {
    certificate: new x509.X509Certificate(await readFile(files.cert, 'utf8')),
    key: await importEcPrivateKeyPem(keyPem, curve),
    keyPem,
  };
}

async function createAndStore(
  files: FilePair,
  log: Logger,
  what: string,
  create: () => Promise<KeyedCertificate>,
): Promise<KeyedCertificate> {
  const made = await create();
  await store(files, made);
  log.info({ subject: made.certificate.subject, notAfter: made.certificate.notAfter, file: files.cert }, `created ${what}`);
  return made;
}

async function store(files: FilePair, made: KeyedCertificate): Promise<void> {
  // Key first, so a crash never leaves a certificate without its key.
  await files.keys.write(files.key, made.keyPem);
  await writeFileAtomically(files.cert, made.certificate.toString('pem') + '\n');
}

async function keyed(certificate: x509.X509Certificate, keys: CryptoKeyPair): Promise<KeyedCertificate> {
  return { certificate, key: keys.privateKey, keyPem: await exportPrivateKeyPem(keys.privateKey) };
}

async function createRoot(now: Date): Promise<KeyedCertificate> {
  const keys = await generateEcKeys(ROOT_CURVE);
  const certificate = await x509.X509CertificateGenerator.createSelfSigned({
    serialNumber: randomSerial(),
    name: 'CN=fleet-auth Root CA, O=fleet-auth',
    notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(now.getTime() + 20 * 365 * DAY),
    keys,
    signingAlgorithm: ecSigningAlgorithm(ROOT_CURVE),
    extensions: [
      new x509.BasicConstraintsExtension(true, 1, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
    ],
  });
  return keyed(certificate, keys);
}

async function createIssuing(root: KeyedCertificate, generation: number, now: Date): Promise<KeyedCertificate> {
  const keys = await generateEcKeys(ISSUING_CURVE);
  const certificate = await x509.X509CertificateGenerator.create({
    serialNumber: randomSerial(),
    subject: `CN=fleet-auth Issuing CA ${generation}, O=fleet-auth`,
    issuer: root.certificate.subject,
    notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(now.getTime() + 10 * 365 * DAY),
    publicKey: keys.publicKey,
    signingKey: root.key,
    signingAlgorithm: ecSigningAlgorithm(ROOT_CURVE),
    extensions: [
      new x509.BasicConstraintsExtension(true, 0, true),
      new x509.KeyUsagesExtension(
        x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
        true,
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(root.certificate.publicKey),
    ],
  });
  return keyed(certificate, keys);
}

function serverNames(hostnames: string[]): string[] {
  return [...new Set(['localhost', '127.0.0.1', '::1', ...hostnames])].sort();
}

function namesIn(certificate: x509.X509Certificate): string[] {
  const san = certificate.getExtension(x509.SubjectAlternativeNameExtension);
  return (san?.names.items ?? []).map((n) => n.value).sort();
}

/** Why a server certificate must be replaced, or undefined when it may be presented as it is. */
function serverCertificateFault(server: KeyedCertificate, signer: IssuingCa, names: string[], now: Date): string | undefined {
  // Only the newest issuing CA: an older one may be retired next, and clients would stop verifying us.
  if (authorityKeyIdOf(server.certificate) !== signer.keyId) return 'not issued by the current issuing CA';
  if (server.certificate.notAfter.getTime() - now.getTime() < SERVER_RENEW_BEFORE) return 'near its expiry';
  if (namesIn(server.certificate).join(',') !== names.join(',')) return 'names other hosts';
  if (!publicKeyMatches(server)) return 'does not match its key';
  return undefined;
}

const publicKeyMatches = (pair: KeyedCertificate): boolean =>
  createPublicKey(pair.keyPem).export({ type: 'spki', format: 'der' }).equals(Buffer.from(pair.certificate.publicKey.rawData));

/**
 * The server certificate to present: the one in use, else the one on disk, else a new one from the
 * current issuing CA. Several processes may share the data directory and reload together, so the
 * file may be half written or pair another process's key: such a file is passed over, and failing
 * to save the new one only costs another issuance at the next start.
 */
async function serverCertificate(
  files: FilePair,
  inUse: KeyedCertificate | undefined,
  signer: IssuingCa,
  names: string[],
  now: Date,
  log: Logger,
): Promise<KeyedCertificate> {
  if (inUse && !serverCertificateFault(inUse, signer, names, now)) return inUse;
  const stored = await readKeyed(files, ISSUING_CURVE).catch(() => undefined);
  const fault = stored ? serverCertificateFault(stored, signer, names, now) : 'missing';
  if (stored && !fault) return stored;
  log.info({ file: files.cert, reason: fault, signer: signer.certificate.subject }, 'issuing a new server certificate');
  const made = await createServer(signer, names, now);
  await store(files, made).catch((error) =>
    log.warn({ err: error, file: files.cert }, 'could not save the new server certificate; the next start issues another'),
  );
  return made;
}

/** The root and every issuing CA still trusted, newest first: the file relying parties verify with. */
async function writeTrustBundle(dir: string): Promise<void> {
  const generations = (await issuerGenerations(dir)).sort((a, b) => b - a);
  const files = [...generations.map((g) => `${issuerFileName(g)}.crt`), 'root.crt'];
  const pems = await Promise.all(files.map((name) => readFile(path.join(dir, name), 'utf8')));
  await writeFileAtomically(path.join(dir, TRUST_BUNDLE), pems.map((pem) => pem.trim() + '\n').join(''));
}

/** Aside and renamed, under a name of this process's own, so a reader never sees half a file. */
async function writeFileAtomically(file: string, contents: string): Promise<void> {
  const aside = `${file}.${process.pid}.${randomBytes(4).toString('hex')}.tmp`;
  await writeFile(aside, contents, { mode: 0o644 });
  await rename(aside, file);
}

async function createServer(issuing: IssuingCa, names: string[], now: Date): Promise<KeyedCertificate> {
  const keys = await generateEcKeys(ISSUING_CURVE);
  const certificate = await issuing.sign({
    subject: 'CN=fleet-auth server, O=fleet-auth',
    notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
    notAfter: new Date(now.getTime() + 365 * DAY),
    publicKey: keys.publicKey,
    extensions: [
      new x509.BasicConstraintsExtension(false, undefined, true),
      new x509.KeyUsagesExtension(x509.KeyUsageFlags.digitalSignature, true),
      new x509.ExtendedKeyUsageExtension([x509.ExtendedKeyUsage.serverAuth]),
      new x509.SubjectAlternativeNameExtension(
        names.map((value) => ({ type: isIP(value) ? ('ip' as const) : ('dns' as const), value })),
      ),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey),
      await x509.AuthorityKeyIdentifierExtension.create(issuing.certificate.publicKey),
    ],
  });
  return keyed(certificate, keys);
}
