import { createPublicKey } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { AsnConvert } from '@peculiar/asn1-schema';
import { type AlgorithmIdentifier, CRLNumber, id_ce_cRLNumber } from '@peculiar/asn1-x509';
import type pg from 'pg';
import { ConfigError } from '../config.js';
import { inTransaction, type Queryable } from '../db/transaction.js';
import { FleetError } from '../errors.js';
import type { Logger } from '../log.js';
import { addCaCertificates, announceCaChange, lockCaCertificates, retireCaCertificate } from '../registry/index.js';
import {
  assertSameRoot,
  type CaCertificateSet,
  type CaGenerationCertificate,
  caRow,
  issuerFileName,
  issuingCertFile,
  nextGenerationOf,
  readCertificate,
  requireRegistrySet,
  retiredCertFile,
  rootCertFile,
  rowsOf,
  setFromDirectory,
  setFromRegistry,
  type TrustedCaCertificates,
  writeCache,
  writeFileAtomically,
} from './ca-certificates.js';
import { fileKeyStore, type KeyStore } from './key-store.js';
import { type CaSigner, signerMatches, x509Signing } from './signer.js';
import {
  type EcCurve,
  ecdsaSignatureToDer,
  exportPrivateKeyPem,
  generateEcKeys,
  pemChain,
  randomSerial,
  signatureAlgorithmIdentifier,
  x509,
} from './x509.js';

export { issuerFileName, readCertificate, rootCertFile, TRUST_BUNDLE, type TrustedCaCertificates } from './ca-certificates.js';

/**
 * A new root's curve unless told otherwise (FLEET_ROOT_CURVE). Every mTLS handshake verifies the
 * issuing CA certificate's signature by the root, and a P-256 verify costs about a tenth of a P-384 one.
 */
export const DEFAULT_ROOT_CURVE: EcCurve = 'P-256';
export const ISSUING_CURVE: EcCurve = 'P-256';
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
  /** The curve of a root made now; an existing root keeps its own. DEFAULT_ROOT_CURVE when not given. */
  rootCurve?: EcCurve;
  /**
   * The registry, which holds the fleet's CA certificates (the files in `<dataDir>/pki` are then its
   * cache). Without it the data directory alone is the CA: for tools and tests that run one of their own.
   */
  pool?: pg.Pool;
}

/** A CA certificate and what signs with its key. */
export interface CaKeyed {
  certificate: x509.X509Certificate;
  signer: CaSigner;
}

/** The root: its key is undefined where the root is kept offline (only root.crt in the data directory). */
interface Root {
  certificate: x509.X509Certificate;
  signer: CaSigner | undefined;
}

/** The TLS server's certificate and key, which Node's TLS takes as PEM. */
interface ServerKeyed {
  certificate: x509.X509Certificate;
  keyPem: string;
}

const pkiDirOf = (dataDir: string) => path.join(dataDir, 'pki');

