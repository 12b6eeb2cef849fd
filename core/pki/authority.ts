import { createPublicKey, randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, readdir, readFile, rename, writeFile } from 'node:fs/promises';
import { isIP } from 'node:net';
import path from 'node:path';
import { AsnConvert } from '@peculiar/asn1-schema';
import { type AlgorithmIdentifier, CRLNumber, id_ce_cRLNumber } from '@peculiar/asn1-x509';
import { ConfigError } from '../config.js';
import { FleetError } from '../errors.js';
import type { Logger } from '../log.js';
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

/**
 * A new root's curve unless told otherwise (FLEET_ROOT_CURVE). Every mTLS handshake verifies the
 * issuing CA certificate's signature by the root, and a P-256 verify costs about a tenth of a P-384 one.
 */
export const DEFAULT_ROOT_CURVE: EcCurve = 'P-256';
export const ISSUING_CURVE: EcCurve = 'P-256';
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
  /** The curve of a root made now; an existing root keeps its own. DEFAULT_ROOT_CURVE when not given. */
  rootCurve?: EcCurve;
}

/** A CA certificate and what signs with its key. */
interface CaKeyed {
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

export async function openPkiDir(options: Omit<AuthorityOptions, 'hostnames'>) {
  const dir = pkiDirOf(options.dataDir);
  await mkdir(dir, { recursive: true, mode: 0o700 });
  await chmod(dir, 0o700);
  const keys = options.keyStore ?? fileKeyStore(dir, { log: options.log });
  return { dir, keys, now: options.now ?? (() => new Date()) };
}

export const rootCertFile = (dir: string) => path.join(dir, 'root.crt');

/** The curve of a root's key, read from its certificate: a root made before the default changed keeps its own. */
export function rootCurveOf(root: x509.X509Certificate): EcCurve {
  const curve = (root.publicKey.algorithm as EcKeyAlgorithm).namedCurve;
  if (curve === 'P-256' || curve === 'P-384') return curve;
  throw new ConfigError(`the root CA certificate's key is ${root.publicKey.algorithm.name} ${curve ?? ''}; fleet-auth's roots are ECDSA P-256 or P-384`);
}

/** The root's key from the key store, on the curve its certificate names; undefined when the key is not here. */
export const rootKey = (keys: KeyStore, root: x509.X509Certificate) => keys.signer('root', rootCurveOf(root));

/** The root from root.crt, with its key when the key is here; a new root on `curve` when there is no root.crt. */
async function loadOrCreateRoot(dir: string, keys: KeyStore, log: Logger, now: () => Date, curve: EcCurve): Promise<Root> {
  const file = rootCertFile(dir);
  if (existsSync(file)) {
    const certificate = await readCertificate(file);
    return { certificate, signer: await rootKey(keys, certificate) };
  }
  // Key first, so a crash never leaves a certificate without its key.
  const signer = await keys.generate('root', curve);
  const certificate = await createRoot(signer, now());
  await writeFileAtomically(file, certificate.toString('pem') + '\n');
  log.info({ subject: certificate.subject, curve, notAfter: certificate.notAfter, file }, 'created root CA');
  return { certificate, signer };
}

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

/** Loads the CA from `<dataDir>/pki`, creating the root, first issuing CA and server certificate on first start. */
export async function loadAuthority(options: AuthorityOptions): Promise<CertificateAuthority> {
  const { dir, keys, now } = await openPkiDir(options);
  const root = await loadOrCreateRoot(dir, keys, options.log, now, options.rootCurve ?? DEFAULT_ROOT_CURVE);
  if ((await issuerGenerations(dir)).length === 0) await createIssuingCa(dir, keys, root, 1, now(), options.log);
  const authority = { root: root.certificate, rootPem: pemChain(root.certificate) } as CertificateAuthority;
  const sanNames = serverNames(options.hostnames);
  const serverFiles = { cert: path.join(dir, 'server.crt'), key: 'server', keys };
  let server: ServerKeyed | undefined;
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
  const { dir, keys, now } = await openPkiDir(options);
  const root = await loadOrCreateRoot(dir, keys, options.log, now, options.rootCurve ?? DEFAULT_ROOT_CURVE);
  return createIssuingCa(dir, keys, root, await nextGeneration(dir), now(), options.log);
}

/** The next issuing CA's number: one past every issuing CA, retired ones included. */
export const nextGeneration = async (dir: string) => Math.max(0, ...(await issuerGenerations(dir)), ...(await retiredGenerations(dir))) + 1;

/**
 * The key for an issuing CA not yet certified: the one a rotation began (rotate --csr) and did not
 * finish, else a new one where the key store keeps issuing keys (a PKCS#11 token, or a file).
 */
export async function issuingKey(keys: KeyStore, generation: number): Promise<CaSigner> {
  const name = issuerFileName(generation);
  return (await keys.signer(name, ISSUING_CURVE)) ?? (await keys.generate(name, ISSUING_CURVE));
}

async function createIssuingCa(dir: string, keys: KeyStore, root: Root, generation: number, now: Date, log: Logger): Promise<IssuingCa> {
  const rootSigner = onlineRoot(root, dir);
  const signer = await issuingKey(keys, generation);
  const certificate = await certifyIssuing(root.certificate, rootSigner, { subject: issuingSubject(generation), publicKey: signer.publicKey }, now);
  const file = await installIssuingCertificate(dir, generation, certificate);
  log.info({ subject: certificate.subject, notAfter: certificate.notAfter, file, keyLocation: signer.location }, 'created issuing CA');
  return issuingCa(generation, { certificate, signer });
}

/** Puts an issuing CA's certificate beside its key and into the trust bundle: from now on it signs. */
export async function installIssuingCertificate(dir: string, generation: number, certificate: x509.X509Certificate): Promise<string> {
  const file = issuingCertFile(dir, generation);
  await writeFileAtomically(file, certificate.toString('pem') + '\n');
  await writeTrustBundle(dir);
  return file;
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

export const issuerFileName = (generation: number) => (generation === 1 ? 'issuing' : `issuing-${generation}`);
const issuingCertFile = (dir: string, generation: number) => path.join(dir, `${issuerFileName(generation)}.crt`);
export const issuingSubject = (generation: number) => `CN=fleet-auth Issuing CA ${generation}, O=fleet-auth`;

/** The CA certificates a fleet trusts, without its keys: what audits read of the CA (the root and each issuing CA's validity). */
export interface TrustedCaCertificates {
  root: x509.X509Certificate;
  /** Every trusted issuing CA, newest first. */
  issuers: readonly { generation: number; certificate: x509.X509Certificate }[];
}

/** The trusted CA certificates in `<dataDir>/pki`, read without touching a key, for a process that does not run the CA. */
export async function readTrustedCaCertificates(dataDir: string): Promise<TrustedCaCertificates> {
  const dir = pkiDirOf(dataDir);
  if (!existsSync(rootCertFile(dir))) {
    throw new FleetError('root_not_found', 404, `there is no root CA certificate in ${dir}; start the fleet once (fleet start), or set FLEET_DATA_DIR`);
  }
  const generations = (await issuerGenerations(dir)).sort((a, b) => b - a);
  const issuers = await Promise.all(generations.map(async (generation) => ({ generation, certificate: await readCertificate(issuingCertFile(dir, generation)) })));
  return { root: await readCertificate(rootCertFile(dir)), issuers };
}

const issuerGenerations = (dir: string) => generationsIn(dir);
const retiredGenerations = (dir: string) => generationsIn(path.join(dir, 'retired'));

async function generationsIn(dir: string): Promise<number[]> {
  if (!existsSync(dir)) return [];
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
    const signer = await keys.signer(issuerFileName(generation), ISSUING_CURVE);
    // Trusted but unable to sign would strand its devices' CRL and OCSP: say so rather than skip it.
    if (!signer) {
      throw new ConfigError(
        `issuing CA ${generation} (${issuingCertFile(dir, generation)}) has no private key here: it is neither a file in ${dir} ` +
          'nor in a configured PKCS#11 token; run with the key store it was made with (FLEET_CA_PKCS11_* for a token)',
      );
    }
    const certificate = await readCertificate(issuingCertFile(dir, generation));
    if (!signerMatches(signer, certificate)) {
      throw new ConfigError(`the key of issuing CA ${generation} (${signer.location}) is not the key its certificate ${issuingCertFile(dir, generation)} names`);
    }
    issuers.push(issuingCa(generation, { certificate, signer }));
  }
  if (issuers.length === 0) throw new Error(`no issuing CA in ${dir}`);
  return issuers;
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

/** A certificate file and the name its private key has in the key store. */
type FilePair = { cert: string; key: string; keys: KeyStore };

export const readCertificate = async (file: string) => new x509.X509Certificate(await readFile(file, 'utf8'));

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
  file: string;
}

/**
 * The root and every issuing CA, retired ones included, newest issuing CA first, read from the
 * certificates alone: it needs no key, so it works where the keys are in a token or offline.
 */
export async function listCaGenerations(dataDir: string): Promise<CaGeneration[]> {
  const dir = pkiDirOf(dataDir);
  const trusted = (await issuerGenerations(dir)).sort((a, b) => b - a);
  const retired = (await retiredGenerations(dir)).sort((a, b) => b - a);
  const describe = async (generation: number, state: CaGeneration['state'], file: string): Promise<CaGeneration> => {
    const certificate = await readCertificate(file);
    const role = generation === 0 ? 'root' : 'issuing';
    return { generation, role, state, subject: certificate.subject, keyId: keyIdOf(certificate), notBefore: certificate.notBefore, notAfter: certificate.notAfter, file };
  };
  const listed = [
    ...trusted.map((g, i) => describe(g, i === 0 ? 'signing' : 'trusted', issuingCertFile(dir, g))),
    ...retired.map((g) => describe(g, 'retired', path.join(dir, 'retired', `${issuerFileName(g)}.crt`))),
  ];
  if (existsSync(rootCertFile(dir))) listed.push(describe(0, 'trusted', rootCertFile(dir)));
  return Promise.all(listed);
}