export async function openPkiDir(options: Omit<AuthorityOptions, 'hostnames' | 'pool'>) {
  const dir = pkiDirOf(options.dataDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const keys = options.keyStore ?? fileKeyStore(dir, { log: options.log });
  return { dir, keys, now: options.now ?? (() => new Date()) };
}

/** The curve of a root's key, read from its certificate: a root made before the default changed keeps its own. */
export function rootCurveOf(root: x509.X509Certificate): EcCurve {
  const curve = (root.publicKey.algorithm as EcKeyAlgorithm).namedCurve;
  if (curve === 'P-256' || curve === 'P-384') return curve;
  throw new ConfigError(`the root CA certificate's key is ${root.publicKey.algorithm.name} ${curve ?? ''}; fleet-auth's roots are ECDSA P-256 or P-384`);
}

/** The root's key from the key store, on the curve its certificate names; undefined when the key is not here. */
export const rootKey = (keys: KeyStore, root: x509.X509Certificate) => keys.signer('root', rootCurveOf(root));

/** The root's signer, or a refusal that says how to sign without it. */
function onlineRoot(root: Root, dir: string): CaSigner {
  if (root.signer) return root.signer;
  throw new FleetError(
    'root_offline',
    409,
    `the root CA key is not in ${dir} (kept offline); make the next issuing CA with fleet ca rotate --csr <file>, ` +
      'sign it where the root key is (fleet ca sign-issuing), then install it here (fleet ca import)',
  );
}

/** A new CA: the root (key first, so a crash never leaves a certificate without its key) and issuing CA 1. */
async function createCa(keys: KeyStore, log: Logger, now: Date, curve: EcCurve): Promise<CaCertificateSet> {
  const signer = await keys.generate('root', curve);
  const root = await createRoot(signer, now);
  log.info({ subject: root.subject, curve, notAfter: root.notAfter }, 'created root CA');
  return withIssuer({ root, issuers: [], retired: [] }, { certificate: root, signer }, keys, log, now);
}

/** The set with a first issuing CA when it has none (a data directory holding only the root). */
async function withIssuer(set: CaCertificateSet, root: Root, keys: KeyStore, log: Logger, now: Date): Promise<CaCertificateSet> {
  if (set.issuers.length > 0) return set;
  const generation = nextGenerationOf(set);
  const made = await createIssuingCa(keys, root, generation, now, log);
  return { ...set, issuers: [{ generation, certificate: made.certificate }] };
}

/**
 * The CA certificates this node runs with. With a registry: its certificates when it has some; else
 * the data directory's, imported once (a fleet from before the registry kept them); else a new CA.
 * The advisory lock makes nodes starting together on an empty registry wait for the first, so one
 * root is made, and the others find it. Without a registry, the data directory alone.
 */
async function establishCa(options: AuthorityOptions, dir: string, keys: KeyStore, now: Date): Promise<CaCertificateSet> {
  const { log, pool } = options;
  const curve = options.rootCurve ?? DEFAULT_ROOT_CURVE;
  const fromDirectory = async () => {
    const local = await setFromDirectory(dir);
    if (!local) return createCa(keys, log, now, curve);
    return withIssuer(local, { certificate: local.root, signer: await rootKey(keys, local.root) }, keys, log, now);
  };
  if (!pool) return fromDirectory();
  return inTransaction(pool, async (tx) => {
    await lockCaCertificates(tx);
    const stored = await setFromRegistry(tx);
    if (stored) return stored;
    const imported = existsSync(rootCertFile(dir));
    const set = await fromDirectory();
    await addCaCertificates(tx, rowsOf(set, now));
    log.info({ dir, issuers: set.issuers.length, retired: set.retired.length }, imported ? 'imported the CA certificates of the data directory into the registry' : 'stored the new CA in the registry');
    return set;
  });
}

/**
 * Loads the CA: its certificates from the registry (written into `<dataDir>/pki` as a cache), its
 * keys from the key store; on a fleet's first start, creates the root, first issuing CA and server
 * certificate. Refuses to start when the key store lacks the key of a trusted issuing CA.
 */
export async function loadAuthority(options: AuthorityOptions): Promise<CertificateAuthority> {
  const { dir, keys, now } = await openPkiDir(options);
  const established = await establishCa(options, dir, keys, now());
  await assertSameRoot(dir, established);
  // Read though the CA runs without it: a wrong FLEET_CA_PASSPHRASE stops the start here, and a root
  // key file from before the passphrase was set is encrypted in place now, not at the next rotation.
  await rootKey(keys, established.root);
  const authority = {} as CertificateAuthority;
  const sanNames = serverNames(options.hostnames);
  const serverFiles = { cert: path.join(dir, 'server.crt'), key: 'server', keys };
  let server: ServerKeyed | undefined;
  const refresh = async (set: CaCertificateSet, starting: boolean) => {
    await writeCache(dir, set);
    const { issuers, current, canSign } = await issuersWithKeys(set, dir, keys, starting, options.log);
    // Unable to sign (on a reload only: a start refuses), the server certificate in use stays: it still chains to the root.
    server = canSign || !server ? await serverCertificate(serverFiles, server, current, sanNames, now(), options.log) : server;
    // All at once, so no reader sees the new issuing CA beside the old server certificate.
    Object.assign(authority, {
      root: set.root,
      rootPem: pemChain(set.root),
      issuers,
      current,
      issuing: current.certificate,
      chainPem: pemChain(current.certificate, set.root),
      trustPem: pemChain(...issuers.map((i) => i.certificate), set.root),
      server: { certificatePem: pemChain(server.certificate, current.certificate), keyPem: server.keyPem },
    });
  };
  await refresh(established, true);
  const reread = async () => refresh((options.pool ? await requireRegistrySet(options.pool) : await setFromDirectory(dir))!, false);
  // A rotation and a retirement announced back to back must not reload side by side.
  let reloading = Promise.resolve();
  Object.assign(authority, {
    sign: (request: CertificateRequestToSign) => authority.current.sign(request),
    signData: (data: ArrayBuffer) => authority.current.signData(data),
    issuerByKeyId: (keyId: string) => authority.issuers.find((i) => i.keyId === keyId.toLowerCase()),
    reload: () => (reloading = reloading.catch(() => undefined).then(reread)),
  });
  return authority;
}

/** What rotation, import and retirement need: the registry, which they change, and the node's data directory and keys. */
export type RegistryCaOptions = Omit<AuthorityOptions, 'hostnames' | 'pool'> & { pool: pg.Pool };

/**
 * Adds the next issuing CA, signed by the root. Running processes pick it up from the change feed;
 * until then they keep signing with the one before, which stays trusted.
 */
export async function rotateIssuingCa(options: RegistryCaOptions): Promise<IssuingCa> {
  const { dir, keys, now } = await openPkiDir(options);
  return addIssuingCa(options.pool, dir, 'rotated', now, async (set, generation) =>
    createIssuingCa(keys, { certificate: set.root, signer: await rootKey(keys, set.root) }, generation, now(), options.log, dir),
  );
}

/**
 * Stores a new issuing CA, made by `make` for the next generation, and announces it, in one
 * transaction: every node reloads exactly the certificates the registry holds. Then this node's cache.
 */
export async function addIssuingCa(
  pool: pg.Pool,
  dir: string,
  action: 'rotated' | 'imported',
  now: () => Date,
  make: (set: CaCertificateSet, generation: number) => Promise<CaKeyed>,
): Promise<IssuingCa> {
  const made = await inTransaction(pool, async (tx) => {
    await lockCaCertificates(tx);
    const set = await requireRegistrySet(tx);
    const generation = nextGenerationOf(set);
    const keyed = await make(set, generation);
    const at = now();
    await addCaCertificates(tx, [caRow(generation, keyed.certificate, 'current', at)]);
    await announceCaChange(tx, { action, generation, issuer: keyed.certificate.subject, at });
    return issuingCa(generation, keyed);
  });
  await writeCache(dir, await requireRegistrySet(pool));
  return made;
}

/**
 * The key for an issuing CA not yet certified: the one a rotation began (rotate --csr) and did not
 * finish, else a new one where the key store keeps issuing keys (a PKCS#11 token, or a file).
 */
export async function issuingKey(keys: KeyStore, generation: number): Promise<CaSigner> {
  const name = issuerFileName(generation);
  return (await keys.signer(name, ISSUING_CURVE)) ?? (await keys.generate(name, ISSUING_CURVE));
}

async function createIssuingCa(keys: KeyStore, root: Root, generation: number, now: Date, log: Logger, dir = 'the data directory'): Promise<CaKeyed> {
  const rootSigner = onlineRoot(root, dir);
  const signer = await issuingKey(keys, generation);
  const certificate = await certifyIssuing(root.certificate, rootSigner, { subject: issuingSubject(generation), publicKey: signer.publicKey }, now);
  log.info({ subject: certificate.subject, notAfter: certificate.notAfter, keyLocation: signer.location }, 'created issuing CA');
  return { certificate, signer };
}

/**
 * Stops trusting an older issuing CA, in the registry and with the change-feed event in one
 * transaction: after the reload its devices are refused at the TLS handshake and their live sessions
 * closed, on every node. The newest issuing CA cannot be retired.
 */
export async function retireIssuingCa(options: { pool: pg.Pool; dataDir: string; now?: () => Date }, generation: number): Promise<void> {
  const at = (options.now ?? (() => new Date()))();
  const set = await inTransaction(options.pool, async (tx) => {
    await lockCaCertificates(tx);
    const { issuers } = await requireRegistrySet(tx);
    const issuer = issuers.find((i) => i.generation === generation);
    if (!issuer) throw new FleetError('issuer_not_found', 404, `there is no issuing CA ${generation}`);
    if (issuer === issuers[0]) {
      throw new FleetError('issuer_current', 409, `issuing CA ${generation} is the one signing new certificates; rotate first (fleet ca rotate)`);
    }
    await retireCaCertificate(tx, generation, at);
    await announceCaChange(tx, { action: 'retired', generation, issuer: issuer.certificate.subject, at });
    return requireRegistrySet(tx);
  });
  await writeCache(pkiDirOf(options.dataDir), set);
}

export const issuingSubject = (generation: number) => `CN=fleet-auth Issuing CA ${generation}, O=fleet-auth`;

/** The trusted CA certificates in the registry, read without touching a key, for a process that does not run the CA. */
export const readTrustedCaCertificates = (q: Queryable): Promise<TrustedCaCertificates> => requireRegistrySet(q);

/**
 * The trusted issuing CAs with their keys, newest first, and the newest of them this node can sign
 * with. At start every one must have its key here (else its CRL and OCSP answers would be stranded):
 * one line says which key files to copy. On a reload (another node rotated or retired) trust follows
 * the registry at once, whatever keys are here: a key not copied yet keeps this node signing with an
 * older issuing CA, and with none left (the one it signed with retired) it signs nothing until then.
 */
async function issuersWithKeys(
  set: CaCertificateSet,
  dir: string,
  keys: KeyStore,
  starting: boolean,
  log: Logger,
): Promise<{ issuers: IssuingCa[]; current: IssuingCa; canSign: boolean }> {
  const issuers: IssuingCa[] = [];
  const missing: CaGenerationCertificate[] = [];
  let current: IssuingCa | undefined;
  for (const { generation, certificate } of set.issuers) {
    const signer = await keys.signer(issuerFileName(generation), ISSUING_CURVE);
    if (!signer) {
      missing.push({ generation, certificate });
      issuers.push(keylessIssuingCa(generation, certificate));
      continue;
    }
    if (!signerMatches(signer, certificate)) {
      throw new ConfigError(`the key of issuing CA ${generation} (${signer.location}) is not the key its certificate ${issuingCertFile(dir, generation)} names`);
    }
    const issuer = issuingCa(generation, { certificate, signer });
    issuers.push(issuer);
    current ??= issuer;
  }
  if (issuers.length === 0) throw new Error(`no trusted issuing CA in the registry (${dir})`);
  if (missing.length > 0) {
    const error = missingKeys(dir, missing);
    if (starting) throw error;
    const meanwhile = current ? `until then this node signs with issuing CA ${current.generation}` : 'until then this node signs no certificate, CRL or OCSP answer';
    log.error({ signing: current?.generation ?? null }, `${error.message}; ${meanwhile}`);
  }
  return { issuers, current: current ?? issuers[0]!, canSign: current !== undefined };
}

/** One line saying which key is missing and what to copy where. */
function missingKeys(dir: string, missing: CaGenerationCertificate[]): ConfigError {
  const newest = missing[0]!;
  const files = missing.map((m) => `${issuerFileName(m.generation)}.key`).join(', ');
  return new ConfigError(
    `issuing CA ${newest.generation} (${newest.certificate.subject}, ${issuingCertFile(dir, newest.generation)}) has no private key here: ` +
      `copy ${files} from the pki directory of a node that has ${missing.length > 1 ? 'them' : 'it'} into ${dir} (mode 0600; encrypted keys need that node's FLEET_CA_PASSPHRASE), ` +
      'or run with the key store it was made with (FLEET_CA_PKCS11_* for a token)',
  );
}

export const keyIdOf = (certificate: x509.X509Certificate): string =>
  certificate.getExtension(x509.SubjectKeyIdentifierExtension)?.keyId.toLowerCase() ?? '';

export const authorityKeyIdOf = (certificate: x509.X509Certificate): string =>
  certificate.getExtension(x509.AuthorityKeyIdentifierExtension)?.keyId?.toLowerCase() ?? '';

function issuingCa(generation: number, issuing: CaKeyed): IssuingCa {
  const { crypto, signingKey, signingAlgorithm } = x509Signing(issuing.signer);
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
        signingKey,
        signingAlgorithm,
        extensions: request.extensions,
      }, crypto),
    signCrl: async (entries, crlNumber, thisUpdate, nextUpdate) =>
      x509.X509CrlGenerator.create({
        issuer: issuing.certificate.subject,
        thisUpdate,
        nextUpdate,
        signingAlgorithm,
        signingKey,
        extensions: [
          await x509.AuthorityKeyIdentifierExtension.create(issuing.certificate.publicKey),
          new x509.Extension(id_ce_cRLNumber, false, AsnConvert.serialize(new CRLNumber(crlNumber))),
        ],
        entries: entries.map((e) => ({ serialNumber: e.serial, revocationDate: e.revokedAt, reason: e.reason })),
      }, crypto),
    signData: async (data) => ({
      algorithm: signatureAlgorithmIdentifier(signingAlgorithm),
      signature: ecdsaSignatureToDer(ISSUING_CURVE, await issuing.signer.sign(data)),
    }),
  };
}

/**
 * A trusted issuing CA whose key this node does not have (another node rotated, and its key is not
 * copied here yet): its devices are admitted, and signing for it says what is missing.
 */
function keylessIssuingCa(generation: number, certificate: x509.X509Certificate): IssuingCa {
  const refuse = async (): Promise<never> => {
    throw new FleetError('issuer_key_missing', 503, `this node has no key for issuing CA ${generation}; copy ${issuerFileName(generation)}.key into its pki directory and restart it`);
  };
  return { generation, certificate, keyId: keyIdOf(certificate), sign: refuse, signCrl: refuse, signData: refuse };
}

/** A certificate file and the name its private key has in the key store. */
type FilePair = { cert: string; key: string; keys: KeyStore };

async function readServer(files: FilePair): Promise<ServerKeyed | undefined> {
  if (!existsSync(files.cert)) return undefined;
  const keyPem = await files.keys.readPem(files.key);
  if (keyPem === undefined) return undefined;
  return { certificate: await readCertificate(files.cert), keyPem };
}

async function storeServer(files: FilePair, made: ServerKeyed): Promise<void> {
  // Key first, so a crash never leaves a certificate without its key.
  await files.keys.writePem(files.key, made.keyPem);
  await writeFileAtomically(files.cert, made.certificate.toString('pem') + '\n');
}

async function createRoot(signer: CaSigner, now: Date): Promise<x509.X509Certificate> {
  const name = 'CN=fleet-auth Root CA, O=fleet-auth';
  const { crypto, signingKey, signingAlgorithm } = x509Signing(signer);
  return x509.X509CertificateGenerator.create(
    {
      serialNumber: randomSerial(),
      subject: name,
      issuer: name,
      notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
      notAfter: new Date(now.getTime() + 20 * 365 * DAY),
      publicKey: signer.publicKey,
      signingKey,
      signingAlgorithm,
      extensions: [
        new x509.BasicConstraintsExtension(true, 1, true),
        new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
        await x509.SubjectKeyIdentifierExtension.create(signer.publicKey),
      ],
    },
    crypto,
  );
}

/**
 * An issuing CA certificate from the root: what the CA decides (constraints, usages, lifetime) is
 * set here and nothing else is taken from the request, so a CSR names only its subject and key.
 */
export async function certifyIssuing(
  root: x509.X509Certificate,
  rootSigner: CaSigner,
  request: { subject: string; publicKey: x509.PublicKey },
  now: Date,
): Promise<x509.X509Certificate> {
  const { crypto, signingKey, signingAlgorithm } = x509Signing(rootSigner);
  const notAfter = Math.min(now.getTime() + 10 * 365 * DAY, root.notAfter.getTime());
  return x509.X509CertificateGenerator.create(
    {
      serialNumber: randomSerial(),
      subject: request.subject,
      issuer: root.subject,
      notBefore: new Date(now.getTime() - CLOCK_SKEW_MS),
      notAfter: new Date(notAfter),
      publicKey: request.publicKey,
      signingKey,
      signingAlgorithm,
      extensions: [
        new x509.BasicConstraintsExtension(true, 0, true),
        new x509.KeyUsagesExtension(
          x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign | x509.KeyUsageFlags.digitalSignature,
          true,
        ),
        await x509.SubjectKeyIdentifierExtension.create(request.publicKey),
        await x509.AuthorityKeyIdentifierExtension.create(root.publicKey),
      ],
    },
    crypto,
  );
}

function serverNames(hostnames: string[]): string[] {
  return [...new Set(['localhost', '127.0.0.1', '::1', ...hostnames])].sort();
}

function namesIn(certificate: x509.X509Certificate): string[] {
  const san = certificate.getExtension(x509.SubjectAlternativeNameExtension);
  return (san?.names.items ?? []).map((n) => n.value).sort();
}

/** Why a server certificate must be replaced, or undefined when it may be presented as it is. */
function serverCertificateFault(server: ServerKeyed, signer: IssuingCa, names: string[], now: Date): string | undefined {
  // Only the newest issuing CA: an older one may be retired next, and clients would stop verifying us.
  if (authorityKeyIdOf(server.certificate) !== signer.keyId) return 'not issued by the current issuing CA';
  if (server.certificate.notAfter.getTime() - now.getTime() < SERVER_RENEW_BEFORE) return 'near its expiry';
  if (namesIn(server.certificate).join(',') !== names.join(',')) return 'names other hosts';
  if (!publicKeyMatches(server)) return 'does not match its key';
  return undefined;
}

const publicKeyMatches = (pair: ServerKeyed): boolean =>
  createPublicKey(pair.keyPem).export({ type: 'spki', format: 'der' }).equals(Buffer.from(pair.certificate.publicKey.rawData));

/**
 * The server certificate to present: the one in use, else the one on disk, else a new one from the
 * current issuing CA. Several processes may share the data directory and reload together, so the
 * file may be half written or pair another process's key: such a file is passed over, and failing
 * to save the new one only costs another issuance at the next start.
 */
async function serverCertificate(
  files: FilePair,
  inUse: ServerKeyed | undefined,
  signer: IssuingCa,
  names: string[],
  now: Date,
  log: Logger,
): Promise<ServerKeyed> {
  if (inUse && !serverCertificateFault(inUse, signer, names, now)) return inUse;
  const stored = await readServer(files).catch(() => undefined);
  const fault = stored ? serverCertificateFault(stored, signer, names, now) : 'missing';
  if (stored && !fault) return stored;
  log.info({ file: files.cert, reason: fault, signer: signer.certificate.subject }, 'issuing a new server certificate');
  const made = await createServer(signer, names, now);
  await storeServer(files, made).catch((error) =>
    log.warn({ err: error, file: files.cert }, 'could not save the new server certificate; the next start issues another'),
  );
  return made;
}

async function createServer(issuing: IssuingCa, names: string[], now: Date): Promise<ServerKeyed> {
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
  return { certificate, keyPem: await exportPrivateKeyPem(keys.privateKey) };
}

/** One CA certificate of the data directory, as `fleet ca list` shows it. */
/** One CA certificate of the registry, as `fleet ca list` shows it. */
export interface CaGeneration {
  /** 0 for the root, 1 and up for the issuing CAs. */
  generation: number;
  role: 'root' | 'issuing';
  /** signing: the issuing CA new certificates come from; trusted: still accepted; retired: no longer. */
  state: 'signing' | 'trusted' | 'retired';
  subject: string;
  keyId: string;
  notBefore: Date;
  notAfter: Date;
  /** Its copy in this node's data directory. */
  file: string;
}

/**
 * The root and every issuing CA, retired ones included, newest issuing CA first, read from the
 * registry's certificates alone: it needs no key, so it works where the keys are in a token or offline.
 */
export async function listCaGenerations(q: Queryable, dataDir: string): Promise<CaGeneration[]> {
  const dir = pkiDirOf(dataDir);
  const set = await requireRegistrySet(q);
  const describe = ({ generation, certificate }: CaGenerationCertificate, state: CaGeneration['state'], file: string): CaGeneration => ({
    generation,
    role: generation === 0 ? 'root' : 'issuing',
    state,
    subject: certificate.subject,
    keyId: keyIdOf(certificate),
    notBefore: certificate.notBefore,
    notAfter: certificate.notAfter,
    file,
  });
  return [
    ...set.issuers.map((i, n) => describe(i, n === 0 ? 'signing' : 'trusted', issuingCertFile(dir, i.generation))),
    ...set.retired.map((i) => describe(i, 'retired', retiredCertFile(dir, i.generation))),
    describe({ generation: 0, certificate: set.root }, 'trusted', rootCertFile(dir)),
  ];
}
